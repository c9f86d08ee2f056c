"""callctl's side of the benchmark: a controller on PulseAudio, an observer on its speaker.

Every function returns raw per-call figures (milliseconds unless named
otherwise); ``bench.run`` summarises them.
"""

from __future__ import annotations

import random
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.harness import ControllerOnPulse, CpuLoad, last_sound_before_quiet

LISTEN_AFTER = 3.0
"""Seconds of observer recording searched after a hangup or an interruption."""


def caller_speech() -> np.ndarray:
    from engine.agent_server.voice import Voice

    return Voice().render("Sorry, can I stop you there for a second?")


def _greeting_heard(rig: ControllerOnPulse, asked: float) -> float:
    rig.wait_state("in_call")
    rig.observer.wait_until(asked + 2.5, timeout=10)
    first = rig.observer.first_sound_after(asked)
    if first is None:
        raise RuntimeError("the agent's greeting never reached the device")
    return first


def hangups(calls: int, standby: bool = True) -> dict[str, list[float]]:
    """Hang up mid-greeting ``calls`` times: silence at the device, engine times, start."""
    rig = ControllerOnPulse(*([] if standby else ["--no-standby"]))
    out: dict[str, list[float]] = {"silence": [], "engine_silent": [], "reaped": [],
                                   "start": [], "killed": []}
    try:
        for _ in range(calls):
            asked = time.monotonic()
            assert rig.request({"cmd": "call"})["ok"]
            out["start"].append((_greeting_heard(rig, asked) - asked) * 1000)
            time.sleep(random.uniform(0.3, 1.5))  # mid-greeting
            sent = time.monotonic()
            rig.request({"cmd": "hangup"})
            ended = rig.wait_event("call.ended", 5)
            assert ended is not None, "no call.ended"
            last = last_sound_before_quiet(rig.observer, sent - 0.2)
            out["silence"].append(max(0.0, (last - sent) * 1000) if last else 0.0)
            t = ended["timings"]
            out["engine_silent"].append(t["audio_silent_ms"])
            out["reaped"].append(t["agent_exited_ms"])
            out["killed"].append(float(bool(t["agent_killed"])))
            rig.wait_state("idle")
            time.sleep(0.2)
    finally:
        rig.close()
    return out


def bargeins(calls: int) -> dict[str, list[float]]:
    """The caller talks over the greeting: the agent's ``interruption`` → silence at the device."""
    rig = ControllerOnPulse()
    speech = caller_speech()
    out: dict[str, list[float]] = {"silence": []}
    try:
        for _ in range(calls):
            asked = time.monotonic()
            assert rig.request({"cmd": "call"})["ok"]
            _greeting_heard(rig, asked)
            time.sleep(0.8)
            player = rig.pulse.feed_mic(speech)
            event = rig.wait_event("agent", 5, kind="interruption")
            player.wait(10)
            if event is None:
                raise RuntimeError("no interruption: the caller was not heard over the agent")
            t_int = float(event["t"])
            rig.observer.wait_until(t_int + LISTEN_AFTER, timeout=10)
            # Until the agent's next line (it answers the caller after the turn).
            nxt = rig.observer.first_sound_after(t_int + 0.3, until=t_int + LISTEN_AFTER)
            last = rig.observer.last_sound_after(t_int - 0.2, until=nxt or t_int + LISTEN_AFTER)
            out["silence"].append(max(0.0, (last - t_int) * 1000) if last else 0.0)
            rig.request({"cmd": "hangup"})
            rig.wait_event("call.ended", 5)
            rig.wait_state("idle")
    finally:
        rig.close()
    return out


def stalled_reaps(calls: int) -> dict[str, list[float]]:
    """The service freezes (``--fault stall``); hangup → agent reaped (the 2 s kill)."""
    rig = ControllerOnPulse("--agent-server-arg=--fault=stall",
                            "--agent-server-arg=--fault-after=0.5")
    out: dict[str, list[float]] = {"reaped": [], "silence": []}
    try:
        for _ in range(calls):
            asked = time.monotonic()
            assert rig.request({"cmd": "call"})["ok"]
            _greeting_heard(rig, asked)
            time.sleep(1.0)
            sent = time.monotonic()
            rig.request({"cmd": "hangup"})
            ended = rig.wait_event("call.ended", 6)
            assert ended is not None
            out["reaped"].append(ended["timings"]["agent_exited_ms"])
            last = last_sound_before_quiet(rig.observer, sent - 0.2)
            out["silence"].append(max(0.0, (last - sent) * 1000) if last else 0.0)
            rig.wait_state("idle")
    finally:
        rig.close()
    return out


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    import os

    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def long_call(seconds: float) -> dict[str, Any]:
    """One call of ``seconds`` with every core kept busy: xruns, the audio process's CPU and RSS."""
    rig = ControllerOnPulse()
    load = CpuLoad(seconds=seconds + 60)
    try:
        assert rig.request({"cmd": "call"})["ok"]
        status = rig.wait_state("in_call")
        pid = status["pids"]["audio"]
        cpu0, t0 = _cpu_seconds(pid), time.monotonic()
        rss = []
        while time.monotonic() - t0 < seconds:
            time.sleep(min(5.0, seconds / 4))
            rss.append(_rss_mb(pid))
        cpu = (_cpu_seconds(pid) - cpu0) / (time.monotonic() - t0) * 100
        audio = rig.request({"cmd": "status"})["audio"]
        rig.request({"cmd": "hangup"})
        rig.wait_event("call.ended", 5)
    finally:
        load.stop()
        rig.close()
    return {"seconds": seconds, "busy_processes": len(load.procs), "xruns": audio["xruns"],
            "audio_cpu_percent": round(cpu, 2), "audio_rss_mb_max": round(max(rss), 1),
            "periods": None}
