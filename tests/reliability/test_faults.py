"""Faults: any one process dying or freezing, the sound server vanishing, a full disk.

Each test also checks the call's recording afterwards: a WAV that Python's
wave module and sox both read, holding the call up to (about) the fault.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
import wave
from pathlib import Path
from typing import Any

import pytest

from callctl.engine.control_client import ControlClient
from testing.pulse import PulseServer


def assert_valid_recording(path: str | Path, at_least_s: float = 1.0) -> None:
    with wave.open(str(path)) as w:
        assert w.getnchannels() == 2 and w.getsampwidth() == 2 and w.getframerate() == 16000
        frames = w.getnframes()
        assert len(w.readframes(frames)) == frames * 4
    assert frames >= at_least_s * 16000, f"only {frames / 16000:.2f} s recorded"
    sox = shutil.which("sox")
    assert sox
    out = subprocess.run([sox, "--i", "-D", str(path)], capture_output=True, text=True,
                         timeout=10)
    assert out.returncode == 0, out.stderr
    assert float(out.stdout) >= at_least_s


def recording_of(served: Any) -> Path:
    calls = sorted((served.tmp / "calls").glob("2*/recording.wav"))
    assert calls, "no recording"
    return calls[-1]


def call_for(served: Any, seconds: float) -> dict[str, Any]:
    assert served.request({"cmd": "call"})["ok"]
    status = served.wait_state("in_call")
    time.sleep(seconds)
    return status


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGSTOP])
def test_agent_killed_or_frozen(serve: Any, sig: signal.Signals) -> None:
    served = serve(speech_at=[30.0])
    status = call_for(served, 1.5)
    os.kill(status["pids"]["agent"], sig)
    if sig == signal.SIGSTOP:
        assert served.request({"cmd": "hangup"})["ok"]
    event = served.collect(6, until="call.ended")
    assert event is not None
    if sig == signal.SIGSTOP:
        assert event["timings"]["agent_killed"]
    else:
        assert "agent" in event["reason"]
    assert served.wait_state("idle", 5)
    time.sleep(0.5)  # the audio process finalises the file in the background
    assert_valid_recording(event["recording"])


@pytest.mark.parametrize("fault", ["stall", "slow-close", "drop"])
def test_agent_server_faults(serve: Any, fault: str) -> None:
    served = serve(f"--agent-server-arg=--fault={fault}", "--agent-server-arg=--fault-after=0.5",
                   speech_at=[30.0])
    call_for(served, 2.0)
    if fault != "drop":
        assert served.request({"cmd": "hangup"})["ok"]
    event = served.collect(6, until="call.ended")
    assert event is not None
    if fault == "drop":
        assert "disconnected" in event["reason"], "the call ends by itself"
    else:
        assert event["timings"]["agent_killed"]
        assert 2000 <= event["timings"]["agent_exited_ms"] <= 2200
    time.sleep(0.5)
    # A drop ends the call half a second into the greeting.
    assert_valid_recording(event["recording"], at_least_s=0.3 if fault == "drop" else 1.0)


def test_audio_process_killed(serve: Any) -> None:
    served = serve(speech_at=[30.0])
    status = call_for(served, 2.5)
    os.kill(status["pids"]["audio"], signal.SIGKILL)
    event = served.collect(6, until="call.ended")
    assert event is not None and event["reason"] == "audio"
    # Nobody can say when its sound stopped: unknown, never a made-up 0.0 ms.
    assert event["timings"]["audio_silent_ms"] is None, event["timings"]
    # Killed outright: valid up to the last flush (a quarter of a second).
    assert_valid_recording(event["recording"], at_least_s=1.5)


def test_controller_killed(serve: Any) -> None:
    served = serve(speech_at=[30.0])
    call_for(served, 2.5)
    os.kill(served.proc.pid, signal.SIGKILL)
    served.proc.wait(5)
    time.sleep(1.5)  # the audio process gets SIGTERM and finalises
    assert_valid_recording(recording_of(served), at_least_s=2.0)


def test_disk_full_stops_the_recording_cleanly_and_the_call_goes_on(
        serve: Any, small_disk: Path) -> None:
    served = serve("--record-dir", str(small_disk), speech_at=[30.0])
    assert served.request({"cmd": "call"})["ok"]
    served.wait_state("in_call")
    error = served.collect(8, until="error")
    assert error is not None and "No space left" in error["message"], error
    assert served.request({"cmd": "status"})["state"] == "in_call", "the call goes on"
    assert served.request({"cmd": "hangup"})["ok"]
    event = served.collect(6, until="call.ended")
    assert event is not None
    assert any("No space left" in e for e in event["errors"])
    time.sleep(0.5)
    assert_valid_recording(event["recording"], at_least_s=1.0)


def test_sound_server_killed_mid_call_ends_the_call(tmp_path: Path) -> None:
    with PulseServer() as pulse:
        endpoint = f"ipc://{tmp_path}/control"
        serve = subprocess.Popen(
            [sys.executable, "-m", "callctl.cli", "serve", "--endpoint", endpoint,
             "--device", "pulse", "--record-dir", str(tmp_path / "calls")],
            env=pulse.child_env(), stdout=subprocess.DEVNULL,
            stderr=open(tmp_path / "serve.log", "w"))  # noqa: SIM115
        client = ControlClient(endpoint)
        try:
            deadline = time.monotonic() + 30
            while True:
                try:
                    client.request({"cmd": "ping"}, timeout=1)
                    break
                except TimeoutError:
                    assert time.monotonic() < deadline
            assert client.request({"cmd": "call"})["ok"]
            while client.request({"cmd": "status"})["state"] != "in_call":
                assert time.monotonic() < deadline + 20
                time.sleep(0.05)
            time.sleep(2.0)
            pulse.kill()
            deadline = time.monotonic() + 10
            while True:
                status = client.request({"cmd": "status"})
                if status["state"] in ("failed", "idle"):
                    break
                assert time.monotonic() < deadline, status["state"]
                time.sleep(0.1)
            assert status["state"] == "failed" and "audio" in status["reason"]
            last = status["last_call"]
            time.sleep(0.5)
            assert_valid_recording(last["recording"], at_least_s=1.5)
            assert serve.poll() is None, "the controller survives the device going away"
        finally:
            try:
                client.request({"cmd": "shutdown"}, timeout=3)
            except TimeoutError:
                pass
            client.close()
            try:
                serve.wait(15)
            except subprocess.TimeoutExpired:
                serve.kill()
