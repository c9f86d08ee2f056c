"""The audio process against a real sound server, with an external observer.

A fixture starts a private PulseAudio daemon (null sinks as speaker and
microphone). The audio process opens ``--device pulse`` — the native
PulseAudio-protocol backend — and a separate client (``parec`` on the
speaker's monitor) records what was actually played, stamped with its time.
PortAudio's ALSA ``pulse`` plugin device is refused (see the last test).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import numpy as np

from callctl.engine.audio_child import AudioProcess
from callctl.engine.ring import AudioRing
from testing.audio_rig import hear_caller, start_audio_process
from testing.measure import peak
from testing.observer import PlaybackObserver
from testing.pulse import PulseServer
from testing.sounds import RATE, tone


def spawn(tmp: Path, pulse: PulseServer, *extra: str) -> AudioProcess:
    return start_audio_process(tmp, ["--device", "pulse", *extra], pulse.child_env(), "pa")


def test_hangup_silences_the_device_as_an_external_observer_hears_it(
        tmp_path: Path, pulse: PulseServer, observer: PlaybackObserver) -> None:
    proc = spawn(tmp_path, pulse)
    try:
        status = proc.request({"cmd": "status"})
        assert status["backend"] == "pulse" and status["device_rate"] == RATE
        latency = status["output_latency_ms"] / 1000
        period = status["period_frames"] / status["device_rate"]
        assert proc.request({"cmd": "start"})["ok"]
        ring = AudioRing.attach(proc.ring_prefix + "-play")
        try:
            ring.write(tone(5.0))
            started = time.monotonic()
            assert observer.wait_until(started + 1.0, timeout=5)
            assert observer.first_sound_after(started) is not None, "the tone reached the sink"
            sent = time.monotonic()
            reply = proc.request({"cmd": "hangup"})
            assert reply["ok"] and reply["was_running"]
            for _ in range(10):  # the agent keeps writing: none of it may play
                ring.write(tone(0.1))
                time.sleep(0.02)
        finally:
            ring.close()
        assert observer.wait_until(sent + 1.0, timeout=5)
        last = observer.last_sound_after(sent - 0.1)
        assert last is not None and last > sent - 0.05, "it was playing up to the hangup"
        # One period, the fade, and what the server had already queued (its own
        # latency, as PortAudio reports it), plus the observer's few ms.
        bound = period + 0.005 + latency + 0.015
        assert last - sent <= bound, f"{(last - sent) * 1000:.1f} ms > {bound * 1000:.1f} ms"
        assert observer.first_sound_after(last + 0.001, until=sent + 1.0) is None
    finally:
        proc.stop()


def test_microphone_reaches_the_capture_ring(tmp_path: Path, pulse: PulseServer,
                                            caller_speech: np.ndarray) -> None:
    proc = spawn(tmp_path, pulse)
    try:
        assert proc.request({"cmd": "start"})["ok"]
        # Speech, not a tone: noise suppression rightly treats a steady tone as noise.
        got = hear_caller(proc, pulse, caller_speech)
        assert peak(got) > peak(caller_speech) / 4, "the speech was captured"
        proc.request({"cmd": "hangup"})
    finally:
        proc.stop()


def test_portaudio_plugin_device_is_refused_and_its_noise_hidden_unless_verbose(
        tmp_path: Path, pulse: PulseServer) -> None:
    def stderr_of(*extra: str) -> tuple[int, str]:
        proc = subprocess.Popen(
            [sys.executable, "-m", "callctl.engine.audio_process", "--control", f"ipc://{tmp_path}/q",
             "--rings", f"callctl-q-{uuid.uuid4().hex[:6]}", "--device", "portaudio:pulse",
             *extra],
            env=dict(pulse.child_env(), JACK_NO_START_SERVER="1"), stderr=subprocess.PIPE,
            text=True)
        try:
            _, err = proc.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            _, err = proc.communicate(timeout=5)
        return proc.returncode, err

    code, err = stderr_of()
    assert code == 1
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "--device pulse" in lines[0], err
    _, verbose = stderr_of("--verbose")
    assert "ALSA" in verbose or "jack" in verbose.lower(), "the noise exists and --verbose shows it"
