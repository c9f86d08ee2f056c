"""Where the audio process's CPU goes during a call: each of its threads, % of one core.

``python -m bench.audio_threads [--seconds S] [SERVE_ARG ...]`` starts ``callctl serve
--device pulse`` on a private PulseAudio server (the bench's rig), starts a call, waits
for the greeting, and reads every thread's user + system time from
``/proc/PID/task/TID/stat`` over ``--seconds`` (default 20) of the call. Threads are named
as the audio process names them (``pulse-device``, ``recorder``, …; the main thread is the
control loop). Extra arguments go to ``callctl serve`` (for example ``--no-aec``).
"""

from __future__ import annotations

import argparse
import os
import time

from bench.run import caller_speech
from bench.systems.callctl import CallctlSystem


def thread_cpu_seconds(pid: int) -> dict[int, tuple[str, float]]:
    """Each live thread of ``pid``: its name and user + system CPU seconds so far."""
    tick = os.sysconf("SC_CLK_TCK")
    threads: dict[int, tuple[str, float]] = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/comm") as comm:
                name = comm.read().strip()
            with open(f"/proc/{pid}/task/{tid}/stat") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
        except OSError:  # the thread ended meanwhile
            continue
        threads[int(tid)] = (name, (int(fields[11]) + int(fields[12])) / tick)
    return threads


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.audio_threads",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=20.0,
                        help="how long to measure, s (default 20)")
    args, serve_args = parser.parse_known_args(argv)
    system = CallctlSystem(caller_speech(), *serve_args)
    try:
        system.start_call()
        time.sleep(2.0)  # past the call's start-up
        pid = system.audio_pid()
        before, t0 = thread_cpu_seconds(pid), time.monotonic()
        time.sleep(args.seconds)
        after, elapsed = thread_cpu_seconds(pid), time.monotonic() - t0
        system.hangup()
    finally:
        system.close()
    total = 0.0
    aec = "AEC off" if "--no-aec" in serve_args else "AEC on"
    print(f"audio process {pid}, {elapsed:.1f} s of a call ({' '.join([aec, *serve_args])}):")
    for tid, (name, cpu) in sorted(after.items()):
        used = cpu - before.get(tid, (name, 0.0))[1]
        total += used
        label = "main (control loop)" if tid == pid else name
        print(f"  {label:24s} {100 * used / elapsed:5.2f} %")
    print(f"  {'all threads':24s} {100 * total / elapsed:5.2f} %")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
