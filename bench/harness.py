"""Benchmark harness: figures' summaries and CPU load.

The controller on a real sound server is ``testing.served.ServedController.on_pulse``
(``callctl serve --device pulse`` against a private PulseAudio daemon,
``testing.pulse``, with a ``testing.observer.PlaybackObserver`` recording the
speaker's monitor): hangup → silence is read off that recording, never taken
from the engine's own report.
"""

from __future__ import annotations

import multiprocessing as mp
import multiprocessing.connection
import os
import statistics
import time
from pathlib import Path


def summarise(values: list[float]) -> dict[str, float | int | None]:
    """Median, p90, p99, max, mean and count (None when empty); units as given."""
    if not values:
        return {"n": 0, "median": None, "p90": None, "p99": None, "max": None, "mean": None}
    ordered = sorted(values)

    def pct(p: float) -> float:
        return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]

    return {"n": len(values), "median": round(statistics.median(ordered), 2),
            "p90": round(pct(90), 2), "p99": round(pct(99), 2), "max": round(ordered[-1], 2),
            "mean": round(statistics.fmean(ordered), 2)}


STALL_SLEEP_S = 0.001
"""How long ``StallWatch``'s thread sleeps at a time."""
STALL_REPORT_S = 0.005
"""An oversleep at least this long is a stall ``StallWatch`` records."""
RUN_DELAY_EVERY = 4
"""``StallWatch`` reads the watched process's threads' run delay every this many sleeps."""
RUN_DELAY_REPORT_S = 0.002
"""Run delay gathered between two readings that ``StallWatch`` records, at least (s)."""


STEAL = "(steal)"
"""The name ``_thread_delays`` gives the virtual machine's stolen time, per CPU."""
REPORT = "report"
"""What ``StallWatch.report`` asks its process (anything else stops it)."""
NOT_ANSWERED = "not answered"
"""``StallWatch.stop``'s scheduling when its process gave nothing back."""


def _thread_delays(pid: int) -> dict[str, float]:
    """Seconds each thread of ``pid`` has waited, runnable, for a CPU since it started
    (``/proc/PID/task/TID/schedstat``, second field), keyed ``comm/tid``; and each CPU's
    stolen time, the time its host did not run it (``/proc/stat``, in 10 ms ticks),
    keyed ``(steal)/cpuN``."""
    delays: dict[str, float] = {}
    tick = os.sysconf("SC_CLK_TCK")
    for line in Path("/proc/stat").read_text().splitlines():
        fields = line.split()
        if fields[0].startswith("cpu") and fields[0] != "cpu" and len(fields) > 8:
            delays[f"{STEAL}/{fields[0]}"] = int(fields[8]) / tick
    try:
        tasks = list(Path(f"/proc/{pid}/task").iterdir())
    except OSError:
        return delays
    for task in tasks:
        try:
            name = (task / "comm").read_text().strip()
            delays[f"{name}/{task.name}"] = int((task / "schedstat").read_text().split()[1]) / 1e9
        except (OSError, IndexError, ValueError):
            continue
    return delays


def _watch_stalls(stop_at: float, out: mp.connection.Connection, watch_pid: int | None) -> None:
    try:
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(50))
        scheduling = "SCHED_FIFO/50"
    except (PermissionError, OSError, AttributeError) as exc:
        scheduling = f"normal ({exc.__class__.__name__})"
    stalls: list[tuple[float, float]] = []
    waits: list[tuple[float, str, float]] = []
    delays = _thread_delays(watch_pid) if watch_pid else {}
    prev = time.monotonic()
    n = 0
    while prev < stop_at:
        if out.poll():
            if out.recv() != REPORT:
                break
            out.send((scheduling, list(stalls), list(waits)))
        time.sleep(STALL_SLEEP_S)
        now = time.monotonic()
        if now - prev >= STALL_REPORT_S:
            stalls.append((prev, now - prev))
        prev = now
        n += 1
        if watch_pid and n % RUN_DELAY_EVERY == 0:
            fresh = _thread_delays(watch_pid)
            for thread, delay in fresh.items():
                if delay - delays.get(thread, delay) >= RUN_DELAY_REPORT_S:
                    waits.append((now, thread, delay - delays[thread]))
            delays = fresh
    out.send((scheduling, stalls, waits))


class StallWatch:
    """A process of its own whose one thread, at real-time priority (``SCHED_FIFO/50``
    when allowed), sleeps ``STALL_SLEEP_S`` at a time and records every time it woke
    ``STALL_REPORT_S`` or more after it went to sleep: when, and how long it slept.

    Busy processes at normal priority cannot hold such a thread up, so its stalls are
    the machine's own (a virtual machine's host not running it, or the kernel): what
    no client's schedule can avoid.

    With ``watch_pid`` (the sound server's), it also reads that process's threads' run
    delay (the time each spent runnable but not running, which the kernel keeps) every
    ``RUN_DELAY_EVERY`` sleeps, and records each thread that gathered
    ``RUN_DELAY_REPORT_S`` or more between two readings: when the server itself was
    held up by the busy processes; and likewise each CPU's stolen time (``STEAL``): when
    the virtual machine's host did not run it.

    ``stop()`` returns the scheduling it got, the stalls, ``(start, seconds)``, and the
    server's waits, ``(read at, "comm/tid", seconds waited since the reading before)``;
    times on the machine's monotonic clock."""

    def __init__(self, seconds: float = 900, watch_pid: int | None = None) -> None:
        ctx = mp.get_context("spawn")
        self._conn, child = ctx.Pipe()
        self._proc = ctx.Process(target=_watch_stalls,
                                 args=(time.monotonic() + seconds, child, watch_pid),
                                 daemon=True)
        self._proc.start()

    def report(self) -> tuple[str, list[tuple[float, float]], list[tuple[float, str, float]]]:
        """The findings so far, as ``stop`` gives them; the watch goes on."""
        return self._ask(REPORT)

    def _ask(self, what: str
             ) -> tuple[str, list[tuple[float, float]], list[tuple[float, str, float]]]:
        """The watch's findings; ``("not answered", [], [])`` if its process did not
        answer within 10 s (or had gone)."""
        got: tuple[str, list[tuple[float, float]], list[tuple[float, str, float]]] = (
            NOT_ANSWERED, [], [])
        try:
            self._conn.send(what)
            if self._conn.poll(10):
                got = self._conn.recv()
        except (BrokenPipeError, EOFError, OSError):
            pass
        return got

    def stop(self) -> tuple[str, list[tuple[float, float]], list[tuple[float, str, float]]]:
        """Stop the watch; its findings (``("not answered", [], [])`` if its process did
        not answer within 10 s, or had gone)."""
        got = self._ask("stop")
        self._proc.join(5)
        if self._proc.is_alive():
            self._proc.kill()
        return got


def _spin(stop_at: float) -> None:
    while time.monotonic() < stop_at:
        pass


class CpuLoad:
    """``n`` processes that keep a core busy each, for at most ``seconds``."""

    def __init__(self, n: int = os.cpu_count() or 2, seconds: float = 900) -> None:
        stop_at = time.monotonic() + seconds
        ctx = mp.get_context("spawn")
        self.procs = [ctx.Process(target=_spin, args=(stop_at,), daemon=True) for _ in range(n)]
        for p in self.procs:
            p.start()

    def stop(self) -> None:
        for p in self.procs:
            p.kill()
            p.join(5)
