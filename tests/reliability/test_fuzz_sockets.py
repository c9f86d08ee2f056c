"""Every REP loop (controller, audio process, agent process) against hostile frame
sequences on a real socket: multipart requests, empty frames, REQ envelopes, huge and
out-of-range numbers, garbage. Each process must still answer ``ping`` afterwards, and
every error reply it sent carries a ``code`` (``protocol.ERROR_CODES``) beside its sentence.

`make test` sends 1,000 sequences to each; `make soak` 10,000
(``CALLCTL_FUZZ_EXAMPLES``). The generator is seeded, so a failure repeats.
"""

from __future__ import annotations

import json
import os
import random
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import zmq

from callctl.engine import protocol
from callctl.engine.agent_child import AgentProcess
from callctl.engine.audio_child import AudioProcess
from callctl.engine.control_client import ControlClient

CASES = int(os.environ.get("CALLCTL_FUZZ_EXAMPLES", "1000"))


def hostile_frame(rng: random.Random, commands: list[str]) -> bytes:
    kind = rng.randrange(7)
    if kind == 0:
        return b""
    if kind == 1:
        return rng.randbytes(rng.randrange(1, 200))
    if kind == 2:  # a number past every limit: Python's digit cap, 2**53, NaN, infinity
        value = rng.choice(["9" * 5000, str(2**64), "1e400", "-1e400", "NaN", "Infinity"])
        field = rng.choice(["timeout", "x", "agent", "record"])
        return f'{{"cmd": "{rng.choice(commands)}", "{field}": {value}}}'.encode()
    if kind == 3:
        return json.dumps({"cmd": rng.choice(commands)}).encode()
    if kind == 4:
        return json.dumps([rng.random(), {"cmd": None}]).encode()
    if kind == 5:
        return json.dumps({"cmd": rng.choice(commands), "record": rng.random()}).encode()
    return b"\xff\xfe" + rng.randbytes(8)


def hostile_message(rng: random.Random, commands: list[str]) -> list[bytes]:
    frames = [hostile_frame(rng, commands) for _ in range(rng.choice([1, 1, 2, 3, 5]))]
    if rng.random() < 0.8:
        frames.insert(0, b"")  # a REQ envelope's delimiter: the REP socket sees the rest
    if rng.random() < 0.2:
        frames.insert(0, rng.randbytes(5))  # a routing id of someone else's
    return frames


def check_reply(frames: list[bytes]) -> None:
    """A reply as a DEALER sees it (``[b"", json]``, or more envelope first): JSON with
    ``ok``; an error with a one-line sentence and a known code."""
    reply = json.loads(frames[-1])
    assert isinstance(reply["ok"], bool), reply
    if not reply["ok"]:
        assert reply["error"] and "\n" not in reply["error"], reply
        assert reply.get("code") in protocol.ERROR_CODES, reply


def fuzz(endpoint: str, commands: dict[str, Any], seed: int) -> None:
    """Send ``CASES`` hostile messages from a DEALER, checking whatever comes back."""
    rng = random.Random(seed)
    names = sorted(c for c in commands if c not in ("shutdown", "end", "hangup", "start",
                                                    "call", "prepare"))
    dealer = zmq.Context.instance().socket(zmq.DEALER)
    dealer.setsockopt(zmq.LINGER, 0)
    dealer.connect(endpoint)
    try:
        for i in range(CASES):
            dealer.send_multipart(hostile_message(rng, names))
            if i % 50 == 0:
                time.sleep(0.01)  # let the loop turn: replies and the call go on
            while dealer.poll(0):
                check_reply(dealer.recv_multipart())
        # Let the process work through what is queued (bounded): then it must answer.
        quiet_until = time.monotonic() + 1.0
        give_up = time.monotonic() + 60
        while time.monotonic() < min(quiet_until, give_up):
            if dealer.poll(100):
                check_reply(dealer.recv_multipart())
                quiet_until = time.monotonic() + 1.0
    finally:
        dealer.close(0)


def still_answers(endpoint: str) -> dict[str, Any]:
    client = ControlClient(endpoint)
    try:
        # Generous: a loaded machine may still be answering the 1,000 messages.
        return client.request({"cmd": "ping"}, timeout=30)
    finally:
        client.close()


def test_the_controller_survives_any_frame_sequence(serve: Any) -> None:
    served = serve()
    assert served.request({"cmd": "call"})["ok"]
    served.wait_state("in_call")
    fuzz(served.endpoint, protocol.PUBLIC_COMMANDS, seed=1)
    assert still_answers(served.endpoint)["ok"]
    assert served.request({"cmd": "status"})["state"] == "in_call", "the call went on"
    assert served.request({"cmd": "hangup"})["ok"]


@pytest.fixture
def audio(tmp_path: Path) -> Iterator[AudioProcess]:
    proc = AudioProcess(f"ipc://{tmp_path}/audio", f"callctl-fz-{uuid.uuid4().hex[:8]}",
                        ["--device", "virtual", "--speaker", str(tmp_path / "out.wav")])
    proc.wait_ready()
    try:
        yield proc
    finally:
        proc.stop()


def test_the_audio_process_survives_any_frame_sequence(audio: AudioProcess) -> None:
    assert audio.request({"cmd": "start"})["ok"]
    fuzz(audio.control, protocol.AUDIO_COMMANDS, seed=2)
    assert still_answers(audio.control)["ok"]
    assert audio.request({"cmd": "status"}, timeout=10)["state"] == "running", \
        "the stream went on"


def test_the_agent_process_survives_any_frame_sequence(tmp_path: Path) -> None:
    control = f"ipc://{tmp_path}/agent"
    events = zmq.Context.instance().socket(zmq.PULL)
    events.setsockopt(zmq.LINGER, 0)
    events.bind(f"ipc://{tmp_path}/events")
    agent = AgentProcess(control, f"ipc://{tmp_path}/events")
    try:
        deadline = time.monotonic() + 30
        while not agent.ready and time.monotonic() < deadline:
            agent.poke()
            agent.read_replies()
            time.sleep(0.05)
        assert agent.ready
        fuzz(control, protocol.AGENT_COMMANDS, seed=3)
        assert still_answers(control)["ok"]
        assert agent.alive()
    finally:
        agent.kill()
        agent.reap(5)
        agent.close()
        events.close(0)
