"""Turn the benchmark's raw figures into bench/results/report.md and PNG plots."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def _fmt(s: dict[str, Any] | None, key: str = "median") -> str:
    if not s or s.get(key) is None:
        return "—"
    value = float(s[key])
    return f"{value / 1000:.2f} s" if value >= 10_000 else f"{value:.1f} ms"


def _dist(s: dict[str, Any] | None) -> str:
    if not s or not s.get("n"):
        return "—"
    return (f"median {_fmt(s)}, p90 {_fmt(s, 'p90')}, p99 {_fmt(s, 'p99')}, "
            f"max {_fmt(s, 'max')} (n={s['n']})")


def _ratio(a: dict[str, Any] | None, b: dict[str, Any] | None) -> str:
    if not a or not b or not a.get("median") or not b.get("median"):
        return "—"
    return f"{a['median'] / b['median']:.0f}×" if b["median"] > 0 else "—"


def plots(raw: dict[str, Any], out: Path) -> list[str]:
    """CDFs of hangup→silence and barge-in→silence, both systems; returns file names."""
    names = []
    for key, title in (("hangup_silence", "hangup → silence at the device"),
                       ("bargein_silence", "barge-in (interruption) → silence at the device")):
        fig, ax = plt.subplots(figsize=(7, 4), dpi=110)
        for system, label in (("sdk", "DefaultAudioInterface"), ("callctl", "callctl")):
            values = sorted(raw[system].get(key, []))
            if not values:
                continue
            ys = [(i + 1) / len(values) for i in range(len(values))]
            ax.step([max(v, 0.1) for v in values], ys, where="post", label=label)
        ax.set_xscale("log")
        ax.set_xlabel("milliseconds (log scale)")
        ax.set_ylabel("fraction of events")
        ax.set_title(title)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
        fig.tight_layout()
        name = f"{key}.png"
        fig.savefig(out / name)
        plt.close(fig)
        names.append(name)
    return names


def markdown(summary: dict[str, Any], plot_names: list[str]) -> str:
    c, s = summary["callctl"], summary["sdk"]
    rows = [
        ("Hang up → voice gone at the device (median)", _fmt(s["hangup_silence"]),
         _fmt(c["hangup_silence"]), _ratio(s["hangup_silence"], c["hangup_silence"])),
        ("Hang up → voice gone (p99)", _fmt(s["hangup_silence"], "p99"),
         _fmt(c["hangup_silence"], "p99"), ""),
        ("Barge-in → voice gone at the device (median)", _fmt(s["bargein_silence"]),
         _fmt(c["bargein_silence"]), _ratio(s["bargein_silence"], c["bargein_silence"])),
        ("Hang up → agent finished, cooperative service (median)", _fmt(s["session_ended"]),
         _fmt(c["reaped"]), ""),
        ("Hang up → agent finished, frozen service (median)",
         _fmt(s["stalled_session_ended"]) if s["stalled_session_ended"].get("n")
         else f"not within {summary['stall_bound_s']:.0f} s",
         _fmt(c["stalled_reaped"]), ""),
        ("Call start → first agent audio (standby / cold)", _fmt(s["start"]),
         f"{_fmt(c['start'])} / {_fmt(c['cold_start'])}", ""),
    ]
    gui = summary.get("gui_stall_ms")
    if gui:
        rows.append(("GUI: longest event-loop stall during a hangup (own / wall)", "—",
                     f"{gui['hangup_max_own_ms']:.1f} / {gui['hangup_max_gap_ms']:.1f} ms", ""))
    long = summary["long_call"]
    lines = [
        "# callctl vs the elevenlabs SDK's DefaultAudioInterface",
        "",
        f"Measured {summary['when']} on this machine ({summary['machine']}), in one run of "
        f"`make bench`{' --quick' if summary['quick'] else ''}.",
        "",
        "| action | DefaultAudioInterface | callctl | ratio |",
        "|---|---|---|---|",
        *[f"| {a} | {b} | {c_} | {r} |" for a, b, c_, r in rows],
        "",
        "## Distributions",
        "",
        f"* hangup → silence, callctl: {_dist(c['hangup_silence'])}",
        f"* hangup → silence, DefaultAudioInterface: {_dist(s['hangup_silence'])}",
        f"* barge-in → silence, callctl: {_dist(c['bargein_silence'])}",
        f"* barge-in → silence, DefaultAudioInterface: {_dist(s['bargein_silence'])}",
        f"* callctl engine's own first silent period: {_dist(c['engine_silent'])}",
        f"* hangup → agent reaped, callctl, cooperative: {_dist(c['reaped'])}",
        f"* hangup → agent reaped, callctl, frozen service: {_dist(c['stalled_reaped'])}",
        f"* SDK `end_session()` returned: {_dist(s['stop_returned'])}",
        f"* SDK `end_session()` + `wait_for_session_end()`, cooperative: "
        f"{_dist(s['session_ended'])}",
        f"* SDK, frozen service: {_dist(s['stalled_session_ended'])}; "
        f"{summary['sdk_stall_unfinished']} of {summary['stall_calls']} still not ended after "
        f"{summary['stall_bound_s']:.0f} s",
        f"* call start, callctl with the standby agent process: {_dist(c['start'])}",
        f"* call start, callctl cold (agent process spawned at the call): "
        f"{_dist(c['cold_start'])}",
        f"* call start, SDK (session start → first audio): {_dist(s['start'])}",
        "",
        f"Long call: {long['seconds']:.0f} s with {long['busy_processes']} other processes "
        f"keeping every core busy: xruns {long['xruns']}; audio process CPU "
        f"{long['audio_cpu_percent']}% of one core, RSS at most {long['audio_rss_mb_max']} MB.",
        "",
        *[f"![{n}]({n})" for n in plot_names],
        "",
        "## How each figure was measured",
        "",
        "* **Rig.** Each system gets a private PulseAudio daemon (`engine/soundserver.py`) "
        "with two null sinks at 16 kHz, 5 ms render blocks: the speaker and the microphone. "
        "Both systems reach it through PortAudio's ALSA `pulse` device, and both talk to the "
        "same local agent server program (`callctl agent-server`) through the real "
        "`elevenlabs` SDK. callctl runs as `callctl serve --device pulse`; the baseline is the "
        "SDK's `Conversation` with `DefaultAudioInterface`, unmodified "
        "(`bench/sdk_baseline.py`; the subclass only notes when `interrupt()` is called).",
        "* **Voice gone at the device** is read by an external observer: `parec` records the "
        "speaker sink's monitor, every chunk time-stamped; the figure is the time of the last "
        "sample above −60 dBFS minus the moment the hangup was sent (callctl: the `hangup` "
        "request; the SDK: the call to `end_session()`). Hangups fall at a random moment "
        "0.3–1.5 s into the agent's greeting.",
        "* **Barge-in**: 0.8 s into the greeting, caller speech is played into the "
        "microphone sink; the service sends `interruption`. The figure runs from the moment "
        "the client acted on it (callctl: the agent process's flush, event `agent` with "
        "`kind: interruption`; the SDK: its `interrupt()` call) to the last sample above "
        "−60 dBFS before the agent's next line.",
        "* **Agent finished**: callctl: the `call.ended` event's `agent_exited_ms` (the agent "
        "process reaped; SIGKILL at 2.0 s). The SDK: `end_session()` then "
        "`wait_for_session_end()` in a watchdog thread. *Frozen service*: the agent server's "
        "`--fault stall` (it stops reading and writing, close handshake included).",
        "* **Call start**: request (callctl: `call`; the SDK: `start_session()`) → first "
        "sample of the greeting heard by the observer.",
        "* **GUI stall**: the real window offscreen (`bench/gui_stall.py`), its own "
        "controller on the virtual device; a 1 ms Qt timer; the longest gap between ticks "
        "from the Hang up press until the window shows Ready. *Own* leaves out the time the "
        "kernel kept the GUI thread waiting for a CPU (`/proc/self/task/TID/schedstat`), "
        "*wall* is the raw gap.",
        "* **Long call**: one call with one busy-looping process per core; xruns are the "
        "audio process's counters (`device`: periods with PortAudio status flags; "
        "`playback_underruns`: reads that ran out part-way through a period); CPU from "
        "/proc/PID/stat, RSS from /proc/PID/status.",
        "",
        "* **Bounds.** A sound still going 10 s after the hangup (or interruption) is "
        "recorded at the bound (9.8 s after the 0.2 s look-back): such figures are lower "
        "bounds. DefaultAudioInterface's hangups hit it because its blocking writes have already "
        "queued the greeting in the sound server, and neither `interrupt()` (a Python queue) "
        "nor `stop()` (which closes its stream) takes back what the server holds.",
        "",
        "Raw figures: `bench.json` beside this file.",
    ]
    if summary.get("echo"):
        e = summary["echo"]["summary"]
        cpu = e["cpu_us_per_frame"]
        at = lines.index("## How each figure was measured")
        lines[at:at] = [
            "## Echo cancellation", "",
            f"Agent speech through a delayed (30–120 ms), attenuated (−6 dB), low-passed echo "
            f"path, a caller talking over it: echo return loss enhancement after convergence "
            f"at least {e['erle_db_min']} dB, converged within {e['convergence_s_max']} s, "
            f"the caller loses at most {e['caller_loss_db_max']} dB in double talk; CPU per "
            f"10 ms frame median {cpu['median']} µs, p99 {cpu['p99']} µs (budget 10,000 µs). "
            "From `bench/echo.py` (`bench/results/echo.json`).", ""]
    return "\n".join(lines) + "\n"
