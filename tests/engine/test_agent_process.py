"""The agent process on the real elevenlabs SDK, through the rings, against the local server.

Every part is real: the agent server, the audio process (virtual device, its
microphone a WAV of caller speech) and the agent process are separate OS
processes talking over real websockets, ZeroMQ and shared memory.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zmq

from callctl.engine import protocol
from callctl.engine.audio_child import AudioProcess
from callctl.engine.control_client import ControlClient
from callctl.engine.wavfile import read_wav
from testing.sounds import write_caller_wav

RATE = 16_000
SENTINEL_KEY = "sk_sentinel_0f9e8d7c6b5a4f3e2d1c"


@dataclass
class Rig:
    """One call's processes; ``events`` collects what the agent process pushed."""

    tmp: Path
    server: subprocess.Popen[str]
    base_url: str
    audio: AudioProcess
    agent: subprocess.Popen[bytes]
    agent_ctl: ControlClient
    pull: zmq.Socket
    prefix: str
    events: list[dict[str, Any]] = field(default_factory=list)

    def start_call(self, requires_auth: bool = False) -> dict[str, Any]:
        assert self.audio.request({"cmd": "start", "record": str(self.tmp / "rec.wav")})["ok"]
        return self.agent_ctl.request({"cmd": "start", "agent_id": "local", "rings": self.prefix,
                                       "base_url": self.base_url,
                                       "requires_auth": requires_auth}, timeout=15)

    def collect(self, seconds: float, until: str | None = None) -> list[dict[str, Any]]:
        """Gather events for at most ``seconds`` (stop early at an event named ``until``)."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if self.pull.poll(50):
                event = json.loads(self.pull.recv())
                self.events.append(event)
                if until and event["event"] == until:
                    break
        return self.events

    def named(self, name: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e["event"] == name]


def start_server(tmp: Path, *args: str, env: dict[str, str] | None = None
                 ) -> tuple[subprocess.Popen[str], str]:
    log = open(tmp / "server.log", "w")  # noqa: SIM115 - closed with the process
    server = subprocess.Popen([sys.executable, "-m", "callctl.engine.agent_server",
                               "--port", "0", *args],
                              stdout=subprocess.PIPE, stderr=log, text=True, env=env)
    assert server.stdout is not None
    line = server.stdout.readline()
    match = re.search(r"ws://([\d.]+):(\d+)", line)
    assert match, f"agent server did not start: {line!r}"
    return server, f"http://{match.group(1)}:{match.group(2)}"


@pytest.fixture
def rig_factory(tmp_path: Path, caller_speech: np.ndarray) -> Iterator[Any]:
    rigs: list[Rig] = []

    def make(*server_args: str, speech_at: float = 8.0, env: dict[str, str] | None = None
             ) -> Rig:
        write_caller_wav(tmp_path / "mic.wav", caller_speech, [speech_at], speech_at + 12)
        server, base_url = start_server(tmp_path, *server_args, env=env)
        prefix = f"callctl-agt-{uuid.uuid4().hex[:8]}"
        audio = AudioProcess(
            f"ipc://{tmp_path}/audio", prefix,
            ["--device", "virtual", "--mic", str(tmp_path / "mic.wav"),
             "--speaker", str(tmp_path / "speaker.wav")],
            stderr=open(tmp_path / "audio.log", "w"), env=env)  # noqa: SIM115
        audio.wait_ready()
        pull = zmq.Context.instance().socket(zmq.PULL)
        pull.setsockopt(zmq.LINGER, 0)
        pull.bind(f"ipc://{tmp_path}/events")
        agent = subprocess.Popen(
            [sys.executable, "-m", "callctl.engine.agent_process", "--control", f"ipc://{tmp_path}/agent",
             "--events", f"ipc://{tmp_path}/events"],
            stdout=open(tmp_path / "agent.out", "w"), stderr=open(tmp_path / "agent.log", "w"),  # noqa: SIM115
            env=env)
        ctl = ControlClient(f"ipc://{tmp_path}/agent")
        assert ctl.request({"cmd": "ping"}, timeout=20)["ok"]
        rig = Rig(tmp_path, server, base_url, audio, agent, ctl, pull, prefix)
        rigs.append(rig)
        return rig

    yield make
    for rig in rigs:
        if rig.agent.poll() is None:
            rig.agent.kill()
        rig.agent.wait(5)
        rig.agent_ctl.close()
        rig.audio.stop()
        rig.server.terminate()
        try:
            rig.server.wait(5)
        except subprocess.TimeoutExpired:
            rig.server.kill()
        rig.pull.close()


def speaker(rig: Rig) -> tuple[np.ndarray, float]:
    samples, rate = read_wav(rig.tmp / "speaker.wav")
    meta = json.loads((rig.tmp / "speaker.wav.json").read_text())
    return samples[:, 0], float(meta["start_monotonic"])


def loud_between(samples: np.ndarray, t0: float, start: float, end: float) -> int:
    a, b = max(0, int((start - t0) * RATE)), max(0, int((end - t0) * RATE))
    return int(np.count_nonzero(np.abs(samples[a:b].astype(np.int32)) > 33))


def end_and_reap(rig: Rig, grace: float = 2.0) -> tuple[float, bool]:
    """The controller's way: hang up the audio, ``end`` the agent, kill after ``grace``."""
    t = time.monotonic()
    rig.audio.request({"cmd": "hangup"})
    try:
        rig.agent_ctl.request({"cmd": "end"}, timeout=grace)
    except TimeoutError:
        pass
    try:
        rig.agent.wait(max(0.0, grace - (time.monotonic() - t)))
        killed = False
    except subprocess.TimeoutExpired:
        rig.agent.kill()
        rig.agent.wait(5)
        killed = True
    return time.monotonic() - t, killed


def test_cmd_start_greeting_turn_and_cmd_end(rig_factory: Any) -> None:
    rig = rig_factory(speech_at=7.0)
    assert rig.start_call()["ok"]
    rig.collect(14.0)
    responses = [e["text"] for e in rig.named("agent.response")]
    assert len(responses) >= 2, "the greeting, then the answer to the caller's turn"
    transcripts = [e["text"] for e in rig.named("agent.user_transcript")]
    assert transcripts and re.fullmatch(r"\[speech \d+\.\d s\]", transcripts[0])
    conv = rig.named("agent.conversation")
    assert conv and conv[0]["conversation_id"] and conv[0]["output_format"] == "pcm_16000"
    assert rig.named("agent.latency"), "pings were answered and measured"
    elapsed, killed = end_and_reap(rig)
    assert not killed and rig.agent.returncode == 0
    assert elapsed < 1.5, "a cooperative agent exits well before the 2 s kill"
    samples, t0 = speaker(rig)
    first = rig.named("agent.response")[0]["t"]
    assert loud_between(samples, t0, first, first + 3.0) > RATE, "greeting audio was played"
    server_log = (rig.tmp / "server.log").read_text()
    assert re.search(r"pong \d+/\d+", server_log), "the server got our pongs"


def test_barge_in_flushes_and_nothing_flushed_is_played(rig_factory: Any) -> None:
    rig = rig_factory(speech_at=1.5)  # the caller talks over the greeting
    assert rig.start_call()["ok"]
    rig.collect(12.0)
    interruptions = rig.named("agent.interruption")
    assert interruptions, "speaking over the agent brings an interruption"
    t_int = interruptions[0]["t"]
    later = [e["t"] for e in rig.named("agent.response") if e["t"] > t_int]
    assert later, "after the caller's turn the agent answers"
    end_and_reap(rig)
    samples, t0 = speaker(rig)
    assert loud_between(samples, t0, t_int - 0.5, t_int) > 0, "the greeting was playing"
    # From two periods after the flush until the next line: nothing the agent said (the
    # callback notices the flush at its next period and fades what it cut off over one).
    assert loud_between(samples, t0, t_int + 0.03, later[0]) == 0


@pytest.mark.parametrize("fault", ["stall", "slow-close"])
def test_frozen_peer_keeps_the_session_from_ending_so_the_kill_is_needed(
        rig_factory: Any, fault: str) -> None:
    rig = rig_factory("--fault", fault, "--fault-after", "0.5", speech_at=30)
    assert rig.start_call()["ok"]
    rig.collect(1.5)
    elapsed, killed = end_and_reap(rig, grace=2.0)
    assert killed, f"{fault}: the SDK's close handshake waits on the frozen peer"
    assert 1.9 <= elapsed <= 2.6


def test_dropped_connection_ends_the_session_by_itself(rig_factory: Any) -> None:
    rig = rig_factory("--fault", "drop", "--fault-after", "1.0", speech_at=30)
    assert rig.start_call()["ok"]
    rig.collect(6.0, until="agent.ended")
    disconnects = rig.named("agent.disconnect")
    assert disconnects and disconnects[0]["reason"] == "error"
    assert rig.agent.wait(5) == 0


def test_api_key_never_appears_in_any_output(rig_factory: Any, tmp_path: Path) -> None:
    env = dict(os.environ, ELEVENLABS_API_KEY=SENTINEL_KEY)
    rig = rig_factory(speech_at=3.0, env=env)
    assert rig.start_call(requires_auth=True)["ok"]
    rig.collect(8.0)
    assert rig.named("agent.response"), "the authenticated call went through"
    end_and_reap(rig)
    rig.audio.stop()
    rig.server.send_signal(signal.SIGTERM)
    rig.server.wait(5)
    seen = json.dumps(rig.events)
    for path in tmp_path.iterdir():
        if path.is_file():
            seen += path.read_bytes().decode("latin-1")
    assert SENTINEL_KEY not in seen
    assert SENTINEL_KEY[8:20] not in seen


def test_wrong_agent_audio_format_ends_the_session(rig_factory: Any) -> None:
    rig = rig_factory("--output-format", "ulaw_8000", speech_at=30)
    assert rig.start_call()["ok"]
    rig.collect(5.0, until="agent.ended")
    disconnects = rig.named("agent.disconnect")
    assert disconnects and "ulaw_8000" in (disconnects[0]["message"] or "")
    samples, _ = speaker(rig)
    assert not np.count_nonzero(np.abs(samples.astype(np.int32)) > 33)


def test_cmd_prepare_builds_the_session_before_the_call_and_cmd_start_uses_the_matching_one(
        rig_factory: Any) -> None:
    rig = rig_factory(speech_at=30)
    fields = {"agent_id": "local", "rings": rig.prefix, "base_url": rig.base_url,
              "requires_auth": False}
    bad = rig.agent_ctl.request({"cmd": "prepare", **fields, "rings": "callctl-no-such-ring"})
    assert not bad["ok"] and bad["error"].startswith("prepare failed")
    assert bad["code"] == protocol.AGENT_FAILED  # the rings are missing: not the service
    # Prepared for a service that is not there, then for the right one: start must use the
    # last (a start on the first would never connect).
    nowhere = {**fields, "base_url": "http://127.0.0.1:9"}
    assert rig.agent_ctl.request({"cmd": "prepare", **nowhere})["ok"]
    assert rig.agent_ctl.request({"cmd": "prepare", **fields})["ok"]
    status = rig.agent_ctl.request({"cmd": "status"})
    assert status["state"] == "standby" and status["prepared"]
    assert rig.start_call()["ok"]
    rig.collect(8.0, until="agent.response")
    assert rig.named("agent.conversation") and rig.named("agent.response")
    again = rig.agent_ctl.request({"cmd": "prepare", **fields})
    assert not again["ok"], "a session in progress is never replaced"
    _, killed = end_and_reap(rig)
    assert not killed and rig.agent.returncode == 0


def test_cooperative_end_sends_the_close_and_exits_without_waiting_on_the_sdk_loop(
        rig_factory: Any) -> None:
    rig = rig_factory(speech_at=30)
    assert rig.start_call()["ok"]
    rig.collect(2.0)  # mid-greeting: the SDK's loop sits in its 0.5 s recv
    elapsed, killed = end_and_reap(rig)
    assert not killed and rig.agent.returncode == 0
    # Generous: the close round trip and the exit, not the SDK's recv timeout + teardown.
    assert elapsed < 0.5, f"cooperative end took {elapsed:.3f} s"
    rig.collect(1.0)
    assert [e["reason"] for e in rig.named("agent.disconnect")] == ["user"]
    assert rig.named("agent.ended"), "the last events got out before the fast exit"
    deadline = time.monotonic() + 3.0
    log = ""
    while time.monotonic() < deadline and "client closed 1000" not in log:
        log = (rig.tmp / "server.log").read_text()
        time.sleep(0.05)
    assert "client closed 1000" in log, "the service was told the session ended"
