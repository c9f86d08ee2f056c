"""The child's side: it dies with its parent, so no orphan process, no leaked segment.

The parent's side (``spawn``, ``stop``, restarts) is ``engine.child``.

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
import sys
from types import FrameType

_PR_SET_PDEATHSIG = 1


def _exit_on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)


def _exit_now(signum: int, frame: FrameType | None) -> None:
    os._exit(128 + signum)


PARENT_PID_ENV = "CALLCTL_PARENT_PID"
"""Set by ``child.spawn``: the pid the child must find as its parent, or exit
(``die_with_parent``)."""


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
