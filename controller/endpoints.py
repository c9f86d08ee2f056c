"""Where the controller listens: the public control and event endpoints.

The default control endpoint is an ``ipc://`` socket in a per-user runtime
directory that only the user can enter (mode 0700):
``$XDG_RUNTIME_DIR/callctl/``, else ``<tmp>/callctl-<uid>/``. ``--endpoint``
or ``$CALLCTL_ENDPOINT`` choose another. The event endpoint is derived from
the control endpoint (``control`` → ``events`` in the same directory; for
``tcp://`` the next port), and ``status`` replies name it.

``tcp://`` endpoints bind to loopback only, unless CurveZMQ keys are
configured (``controller.curve``), and loopback tcp without keys needs
``--insecure`` (every local user can reach it). Endpoints are read in
libzmq's own syntax, strictly (:func:`parse_tcp`), and after binding
:func:`verify_bound` checks that the socket listens where the check allowed.
"""

from __future__ import annotations

import ipaddress
import os
import re
import socket
import stat
import tempfile
from dataclasses import dataclass
from pathlib import Path

import zmq

from callctl.controller.curve import ServerKeys
from callctl.engine import protocol

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


def control_endpoint(explicit: str | None = None, curve: bool = False,
                     insecure: bool = False) -> str:
    """``--endpoint``, else ``$CALLCTL_ENDPOINT``, else the default; checked by :func:`check`."""
    endpoint = explicit or os.environ.get("CALLCTL_ENDPOINT") or default_endpoint()
    check(endpoint, curve, insecure)
    return endpoint


@dataclass(frozen=True)
class TcpEndpoint:
    """A ``tcp://HOST:PORT`` endpoint as callctl accepts it (no ``;`` source part)."""

    host: str
    """As written, without brackets: an IP literal, ``*``, ``localhost`` or a name."""
    port: int

    @property
    def ip(self) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
        """The host as an IP address when it is a literal in canonical form, else None."""
        try:
            address = ipaddress.ip_address(self.host)
        except ValueError:
            return None
        return address if str(address) == self.host.lower() else None

    def url(self, port: int | None = None) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"tcp://{host}:{self.port if port is None else port}"


_TCP = re.compile(r"tcp://(?:\[(?P<v6>[0-9A-Fa-f:.]+)\]|(?P<host>[A-Za-z0-9_.*-]+))"
                  r":(?P<port>[1-9][0-9]{0,4})")


def parse_tcp(endpoint: str) -> TcpEndpoint:
    """Parse ``tcp://HOST:PORT`` strictly, or raise ``EndpointError`` (one line).

    libzmq reads ``tcp://[SOURCE;]HOST:PORT`` and binds the part after the
    last ``;``; it also accepts interface names, ``127.1``, trailing spaces and
    ``*`` ports. Only the plain form is accepted here, so what is checked is
    what is bound: no ``;``, no user, no path, no whitespace, a decimal port
    from 1 to 65534 (the events endpoint takes the next one).
    """
    if ";" in endpoint:
        raise EndpointError(f"{endpoint!r}: the 'source;address' form is refused (libzmq "
                            "would bind the part after ';'); give one tcp://HOST:PORT")
    match = _TCP.fullmatch(endpoint)
    if match is None:
        raise EndpointError(f"{endpoint!r}: not a tcp://HOST:PORT endpoint "
                            "(e.g. tcp://127.0.0.1:5555)")
    port = int(match["port"])
    if port > 65534:
        raise EndpointError(f"{endpoint!r}: the port must be 1 to 65534 "
                            "(the events endpoint uses the next one)")
    return TcpEndpoint(match["v6"] or match["host"], port)


def _loopback(tcp: TcpEndpoint) -> bool:
    """Whether ``tcp`` names loopback by an IP literal, or is ``localhost`` resolving to
    loopback addresses only."""
    address = tcp.ip
    if address is not None:
        return address.is_loopback
    if tcp.host.lower() != "localhost":
        return False
    try:
        infos = socket.getaddrinfo("localhost", tcp.port, type=socket.SOCK_STREAM)
    except OSError:
        return False
    return bool(infos) and all(ipaddress.ip_address(str(info[4][0]).split("%")[0]).is_loopback
                               for info in infos)


def check(endpoint: str, curve: bool = False, insecure: bool = False) -> None:
    """Raise ``EndpointError`` (one line) unless ``endpoint`` may be used.

    Accepted:

    * ``ipc://PATH`` — a socket file (not ``*``, not an abstract ``@name``: those
      have no file permissions), no control characters, short enough for Linux;
    * ``tcp://HOST:PORT`` in the strict form of :func:`parse_tcp`, and then
      - with ``curve`` (CurveZMQ keys configured): any host;
      - without: a loopback IP literal (``127.0.0.1``, ``::1``) or ``localhost``,
        and only with ``insecure`` (``--insecure``), since every local user can
        reach a loopback port.
    """
    if any(ord(ch) < 0x20 or ord(ch) == 0x7F for ch in endpoint):
        raise EndpointError(f"{endpoint!r}: control characters in an endpoint")
    if endpoint.startswith("ipc://"):
        path = endpoint[len("ipc://"):]
        if not path:
            raise EndpointError(f"{endpoint!r}: an ipc endpoint needs a path")
        if path == "*" or path.startswith("@"):
            raise EndpointError(f"{endpoint!r}: use a socket file path (a wildcard or an "
                                "abstract socket has no file permissions)")
        if len(path.encode()) + len(".events") > IPC_PATH_MAX:
            raise EndpointError(f"{endpoint!r}: ipc paths are limited to {IPC_PATH_MAX} bytes "
                                "(with '.events' added); choose a shorter one")
        return
    if endpoint.startswith("tcp://"):
        tcp = parse_tcp(endpoint)
        if curve:
            return
        if not _loopback(tcp):
            raise EndpointError(f"{endpoint!r}: without CurveZMQ keys (--curve-dir) callctl "
                                "binds tcp only to loopback (127.0.0.1 or ::1)")
        if not insecure:
            raise EndpointError(f"{endpoint!r}: tcp without CurveZMQ is open to every local "
                                "user; make keys with `callctl keys DIR` and pass --curve-dir "
                                "DIR, pass --insecure to accept that, or use the default ipc "
                                "endpoint")
        return
    raise EndpointError(f"{endpoint!r}: use ipc://PATH or tcp://127.0.0.1:PORT")


def insecure_warning(endpoint: str, curve: bool) -> str | None:
    """The one-line warning to print at start for tcp without CurveZMQ, else None."""
    if curve or not endpoint.startswith("tcp://"):
        return None
    return (f"callctl: warning: {endpoint} has no CurveZMQ: every local user can connect, "
            "hang up, start calls and read transcripts (--insecure)")


def verify_bound(sock: zmq.Socket, endpoint: str, curve: bool = False) -> str:
    """After ``sock.bind(endpoint)``: compare ``LAST_ENDPOINT`` with what was allowed.

    Returns the bound endpoint. If libzmq bound anything else — another port,
    another path, a non-loopback address without ``curve``, another address
    than an IP literal asked for — the socket is closed (linger 0) and
    ``EndpointError`` (one line) is raised.
    """
    raw = sock.get(zmq.LAST_ENDPOINT)
    bound = raw.decode(errors="replace") if isinstance(raw, bytes) else str(raw)
    problem: str | None = None
    if endpoint.startswith("ipc://"):
        if bound != endpoint:
            problem = "another path"
    elif endpoint.startswith("tcp://"):
        try:
            wanted, actual = parse_tcp(endpoint), parse_tcp(bound)
        except EndpointError:
            problem = "an address callctl does not accept"
        else:
            if actual.port != wanted.port:
                problem = "another port"
            elif wanted.ip is not None and actual.ip != wanted.ip:
                problem = "another address"
            elif not curve and (actual.ip is None or not actual.ip.is_loopback):
                problem = "beyond loopback without CurveZMQ"
    else:
        problem = "an unknown transport"
    if problem is None:
        return bound
    sock.close(linger=0)
    raise EndpointError(f"{endpoint!r} was bound as {bound!r} ({problem}); refused and closed")


def events_endpoint(control: str) -> str:
    """The PUB endpoint paired with a (checked) control endpoint."""
    if control.startswith("ipc://"):
        path = Path(control[len("ipc://"):])
        return f"ipc://{path.with_name(path.name + '.events')}"
    tcp = parse_tcp(control)
    return tcp.url(tcp.port + 1)


def private_dir_for(control: str) -> Path:
    """Where the controller keeps its internal sockets: a fresh 0700 directory."""
    return Path(tempfile.mkdtemp(prefix="c", dir=runtime_dir()))  # short: ipc paths are limited


def bind(ctx: zmq.Context, kind: int, endpoint: str, keys: ServerKeys | None = None,
         public: bool = False) -> zmq.Socket:
    """A new socket of ``kind`` bound to ``endpoint``: no linger, ``MAX_FRAME_BYTES`` at most
    a message, CURVE when ``keys`` are given, an ipc socket file made 0600.

    ``public``: the controller's control or events endpoint, already ``check``ed. The
    caller holds the endpoint's lock (``EndpointLock``), so a socket file already there
    is a dead controller's and is replaced; after binding, what libzmq bound is compared
    with what was checked (``verify_bound``). Raises what binding raises; the socket is
    closed then (a context's ``term()`` would otherwise wait for it for ever).
    """
    sock = ctx.socket(kind)
    try:
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.MAXMSGSIZE, protocol.MAX_FRAME_BYTES)
        if keys is not None:
            keys.apply(sock)
        if endpoint.startswith("ipc://"):
            path = Path(endpoint[len("ipc://"):])
            if public:
                path.unlink(missing_ok=True)
            sock.bind(endpoint)
            os.chmod(path, 0o600)
        else:
            if "[" in endpoint:
                sock.ipv6 = True
            sock.bind(endpoint)
        if public:
            verify_bound(sock, endpoint, curve=keys is not None)
    except BaseException:
        sock.close(0)
        raise
    return sock
