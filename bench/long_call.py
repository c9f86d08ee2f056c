"""callctl alone: one long call with every core kept busy (xruns, the audio process's CPU, RSS).

``python -m bench.long_call [--seconds S]`` runs it by itself and prints the result (JSON);
``make bench`` runs it for 600 s among the rest."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from bench.harness import CpuLoad
from bench.procedure import cpu_seconds
from testing.served import ServedController
from testing.stalls import STEAL, StallWatch

STALL_NEAR_S = 0.2
"""Seconds before an underrun in which a machine stall counts as its neighbour."""


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def long_call(seconds: float) -> dict[str, Any]:
    """One call of ``seconds`` with one busy-looping process per core, and the machine's
    own stalls meanwhile (``StallWatch``), to set beside the device's underruns."""
    rig = ServedController.on_pulse()
    load = CpuLoad(seconds=seconds + 60)
    watch = StallWatch(seconds + 60, watch_pid=rig.pulse.pid)
    try:
        if not rig.request({"cmd": "call"})["ok"]:
            raise RuntimeError("the long call was refused")
        status = rig.wait_state("in_call")
        pid = status["pids"]["audio"]
        cpu0, t0 = cpu_seconds(pid), time.monotonic()
        rss = []
        while time.monotonic() - t0 < seconds:
            time.sleep(min(5.0, seconds / 4))
            rss.append(_rss_mb(pid))
        cpu = (cpu_seconds(pid) - cpu0) / (time.monotonic() - t0) * 100
        audio = rig.request({"cmd": "status"})["audio"]
        rig.request({"cmd": "hangup"})
        rig.wait_event("call.ended", 5)
    finally:
        scheduling, stalls, waits = watch.stop()
        load.stop()
        rig.close()
    underruns = audio.get("underrun_log") or []
    return {"seconds": seconds, "busy_processes": len(load.procs), "xruns": audio["xruns"],
            "backend": audio.get("backend"), "device": audio.get("device"),
            # The device's own account of them (PulseDevice.status): what the xruns were.
            "device_status": {k: audio.get(k) for k in (
                "device_underruns", "underrun_log", "device_refills", "late_max_ms",
                "wake_gap_max_ms",
                "reopens", "period_frames", "queue_ms", "queue_grown_ms") if k in audio},
            "audio_cpu_percent": round(cpu, 2), "audio_rss_mb_max": round(max(rss), 1),
            "machine_stalls": stall_summary(scheduling, stalls, underruns),
            "server_waits": wait_summary(waits, underruns)}


def stall_summary(scheduling: str, stalls: list[tuple[float, float]],
                  underruns: list[dict[str, Any]]) -> dict[str, Any]:
    """``StallWatch``'s stalls in brief, and for each underrun the longest stall that
    ended within ``STALL_NEAR_S`` before it was heard (ms; None: none)."""
    def near(at: float) -> float | None:
        ends = [d for s, d in stalls if at - STALL_NEAR_S <= s + d <= at + 0.005]
        return round(max(ends) * 1000, 1) if ends else None

    ms = sorted(d * 1000 for _, d in stalls)
    return {"watcher": scheduling, "count": len(ms),
            "over_20_ms": sum(m >= 20 for m in ms),
            "longest_ms": round(ms[-1], 1) if ms else None,
            "stall_before_each_underrun_ms": [near(u["at"]) for u in underruns if "at" in u]}


def wait_summary(waits: list[tuple[float, str, float]],
                 underruns: list[dict[str, Any]]) -> dict[str, Any]:
    """The sound server's threads held up (``StallWatch``'s waits), and the CPUs' stolen
    time (``STEAL``): per name, how often 2 ms or more and 5 ms or more gathered between
    two readings, and the most (ms). For each underrun, over the ``STALL_NEAR_S`` before
    it was heard: the most any server thread waited in one reading (``thread``, ``ms``;
    None: none) and each CPU's stolen time in all (``steal_ms``, by CPU)."""
    per: dict[str, list[float]] = {}
    for _, name, waited in waits:
        per.setdefault(name.split("/")[0], []).append(waited * 1000)

    def near(at: float) -> dict[str, Any]:
        close = [(w, n) for r, n, w in waits if at - STALL_NEAR_S <= r <= at + 0.005]
        held = [(w, n) for w, n in close if not n.startswith(STEAL)]
        steal: dict[str, float] = {}
        for w, n in close:
            if n.startswith(STEAL):
                cpu = n.split("/")[1]
                steal[cpu] = round(steal.get(cpu, 0.0) + w * 1000, 1)
        waited, thread = max(held) if held else (None, None)
        return {"thread": thread and thread.split("/")[0],
                "ms": None if waited is None else round(waited * 1000, 1), "steal_ms": steal}

    return {"threads": {name: {"over_2_ms": len(ms), "over_5_ms": sum(m >= 5 for m in ms),
                               "longest_ms": round(max(ms), 1)} for name, ms in per.items()},
            "before_each_underrun": [near(u["at"]) for u in underruns if "at" in u]}


def main() -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench.long_call",
        description="One call on a private PulseAudio server with every core kept busy: "
                    "xruns, the device's account of each underrun, the machine's stalls "
                    "and the server's waits, the audio process's CPU. Prints JSON.")
    parser.add_argument("--seconds", type=float, default=600.0,
                        help="length of the call (default: 600, as make bench)")
    args = parser.parse_args()
    if args.seconds <= 0:
        parser.error("--seconds must be positive")
    print(json.dumps(long_call(args.seconds), indent=1))


if __name__ == "__main__":
    main()
