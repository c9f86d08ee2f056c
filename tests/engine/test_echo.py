"""Echo cancellation: the agent must not hear itself, and the caller must still be heard.

Three levels: the canceller alone on a simulated echo path (the virtual
device's ``EchoPath``: delayed 30–120 ms, attenuated, low-passed, plus an
independent caller talking over the agent); the audio process on the virtual
device with ``--echo`` (capture ring against the recording's raw microphone);
and a whole call with the local agent through the controller, where without
cancellation the agent interrupts itself.
"""

from __future__ import annotations

import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from bench.echo import (
    CONVERGED_S,
    convergence_s,
    energy,
    erle_db,
    projection_energy,
    scenario,
)
from callctl.engine.agent_server.voice import Voice
from callctl.engine.audio_child import AudioProcess
from callctl.engine.devices.virtual import EchoPath
from callctl.engine.echo import FRAME, EchoCanceller, EchoThread, InlineEcho, _DirectApm
from callctl.engine.ring import CAPTURE_CHUNK_FRAMES, AudioRing
from callctl.engine.wavfile import read_wav

RATE = 16_000


@pytest.fixture(scope="module")
def dialogue() -> tuple[np.ndarray, np.ndarray, int, int]:
    """(agent speech, caller track, caller start, caller end): the agent talks for 16 s,
    the caller (another voice) talks over it from 7 s for 4.5 s."""
    return scenario()


def db(ratio: float) -> float:
    return float(10 * np.log10(ratio))


# -- the virtual device's echo path ---------------------------------------------------------


def test_echo_path_is_delayed_attenuated_and_low_passed() -> None:
    t = np.arange(RATE) / RATE
    played = np.zeros(RATE, np.int16)
    played[1000] = 10_000  # a click
    mic, echo = EchoPath(0.06, -6, 3400, RATE, 160).run(played, np.zeros(RATE, np.int16))
    assert int(np.argmax(np.abs(echo))) == 1000 + 960, "main peak 60 ms later"
    assert np.array_equal(mic, np.clip(np.rint(echo), -32768, 32767).astype(np.int16))
    # Gain: -6 dB at low frequencies; the low-pass takes 6 kHz down by more than 30 dB.
    for freq, want_db in ((300, -6.0), (6000, -36.0)):
        tone = (8000 * np.sin(2 * np.pi * freq * t)).astype(np.int16)
        _, e = EchoPath(0.06, -6, 3400, RATE, 160).run(tone, np.zeros(RATE, np.int16))
        got = db(energy(e[RATE // 2 :]) / energy(tone[RATE // 2 :]))
        assert (abs(got - want_db) < 0.5) if freq == 300 else got < want_db, (freq, got)


def test_echo_path_without_filter_is_an_exact_delay_of_at_least_one_period() -> None:
    played = (np.arange(3200) % 200 - 100).astype(np.int16)
    for delay_s, period, want in ((0.030, 160, 480), (0.001, 160, 160), (0.0, 256, 256)):
        path = EchoPath(delay_s, 0.0, None, RATE, period)
        n = len(played) // period * period
        mic, _ = path.run(played[:n], np.zeros(n, np.int16))
        assert path.delay == want
        assert np.array_equal(mic[want:], played[: n - want]) and not mic[:want].any()


# -- the canceller on a simulated echo path -----------------------------------------------


@pytest.mark.parametrize(("delay_ms", "gain_db"), [(30, -6), (60, -6), (60, 0), (90, -6),
                                                   (120, -6)])
def test_canceller_removes_the_echo_and_keeps_the_caller(
        dialogue: tuple[np.ndarray, np.ndarray, int, int], delay_ms: int, gain_db: float
) -> None:
    far, near, begin, end = dialogue
    mic, echo = EchoPath(delay_ms / 1000, gain_db, 3400, RATE, FRAME).run(far, near)
    out = EchoCanceller(stream_delay_ms=0).process_signal(mic, far)

    # Echo alone, after convergence: at least 20 dB of echo return loss enhancement.
    settled = round(CONVERGED_S * RATE)
    assert erle_db(mic[settled:begin], out[settled:begin]) >= 20
    converged = convergence_s(mic, out, begin)
    assert converged is not None and converged <= CONVERGED_S
    # Double talk: the caller keeps most of its energy. Its share of the output is
    # found by least squares through a 32 ms FIR, as the APM delays and filters
    # (residual echo cannot count as caller speech). Measured: 2.5-3.2 dB lost, by
    # AEC3's suppressor while both talk (alone the caller loses 0.3 dB). 6 dB still
    # leaves a quarter of its energy: the caller (-21 dBFS) stays 13 dB above the
    # local agent's -40 dBFS voice threshold.
    dt = slice(begin, end)
    caller_loss = -db(projection_energy(near[dt], out[dt]) / energy(near[dt]))
    assert caller_loss < 6.0, caller_loss
    # ... while the echo under it is still held well down (measured 15-20 dB).
    assert -db(projection_energy(echo[dt], out[dt]) / energy(echo[dt])) >= 10
    # The canceller did not diverge during double talk: echo alone again afterwards.
    after = end + RATE // 2
    assert erle_db(mic[after:], out[after:]) >= 20


def test_caller_alone_passes_almost_untouched(
        dialogue: tuple[np.ndarray, np.ndarray, int, int]) -> None:
    _, near, begin, end = dialogue
    silence = np.zeros_like(near)
    out = EchoCanceller().process_signal(near, silence)
    loss = -db(projection_energy(near[begin:end], out[begin:end]) / energy(near[begin:end]))
    assert loss < 1.0, loss  # measured 0.3 dB (1.5 dB with noise suppression)


def test_echo_thread_buffers_odd_periods_into_10_ms_frames() -> None:
    """Periods of 100 frames (not 160): the thread still cancels exact 10 ms frames,
    in order, and writes exactly what came in to the capture ring."""
    far = Voice().render("Hello, you are talking to the offline test agent.")
    n = len(far) // 100 * 100
    far = far[:n]
    mic, _ = EchoPath(0.06, -6, 3400, RATE, 100).run(far, np.zeros(n, np.int16))
    with AudioRing.create(1 << 17) as capture:
        thread = EchoThread(capture, EchoCanceller(), max_period_frames=100)
        try:
            for start in range(0, n, 100):
                thread.feed(mic[start : start + 100], far[start : start + 100])
                time.sleep(0.0005)  # slower than the thread, faster than real time
            whole = n // FRAME * FRAME
            deadline = time.monotonic() + 10
            while capture.available() < whole and time.monotonic() < deadline:
                time.sleep(0.01)
            out = np.zeros(capture.available(), np.int16)
            capture.read_into(out)
            stats = thread.stats()
        finally:
            thread.close()
    assert len(out) == whole, "every whole 10 ms frame, and nothing else"
    assert stats["frames"] == whole // FRAME and stats["dropped_periods"] == 0
    assert stats["error"] is None and stats["cpu_us_median"] > 0
    settled = RATE
    assert erle_db(mic[settled:whole], out[settled:]) >= 20


def test_inline_echo_cancels_in_batches_on_the_callers_thread() -> None:
    """The same 100-frame periods through ``InlineEcho``: nothing reaches the capture
    ring until a batch of 10 ms frames is whole, then the batch, cancelled, in order."""
    far = Voice().render("Hello, you are talking to the offline test agent.")
    n = len(far) // 100 * 100
    far = far[:n]
    mic, _ = EchoPath(0.06, -6, 3400, RATE, 100).run(far, np.zeros(n, np.int16))
    with AudioRing.create(1 << 17) as capture:
        inline = InlineEcho(capture, EchoCanceller(), batch=4)
        inline.feed(mic[:100], far[:100])
        assert capture.available() == 0, "a partial batch waits"
        for start in range(100, n, 100):
            inline.feed(mic[start : start + 100], far[start : start + 100])
        out = np.zeros(capture.available(), np.int16)
        capture.read_into(out)
        stats = inline.stats()
    whole = n // (4 * FRAME) * 4 * FRAME
    assert len(out) == whole, "every whole batch, and nothing else"
    assert stats["frames"] == whole // FRAME and stats["error"] is None
    assert erle_db(mic[RATE:whole], out[RATE:]) >= 20


def test_frames_in_c_are_the_frames_in_python_bit_for_bit(
        dialogue: tuple[np.ndarray, np.ndarray, int, int]) -> None:
    """``cancel_frames`` runs the frames in C (``engine/echo_batch.c``, built with the
    package); the same frames one at a time through ``process`` give the same samples."""
    far, near, _, _ = dialogue
    mic, _ = EchoPath(0.06, -6, 3400, RATE, FRAME).run(far, near)
    n = 3 * RATE // (10 * FRAME) * 10 * FRAME  # 3 s of whole 10-frame batches
    one_by_one = EchoCanceller(noise_suppression=True).process_signal(mic[:n], far[:n])
    in_c = EchoCanceller(noise_suppression=True)
    assert in_c._direct is not None and in_c._direct.batch is not None, "built without C"
    out = np.zeros(n, np.int16)
    cpu_us = np.zeros(64, np.float64)
    for start in range(0, n, 10 * FRAME):
        part = slice(start, start + 10 * FRAME)
        in_c.cancel_frames(mic[part], far[part], out[part], cpu_us, start // FRAME)
    assert np.array_equal(out, one_by_one)
    assert (cpu_us > 0).all(), "every frame's time is kept"


def test_a_failing_canceller_leaves_the_microphone_uncancelled_and_says_why() -> None:
    """A reply from LiveKit's FFI that is not "done" (here: an APM handle it does not
    know) raises from C; ``InlineEcho`` then passes the microphone through, the call goes
    on, and ``stats`` says why."""
    canceller = EchoCanceller()

    class Handle:
        handle = 987_654_321

    class UnknownApm:
        _ffi_handle = Handle()

    canceller._direct = _DirectApm.build(UnknownApm(), canceller._far_bytes,
                                         canceller._near_bytes, 0)
    assert canceller._direct is not None and canceller._direct.batch is not None
    mic = (np.arange(CAPTURE_CHUNK_FRAMES) % 200 - 100).astype(np.int16)
    with AudioRing.create(1 << 14) as capture:
        inline = InlineEcho(capture, canceller)
        with pytest.raises(RuntimeError, match="apm_process_reverse_stream"):
            canceller.cancel_frames(mic, mic, np.zeros_like(mic), np.zeros(8), 0)
        inline.feed(mic, mic)
        inline.feed(mic, mic)
        out = np.zeros(capture.available(), np.int16)
        capture.read_into(out)
        stats = inline.stats()
    assert np.array_equal(out, np.concatenate([mic, mic]))
    assert stats["error"].startswith("echo cancellation stopped") and stats["frames"] == 0


def test_the_agent_takes_whole_chunks_the_moment_a_batch_is_written() -> None:
    """At 20 ms periods, the capture ring only ever holds whole agent chunks
    (``CAPTURE_CHUNK_FRAMES``), before and after the agent's flush at its start: its
    100 ms chunks end where the canceller's batches end, so batching adds no wait."""
    period = 2 * FRAME
    noise = np.random.default_rng(1).integers(-3000, 3000, 40 * period).astype(np.int16)
    with AudioRing.create(1 << 15) as capture:
        inline = InlineEcho(capture, EchoCanceller())
        seen = set()
        for k in range(40):
            if k == 13:
                capture.flush()  # the agent starts, mid-batch
            inline.feed(noise[k * period : (k + 1) * period], noise[:period])
            seen.add(capture.available() % CAPTURE_CHUNK_FRAMES)
            if k == 4:
                assert capture.available() == CAPTURE_CHUNK_FRAMES, "a chunk after 100 ms"
    assert seen == {0}, seen


# -- the audio process on the virtual device ------------------------------------------------


def run_audio_process(tmp: Path, speech: np.ndarray, *extra: str
                      ) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """Agent speech into the playback ring, the capture ring read as the agent would;
    returns (capture, recording's left channel, status during the call)."""
    prefix = f"callctl-echo-{uuid.uuid4().hex[:8]}"
    rec = tmp / "rec.wav"
    proc = AudioProcess(f"ipc://{tmp}/audio.sock", prefix,
                        ["--device", "virtual", "--speaker", str(tmp / "speaker.wav"), *extra])
    try:
        proc.wait_ready()
        assert proc.request({"cmd": "start", "record": str(rec)})["ok"]
        play = AudioRing.attach(prefix + "-play")
        cap = AudioRing.attach(prefix + "-cap")
        try:
            play.write(speech)
            got = []
            chunk = np.zeros(4096, np.int16)
            deadline = time.monotonic() + len(speech) / RATE + 0.5
            while time.monotonic() < deadline:
                n = cap.read_available_into(chunk)
                got.append(chunk[:n].copy())
                time.sleep(0.02)
            status = proc.request({"cmd": "status"})
            proc.request({"cmd": "hangup"})
            n = cap.read_available_into(chunk)
            got.append(chunk[:n].copy())
        finally:
            play.close()
            cap.close()
    finally:
        proc.stop()
    frames, rate = read_wav(rec)
    assert rate == RATE
    return np.concatenate(got), frames[:, 0].copy(), status


@pytest.mark.parametrize("flags", [[], ["--no-noise-suppression"], ["--no-aec"]],
                         ids=["aec", "aec+ns", "no-aec"])
def test_audio_process_cancels_the_virtual_echo(tmp_path: Path, flags: list[str]) -> None:
    aec = "--no-aec" not in flags
    speech = Voice().render("Hello, you are talking to the offline test agent. "
                            "How can I help you today?")
    extra = ["--echo", "60:-6:3400", *flags]
    capture, raw_mic, status = run_audio_process(tmp_path, speech, *extra)
    # The capture ring is the cancelled version of the recording's left channel,
    # sample for sample from the stream's start.
    n = min(len(capture), len(raw_mic), len(speech))
    assert n > 4 * RATE
    settled = 1 * RATE
    assert db(energy(raw_mic[settled:n]) / energy(speech[settled:n])) > -9, "the echo is there"
    reduction = erle_db(raw_mic[settled:n], capture[settled:n])
    if aec:
        assert reduction >= 20, reduction
        assert status["aec"]["enabled"] and status["aec"]["frames"] > 0
        assert status["aec"]["dropped_periods"] == 0 and status["aec"]["error"] is None
        assert status["aec"]["attenuation_db"] >= 20
        assert status["aec"]["noise_suppression"] is ("--no-noise-suppression" not in flags)
    else:
        assert abs(reduction) < 1.0, reduction
        assert status["aec"]["enabled"] is False


# -- a whole call: the local agent, the controller, the virtual echo path ---------------------

CALLER_TURN_AT = 8.0
"""The caller's first turn (seconds into the call's microphone): after the greeting."""
CALLER_BARGE_IN_AT = 13.5
"""The caller talks over the agent's answer to that turn (it plays from about 12.3 s)."""
ECHO = "60:-6:3400"
"""60 ms, -6 dB, low-passed: the agent's voice (about -22 dBFS RMS) comes back at about
-29 dBFS, well above the local agent server's -40 dBFS voice threshold."""


def agent_interruptions(served: Any) -> list[float]:
    return [e["t"] for e in served.events
            if e["event"] == "agent" and e.get("kind") == "interruption"]


def transcripts(served: Any, role: str) -> list[str]:
    return [e["text"] for e in served.events
            if e["event"] == "transcript" and e.get("role") == role]


def test_call_with_echo_the_agent_never_interrupts_itself_and_barge_in_works(
        serve: Any) -> None:
    served = serve("--echo", ECHO, speech_at=[CALLER_TURN_AT, CALLER_BARGE_IN_AT])
    called = time.monotonic()
    assert served.request({"cmd": "call"})["ok"]
    served.collect(23.0)
    status = served.request({"cmd": "status"})
    served.request({"cmd": "hangup"})
    interruptions = [t - called for t in agent_interruptions(served)]
    # The only interruption is the caller's barge-in (0.2 s of speech over the agent;
    # the stream starts a little after the request, so a little later than that).
    assert len(interruptions) == 1, interruptions
    assert CALLER_BARGE_IN_AT + 0.2 <= interruptions[0] <= CALLER_BARGE_IN_AT + 2.0
    # Two caller turns, each heard once; the agent's echo never made a turn of its own.
    assert len(transcripts(served, "caller")) == 2, transcripts(served, "caller")
    assert len(transcripts(served, "agent")) == 3, transcripts(served, "agent")
    assert status["state"] == "in_call"


def test_same_call_without_echo_cancellation_interrupts_itself(serve: Any) -> None:
    served = serve("--echo", ECHO, "--no-aec",
                   speech_at=[CALLER_TURN_AT, CALLER_BARGE_IN_AT])
    called = time.monotonic()
    assert served.request({"cmd": "call"})["ok"]
    first = served.collect(CALLER_TURN_AT, until="agent", where={"kind": "interruption"})
    served.request({"cmd": "hangup"})
    assert first is not None, "without cancellation the agent's echo barges in"
    assert first["t"] - called < CALLER_TURN_AT, "before the caller ever spoke"
