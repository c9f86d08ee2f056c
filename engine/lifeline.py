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


def pdeathsig_preexec() -> None:
    """``Popen(preexec_fn=...)``: the child gets SIGTERM when the spawning thread dies.

    Set before ``exec``, so it holds from the child's first instruction, also
    for programs that do not call ``die_with_parent`` themselves.
    """
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)


def die_with_parent(hard: bool = False) -> None:
    """Call first thing in a child's ``main``, from its main thread.

    ``hard``: SIGTERM exits at once (``os._exit``), for processes whose
    non-daemon library threads (the elevenlabs SDK's) could otherwise keep
    them alive after ``SystemExit``; only for processes that own nothing
    needing cleanup.
    """
    signal.signal(signal.SIGTERM, _exit_now if hard else _exit_on_sigterm)
    parent = os.getppid()
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
        except (OSError, AttributeError):
            pass
    if os.getppid() != parent:  # the parent died before prctl took effect
        raise SystemExit(0)
