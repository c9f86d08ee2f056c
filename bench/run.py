"""`make bench`: callctl and the SDK's DefaultAudioInterface, measured side by side, one run.

    python -m bench.run [--quick]

Writes bench/results/bench.json (raw and summarised figures),
bench/results/report.md and PNG plots. ``--quick`` measures fewer calls and
a shorter long call (under 3 minutes); the full run takes about 15.
What each figure means and how it is measured: the report's last section.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path
from typing import Any

from bench import baseline_runs, callctl_runs
from bench.harness import summarise
from bench.report import markdown, plots

RESULTS = Path(__file__).parent / "results"
STALL_BOUND_S = 15.0


def step(title: str) -> float:
    print(f"· {title} ...", flush=True)
    return time.monotonic()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="fewer calls, a short long call")
    args = p.parse_args(argv)
    quick = args.quick
    calls = 6 if quick else 50
    barges = 3 if quick else 15
    stalls = 1 if quick else 3
    long_s = 15.0 if quick else 600.0
    RESULTS.mkdir(parents=True, exist_ok=True)
    began = time.time()

    step(f"callctl: {calls} hangups mid-greeting")
    c_hang = callctl_runs.hangups(calls)
    step(f"SDK DefaultAudioInterface: {calls} hangups mid-greeting")
    s_hang = baseline_runs.hangups(calls)
    step(f"callctl: {barges} barge-ins")
    c_barge = callctl_runs.bargeins(barges)
    step(f"SDK DefaultAudioInterface: {barges} barge-ins")
    s_barge = baseline_runs.bargeins(barges)
    step(f"callctl: {stalls} hangups with a frozen service")
    c_stall = callctl_runs.stalled_reaps(stalls)
    step(f"SDK: {stalls} session ends with a frozen service (bounded at {STALL_BOUND_S:.0f} s)")
    s_stall = baseline_runs.stalled_session_end(stalls, STALL_BOUND_S)
    step("callctl: cold call starts (no standby agent process)")
    c_cold = callctl_runs.hangups(max(3, calls // 5), standby=False)
    step("echo cancellation")
    echo = _echo(quick)
    step("GUI event loop during a call and its hangup")
    gui_stall = _gui_stall()
    step(f"callctl: a {long_s:.0f} s call with every core busy")
    long = callctl_runs.long_call(long_s)

    raw = {"callctl": {"hangup_silence": c_hang["silence"],
                       "engine_silent": c_hang["engine_silent"],
                       "reaped": c_hang["reaped"], "start": c_hang["start"],
                       "cold_start": c_cold["start"], "bargein_silence": c_barge["silence"],
                       "stalled_reaped": c_stall["reaped"]},
           "sdk": {"hangup_silence": s_hang["silence"], "stop_returned": s_hang["stop_returned"],
                   "session_ended": s_hang["session_ended"], "start": s_hang["start"],
                   "bargein_silence": s_barge["silence"],
                   "stalled_session_ended": s_stall["session_ended"]}}
    summary: dict[str, Any] = {
        "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(began)),
        "machine": f"{os.cpu_count()} cores, Python {platform.python_version()}, "
                   f"{platform.system()} {platform.release()}",
        "quick": quick, "stall_bound_s": STALL_BOUND_S, "stall_calls": stalls,
        "sdk_stall_unfinished": len(s_stall["unfinished"]),
        "callctl": {k: summarise(v) for k, v in raw["callctl"].items()},
        "sdk": {k: summarise(v) for k, v in raw["sdk"].items()},
        "callctl_agents_killed": int(sum(c_hang["killed"])),
        "long_call": long, "echo": echo, "gui_stall_ms": gui_stall,
        "duration_s": round(time.time() - began, 1),
    }
    (RESULTS / "bench.json").write_text(json.dumps({"summary": summary, "raw": raw}, indent=2)
                                        + "\n")
    names = plots(raw, RESULTS)
    (RESULTS / "report.md").write_text(markdown(summary, names))
    c, s = summary["callctl"], summary["sdk"]
    print()
    print(f"hangup→silence at the device: callctl median {c['hangup_silence']['median']} ms "
          f"(p99 {c['hangup_silence']['p99']}), DefaultAudioInterface median "
          f"{s['hangup_silence']['median']} ms (p99 {s['hangup_silence']['p99']})")
    print(f"barge-in→silence: callctl median {c['bargein_silence']['median']} ms, "
          f"DefaultAudioInterface median {s['bargein_silence']['median']} ms")
    print(f"written: {RESULTS / 'report.md'} in {summary['duration_s']:.0f} s")
    return 0


def _echo(quick: bool) -> dict[str, Any]:
    from bench import echo

    result: dict[str, Any] = echo.main(quick=quick)
    return result


def _gui_stall() -> dict[str, Any]:
    from bench import gui_stall

    return gui_stall.measure()


if __name__ == "__main__":
    raise SystemExit(main())
