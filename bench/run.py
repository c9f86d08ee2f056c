"""`make bench`: the engine's figures, measured on this machine, written to bench/results/.

    python -m bench.run [--quick] [--calls N] [--xrun-seconds S]

* hangup → silence at the device: a controller on PortAudio's ``pulse``
  device and a private PulseAudio server; a separate ``parec`` client records
  the speaker's monitor; the figure is the last sample above −60 dBFS after
  the hangup request was sent, minus the send time. The agent (local) is
  mid-greeting at a random moment when the hangup goes.
* hangup → agent reaped, and the engine's own "first silent period", from
  the ``call.ended`` event of the same calls.
* call start: ``call`` request sent → first agent sample heard by the
  observer, with the standby agent process and without it (cold).
* xruns: one call of ``--xrun-seconds`` with every core kept busy by another
  process; device status flags and ring underruns from the audio process.
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import time
from pathlib import Path
from typing import Any

from bench.harness import ControllerOnPulse, CpuLoad, summarise

RESULTS = Path(__file__).parent / "results"


def hangups(calls: int, standby: bool = True) -> dict[str, Any]:
    rig = ControllerOnPulse(*([] if standby else ["--no-standby"]))
    silence, engine_silent, reaped, start = [], [], [], []
    killed = 0
    try:
        for _ in range(calls):
            asked = time.monotonic()
            assert rig.request({"cmd": "call"})["ok"]
            rig.wait_state("in_call")
            rig.observer.wait_until(asked + 3.0, timeout=10)
            first = rig.observer.first_sound_after(asked)
            if first is None:
                raise RuntimeError("the agent's greeting never reached the device")
            start.append((first - asked) * 1000)
            time.sleep(random.uniform(0.3, 1.5))  # mid-greeting
            sent = time.monotonic()
            rig.request({"cmd": "hangup"})
            ended = rig.wait_event("call.ended", 5)
            assert ended is not None, "no call.ended"
            rig.observer.wait_until(sent + 0.5, timeout=5)
            last = rig.observer.last_sound_after(sent - 0.2, until=sent + 0.5)
            silence.append(max(0.0, (last - sent) * 1000) if last else 0.0)
            t = ended["timings"]
            engine_silent.append(t["audio_silent_ms"])
            reaped.append(t["agent_exited_ms"])
            killed += bool(t["agent_killed"])
            rig.wait_state("idle")
            time.sleep(0.3)
        status = rig.request({"cmd": "status"})
        latency = status["audio"]["output_latency_ms"]
        period = status["audio"]["period_frames"] / status["audio"]["device_rate"] * 1000
    finally:
        rig.close()
    return {"calls": calls, "hangup_to_silence_ms": summarise(silence),
            "engine_first_silent_period_ms": summarise(engine_silent),
            "hangup_to_agent_reaped_ms": summarise(reaped), "agents_killed": killed,
            "call_start_ms": summarise(start), "device_output_latency_ms": latency,
            "period_ms": period}


def xruns(seconds: float) -> dict[str, Any]:
    rig = ControllerOnPulse()
    load = CpuLoad(seconds=seconds + 60)
    try:
        assert rig.request({"cmd": "call"})["ok"]
        rig.wait_state("in_call")
        time.sleep(seconds)
        audio = rig.request({"cmd": "status"})["audio"]
        rig.request({"cmd": "hangup"})
        rig.wait_event("call.ended", 5)
    finally:
        load.stop()
        rig.close()
    return {"seconds": seconds, "busy_processes": len(load.procs), "xruns": audio["xruns"]}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="fewer calls, a short xrun run")
    p.add_argument("--calls", type=int, default=None, help="hangups to measure (default 30)")
    p.add_argument("--xrun-seconds", type=float, default=None, help="default 60")
    args = p.parse_args(argv)
    calls = args.calls or (8 if args.quick else 30)
    xrun_s = args.xrun_seconds or (10.0 if args.quick else 60.0)
    RESULTS.mkdir(parents=True, exist_ok=True)
    began = time.time()
    print(f"hangup → silence over {calls} calls (PulseAudio null sink, external observer) ...")
    warm = hangups(calls)
    print(f"call start without the standby agent process over {max(3, calls // 4)} calls ...")
    cold = hangups(max(3, calls // 4), standby=False)
    print(f"xruns over {xrun_s:.0f} s with every core busy ...")
    load = xruns(xrun_s)
    results = {"machine": {"python": platform.python_version(), "system": platform.platform(),
                           "cores": __import__("os").cpu_count()},
               "when": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(began)),
               "quick": args.quick, "warm": warm, "cold": cold, "xruns": load}
    (RESULTS / "engine.json").write_text(json.dumps(results, indent=2) + "\n")
    s, r = warm["hangup_to_silence_ms"], warm["hangup_to_agent_reaped_ms"]
    print()
    print(f"hangup→silence (device, observer): median {s['median']} ms, p99 {s['p99']} ms, "
          f"max {s['max']} ms  [period {warm['period_ms']:.0f} ms, device latency "
          f"{warm['device_output_latency_ms']} ms]")
    e = warm["engine_first_silent_period_ms"]
    print(f"engine first silent period:         median {e['median']} ms, p99 {e['p99']} ms")
    print(f"hangup→agent reaped:                median {r['median']} ms, p99 {r['p99']} ms "
          f"({warm['agents_killed']} killed)")
    print(f"call start → first agent audio:     standby median "
          f"{warm['call_start_ms']['median']} ms, cold median {cold['call_start_ms']['median']} ms")
    print(f"xruns over {load['seconds']:.0f} s, {load['busy_processes']} cores busy: "
          f"{load['xruns']}")
    print(f"written: {RESULTS / 'engine.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
