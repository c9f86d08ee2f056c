"""callctl alone: one long call with every core kept busy (xruns, the audio process's CPU, RSS)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from bench.harness import CpuLoad, StallWatch
from bench.procedure import cpu_seconds
from testing.served import ServedController

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
    watch = StallWatch(seconds + 60)
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
        scheduling, stalls = watch.stop()
        load.stop()
        rig.close()
    underruns = audio.get("underrun_log") or []
    return {"seconds": seconds, "busy_processes": len(load.procs), "xruns": audio["xruns"],
            "backend": audio.get("backend"), "device": audio.get("device"),
            # The device's own account of them (PulseDevice.status): what the xruns were.
            "device_status": {k: audio.get(k) for k in (
                "device_underruns", "underrun_log", "device_refills", "late_max_ms",
                "wake_gap_max_ms",
                "reopens", "period_frames", "queue_ms") if k in audio},
            "audio_cpu_percent": round(cpu, 2), "audio_rss_mb_max": round(max(rss), 1),
            "machine_stalls": stall_summary(scheduling, stalls, underruns)}


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
