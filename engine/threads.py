"""OS-visible names for the audio process's threads, their scheduling, and the
collector's pauses in the long-lived processes (``freeze_heap``).

Python names its threads for itself only: ``top -H``, ``ps -L`` and
``/proc/PID/task/TID/comm`` show every thread as ``python``. A thread that calls
``name_os_thread()`` first thing shows its Python name there (the first 15 bytes),
so that a per-thread CPU reading (``bench/audio_threads.py``) says which is which.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
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


def freeze_heap() -> None:
    """Take every object alive now out of the cyclic garbage collector's scans
    (``gc.freeze``). Call once a long-lived process has set itself up.

    Why: a full collection scans every tracked object and holds the GIL while it
    does, and Python runs one by itself every so often. After the imports, each of
    callctl's processes tracks 20 000-45 000 objects that live as long as it does;
    ``python -m bench.gc_pause`` prints what one collection costs each process
    kind before and after this (milliseconds before, next to nothing after).
    Objects made later are collected as before.
    """
    gc.collect()  # what is garbage now is freed, not kept forever
    gc.freeze()
