"""callctl alone: one long call with every core kept busy (xruns, the audio process's CPU, RSS)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from bench.harness import CpuLoad
from bench.procedure import cpu_seconds
from testing.served import ServedController


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def long_call(seconds: float) -> dict[str, Any]:
    """One call of ``seconds`` with one busy-looping process per core."""
    rig = ServedController.on_pulse()
    load = CpuLoad(seconds=seconds + 60)
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
        load.stop()
        rig.close()
    return {"seconds": seconds, "busy_processes": len(load.procs), "xruns": audio["xruns"],
            "backend": audio.get("backend"), "device": audio.get("device"),
            # The device's own account of them (PulseDevice.status): what the xruns were.
            "device_status": {k: audio.get(k) for k in (
                "device_underruns", "device_refills", "late_max_ms", "wake_gap_max_ms",
                "reopens", "period_frames", "queue_ms") if k in audio},
            "audio_cpu_percent": round(cpu, 2), "audio_rss_mb_max": round(max(rss), 1)}
