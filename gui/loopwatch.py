"""Measure how long the Qt event loop goes without turning: a 1 ms timer and its gaps.

Each gap between two ticks is split, from the GUI thread's own scheduler
statistics (``/proc/self/task/TID/schedstat``, field 2: nanoseconds spent
runnable but waiting for a CPU), into

* ``wait``: time the kernel kept the thread waiting for a CPU (other
  processes had them: on a 2-core box, the call's own audio, agent, agent
  server and post-call processes, and whatever else runs), and
* ``own``: everything else — the loop computing (slots, layout, painting,
  JSON, garbage collection) or blocked in a system call. That part is the
  window's doing, and it is what "the event loop never stalls" is about.

GUI thread only; Linux only (without schedstat, ``wait`` is 0 and ``own`` is
the whole gap).
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass, field

from PyQt6.QtCore import Qt, QTimer


@dataclass
class Gap:
    at: float
    """Seconds since the watch started, at the end of the gap."""
    wall_ms: float
    wait_ms: float
    cpu_ms: float
    """Of ``own``, the time the GUI thread was on a CPU (the rest: blocked in a call)."""

    @property
    def own_ms(self) -> float:
        return self.wall_ms - self.wait_ms


@dataclass
class LoopWatch:
    interval_ms: int = 1
    gaps: list[Gap] = field(default_factory=list)
    marks: list[tuple[float, str]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._timer = QTimer()
        self._timer.setTimerType(Qt.TimerType.PreciseTimer)
        self._timer.timeout.connect(self._tick)
        try:
            self._fd: int | None = os.open(
                f"/proc/self/task/{threading.get_native_id()}/schedstat", os.O_RDONLY)
        except OSError:
            self._fd = None
        self._start = self._last = time.perf_counter()
        self._last_wait = self._run_delay()
        self._last_cpu = time.thread_time()

    def _run_delay(self) -> float:
        if self._fd is None:
            return 0.0
        return int(os.pread(self._fd, 128, 0).split()[1]) / 1e9

    def start(self) -> None:
        self._start = self._last = time.perf_counter()
        self._last_wait = self._run_delay()
        self._last_cpu = time.thread_time()
        self._timer.start(self.interval_ms)

    def stop(self) -> None:
        self._timer.stop()
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def elapsed(self) -> float:
        """Seconds since ``start`` (the clock of ``Gap.at`` and the marks)."""
        return time.perf_counter() - self._start

    def mark(self, what: str) -> None:
        self.marks.append((self.elapsed(), what))

    def _tick(self) -> None:
        now = time.perf_counter()
        wait = self._run_delay()
        cpu = time.thread_time()
        self.gaps.append(Gap(now - self._start, (now - self._last) * 1000,
                             (wait - self._last_wait) * 1000, (cpu - self._last_cpu) * 1000))
        self._last, self._last_wait, self._last_cpu = now, wait, cpu

    def worst(self, n: int = 5, own: bool = False) -> list[Gap]:
        key = (lambda g: g.own_ms) if own else (lambda g: g.wall_ms)
        return sorted(self.gaps, key=key)[-n:]

    def report(self) -> str:
        def show(gaps: list[Gap]) -> str:
            return ", ".join(f"{g.wall_ms:.1f} ms (own {g.own_ms:.1f}, cpu {g.cpu_ms:.1f}) "
                             f"at {g.at:.2f} s" for g in reversed(gaps))
        marks = ", ".join(f"{what} {at:.2f} s" for at, what in self.marks)
        return (f"{len(self.gaps)} ticks; longest gaps: {show(self.worst(3))}; "
                f"longest own stalls: {show(self.worst(3, own=True))}; marks: {marks}")
