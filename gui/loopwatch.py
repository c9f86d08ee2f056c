"""Measure how long the Qt event loop goes without turning: a 1 ms timer and its gaps.

Each gap between two ticks is split, from the GUI thread's own scheduler
statistics (``/proc/self/task/TID/schedstat``, field 2: nanoseconds spent
runnable but waiting for a CPU), into

* ``wait``: time the kernel kept the thread waiting for a CPU (other
  processes had them: on a 2-core box, the call's own audio, agent, agent
  server and post-call processes, and whatever else runs), and
* ``steal``: time the hypervisor ran something else on a CPU of this virtual
  machine (``steal`` in ``/proc/stat``, the most any one CPU lost in the gap). The
  guest kernel sees a stolen thread neither running nor waiting; a fresh-clone CI
  run on this rig had a 26.8 ms gap with 5.4 ms of it on a CPU and 0.3 ms waiting,
  in a session whose host stole 270 s of CPU in 90 min. ``/proc/stat`` counts
  in ticks of 10 ms, so this is the CPU's steal rounded to ticks, and it may be
  the other CPU's: an allowance, not a measurement of this thread.
* ``sys``: of the time on a CPU, the part in the kernel (``getrusage``
  ``RUSAGE_THREAD``; the kernel splits a thread's CPU time between user and
  system by sampling it at each tick, so this is a proportion, not an exact
  count). On this rig the longest CPU bursts of the GUI thread in a call are
  the kernel, not the window: ``perf record -g`` of the window test put them
  in ``hrtimer_cancel`` under the event loop's own ``poll()``, waiting for a
  timer callback that runs on the other CPU, and they came with steal
  (8–10 ms of system time and under 1 ms of user time, with a steal tick, in
  three runs of the test; user bursts reached 7 ms). So up to ``steal`` of the
  system time is counted as the host's, like the steal in the rest of the gap.
* ``own``: everything else — the loop computing (slots, layout, painting,
  JSON, garbage collection) or blocked in a system call. That part is the
  window's doing, and it is what "the event loop never stalls" is about.

GUI thread only; Linux only (without schedstat and ``/proc/stat``, ``wait`` and
``steal`` are 0 and ``own`` is the whole gap).
"""

from __future__ import annotations

import os
import resource
import threading
import time
from dataclasses import dataclass, field

from PyQt6.QtCore import Qt, QTimer

TICKS_PER_SECOND = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
"""The unit of ``/proc/stat`` (USER_HZ, 100 on Linux)."""


@dataclass
class Gap:
    at: float
    """Seconds since the watch started, at the end of the gap."""
    wall_ms: float
    wait_ms: float
    cpu_ms: float
    """Of ``own``, the time the GUI thread was on a CPU (the rest: blocked in a call)."""
    steal_ms: float = 0.0
    sys_ms: float = 0.0
    """Of ``cpu_ms``, the part in the kernel (a tick-sampled proportion)."""

    @property
    def own_ms(self) -> float:
        on_cpu = self.cpu_ms - min(self.sys_ms, self.steal_ms)
        return max(on_cpu, self.wall_ms - self.wait_ms - self.steal_ms)


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
        try:
            self._stat: int | None = os.open("/proc/stat", os.O_RDONLY)
        except OSError:
            self._stat = None
        self._start = self._last = time.perf_counter()
        self._last_wait = self._run_delay()
        self._last_cpu = time.thread_time()
        self._last_sys = self._sys()
        self._last_steal = self._steal()

    @staticmethod
    def _sys() -> float:
        """The GUI thread's system CPU time so far, in seconds."""
        return resource.getrusage(resource.RUSAGE_THREAD).ru_stime

    def _run_delay(self) -> float:
        if self._fd is None:
            return 0.0
        return int(os.pread(self._fd, 128, 0).split()[1]) / 1e9

    def _steal(self) -> list[int]:
        """Each CPU's steal so far, in ticks (``cpuN`` lines of ``/proc/stat``, field 8)."""
        if self._stat is None:
            return []
        lines = os.pread(self._stat, 8192, 0).split(b"\n")
        return [int(line.split()[8]) for line in lines[1:]
                if line.startswith(b"cpu") and len(line.split()) > 8]

    def start(self) -> None:
        self._start = self._last = time.perf_counter()
        self._last_wait = self._run_delay()
        self._last_cpu = time.thread_time()
        self._last_sys = self._sys()
        self._last_steal = self._steal()
        self._timer.start(self.interval_ms)

    def stop(self) -> None:
        self._timer.stop()
        for fd in (self._fd, self._stat):
            if fd is not None:
                os.close(fd)
        self._fd = self._stat = None

    def elapsed(self) -> float:
        """Seconds since ``start`` (the clock of ``Gap.at`` and the marks)."""
        return time.perf_counter() - self._start

    def mark(self, what: str) -> None:
        self.marks.append((self.elapsed(), what))

    def _tick(self) -> None:
        now = time.perf_counter()
        wait = self._run_delay()
        cpu = time.thread_time()
        system = self._sys()
        steal = self._steal()
        stolen = max((b - a for a, b in zip(self._last_steal, steal, strict=False)), default=0)
        self.gaps.append(Gap(now - self._start, (now - self._last) * 1000,
                             (wait - self._last_wait) * 1000, (cpu - self._last_cpu) * 1000,
                             stolen * 1000 / TICKS_PER_SECOND, (system - self._last_sys) * 1000))
        self._last, self._last_wait, self._last_cpu, self._last_sys = now, wait, cpu, system
        self._last_steal = steal

    def worst(self, n: int = 5, own: bool = False) -> list[Gap]:
        key = (lambda g: g.own_ms) if own else (lambda g: g.wall_ms)
        return sorted(self.gaps, key=key)[-n:]

    def report(self) -> str:
        def show(gaps: list[Gap]) -> str:
            return ", ".join(f"{g.wall_ms:.1f} ms (own {g.own_ms:.1f}, cpu {g.cpu_ms:.1f}, "
                             f"sys {g.sys_ms:.1f}, steal {g.steal_ms:.0f}) "
                             f"at {g.at:.2f} s" for g in reversed(gaps))
        marks = ", ".join(f"{what} {at:.2f} s" for at, what in self.marks)
        return (f"{len(self.gaps)} ticks; longest gaps: {show(self.worst(3))}; "
                f"longest own stalls: {show(self.worst(3, own=True))}; marks: {marks}")
