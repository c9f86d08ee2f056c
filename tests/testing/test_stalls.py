"""``testing.stalls``: a test asks, mid-run, whether the machine stalled around an event."""

from __future__ import annotations

import os
import signal
import time

from testing.stalls import MachineStalls


def test_a_process_held_up_is_a_stall_in_its_span_and_not_outside_it() -> None:
    # The watch's own process stopped for 60 ms (SIGSTOP, as a machine that stalls):
    # its clock sees a sleep of 1 ms last 60.
    machine = MachineStalls(server_pid=None, seconds=20)
    try:
        time.sleep(0.5)  # the watch's process is up and sleeping
        watcher = machine._watch._proc.pid
        assert watcher is not None
        t0 = time.monotonic()
        os.kill(watcher, signal.SIGSTOP)
        time.sleep(0.06)
        os.kill(watcher, signal.SIGCONT)
        time.sleep(0.05)
        t1 = time.monotonic()
        why = machine.during(t0, t1)
        assert why is not None and "stall" in why, why
        assert all(float(part.split()[1]) >= 5 for part in why.split(", ")), why
        assert machine.during(t1 + 10, t1 + 11) is None, "nothing yet in the future"
        # The watch goes on after a report.
        assert machine.during(t0, time.monotonic()) is not None
    finally:
        machine.close()


def test_a_watch_that_has_gone_says_so() -> None:
    machine = MachineStalls(server_pid=None, seconds=20)
    machine._watch._proc.kill()
    machine._watch._proc.join(5)
    assert machine.during(0, time.monotonic()) == "the stall watch did not answer"
    machine.close()
