"""OS-visible names for the audio process's threads, and their scheduling.

Python names its threads for itself only: ``top -H``, ``ps -L`` and
``/proc/PID/task/TID/comm`` show every thread as ``python``. A thread that calls
``name_os_thread()`` first thing shows its Python name there (the first 15 bytes),
so that a per-thread CPU reading (``bench/audio_threads.py``) says which is which.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys
import threading

_PR_SET_NAME = 15


def name_os_thread() -> None:
    """Give the calling thread's Python name to the OS thread (Linux; elsewhere nothing).
    Call from the thread itself. Never raises."""
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
        name = threading.current_thread().name.encode(errors="replace")[:15]
        libc.prctl(_PR_SET_NAME, ctypes.c_char_p(name), 0, 0, 0)
    except (OSError, AttributeError):
        pass


def ask_realtime(priority: int) -> str:
    """Ask for ``SCHED_RR`` at ``priority`` (1-99) for the calling thread; threads it starts
    afterwards inherit it. Returns ``"SCHED_RR/<priority>"``, or ``"normal (<why>)"`` when
    refused (no privilege: root, or an ``RLIMIT_RTPRIO`` that allows it). Never raises."""
    try:
        os.sched_setscheduler(0, os.SCHED_RR, os.sched_param(priority))
        return f"SCHED_RR/{priority}"
    except (PermissionError, OSError, AttributeError) as exc:
        return f"normal ({exc.__class__.__name__})"
