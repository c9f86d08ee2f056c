"""Whether the machine stalled while a test measured something: a ``StallWatch`` beside it.

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

from types import TracebackType

from bench.harness import NOT_ANSWERED, STEAL, StallWatch

MACHINE_STALL_S = 0.005
"""A stall of the machine, or a wait of the sound server's threads for a CPU, at least
this long (s) excuses a broken bound around it: a PipeWire graph cycle with the
observer attached, a quarter of the PulseAudio tests' queue slack."""


class MachineStalls:
    """A ``StallWatch`` (``bench.harness``) running for a test, watching ``server_pid``'s
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
