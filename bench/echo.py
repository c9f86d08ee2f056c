"""Echo cancellation benchmark: ERLE, convergence time, caller retention, CPU per frame.

The agent's voice (espeak-ng, the local agent's dialogue) plays through the
virtual device's echo path (``engine.devices.virtual.EchoPath``: delayed,
attenuated, low-passed) into the microphone; after a few seconds of echo
alone, an independent caller (another espeak-ng voice) talks over the agent
(double talk). ``engine.echo.EchoCanceller`` cancels the microphone frame by
frame, exactly as the audio process's canceller thread does. Measured, per
echo delay:

* ``erle_db``: echo return loss enhancement after convergence, dB: microphone
  energy over output energy from ``CONVERGED_S`` to the caller's first word.
* ``convergence_s``: seconds from the first echo until the ERLE of every later
  100 ms window with echo in it (above −40 dBFS: ``ACTIVE_DBFS``) stays ≥ 20 dB.
* ``residual_peak_dbfs``: the loudest 20 ms frame (RMS, dBFS) of the output
  while the echo is alone, from the first frame on: what the agent's voice
  detector (local agent: −40 dBFS) could mistake for the caller.
* ``erle_after_double_talk_db``: the same as ``erle_db`` once the caller has
  finished (the canceller did not diverge during double talk).
* ``caller_loss_db``: how much of the caller's energy the output lost during
  double talk, dB. The caller's part of the output is its least-squares
  projection on the caller's speech through an FIR of ``FIT_TAPS`` lags (the
  APM delays its output by up to 14 ms and changes its phase), so residual
  echo cannot pass for caller speech.
* ``echo_in_double_talk_db``: how far below the raw echo the echo's share of
  the output stays during double talk (same projection, on the echo).
* ``cpu_us``: wall time of one ``EchoCanceller.process`` call (reference,
  stream delay and microphone: three FFI calls), µs, median and p99.

Run: ``python -m bench.echo [--quick]``. Writes ``bench/results/echo.json``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from callctl.engine.echo import FRAME, EchoCanceller
from callctl.engine.ring import SAMPLE_RATE

RESULTS = Path(__file__).parent / "results"

AGENT_LINES = [
    "Hello, you are talking to the offline test agent. How can I help you today?",
    "I see. Tell me a little more about that, please.",
    "Thank you. I have made a note of it, and someone will get back to you soon.",
    "Is there anything else I can do for you?",
]
CALLER_LINE = "Hello, I would like to book a table for two people tonight please."
CALLER_VOICE = ("en-gb+f3", 150)
"""espeak-ng voice and words per minute of the caller: not the agent's voice."""
CALLER_AT_S = 7.0
"""When the caller starts talking over the agent, seconds."""
CONVERGED_S = 2.0
"""Start of the 'after convergence' measurement window, seconds."""
FIT_TAPS = 512
"""Lags of the least-squares FIR that finds a signal's share of the output (32 ms)."""
WINDOW_S = 0.1
ACTIVE_DBFS = -40.0
"""A 100 ms window counts for convergence when its echo is above this level (dBFS RMS):
loud enough for the local agent server's voice detector (-40 dBFS) to take it for
speech. Quieter windows would measure AEC3's comfort noise (about -62 dBFS while
it learns the noise floor), not residual echo."""
ERLE_TARGET_DB = 20.0


def energy(x: np.ndarray) -> float:
    """Sum of squares (int16 units squared)."""
    v = np.asarray(x, np.float64)
    return float(v @ v)


def db(ratio: float) -> float:
    """Power ratio in dB (+inf for a zero denominator)."""
    return float(10 * np.log10(ratio)) if ratio > 0 else float("-inf")


def erle_db(mic: np.ndarray, out: np.ndarray) -> float:
    """Microphone over output energy, dB (the ERLE where ``mic`` holds echo only)."""
    return db(energy(mic) / max(energy(out), 1.0))


def projection_energy(source: np.ndarray, out: np.ndarray, taps: int = FIT_TAPS) -> float:
    """Energy of the least-squares fit of ``out`` by ``source`` through an FIR of
    ``taps`` causal lags: the part of ``out`` that is ``source``, delayed and filtered.

    Solved with the normal equations on the full-signal auto- and cross-correlation
    (FFT), so it costs milliseconds for seconds of audio.
    """
    a = np.asarray(source, np.float64)
    b = np.asarray(out, np.float64)
    size = 1 << int(np.ceil(np.log2(2 * len(a))))
    fa, fb = np.fft.rfft(a, size), np.fft.rfft(b, size)
    auto = np.fft.irfft(fa * np.conj(fa), size)[:taps]
    cross = np.fft.irfft(fb * np.conj(fa), size)[:taps]
    lags = np.abs(np.arange(taps)[:, None] - np.arange(taps)[None, :])
    h = np.linalg.solve(auto[lags] + 1e-9 * auto[0] * np.eye(taps), cross)
    return float(h @ cross)


def convergence_s(mic: np.ndarray, out: np.ndarray, end: int,
                  target_db: float = ERLE_TARGET_DB) -> float | None:
    """Seconds from the first 100 ms window with echo (above ``ACTIVE_DBFS``) to the start of
    the window after the last one, before sample ``end``, whose ERLE is below ``target_db``.

    None if there is no echo at all.
    """
    w = round(WINDOW_S * SAMPLE_RATE)
    floor = (10 ** (ACTIVE_DBFS / 20) * 32768) ** 2 * w
    first: int | None = None
    settled: int | None = None
    for start in range(0, end - w + 1, w):
        m = energy(mic[start : start + w])
        if m < floor:
            continue
        if first is None:
            first = start
            settled = start
        if erle_db(mic[start : start + w], out[start : start + w]) < target_db:
            settled = start + w
    if first is None or settled is None:
        return None
    return (settled - first) / SAMPLE_RATE


def peak_frame_dbfs(x: np.ndarray, frame: int = 320) -> float:
    """RMS level of the loudest ``frame``-sample frame of ``x``, dBFS (−inf for silence)."""
    n = len(x) // frame * frame
    frames = np.asarray(x[:n], np.float64).reshape(-1, frame)
    power = float(np.max(np.mean(frames * frames, axis=1))) / 32768.0**2
    return 10 * float(np.log10(power)) if power > 0 else float("-inf")


def scenario() -> tuple[np.ndarray, np.ndarray, int, int]:
    """(agent speech, caller track, caller start, caller end): int16, whole frames."""
    from callctl.engine.agent_server.voice import Voice

    agent = Voice()
    gap = np.zeros(round(0.3 * SAMPLE_RATE), np.int16)
    far = np.concatenate([part for line in AGENT_LINES for part in (agent.render(line), gap)])
    caller = Voice(*CALLER_VOICE).render(CALLER_LINE)
    n = len(far) // FRAME * FRAME
    far = far[:n]
    start = round(CALLER_AT_S * SAMPLE_RATE)
    near = np.zeros(n, np.int16)
    part = caller[: n - start]
    near[start : start + len(part)] = part
    return far, near, start, start + len(part)


def measure(far: np.ndarray, near: np.ndarray, caller: tuple[int, int], delay_ms: float,
            gain_db: float = -6.0, lowpass_hz: float | None = 3400.0,
            noise_suppression: bool = False) -> dict[str, Any]:
    """One echo path: simulate, cancel frame by frame, measure (see module docstring).

    The result holds ``cpu_samples`` (seconds per frame, an array) for ``main`` to pool.
    """
    from callctl.engine.devices.virtual import EchoPath

    path = EchoPath(delay_ms / 1000, gain_db, lowpass_hz, SAMPLE_RATE, FRAME)
    mic, echo = path.run(far, near)
    canceller = EchoCanceller(stream_delay_ms=0, noise_suppression=noise_suppression)
    out = mic.copy()
    cpu = np.zeros(len(mic) // FRAME)
    for i, start in enumerate(range(0, len(mic), FRAME)):
        t = time.perf_counter()
        got = canceller.process(mic[start : start + FRAME], far[start : start + FRAME])
        cpu[i] = time.perf_counter() - t
        out[start : start + FRAME] = got
    begin, end = caller
    converged = round(CONVERGED_S * SAMPLE_RATE)
    after = min(len(mic), end + SAMPLE_RATE // 2)
    dt = slice(begin, end)
    caller_energy = energy(near[dt])
    return {
        "delay_ms": delay_ms, "gain_db": gain_db, "lowpass_hz": lowpass_hz,
        "noise_suppression": noise_suppression,
        "erle_db": round(erle_db(mic[converged:begin], out[converged:begin]), 1),
        "convergence_s": convergence_s(mic, out, begin),
        "residual_peak_dbfs": round(peak_frame_dbfs(out[:begin]), 1),
        "echo_peak_dbfs": round(peak_frame_dbfs(mic[:begin]), 1),
        "erle_after_double_talk_db": round(erle_db(mic[after:], out[after:]), 1),
        "caller_loss_db": round(-db(projection_energy(near[dt], out[dt]) / caller_energy), 2),
        "echo_in_double_talk_db": round(
            -db(projection_energy(echo[dt], out[dt]) / energy(echo[dt])), 1),
        "echo_to_caller_db": round(db(energy(echo[dt]) / caller_energy), 1),
        "cpu_us": {"median": round(float(np.median(cpu)) * 1e6, 1),
                   "p99": round(float(np.percentile(cpu, 99)) * 1e6, 1)},
        "cpu_samples": cpu,
    }


def main(quick: bool = False) -> dict[str, Any]:
    """Measure every delay (only 60 ms when ``quick``) with the audio process's default
    configuration (noise suppression on), and 60 ms without it; write ``echo.json``."""
    far, near, begin, end = scenario()
    delays = [60.0] if quick else [30.0, 60.0, 90.0, 120.0]
    cases = [measure(far, near, (begin, end), d, noise_suppression=True) for d in delays]
    cpu = np.concatenate([c.pop("cpu_samples") for c in cases]) * 1e6
    without_ns = measure(far, near, (begin, end), 60.0, noise_suppression=False)
    without_ns.pop("cpu_samples")
    result: dict[str, Any] = {
        "what": "WebRTC AEC3 + noise suppression + high-pass filter "
                "(livekit.rtc.AudioProcessingModule), 10 ms "
                "frames at 16 kHz, as the audio process runs it by default; agent speech "
                f"through the virtual echo path, caller double talk from {CALLER_AT_S} s",
        "quick": quick,
        "audio_s": round(len(far) / SAMPLE_RATE, 2),
        "summary": {
            "erle_db_min": min(c["erle_db"] for c in cases),
            "convergence_s_max": max((c["convergence_s"] or 0.0) for c in cases),
            "caller_loss_db_max": max(c["caller_loss_db"] for c in cases),
            "residual_peak_dbfs_max": max(c["residual_peak_dbfs"] for c in cases),
            "cpu_us_per_frame": {"median": round(float(np.median(cpu)), 1),
                                 "p99": round(float(np.percentile(cpu, 99)), 1),
                                 "frames": int(len(cpu))},
            "frame_budget_us": 10_000,
        },
        "cases": cases,
        "without_noise_suppression": without_ns,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "echo.json").write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m bench.echo", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="one echo delay (60 ms) only")
    print(json.dumps(main(parser.parse_args().quick), indent=2))
