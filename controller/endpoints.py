"""Where the controller listens: the public control and event endpoints.

The default control endpoint is an ``ipc://`` socket in a per-user runtime
directory that only the user can enter (mode 0700):
``$XDG_RUNTIME_DIR/callctl/``, else ``<tmp>/callctl-<uid>/``. ``--endpoint``
or ``$CALLCTL_ENDPOINT`` choose another. The event endpoint is derived from
the control endpoint (``control`` → ``events`` in the same directory; for
``tcp://`` the next port), and ``status`` replies name it.

``tcp://`` endpoints bind to loopback only, unless CurveZMQ keys are
configured (``controller.curve``); anything else is refused.
"""

from __future__ import annotations

import os
import stat
import tempfile
from pathlib import Path
from urllib.parse import urlparse

LOOPBACK_HOSTS = {"127.0.0.1", "localhost", "::1", "[::1]"}
IPC_PATH_MAX = 107
"""Longest Unix socket path Linux accepts (sun_path is 108 bytes with the NUL)."""


class EndpointError(ValueError):
    """An endpoint callctl will not use; ``str()`` says why, in one line."""


def runtime_dir() -> Path:
    """The private per-user directory for sockets, created 0700 if missing.

    Refuses a directory that another user owns or that others may enter.
    """
    base = os.environ.get("XDG_RUNTIME_DIR")
    if base:
        path = Path(base) / "callctl"
    else:
        path = Path(tempfile.gettempdir()) / f"callctl-{os.getuid()}"
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    info = path.stat()
    if info.st_uid != os.getuid():
        raise EndpointError(f"{path} belongs to another user; set CALLCTL_ENDPOINT")
    if stat.S_IMODE(info.st_mode) & 0o077:
        os.chmod(path, 0o700)
    return path


def default_endpoint() -> str:
    return f"ipc://{runtime_dir() / 'control'}"


def control_endpoint(explicit: str | None = None, curve: bool = False) -> str:
    """``--endpoint``, else ``$CALLCTL_ENDPOINT``, else the default; checked."""
    endpoint = explicit or os.environ.get("CALLCTL_ENDPOINT") or default_endpoint()
    check(endpoint, curve)
    return endpoint


def check(endpoint: str, curve: bool = False) -> None:
    """Accept ``ipc://PATH``, loopback ``tcp://HOST:PORT``, and any ``tcp://`` when
    ``curve`` (CurveZMQ keys configured); raise ``EndpointError`` else."""
    if endpoint.startswith("ipc://"):
        path = endpoint[len("ipc://"):]
        if not path:
            raise EndpointError(f"{endpoint!r}: an ipc endpoint needs a path")
        if len(path.encode()) + len(".events") > IPC_PATH_MAX:
            raise EndpointError(f"{endpoint!r}: ipc paths are limited to {IPC_PATH_MAX} bytes "
                                "(with '.events' added); choose a shorter one")
        return
    if endpoint.startswith("tcp://"):
        parsed = urlparse(endpoint)
        if parsed.port is None:
            raise EndpointError(f"{endpoint!r}: a tcp endpoint needs a port, e.g. tcp://127.0.0.1:5555")
        if parsed.hostname not in LOOPBACK_HOSTS and not curve:
            raise EndpointError(f"{endpoint!r}: without CurveZMQ keys (--curve-dir) callctl "
                                "binds tcp only to loopback (127.0.0.1 or ::1)")
        return
    raise EndpointError(f"{endpoint!r}: use ipc://PATH or tcp://127.0.0.1:PORT")


def events_endpoint(control: str) -> str:
    """The PUB endpoint paired with a control endpoint."""
    if control.startswith("ipc://"):
        path = Path(control[len("ipc://"):])
        return f"ipc://{path.with_name(path.name + '.events')}"
    parsed = urlparse(control)
    assert parsed.port is not None
    host = parsed.netloc.rsplit(":", 1)[0]
    return f"tcp://{host}:{parsed.port + 1}"


def private_dir_for(control: str) -> Path:
    """Where the controller keeps its internal sockets: a fresh 0700 directory."""
    return Path(tempfile.mkdtemp(prefix="c", dir=runtime_dir()))  # short: ipc paths are limited
