"""`make bench`: callctl, the SDK's DefaultAudioInterface and Pipecat, one procedure, one run.

    python -m bench.run [--quick] [--only callctl,sdk,pipecat] [--long-s SECONDS]

Writes bench/results/bench.json (raw and summarised figures),
bench/results/report.md and PNG plots. ``--quick`` measures fewer calls and
a short long call (under 3 minutes); the full run takes about 25 minutes.
The procedure: ``bench/procedure.py``; what each figure means: the
report's last section.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench import procedure
from bench.harness import summarise
from bench.report import markdown, plots, update_readme
from bench.systems import System
from testing.measure import SPEECH_DBFS
from testing.stalls import MachineStalls

RESULTS = Path(__file__).parent / "results"
STALL_BOUND_S = 15.0
HANGUP_WINDOW = (0.4, 3.4)
"""Seconds after the first sound of the greeting (4.5 s long) where hangups fall."""
BARGEIN_WINDOW = (0.6, 2.6)


def step(title: str) -> float:
    print(f"· {title} ...", flush=True)
    return time.monotonic()


def caller_speech() -> Any:
    from callctl.engine.agent_server.voice import Voice

    return Voice().render("Sorry, can I stop you there for a second?")


def agent_speech() -> Any:
    """The local agent server's greeting in its own voice: what Pipecat plays."""
    from callctl.engine.agent_server.script import load_script
    from callctl.engine.agent_server.voice import Voice

    script = load_script(None)
    return Voice(script.voice, script.words_per_minute).render(script.greeting)


def _systems(only: set[str], log: Any, work: Path) -> dict[str, Callable[..., System]]:
    from bench.systems.callctl import CallctlSystem
    from bench.systems.pipecat import PipecatSystem
    from bench.systems.sdk import SdkSystem

    caller = caller_speech()
    makers: dict[str, Callable[..., System]] = {
        "callctl": lambda *a: CallctlSystem(caller, *a),
        "sdk": lambda *a: SdkSystem(log, caller, *a,
                                    session_bound_s=STALL_BOUND_S if a else 5.0),
        "pipecat": lambda: PipecatSystem(log, agent_speech(), work),
    }
    return {k: v for k, v in makers.items() if k in only}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true",
                   help="a check, not figures: 4 hangups, 2 barge-ins, 1 cold start, 3 s of "
                        "CPU and a 5 s long call (under 3 minutes)")
    p.add_argument("--only", default="callctl,sdk,pipecat",
                   help="comma-separated systems to measure (default all three)")
    p.add_argument("--long-s", type=float, default=None,
                   help="length of callctl's long call under load, s (default 600, quick 5)")
    args = p.parse_args(argv)
    quick = args.quick
    only = {s.strip() for s in args.only.split(",") if s.strip()}
    unknown = only - {"callctl", "sdk", "pipecat"}
    if unknown:
        p.error(f"unknown system(s) {sorted(unknown)}; choose from callctl, sdk, pipecat")
    n_hang = 4 if quick else 30
    n_barge = 2 if quick else 15
    n_stall = 1 if quick else 3
    n_cold = 1 if quick else max(3, n_hang // 5)
    cpu_s = 3.0 if quick else 30.0
    long_s = args.long_s if args.long_s is not None else (5.0 if quick else 600.0)
    RESULTS.mkdir(parents=True, exist_ok=True)
    began = time.time()
    hang_at = procedure.offsets(n_hang, *HANGUP_WINDOW)
    barge_at = procedure.offsets(n_barge, *BARGEIN_WINDOW)
    work = Path(tempfile.mkdtemp(prefix="callctl-bench-"))
    log = open(work / "baselines.log", "w")  # noqa: SIM115 (closed below)
    results: dict[str, procedure.Results] = {}
    frozen: dict[str, list[float | None]] = {}
    cold: list[float] = []
    try:
        for key, make in _systems(only, log, work).items():
            step(f"{key}: {n_hang} hangups, {n_barge} barge-ins, {cpu_s:.0f} s of CPU")
            out = results[key] = procedure.Results()
            system = make()
            try:
                with MachineStalls(None, seconds=3600) as machine:
                    procedure.hangups(system, hang_at, out, machine)
                procedure.bargeins(system, barge_at, out)
                procedure.cpu_during_call(system, cpu_s, out)
            finally:
                system.close()
            # A child may also die after it answered a hangup, before the next call; each
            # death is in its ``crashes`` (bench.systems.child), each came of a hangup.
            out.crashed_on_hangup = max(out.crashed_on_hangup,
                                        len(getattr(system, "crashes", [])))
            print(f"  hangup→silence median {statistics.median(out.hangup_silence):.1f} ms, "
                  f"click median {_median(out.hangup_click_db)} dB, cpu {out.cpu_percent} %",
                  flush=True)
            if key in ("callctl", "sdk"):
                step(f"{key}: {n_stall} hangups with a frozen service")
                args_ = (["--agent-server-arg=--fault=stall",
                          "--agent-server-arg=--fault-after=0.5"] if key == "callctl"
                         else ["--fault", "stall", "--fault-after", "0.5"])
                stalled = make(*args_)
                try:
                    frozen[key] = procedure.frozen_service(stalled, n_stall)
                finally:
                    stalled.close()
            if key == "callctl":
                step("callctl: cold call starts (no standby agent process)")
                cold_out = procedure.Results()
                cold_system = make("--no-standby")
                try:
                    procedure.hangups(cold_system, hang_at[:n_cold], cold_out)
                finally:
                    cold_system.close()
                cold = cold_out.start
    finally:
        log.close()
    echo = gui_stall = long = None
    if "callctl" in only:
        step("echo cancellation")
        echo = _echo(quick)
        step("GUI event loop during a call and its hangup")
        gui_stall = _gui_stall()
        step(f"callctl: a {long_s:.0f} s call with every core busy")
        from bench.long_call import long_call

        long = long_call(long_s)

    raw: dict[str, Any] = {k: r.as_dict() for k, r in results.items()}
    if "callctl" in raw:
        raw["callctl"]["cold_start"] = cold
    series = ("hangup_silence", "hangup_click_db", "tail_step_ratio", "agent_done", "start",
              "bargein_silence", "bargein_click_db", "cold_start")
    systems: dict[str, Any] = {}
    for key in ("callctl", "sdk", "pipecat"):
        r = raw.get(key, {})
        systems[key] = {name: summarise(r.get(name, [])) for name in series}
        systems[key]["hangup_silence_survived"] = summarise(
            [v for v, died in zip(r.get("hangup_silence", []), r.get("hangup_crashed", []),
                                  strict=True) if not died])
        for name in ("redone_in_pause", "given_up", "agent_killed", "cpu_percent",
                     "cpu_seconds", "crashed_on_hangup", "hangups_sent", "late_device_fades"):
            systems[key][name] = r.get(name, 0 if name != "cpu_percent" else None)
        systems[key]["greeting_pauses_s"] = r.get("greeting_pauses_s", [])
        systems[key]["loud_hangups"] = r.get("loud_hangups", [])
        systems[key]["hangups_near_stall"] = sum(
            1 for why in r.get("hangup_machine_stalls", []) if why)
        systems[key]["slowest_hangups"] = sorted(
            ({"silence_ms": v, "machine_stalls": why} for v, why in zip(
                r.get("hangup_silence", []), r.get("hangup_machine_stalls", []),
                strict=False)), key=lambda h: -h["silence_ms"])[:2]
    stall_sdk = frozen.get("sdk", [])
    summary: dict[str, Any] = {
        "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(began)),
        "machine": f"{os.cpu_count()} cores, Python {platform.python_version()}, "
                   f"{platform.system()} {platform.release()}",
        "quick": quick, "hangups": n_hang, "bargeins": n_barge,
        "hangup_window": HANGUP_WINDOW, "bargein_window": BARGEIN_WINDOW,
        "cpu_seconds": cpu_s, "max_redos": procedure.MAX_REDOS,
        "redo_shift_s": procedure.REDO_SHIFT_S,
        "natural_end_ms": procedure.NATURAL_END_S * 1000, "pause_ms": procedure.PAUSE_S * 1000,
        "speech_dbfs": SPEECH_DBFS,
        "systems": systems,
        "frozen": {"bound_s": STALL_BOUND_S, "calls": n_stall,
                   "callctl": summarise([v for v in frozen.get("callctl", []) if v is not None]),
                   "sdk": summarise([v for v in stall_sdk if v is not None]),
                   "sdk_unfinished": sum(1 for v in stall_sdk if v is None)},
        "long_call": long, "echo": echo, "gui_stall_ms": gui_stall,
        "duration_s": round(time.time() - began, 1),
    }
    raw["frozen"] = frozen
    (RESULTS / "bench.json").write_text(json.dumps({"summary": summary, "raw": raw}, indent=2)
                                        + "\n")
    names = plots(raw, RESULTS)
    (RESULTS / "report.md").write_text(markdown(summary, names))
    if not quick and only == {"callctl", "sdk", "pipecat"}:
        update_readme(RESULTS.parents[1] / "README.md", summary)
    print()
    for key in ("callctl", "sdk", "pipecat"):
        s = systems[key]
        print(f"{key:8} hangup→silence {_cell(s['hangup_silence'])}  click "
              f"{_cell(s['hangup_click_db'], 'dB')}  barge-in {_cell(s['bargein_silence'])}  "
              f"agent done {_cell(s['agent_done'])}  start {_cell(s['start'])}  "
              f"cpu {s['cpu_percent']} %")
    if long:
        print(f"long call {long['seconds']:.0f} s under load: xruns {long['xruns']}, audio "
              f"process CPU {long['audio_cpu_percent']} %")
    print(f"written: {RESULTS / 'report.md'} in {summary['duration_s']:.0f} s")
    return 0


def _median(values: list[float]) -> str:
    return f"{statistics.median(values):.1f}" if values else "—"


def _cell(s: dict[str, Any], unit: str = "ms") -> str:
    if not s.get("n"):
        return "—"
    return f"{s['median']}/{s['p99']} {unit}"


def _echo(quick: bool) -> dict[str, Any]:
    from bench import echo

    result: dict[str, Any] = echo.main(quick=quick)
    return result


def _gui_stall() -> dict[str, Any]:
    from bench import gui_stall

    return gui_stall.measure()


if __name__ == "__main__":
    raise SystemExit(main())
