"""The long call's watcher sees a process held up by busy ones, and says which underrun
came after which wait."""

from __future__ import annotations

import subprocess
import time

from bench.harness import CpuLoad
from bench.long_call import wait_summary
from testing.stalls import StallWatch


def test_the_watcher_records_a_busy_process_waiting_for_a_cpu() -> None:
    # Two spinning processes per core, and the watched one spinning among them: it is
    # runnable all the time and runs about half of it, so it waits.
    spinner = subprocess.Popen(["sh", "-c", "while :; do :; done"])
    load = CpuLoad(seconds=10)
    watch = StallWatch(10, watch_pid=spinner.pid)
    try:
        time.sleep(1.5)
    finally:
        scheduling, _, waits = watch.stop()
        load.stop()
        spinner.kill()
        spinner.wait(5)
    assert scheduling, scheduling
    mine = [w for w in waits if w[1] == f"sh/{spinner.pid}"]
    assert mine, waits[:5]
    assert all(w >= 0.002 for _, _, w in mine)


def test_each_underrun_is_set_beside_the_longest_wait_just_before_it() -> None:
    waits = [(10.0, "pulseaudio/7", 0.003), (10.1, "null-sink/9", 0.0061),
             (10.12, "(steal)/cpu1", 0.01), (10.14, "(steal)/cpu1", 0.02),
             (20.0, "pulseaudio/7", 0.012)]
    summary = wait_summary(waits, [{"at": 10.15}, {"at": 15.0}, {"at": 20.001}])
    assert summary["threads"] == {
        "pulseaudio": {"over_2_ms": 2, "over_5_ms": 1, "longest_ms": 12.0},
        "null-sink": {"over_2_ms": 1, "over_5_ms": 1, "longest_ms": 6.1},
        "(steal)": {"over_2_ms": 2, "over_5_ms": 2, "longest_ms": 20.0}}
    assert summary["before_each_underrun"] == [
        {"thread": "null-sink", "ms": 6.1, "steal_ms": {"cpu1": 30.0}},
        {"thread": None, "ms": None, "steal_ms": {}},
        {"thread": "pulseaudio", "ms": 12.0, "steal_ms": {}}]
