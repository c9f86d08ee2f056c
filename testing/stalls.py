"""Whether the machine stalled while a test or the benchmark measured something.

``StallWatch`` is a real-time thread in a process of its own that records when it woke
late (the machine's stalls) and, optionally, when a sound server's threads waited for a
CPU; ``MachineStalls`` is one a test asks mid-run about the span around an event.

The device tests judge sound against bounds of milliseconds. On a virtual machine whose
host takes its CPUs, the whole machine stops now and then for 5-40 ms (a
real-time watcher that sleeps 1 ms wakes that late): no process can write audio then,
and a fade may land after the sink took what it changes, a queue may run dry, a silence
may come late. A test that finds its bound broken asks ``MachineStalls.during`` whether
the machine stalled around that event; if it did, the event is redone (a bounded number
of times), never counted. A bound broken while the machine ran smoothly fails the test.

Only a failed event is excused, never a passing one skipped: on a stormy machine (37
stalls of 5 ms or more in 10 idle seconds, 2026-12-03) most spans of a few hundred ms
hold one, and excusing by the stall alone would leave nothing judged.
"""

from __future__ import annotations

import multiprocessing as mp
import multiprocessing.connection
import os
import time
from pathlib import Path
from types import TracebackType

MACHINE_STALL_S = 0.005
"""A stall of the machine, or a wait of the sound server's threads for a CPU, at least
this long (s) excuses a broken bound around it: a PipeWire graph cycle with the
observer attached, a quarter of the PulseAudio tests' queue slack."""


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


class MachineStalls:
    """A ``StallWatch`` running for a test, watching ``server_pid``'s
    threads too. The test's thread only; ``close`` (or leaving ``with``) stops it."""

    def __init__(self, server_pid: int | None, seconds: float = 600) -> None:
        self._watch = StallWatch(seconds, server_pid)

    def during(self, t0: float, t1: float) -> str | None:
        """The stalls and server waits of ``MACHINE_STALL_S`` or more in ``[t0, t1]``
        (s, ``time.monotonic()``), said in short; None if there were none."""
        scheduling, stalls, waits = self._watch.report()
        if scheduling == NOT_ANSWERED:
            return "the stall watch did not answer"
        seen = [f"a {s * 1000:.1f} ms stall" for at, s in stalls
                if t0 <= at + s and at <= t1 and s >= MACHINE_STALL_S]
        seen += [f"{who} waited {s * 1000:.1f} ms" for at, who, s in waits
                 if t0 <= at <= t1 and s >= MACHINE_STALL_S and not who.startswith(STEAL)]
        return ", ".join(seen) or None

    def close(self) -> None:
        self._watch.stop()

    def __enter__(self) -> MachineStalls:
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()
