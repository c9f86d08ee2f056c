"""The rig's daemons and helper clients as child processes: find, spawn, stop, tidy up.

Shared by the private sound servers (``testing.pulse``, ``testing.pipewire``,
``testing.jack``) and the observer (``testing.observer``). Every wait is
bounded; times are in seconds.
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
from collections.abc import Sequence
from types import TracebackType
from typing import Self

import numpy as np
import numpy.typing as npt

__all__ = ["StartStop", "child_argv", "pcm_bytes", "reap", "stop_all", "which"]


def which(program: str, packages: str, error: type[Exception] = RuntimeError) -> str:
    """The path of ``program`` on ``PATH``; else raise ``error`` naming the Debian
    ``packages`` that provide it."""
    path = shutil.which(program)
    if path is None:
        raise error(f"{program!r} not found on PATH (Debian packages: {packages})")
    return path


def child_argv(argv: Sequence[str], die_with_parent: bool) -> list[str]:
    """Prefix ``argv`` with ``setpriv --pdeathsig KILL`` when asked and available.

    The parent-death signal is delivered when the *thread* that spawned the
    child exits, so only spawn from a thread that outlives the child (the main
    thread, a pytest fixture) when ``die_with_parent`` is true.
    """
    setpriv = shutil.which("setpriv")
    if die_with_parent and setpriv is not None:
        return [setpriv, "--pdeathsig", "KILL", "--", *argv]
    return list(argv)


def reap(proc: subprocess.Popen[bytes], term_timeout: float, kill_timeout: float) -> None:
    """Stop ``proc`` with SIGTERM, then SIGKILL, and reap it; each wait bounded (seconds).

    Returns at once if it already exited; after ``kill_timeout`` it gives up
    waiting (a process in uninterruptible sleep) rather than hang the caller.
    """
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        proc.terminate()
    try:
        proc.wait(timeout=term_timeout)
        return
    except subprocess.TimeoutExpired:
        pass
    with contextlib.suppress(ProcessLookupError):
        proc.kill()
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=kill_timeout)


def stop_all(procs: list[subprocess.Popen[bytes]], tmpdir: str) -> None:
    """Reap ``procs`` last-started first (clients before the daemon they use), empty the
    list and remove ``tmpdir``: a server's ``stop()`` and its ``weakref.finalize``
    (garbage collection, interpreter exit) both run this, once. At most about 6 s a
    process."""
    for proc in reversed(procs):
        reap(proc, term_timeout=3.0, kill_timeout=3.0)
    procs.clear()
    shutil.rmtree(tmpdir, ignore_errors=True)


def pcm_bytes(samples: npt.ArrayLike) -> bytes:
    """Mono s16le bytes of ``samples``: int16 as they are, floats in [-1, 1] scaled by
    32767 and clipped."""
    x = np.asarray(samples)
    if x.dtype != np.int16:
        if np.issubdtype(x.dtype, np.floating):
            x = np.clip(np.round(x * 32767.0), -32768, 32767)
        x = x.astype(np.int16)
    return np.ascontiguousarray(x.reshape(-1)).astype("<i2", copy=False).tobytes()


class StartStop:
    """``with thing:`` for the rig's servers and observers: ``start()`` on entry (its
    result is the ``as`` target), ``stop()`` on exit, exception or not."""

    def start(self) -> Self:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
