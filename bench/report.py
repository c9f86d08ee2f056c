"""Turn the benchmark's figures into bench/results/report.md and PNG plots.

Every number in the report comes from ``summary`` (computed by ``bench.run``
from the raw figures); every other sentence describes the procedure. Nothing
here explains a result: a verdict column compares the figures, no more.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from bench.procedure import CLICK_BOUND_DB  # noqa: E402
from testing.stalls import MACHINE_STALL_S  # noqa: E402

SYSTEMS = (("callctl", "callctl"), ("sdk", "SDK DefaultAudioInterface"),
           ("pipecat", "Pipecat LocalAudioTransport"))


def fmt_ms(value: float | None) -> str:
    if value is None:
        return "—"
    return f"{value / 1000:.2f} s" if value >= 10_000 else f"{value:.1f} ms"


def dist(s: dict[str, Any] | None, unit: str = "ms") -> str:
    """``median M, p90 …, p99 …, max … (n=N)``, or — for no data."""
    if not s or not s.get("n"):
        return "—"
    f = fmt_ms if unit == "ms" else (lambda v: f"{v:.1f} dB")
    return (f"median {f(s['median'])}, p90 {f(s['p90'])}, p99 {f(s['p99'])}, "
            f"max {f(s['max'])} (n={s['n']})")


def cell(s: dict[str, Any] | None, unit: str = "ms") -> str:
    """A table cell: median / p99 (dB rows: median / worst)."""
    if not s or not s.get("n"):
        return "—"
    if unit == "dB":
        return f"{s['median']:.1f} / {s['max']:.1f} dB"
    return f"{fmt_ms(s['median'])} / {fmt_ms(s['p99'])}"


def verdict(figures: dict[str, dict[str, Any] | None], lower_is_better: bool = True) -> str:
    """callctl against the best peer on the median and the p99: ahead, level or behind.

    "level" when the medians are within 5 % or 1 unit of each other.
    """
    ours = figures.get("callctl")
    peers = {k: v for k, v in figures.items() if k != "callctl" and v and v.get("n")}
    if not ours or not ours.get("n") or not peers:
        return "—"
    words = []
    for key in ("median", "p99"):
        mine = float(ours[key])
        best_key, best = min(((k, float(v[key])) for k, v in peers.items()),
                             key=lambda kv: kv[1] if lower_is_better else -kv[1])
        close = abs(mine - best) <= max(1.0, 0.05 * abs(best))
        better = mine < best if lower_is_better else mine > best
        word = "level" if close else ("ahead" if better else "behind")
        words.append(f"{key} {word}")
    return ", ".join(words)


def plots(raw: dict[str, Any], out: Path) -> list[str]:
    """CDFs of hangup→silence, barge-in→silence and the click figure; returns file names."""
    names = []
    for key, title, log in (("hangup_silence", "hangup → silence at the device", True),
                            ("bargein_silence", "barge-in → silence at the device", True),
                            ("hangup_click_db", "click at hangup (last 1 ms vs 10 ms before)",
                             False)):
        fig, ax = plt.subplots(figsize=(7, 4), dpi=110)
        for system, label in SYSTEMS:
            values = sorted(raw.get(system, {}).get(key, []))
            if not values:
                continue
            ys = [(i + 1) / len(values) for i in range(len(values))]
            xs = [max(v, 0.1) for v in values] if log else values
            ax.step(xs, ys, where="post", label=label)
        if log:
            ax.set_xscale("log")
            ax.set_xlabel("milliseconds (log scale)")
        else:
            ax.set_xlabel("dB")
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


def _row(title: str, s: dict[str, Any], key: str, unit: str = "ms",
         lower_is_better: bool = True) -> str:
    figures = {k: s[k].get(key) for k, _ in SYSTEMS}
    cells = " | ".join(cell(figures[k], unit) for k, _ in SYSTEMS)
    return f"| {title} | {cells} | {verdict(figures, lower_is_better)} |"


STALL_MS = MACHINE_STALL_S * 1000
"""The shortest stall ``MachineStalls.during`` reports, ms."""

FADE_KEYS = ("late", "queued_frames", "hold_frames", "fade_frames", "tail_db", "ending_db",
             "left_before_ms", "deferred")
"""What the report shows of callctl's own account of a fade (``PulseDevice.fade_info``)."""


def loud_hangups(c: dict[str, Any]) -> str:
    """callctl's hangups above the click bound, each with the engine's account of its fade,
    and how many fades the engine itself said may have landed late."""
    loud = c.get("loud_hangups") or []
    head = (f"* callctl hangups whose click was above {CLICK_BOUND_DB:.0f} dB: {len(loud)}; "
            f"fades the engine said may have landed late (`late`): "
            f"{c.get('late_device_fades', 0)}")
    rows = []
    for h in loud:
        fade = h.get("device_fade") or {}
        account = ", ".join(f"{k} {fade[k]}" for k in FADE_KEYS if k in fade) or "none"
        rows.append(f"  * {h['click_db']:.1f} dB, silence {h['silence_ms']:.1f} ms, largest "
                    f"step {h['tail_step']} (the voice's own {h['before_step']}); the engine's "
                    f"fade: {account}; the machine around it: "
                    f"{h.get('machine_stalls') or f'no stall of {STALL_MS:.0f} ms or more'}")
    return "\n".join([head, *rows])


def machine_stalls(s: dict[str, Any]) -> str:
    """How many counted hangups of each system came with a stall of the machine around
    them (``testing.stalls``), and callctl's slowest two with theirs."""
    counts = ", ".join(f"{label} {s[k].get('hangups_near_stall', 0)} of "
                       f"{s[k]['hangup_silence'].get('n', 0)}" for k, label in SYSTEMS)
    slow = "; ".join(f"{h['silence_ms']:.1f} ms ({h['machine_stalls'] or 'no stall'})"
                     for h in s["callctl"].get("slowest_hangups", []))
    return (f"* Hangups with a stall of the machine of {STALL_MS:.0f} ms or more from 0.1 s "
            f"before to 0.3 s after them (`testing.stalls`, a real-time thread that sleeps "
            f"1 ms and wakes late): {counts}. callctl's slowest: {slow or '—'}.")


def markdown(summary: dict[str, Any], plot_names: list[str]) -> str:
    s = summary["systems"]
    c = s["callctl"]
    cpu = {k: s[k].get("cpu_percent") for k, _ in SYSTEMS}
    cpu_cells = " | ".join("—" if cpu[k] is None else f"{cpu[k]:.1f} %" for k, _ in SYSTEMS)
    peers_cpu = [v for k, v in cpu.items() if k != "callctl" and v is not None]
    cpu_verdict = ("—" if cpu["callctl"] is None or not peers_cpu else
                   "ahead" if cpu["callctl"] < min(peers_cpu) else "behind")
    stall = summary["frozen"]
    header = " | ".join(label for _, label in SYSTEMS)
    lines = [
        "# callctl, the elevenlabs SDK's DefaultAudioInterface and Pipecat, side by side",
        "",
        f"Measured {summary['when']} on this machine ({summary['machine']}), in one run of "
        f"`make bench`{' --quick' if summary['quick'] else ''} "
        f"({summary['duration_s'] / 60:.1f} min). Cells are median / p99 unless they say "
        "otherwise; the last column compares callctl with the better peer.",
        "",
        f"| figure | {header} | callctl vs the better peer |",
        "|---|---|---|---|---|",
        _row("Hang up → voice gone at the device", s, "hangup_silence"),
        _row("Click at hangup, dB (median / worst)", s, "hangup_click_db", "dB"),
        _row("Barge-in → voice gone at the device", s, "bargein_silence"),
        _row("Click at barge-in, dB (median / worst)", s, "bargein_click_db", "dB"),
        _row("Hang up → agent finished, cooperative service", s, "agent_done"),
        _row("Call start → first agent audio at the device", s, "start"),
        f"| CPU of the audio process during a call, % of one core | {cpu_cells} | "
        f"{cpu_verdict} |",
        "| The system's own process died of a hangup | " + " | ".join(
            f"{s[k].get('crashed_on_hangup', 0)} of {s[k].get('hangups_sent', 0)}"
            for k, _ in SYSTEMS) + " | |",
        "",
        "Hang up → agent finished with a frozen service (the agent server's `--fault stall`) "
        "compares different things, so it stands apart: callctl's figure is the agent "
        "process reaped (killed at its 2.0 s bound); the SDK's is `end_session()` + "
        f"`wait_for_session_end()`, bounded here at {stall['bound_s']:.0f} s; Pipecat talks "
        "to no service. callctl: " + dist(stall["callctl"]) + "; SDK: " + dist(stall["sdk"])
        + f"; SDK sessions not ended within the bound: {stall['sdk_unfinished']} of "
        f"{stall['calls']}.",
        "",
        "## Distributions",
        "",
    ]
    for key, title, unit in (("hangup_silence", "hangup → silence", "ms"),
                             ("hangup_click_db", "click at hangup", "dB"),
                             ("bargein_silence", "barge-in → silence", "ms"),
                             ("bargein_click_db", "click at barge-in", "dB"),
                             ("agent_done", "hangup → agent finished, cooperative", "ms"),
                             ("start", "call start → first audio", "ms"),
                             ("tail_step_ratio", "largest sample step in the 20 ms before "
                              "silence / in the 50 ms before the hangup", "x")):
        for system, label in SYSTEMS:
            figure = s[system].get(key)
            text = dist(figure, unit) if unit != "x" else (
                "—" if not figure or not figure.get("n") else
                f"median {figure['median']:.2f}, max {figure['max']:.2f} (n={figure['n']})")
            lines.append(f"* {title}, {label}: {text}")
    for system, label in SYSTEMS:
        if s[system].get("crashed_on_hangup"):
            lines.append(f"* hangup → silence, {label}, only the hangups its process survived: "
                         + dist(s[system].get("hangup_silence_survived")))
    lines += [""]
    for system, label in SYSTEMS:
        r = s[system]
        pauses = ", ".join(f"{p:.2f}" for p in r.get("greeting_pauses_s") or []) or "none"
        lines.append(f"* {label}: {r['redone_in_pause']} events redone because the observer "
                     "heard no speech in the 10 ms before them, or no sound at all after them, or "
                     "the greeting paused by itself "
                     f"right after them (its pauses, s after its first sound: {pauses}); "
                     f"{r['given_up']} offsets given "
                     f"up after {summary['max_redos']} tries; CPU measured over "
                     f"{r.get('cpu_seconds') or 0:.0f} s.")
    lines += ["", loud_hangups(c), machine_stalls(s)]
    lines += [
        f"* callctl, cold start (no standby agent process): {dist(c.get('cold_start'))}",
        f"* callctl agent processes killed at the 2 s bound, cooperative service: "
        f"{c.get('agent_killed', 0)}",
    ]
    long = summary.get("long_call")
    if long:
        lines += [
            "",
            f"Long call (callctl, backend `{long.get('backend')}`): {long['seconds']:.0f} s "
            f"with {long['busy_processes']} other processes keeping every core busy: device "
            f"xruns {long['xruns'].get('device')}, playback underruns "
            f"{long['xruns'].get('playback_underruns')}, capture overruns "
            f"{long['xruns'].get('capture_overruns')}; audio process CPU "
            f"{long['audio_cpu_percent']} % of one core, RSS at most "
            f"{long['audio_rss_mb_max']} MB.",
        ]
        dev = long.get("device_status") or {}
        if dev:
            lines += [
                "",
                f"The device's own account of that call: the server reported the playback "
                f"stream dry {dev.get('device_underruns')} times; the latest a period's write "
                f"left after its microphone was due: {dev.get('late_max_ms')} ms (the queue "
                f"after each write was {dev.get('queue_ms')} ms as the call started and had "
                f"grown by {dev.get('queue_grown_ms')} ms of silence at its end: its slack is "
                f"that less the period); the longest time between "
                f"two periods: {dev.get('wake_gap_max_ms')} ms; period "
                f"{dev.get('period_frames')} frames.",
            ]
        stalls = long.get("machine_stalls")
        if stalls:
            near = ", ".join("none" if m is None else str(m)
                             for m in stalls["stall_before_each_underrun_ms"]) or "no underruns"
            lines += [
                "",
                f"The machine's own stalls meanwhile (`testing.stalls.StallWatch`: a thread "
                f"of another process at {stalls['watcher']} that sleeps 1 ms at a time, "
                f"which busy processes cannot hold up): {stalls['count']} wake-ups 5 ms or "
                f"more late, {stalls['over_20_ms']} of them 20 ms or more, the longest "
                f"{stalls['longest_ms']} ms. The longest stall that ended in the 0.2 s "
                f"before each device underrun, ms (none: no stall): "
                f"{near}.",
            ]
        waits = long.get("server_waits")
        if waits:
            threads = "; ".join(
                f"`{name}` {w['over_2_ms']} times 2 ms or more, {w['over_5_ms']} of them 5 ms "
                f"or more, the most {w['longest_ms']} ms"
                for name, w in sorted(waits["threads"].items())) or "none"
            def before_one(b: dict[str, Any]) -> str:
                held = "no server wait" if b["ms"] is None else f"{b['ms']} ({b['thread']})"
                stolen = ", ".join(f"{cpu} {ms}" for cpu, ms in sorted(b["steal_ms"].items()))
                return f"{held}, stolen {stolen or 'none'}"

            before = "; ".join(before_one(b) for b in waits["before_each_underrun"]) \
                or "no underruns"
            lines += [
                "",
                "The sound server held up meanwhile (the same watcher reads the server's "
                "threads' run delay, the time runnable but not running, and each CPU's "
                "stolen time, when the virtual machine's host did not run it, `(steal)`, "
                f"every 4 ms): {threads}. In the 0.2 s before each device underrun, the "
                f"most any server thread waited in a reading and each CPU's stolen time, "
                f"ms: {before}.",
            ]
    gui = summary.get("gui_stall_ms")
    if gui:
        lines += ["", f"GUI: the longest event-loop stall from the Hang up press to Ready: "
                      f"{gui['hangup_max_own_ms']:.1f} ms own, {gui['hangup_max_gap_ms']:.1f} ms "
                      "wall (`bench/gui_stall.py`)."]
    if summary.get("echo"):
        e = summary["echo"]["summary"]
        ecpu = e["cpu_us_per_frame"]
        lines += [
            "", "## Echo cancellation", "",
            f"Agent speech through a delayed (30–120 ms), attenuated (−6 dB), low-passed echo "
            f"path, a caller talking over it: echo return loss enhancement after convergence "
            f"at least {e['erle_db_min']} dB, converged within {e['convergence_s_max']} s, "
            f"the caller loses at most {e['caller_loss_db_max']} dB in double talk; CPU per "
            f"10 ms frame median {ecpu['median']} µs, p99 {ecpu['p99']} µs (budget 10,000 µs). "
            "From `bench/echo.py` (`bench/results/echo.json`).",
        ]
    lines += [
        "",
        *[f"![{n}]({n})" for n in plot_names],
        "",
        "## The procedure (the same for every system)",
        "",
        "* **Rig.** Each system gets its own private PulseAudio daemon (`testing/pulse.py`) "
        "with two null sinks at 16 kHz and 5 ms render blocks, the speaker and the microphone, "
        "and an external observer: `parec` recording the speaker sink's monitor, every chunk "
        "time-stamped (`PlaybackObserver`). callctl runs as `callctl serve --device pulse`; "
        "the SDK baseline is its `Conversation` with `DefaultAudioInterface`, unmodified "
        "(`bench/sdk_baseline.py`); Pipecat 1.14 runs a pipeline ending in "
        "`LocalAudioTransport` (input and output enabled) in its own venv "
        "(`bench/pipecat_baseline.py`). The SDK and Pipecat reach the server through "
        "PortAudio's default ALSA device, as their users' programs would. callctl and the SDK "
        "talk to the same local agent server program (`callctl agent-server`); Pipecat, which "
        "has no client for that service, pushes the same greeting, rendered by the same "
        "espeak-ng voice, as output audio frames.",
        "* **One call at a time** (`bench/procedure.py`), after one call per system that is "
        "not counted, heard whole: a warm-up, and where the greeting pauses by itself "
        f"({summary.get('pause_ms', 20):g} ms or more under −60 dBFS). Before each call the "
        "observer must "
        "have heard 0.5 s of silence. The call start figure is the request → the first "
        "sample above −60 dBFS the observer hears.",
        f"* **Hangups** ({summary['hangups']} per system) happen at the same offsets after "
        "the first sound for every system, spread evenly over "
        f"{summary['hangup_window'][0]}–{summary['hangup_window'][1]} s of the greeting; at "
        "each offset the driver waits (at most 1 s) until the observer hears speech. callctl "
        "hangs up with the `hangup` request, the SDK with `end_session()`, Pipecat with "
        f"`PipelineTask.cancel()`. An event whose 10 ms before it peak below "
        f"{summary.get('speech_dbfs', -40.0):g} dBFS fell into a pause, and so did one "
        "followed by no sound at all (0 ms to silence), and one "
        "from 10 ms before the greeting's own pause to "
        f"{summary.get('natural_end_ms', 25):g} ms after it (the voice stops there with no "
        "system acting): it is redone, never counted, at most "
        f"{summary['max_redos']} tries per offset, each moved by "
        f"{summary.get('redo_shift_s', 0.13):g} s more, later then earlier. (The click "
        "figure needs that level: the last millisecond before silence is above −60 dBFS by "
        "definition, so with a reference under −40 dBFS no fade could show −20 dB.)",
        "* **Voice gone** is the last sample above −60 dBFS before the first gap of at least "
        "0.4 s after the hangup, found in the recording (`testing/measure.py`); nothing after "
        "that gap can extend it. **Click**: the peak of the last 1 ms before that silence over "
        "the peak of the 10 ms before the hangup, in dB; a fade that reached the speaker gives "
        "−20 dB or less, a hard cut about 0 dB.",
        f"* **Barge-ins** ({summary['bargeins']} per system, offsets spread over "
        f"{summary['bargein_window'][0]}–{summary['bargein_window'][1]} s): callctl and the SDK "
        "hear caller speech played into the microphone sink, the service sends `interruption`, "
        "and the figure starts when the client acted on it (callctl: the agent process's "
        "flush, event `agent` with `kind: interruption`; the SDK: its `interrupt()` call); "
        "Pipecat gets its interruption frame at the offset. Same silence and click rules.",
        "* **Agent finished**: callctl: the agent process reaped (`call.ended`'s "
        "`agent_exited_ms`, rebased to the moment the hangup was sent); the SDK: "
        "`end_session()` then `wait_for_session_end()` returned; Pipecat: the pipeline task "
        "finished after `cancel()`.",
        f"* **CPU**: user + system time of the process doing the audio (callctl's audio "
        f"process; the SDK's and Pipecat's own process) over {summary['cpu_seconds']:.0f} s of "
        "a call from its first sound, from /proc/PID/stat, as % of one core; callctl with "
        "echo cancellation on.",
        "* **Long call**: one callctl call with one busy-looping process per core; xruns are "
        "the audio process's counters; CPU from /proc/PID/stat, RSS from /proc/PID/status.",
        "",
        "Raw figures: `bench.json` beside this file.",
    ]
    return "\n".join(lines) + "\n"


README_BEGIN = "<!-- bench:begin (written by `make bench` from bench/results/bench.json) -->"
README_END = "<!-- bench:end -->"


def readme_block(summary: dict[str, Any]) -> str:
    """The README's figures: the report's main table, from the same summary."""
    s = summary["systems"]
    header = " | ".join(label for _, label in SYSTEMS)
    cpu = " | ".join("—" if s[k].get("cpu_percent") is None else f"{s[k]['cpu_percent']:.1f} %"
                     for k, _ in SYSTEMS)
    lines = [
        README_BEGIN,
        f"Measured {summary['when']} by `make bench`{' --quick' if summary['quick'] else ''}, "
        "every system by the same procedure, with an external observer on the speaker "
        "([bench/results/report.md](bench/results/report.md)); median / p99:",
        "",
        f"| figure | {header} |",
        "|---|---|---|---|",
        *[f"| {title} | " + " | ".join(cell(s[k].get(key), unit) for k, _ in SYSTEMS) + " |"
          for title, key, unit in (
              ("hang up → voice gone at the device", "hangup_silence", "ms"),
              ("click at hangup (median / worst)", "hangup_click_db", "dB"),
              ("barge-in → voice gone", "bargein_silence", "ms"),
              ("click at barge-in (median / worst)", "bargein_click_db", "dB"),
              ("hang up → agent finished", "agent_done", "ms"),
              ("call start → first agent audio", "start", "ms"))],
        f"| CPU of the audio process, % of a core | {cpu} |",
        README_END,
    ]
    return "\n".join(lines)


def update_readme(readme: Path, summary: dict[str, Any]) -> None:
    """Replace the block between the README's bench markers (it must have them)."""
    text = readme.read_text()
    start, end = text.index(README_BEGIN), text.index(README_END) + len(README_END)
    readme.write_text(text[:start] + readme_block(summary) + text[end:])
