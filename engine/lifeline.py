"""Children die with their parent: no orphan process, no leaked segment.

``die_with_parent`` asks Linux to send SIGTERM when the parent dies
(``PR_SET_PDEATHSIG``) and turns SIGTERM into ``SystemExit``, so ``finally``
blocks and context managers (ring unlinking, WAV finalising) still run.
Note the kernel fires on the death of the parent *thread* that forked us;
callers spawn children from a long-lived thread (the controller's main thread).
"""

from __future__ import annotations

import ctypes
import os
import shutil
import signal
import subprocess
import sys
from types import FrameType
from typing import Any

_PR_SET_PDEATHSIG = 1


def _exit_on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)


def terminate(popen: subprocess.Popen[Any], timeout: float = 3.0) -> int:
    """The stop every parent uses: SIGTERM, then SIGKILL after ``timeout`` s; reaped."""
    if popen.poll() is None:
        popen.terminate()
        try:
            popen.wait(timeout)
        except subprocess.TimeoutExpired:
            popen.kill()
            popen.wait()
    return popen.returncode


def _exit_now(signum: int, frame: FrameType | None) -> None:
    os._exit(128 + signum)


PARENT_PID_ENV = "CALLCTL_PARENT_PID"
"""Set by ``spawn``: the pid the child must find as its parent, or exit (``die_with_parent``)."""


def spawn(argv: list[str], *, env: dict[str, str] | None = None,
          **popen_kwargs: Any) -> subprocess.Popen[Any]:
    """Start a child that gets SIGTERM when the spawning thread dies, fork-safely.

    ``preexec_fn`` runs Python between fork and exec, which can deadlock a
    process with threads (libzmq's, the ZAP authenticator's): a lock another
    thread held at the fork stays held in the child forever. Instead the
    parent-death signal is set by ``setpriv --pdeathsig TERM`` (util-linux),
    which execs the child with it; Python children also check, first thing,
    that their parent is still the one in ``PARENT_PID_ENV``
    (``die_with_parent``), which closes the window before the signal was set.
    ``start_new_session`` and ``close_fds`` are Popen's own (done in C).
    """
    setpriv = shutil.which("setpriv") if sys.platform.startswith("linux") else None
    full = [setpriv, "--pdeathsig", "TERM", "--", *argv] if setpriv else list(argv)
    child_env = dict(os.environ if env is None else env)
    child_env[PARENT_PID_ENV] = str(os.getpid())
    return subprocess.Popen(full, env=child_env, **popen_kwargs)


def die_with_parent(hard: bool = False) -> None:
    """Call first thing in a child's ``main``, from its main thread.

    ``hard``: SIGTERM exits at once (``os._exit``), for processes whose
    non-daemon library threads (the elevenlabs SDK's) could otherwise keep
    them alive after ``SystemExit``; only for processes that own nothing
    needing cleanup.
    """
    signal.signal(signal.SIGTERM, _exit_now if hard else _exit_on_sigterm)
    expected = os.environ.get(PARENT_PID_ENV, "")
    if expected.isdigit() and os.getppid() != int(expected):
        raise SystemExit(0)  # the parent died before we got here
    parent = os.getppid()
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
        except (OSError, AttributeError):
            pass
    if os.getppid() != parent:  # the parent died before prctl took effect
        raise SystemExit(0)
