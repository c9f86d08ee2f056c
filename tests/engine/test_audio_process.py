"""The audio process on the virtual device: real process, real ZeroMQ, real rings."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
import uuid
import wave
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from callctl.engine import protocol
from callctl.engine.audio_child import AudioProcess
from callctl.engine.ring import AudioRing
from callctl.engine.wavfile import read_wav

RATE = 16_000
PERIOD = 160
FADE = 160
THRESHOLD = 33  # int16 magnitude of -60 dBFS


def tone(seconds: float, freq: float = 440.0, amplitude: float = 0.5) -> np.ndarray:
    t = np.arange(int(seconds * RATE)) / RATE
    return (amplitude * 32767 * np.sin(2 * np.pi * freq * t)).astype(np.int16)


def spawn(tmp: Path, *extra: str) -> AudioProcess:
    prefix = f"callctl-test-{uuid.uuid4().hex[:8]}"
    proc = AudioProcess(f"ipc://{tmp}/audio.sock", prefix,
                        ["--device", "virtual", "--speaker", str(tmp / "speaker.wav"), *extra])
    proc.wait_ready()
    return proc


@pytest.fixture
def audio(tmp_path: Path) -> Iterator[AudioProcess]:
    proc = spawn(tmp_path)
    try:
        yield proc
    finally:
        proc.stop()


def speaker_times(path: Path) -> tuple[np.ndarray, float]:
    """(samples, t0): sample i played at t0 + i / RATE (monotonic seconds)."""
    samples, rate = read_wav(path)
    assert rate == RATE
    meta = json.loads(path.with_suffix(".wav.json").read_text())
    return samples[:, 0], float(meta["start_monotonic"])


def wait_for_file_frames(path: Path, frames: int, timeout: float = 3.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and read_wav(path)[0].shape[0] >= frames:
            return
        time.sleep(0.05)


def test_cmd_hangup_silences_within_one_period_plus_fade(audio: AudioProcess,
                                                         tmp_path: Path) -> None:
    assert audio.request({"cmd": "start"})["ok"]
    play = AudioRing.attach(audio.ring_prefix + "-play")
    try:
        play.write(tone(4.0))
        time.sleep(0.7)
        sent = time.monotonic()
        reply = audio.request({"cmd": "hangup"})
        # The agent keeps writing after the hangup: none of it may play.
        for _ in range(20):
            play.write(tone(0.1))
            time.sleep(0.01)
        assert reply["ok"] and reply["was_running"]
        assert reply["received_at"] <= reply["first_silent_at"] <= reply["stopped_at"]
        assert audio.request({"cmd": "status"})["state"] == "stopped"
        time.sleep(0.4)
    finally:
        play.close()
    speaker = tmp_path / "speaker.wav"
    samples, t0 = speaker_times(speaker)
    loud = np.nonzero(np.abs(samples.astype(np.int32)) > THRESHOLD)[0]
    assert len(loud) > RATE // 2, "the tone did play before the hangup"
    last_sound = t0 + (loud[-1] + 1) / RATE
    assert last_sound - sent <= (PERIOD + FADE) / RATE + 0.002, (last_sound - sent) * 1000

    # The fade: no step down to silence. A hard cut would jump by ~16000.
    end = loud[-1] + 1
    tail = samples[end - 400 : end + 400].astype(np.int32)
    max_tone_step = 2 * np.pi * 440 / RATE * 0.5 * 32767
    assert np.abs(np.diff(tail)).max() <= max_tone_step * 1.05
    assert abs(int(samples[end - 1])) < 100
    assert np.abs(samples[end : end + FADE]).max() <= THRESHOLD
    assert not samples[end + FADE :].any(), "true zero after the fade"


def test_cmd_hangup_is_idempotent_and_works_when_stopped(audio: AudioProcess) -> None:
    reply = audio.request({"cmd": "hangup"})
    assert reply["ok"] and not reply["was_running"]
    assert audio.request({"cmd": "start"})["ok"]
    replies = [audio.request({"cmd": "hangup"}) for _ in range(5)]
    assert all(r["ok"] for r in replies)
    assert [r["was_running"] for r in replies] == [True, False, False, False, False]


def test_cmd_flush_drops_queued_playback_and_keeps_streaming(audio: AudioProcess) -> None:
    assert audio.request({"cmd": "start"})["ok"]
    play = AudioRing.attach(audio.ring_prefix + "-play")
    try:
        play.write(tone(3.0))
        time.sleep(0.2)
        reply = audio.request({"cmd": "flush"})
        assert reply["ok"] and reply["done"]
        assert reply["dropped_frames"] > RATE  # most of the 3 s were still queued
        assert play.available() == 0
        status = audio.request({"cmd": "status"})
        assert status["state"] == "running"
        play.write(tone(0.3))
        time.sleep(0.1)
        assert audio.request({"cmd": "status"})["levels"]["out_dbfs"] is not None
    finally:
        play.close()


def test_cmd_watch_has_the_meters_and_what_a_call_must_know(audio: AudioProcess) -> None:
    watch = audio.request({"cmd": "watch"})
    assert watch["ok"] and watch["state"] == "stopped"
    assert watch["levels"] == {"in_dbfs": None, "out_dbfs": None}, "nothing ran yet"
    assert audio.request({"cmd": "start"})["ok"]
    play = AudioRing.attach(audio.ring_prefix + "-play")
    try:
        play.write(tone(1.0))
        time.sleep(0.2)
        watch = audio.request({"cmd": "watch"})
        assert watch["state"] == "running" and watch["reopens"] == []
        assert watch["levels"]["out_dbfs"] is not None and watch["levels"]["out_dbfs"] > -20
        assert set(watch["xruns"]) == {"device", "gap_periods", "playback_underruns",
                                       "capture_overruns"}
        assert watch["recording_error"] is None and watch["last_device_error"] is None
        assert audio.request({"cmd": "hangup"})["ok"]
        assert audio.request({"cmd": "watch"})["state"] == "stopped"
    finally:
        play.close()


def test_recording_is_stereo_and_sample_aligned(tmp_path: Path) -> None:
    """The virtual echo path feeds the speaker back into the mic exactly one
    period later, so an aligned recording has left[n] == right[n - PERIOD]."""
    proc = spawn(tmp_path, "--echo", "10:0")
    try:
        rec = tmp_path / "rec.wav"
        assert proc.request({"cmd": "start", "record": str(rec)})["ok"]
        play = AudioRing.attach(proc.ring_prefix + "-play")
        play.write(tone(1.0, freq=700))
        play.close()
        time.sleep(1.3)
        proc.request({"cmd": "hangup"})
        wait_for_file_frames(rec, int(1.2 * RATE))
    finally:
        proc.stop()
    frames, rate = read_wav(rec)
    assert rate == RATE and frames.shape[1] == 2
    left, right = frames[:, 0].astype(np.int32), frames[:, 1].astype(np.int32)
    assert np.abs(right).max() > 10_000, "the speaker side holds the tone"
    assert np.abs(left[PERIOD:] - right[:-PERIOD]).max() <= 1
    assert np.abs(left[PERIOD + 1 :] - right[: -PERIOD - 1]).max() > 1000, "a shift would show"


def test_sigkill_mid_recording_leaves_a_valid_wav(tmp_path: Path) -> None:
    proc = spawn(tmp_path)
    rec = tmp_path / "rec.wav"
    try:
        assert proc.request({"cmd": "start", "record": str(rec)})["ok"]
        time.sleep(1.6)
        os.kill(proc.pid, signal.SIGKILL)
        assert proc.child.wait(5) is not None
    finally:
        proc.stop()
    with wave.open(str(rec)) as w:
        assert w.getnchannels() == 2 and w.getsampwidth() == 2
        assert w.getnframes() >= RATE  # at least the last whole second
        data = w.readframes(w.getnframes())
        assert len(data) == w.getnframes() * 4
    sox = shutil.which("sox")
    assert sox, "sox is installed by make test"
    out = subprocess.run([sox, "--i", "-s", str(rec)], capture_output=True, text=True, timeout=10)
    assert out.returncode == 0, out.stderr
    assert int(out.stdout) >= RATE
    assert not any(Path("/dev/shm").glob(proc.ring_prefix + "*")), "parent unlinked the rings"


def test_sigterm_unlinks_rings(tmp_path: Path) -> None:
    proc = spawn(tmp_path)
    os.kill(proc.pid, signal.SIGTERM)
    assert proc.child.wait(5) is not None
    assert not any(Path("/dev/shm").glob(proc.ring_prefix + "*"))
    proc.stop()


def test_resampling_device_still_silences_at_once(tmp_path: Path) -> None:
    proc = spawn(tmp_path, "--virtual-rate", "48000")
    try:
        status = proc.request({"cmd": "status"})
        assert status["device_rate"] == 48000
        assert proc.request({"cmd": "start"})["ok"]
        play = AudioRing.attach(proc.ring_prefix + "-play")
        play.write(tone(3.0))
        time.sleep(0.5)
        sent = time.monotonic()
        proc.request({"cmd": "hangup"})
        play.close()
        time.sleep(0.3)
    finally:
        proc.stop()
    samples, rate = read_wav(tmp_path / "speaker.wav")
    assert rate == 48000
    t0 = json.loads((tmp_path / "speaker.wav.json").read_text())["start_monotonic"]
    loud = np.nonzero(np.abs(samples[:, 0].astype(np.int32)) > THRESHOLD)[0]
    assert len(loud) > 48000 // 4
    # One period, the fade, and the resampler's FIFO (one period) and filter delay.
    assert t0 + (loud[-1] + 1) / 48000 - sent <= 0.030


def test_bad_requests_get_errors_and_do_not_disturb(audio: AudioProcess) -> None:
    import zmq

    sock = zmq.Context.instance().socket(zmq.REQ)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(audio.control)
    try:
        for frame in [b"not json", b"[1,2]", b'{"cmd": 5}', b'{"cmd": "nope"}',
                      b'{"cmd": "start", "record": 7}', b"x" * 100_000]:
            sock.send(frame)
            assert sock.poll(2000)
            reply = json.loads(sock.recv())
            assert reply["ok"] is False and reply["error"] and "\n" not in reply["error"]
            assert reply["code"] in (protocol.BAD_REQUEST, protocol.UNKNOWN_COMMAND), reply
    finally:
        sock.close()
    assert audio.request({"cmd": "ping"})["ok"]


def test_bad_mic_wav_is_a_clear_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"RIFF....WAVEjunk")
    import sys

    out = subprocess.run(
        [sys.executable, "-m", "callctl.engine.audio_process", "--control", f"ipc://{tmp_path}/a",
         "--device", "virtual", "--mic", str(bad)],
        capture_output=True, text=True, timeout=20)
    assert out.returncode != 0
    assert str(bad) in out.stderr and "not a PCM WAV" in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1
