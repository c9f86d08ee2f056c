"""The offline agent server against the real elevenlabs SDK, real sockets, a real subprocess.

Each server runs as ``python -m callctl.engine.agent_server --port 0`` and is found through
the one line it prints. The caller is a tiny ``AudioInterface`` whose input thread
feeds an espeak-ng recording of caller speech (then silence) at real time.
Every wait is bounded; the whole file runs in well under a minute.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import re
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from elevenlabs import ElevenLabs
from elevenlabs.conversational_ai.conversation import (
    AudioInterface,
    Conversation,
    ConversationInitiationData,
    DisconnectionDetails,
)
from websockets.exceptions import InvalidStatus
from websockets.frames import Frame, Opcode
from websockets.sync.client import ClientConnection
from websockets.sync.client import connect as ws_connect

from callctl.engine.agent_server import wire as p
from callctl.engine.agent_server.conversation import SessionConfig
from callctl.engine.agent_server.script import ScriptError, load_script, parse_script
from callctl.engine.agent_server.server import AgentServer, ServerConfig
from callctl.engine.agent_server.vad import EnergyVad, SpeechEnd, SpeechStart
from callctl.engine.agent_server.voice import Voice, parse_wav, resample

ROOT = Path(__file__).resolve().parents[2]
RATE = 16000
CHUNK = 4000  # samples per input chunk: 250 ms, as the SDK recommends
SENTINEL_KEY = "sk_SENTINEL_d0nt_l0g_me_7f3a91"

LINES = [
    "Hello, test agent here.",
    "Let me tell you about our opening hours. We open at nine in the morning "
    "and close at six in the evening, every day of the week.",
    "Thank you. Your booking for two people tonight is confirmed, "
    "and we look forward to seeing you.",
    "Goodbye.",
]
SCRIPT_TOML = f"""
[agent]
voice = "en-us"
words_per_minute = 175

[turn_taking]
threshold_dbfs = -40.0
min_speech_s = 0.1
hangover_s = 0.5
barge_in_s = 0.2

[dialogue]
lines = {json.dumps(LINES)}
fallback = "Nothing more."
"""


# --------------------------------------------------------------------------- helpers


def wait_until(predicate: Callable[[], Any], timeout: float, what: str) -> Any:
    """Poll ``predicate`` until truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.1f} s waiting for {what}")
        time.sleep(0.02)


def in_thread(fn: Callable[[], Any]) -> tuple[threading.Thread, dict[str, Any]]:
    """Run a blocking call in a daemon thread; the dict gets 'result' or 'error'."""
    out: dict[str, Any] = {}

    def run() -> None:
        try:
            out["result"] = fn()
        except BaseException as exc:  # reported to the test
            out["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, out


class ServerProcess:
    """``python -m callctl.engine.agent_server`` as a subprocess, with its output collected."""

    def __init__(self, *args: str) -> None:
        env = dict(os.environ, PYTHONPATH=str(ROOT), PYTHONUNBUFFERED="1")
        env.pop("ELEVENLABS_API_KEY", None)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "callctl.engine.agent_server", "--port", "0", *args],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.stdout: list[str] = []
        self.stderr: list[str] = []
        self._readers = [
            threading.Thread(target=self._pump, args=(self.proc.stdout, self.stdout), daemon=True),
            threading.Thread(target=self._pump, args=(self.proc.stderr, self.stderr), daemon=True),
        ]
        for reader in self._readers:
            reader.start()
        line = wait_until(lambda: self.stdout[:1], 15.0, "the server's ready line")[0]
        match = re.fullmatch(r"agent-server listening on ws://127\.0\.0\.1:(\d+)", line)
        assert match, line
        self.port = int(match.group(1))
        assert self.port > 0
        self.ws_url = f"ws://127.0.0.1:{self.port}"
        self.base_url = f"http://127.0.0.1:{self.port}"

    @staticmethod
    def _pump(stream: Any, sink: list[str]) -> None:
        for line in stream:
            sink.append(line.rstrip("\n"))

    def output(self) -> str:
        """Everything the server wrote so far, stdout then stderr."""
        return "\n".join(self.stdout + self.stderr)

    def wait_log(self, pattern: str, timeout: float, count: int = 1) -> list[re.Match[str]]:
        """Wait until ``pattern`` matches ``count`` stderr lines; return the matches."""
        regex = re.compile(pattern)

        def found() -> list[re.Match[str]] | None:
            hits = [m for m in map(regex.search, list(self.stderr)) if m]
            return hits if len(hits) >= count else None

        result: list[re.Match[str]] = wait_until(found, timeout, f"log line /{pattern}/")
        return result

    def terminate(self, timeout: float = 5.0) -> int:
        """SIGTERM, then wait (bounded) for the exit status."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        finally:
            for reader in self._readers:
                reader.join(2.0)

    def kill(self) -> None:
        """SIGKILL if still running (fixture clean-up)."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5.0)


class FeedInterface(AudioInterface):
    """Test audio interface: records output, feeds queued caller audio at real time."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.outputs: list[tuple[float, bytes]] = []  # (monotonic time, pcm bytes)
        self.interrupts: list[float] = []
        self.play_end = 0.0  # when a real-time player would finish what it got
        self.speech_started: list[float] = []  # when each queued utterance's first chunk went
        self._pending = np.zeros(0, dtype=np.int16)
        self._new_utterance = False
        self._stop = threading.Event()
        self.stopped = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self, input_callback: Callable[[bytes], None]) -> None:
        def feed() -> None:
            next_tick = time.monotonic()
            while not self._stop.is_set():
                with self.lock:
                    piece = self._pending[:CHUNK]
                    self._pending = self._pending[CHUNK:]
                    if piece.size and self._new_utterance:
                        self._new_utterance = False
                        self.speech_started.append(time.monotonic())
                chunk = np.zeros(CHUNK, dtype=np.int16)
                chunk[: piece.size] = piece
                input_callback(chunk.tobytes())
                next_tick += CHUNK / RATE
                self._stop.wait(max(0.0, next_tick - time.monotonic()))

        self._thread = threading.Thread(target=feed, daemon=True, name="test-input")
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self.stopped.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(2.0)

    def output(self, audio: bytes) -> None:
        now = time.monotonic()
        with self.lock:
            self.outputs.append((now, audio))
            self.play_end = max(self.play_end, now) + len(audio) / (2 * RATE)

    def interrupt(self) -> None:
        now = time.monotonic()
        with self.lock:
            self.interrupts.append(now)
            self.play_end = now

    # test-side controls

    def say(self, pcm: np.ndarray) -> None:
        with self.lock:
            self._pending = np.concatenate([self._pending, pcm.astype(np.int16)])
            self._new_utterance = True

    def speaking(self) -> bool:
        with self.lock:
            return self._pending.size > 0

    def audio_s(self, since: float = 0.0) -> float:
        with self.lock:
            return sum(len(a) for t, a in self.outputs if t >= since) / (2 * RATE)

    def wait_played(self, timeout: float, margin: float = 0.3) -> None:
        """Wait until everything received would have been played at real time."""

        def done() -> bool:
            with self.lock:
                last = self.outputs[-1][0] if self.outputs else 0.0
                end = self.play_end
            now = time.monotonic()
            return now >= end + margin and now >= last + margin

        wait_until(done, timeout, "the agent's audio to finish playing")


class Events:
    """SDK callbacks, recorded."""

    def __init__(self) -> None:
        self.responses: list[tuple[float, str]] = []
        self.transcripts: list[str] = []
        self.corrections: list[tuple[str, str]] = []
        self.latencies: list[int] = []
        self.disconnects: list[DisconnectionDetails] = []

    def conversation(
        self, base_url: str, iface: FeedInterface, *, requires_auth: bool = False,
        api_key: str = "unused-key",
    ) -> Conversation:
        return Conversation(
            ElevenLabs(base_url=base_url, api_key=api_key),
            "agent_test",
            requires_auth=requires_auth,
            audio_interface=iface,
            callback_agent_response=lambda text: self.responses.append((time.monotonic(), text)),
            callback_agent_response_correction=lambda a, b: self.corrections.append((a, b)),
            callback_user_transcript=self.transcripts.append,
            callback_latency_measurement=self.latencies.append,
            callback_disconnect=self.disconnects.append,
        )

    def texts(self) -> list[str]:
        return [text for _, text in self.responses]


def espeak_wav(text: str, path: Path, voice: str = "en-gb", wpm: int = 175) -> np.ndarray:
    """Caller speech: an espeak-ng WAV file, read back as int16 at 16 kHz."""
    subprocess.run(
        ["espeak-ng", "-v", voice, "-s", str(wpm), "-w", str(path), text],
        check=True, timeout=20, capture_output=True,
    )
    pcm, rate = parse_wav(path.read_bytes())
    return resample(pcm, rate, RATE)


def voiced_span_s(pcm: np.ndarray) -> float:
    """First to last sample above -40 dBFS peak, in seconds (independent of the VAD)."""
    loud = np.flatnonzero(np.abs(pcm.astype(np.int32)) > 328)
    return float(loud[-1] - loud[0] + 1) / RATE


def raw_collect(
    ws: ClientConnection, until: Callable[[dict[str, Any]], bool], timeout: float,
    seen: list[dict[str, Any]] | None = None,
) -> list[dict[str, Any]]:
    """Read messages (answering pings) until ``until(msg)``; bounded by ``timeout`` seconds."""
    seen = [] if seen is None else seen
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError(f"timed out; got types {[m.get('type') for m in seen][-20:]}")
        try:
            msg = json.loads(ws.recv(timeout=left))
        except TimeoutError:
            continue
        seen.append(msg)
        if msg.get("type") == "ping":
            ws.send(json.dumps({"type": "pong", "event_id": msg["ping_event"]["event_id"]}))
        if until(msg):
            return seen


def init_message() -> str:
    return json.dumps(
        {
            "type": "conversation_initiation_client_data",
            "custom_llm_extra_body": {},
            "conversation_config_override": {},
            "dynamic_variables": {},
            "source_info": {"source": "raw_test", "version": "0"},
        }
    )


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def script_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("agent") / "script.toml"
    path.write_text(SCRIPT_TOML)
    return path


@pytest.fixture(scope="module")
def caller_speech(tmp_path_factory: pytest.TempPathFactory) -> np.ndarray:
    wav = tmp_path_factory.mktemp("caller") / "caller.wav"
    return espeak_wav("Could you tell me more about that, please?", wav)


@pytest.fixture(scope="module")
def line_durations() -> list[float]:
    voice = Voice("en-us", 175)
    return [len(voice.render(line)) / RATE for line in LINES]


@pytest.fixture
def start_server(script_path: Path) -> Iterator[Callable[..., ServerProcess]]:
    started: list[ServerProcess] = []

    def start(*args: str) -> ServerProcess:
        server = ServerProcess("--script", str(script_path), *args)
        started.append(server)
        return server

    yield start
    for server in started:
        server.kill()


@pytest.fixture(scope="module")
def server(script_path: Path) -> Iterator[ServerProcess]:
    srv = ServerProcess("--script", str(script_path), "--ping-interval", "0.5")
    try:
        yield srv
        assert srv.terminate() == 0, srv.output()
        assert srv.stdout[1:] == [], "only the ready line goes to stdout"
        assert "Traceback" not in srv.output(), srv.output()
    finally:
        srv.kill()


# --------------------------------------------------------------------------- conversation


def test_conversation_turns_barge_in_and_pings(
    server: ServerProcess, caller_speech: np.ndarray, line_durations: list[float]
) -> None:
    iface, ev = FeedInterface(), Events()
    conv = ev.conversation(server.base_url, iface)
    conv.start_session()
    try:
        # Greeting: text first, then 250 ms pcm_16000 chunks faster than real time.
        wait_until(lambda: ev.texts()[:1] == [LINES[0]], 10.0, "the greeting")
        iface.wait_played(10.0)
        assert iface.audio_s() == pytest.approx(line_durations[0], abs=0.01)
        assert max(len(a) for _, a in iface.outputs) == CHUNK * 2
        first_audio = iface.outputs[0][0]
        assert iface.outputs[-1][0] - first_audio < line_durations[0] * 0.8  # faster than real time

        # A caller turn: end of speech by VAD → placeholder transcript → next line.
        iface.say(caller_speech)
        wait_until(lambda: len(ev.transcripts) >= 1, 10.0, "the first transcript")
        match = re.fullmatch(r"\[speech (\d+\.\d) s\]", ev.transcripts[0])
        assert match, ev.transcripts
        assert float(match.group(1)) == pytest.approx(voiced_span_s(caller_speech), abs=0.35)
        wait_until(lambda: len(ev.responses) >= 2, 5.0, "the second line")
        assert ev.texts()[1] == LINES[1]

        # Speaking over the agent for 200 ms or more brings an interruption.
        line1_at = ev.responses[1][0]
        wait_until(lambda: iface.audio_s(line1_at) >= 1.0, 5.0, "the second line's audio")
        iface.say(caller_speech)
        wait_until(lambda: iface.interrupts, 3.0, "an interruption")
        assert 0.0 <= iface.interrupts[0] - iface.speech_started[-1] < 1.0
        over = server.wait_log(r"interruption at event_id (\d+): caller spoke over the agent "
                               r"for (\d+\.\d+) s", 2.0)[0]
        assert float(over.group(2)) >= 0.2
        wait_until(lambda: ev.corrections, 2.0, "the response correction")
        original, corrected = ev.corrections[0]
        assert original == LINES[1]
        assert LINES[1].startswith(corrected) and len(corrected) < len(LINES[1])

        # The rest of the interrupted line is dropped; the next turn gets the next line.
        wait_until(lambda: len(ev.responses) >= 3, 10.0, "the third line")
        assert ev.texts()[2] == LINES[2]
        assert len(ev.transcripts) == 2 and ev.transcripts[1].startswith("[speech ")
        line1_audio = iface.audio_s(line1_at) - iface.audio_s(ev.responses[2][0])
        assert line1_audio < line_durations[1] - 1.0

        # A 120 ms burst over the agent is not a barge-in.
        line2_at = ev.responses[2][0]
        wait_until(lambda: iface.audio_s(line2_at) >= 1.0, 5.0, "the third line's audio")
        t = np.arange(int(0.12 * RATE)) / RATE
        iface.say((8000 * np.sin(2 * np.pi * 440 * t)).astype(np.int16))
        server.wait_log(r"caller speech of 0\.1\d s over the agent ignored", 3.0)
        assert len(iface.interrupts) == 1

        # Pings: answered by the SDK, counted by the server, ping_ms reported to the client.
        pongs = server.wait_log(r"conv_\w+: pong (\d+)/(\d+) \(event_id \d+\) rtt", 3.0, count=3)
        assert int(pongs[-1].group(1)) >= 3
        assert ev.latencies and all(ms >= 1 for ms in ev.latencies)
    finally:
        conv.end_session()
        thread, out = in_thread(conv.wait_for_session_end)
        thread.join(5.0)
    assert not thread.is_alive(), "wait_for_session_end did not return"
    conversation_id = out["result"]
    assert re.fullmatch(r"conv_[0-9a-z]{26}", conversation_id)
    server.wait_log(rf"{conversation_id}: connected from 127\.0\.0\.1", 1.0)
    server.wait_log(rf"{conversation_id}: ended \(client closed 1000\): 2 caller turns", 3.0)
    assert iface.stopped.is_set()


def test_malformed_and_other_client_messages_do_not_end_the_call(
    server: ServerProcess, caller_speech: np.ndarray
) -> None:
    garbage: list[str | bytes] = [
        "not json",
        "[1, 2]",
        '"a string"',
        "{}",
        '{"type": 5}',
        '{"user_audio_chunk": "@@@ not base64"}',
        '{"user_audio_chunk": "AA=="}',  # one byte: not int16
        '{"user_audio_chunk": 42}',
        '{"type": "pong"}',
        '{"type": "pong", "event_id": "x"}',
        '{"type": "contextual_update"}',
        "[" * 100_000 + "]" * 100_000,
        b"\xff\xfe\x00binary",
    ]
    accepted = [
        {"type": "user_activity"},
        {"type": "contextual_update", "text": "The caller is in a hurry."},
        {"type": "feedback", "score": "like", "event_id": 1},
        {"type": "client_tool_result", "tool_call_id": "t1", "result": "ok", "is_error": False},
        {"type": "pong", "event_id": 987654},  # well formed, but no such ping: logged
        {"type": "some_future_event", "x": 1},  # unknown type: logged
    ]
    with ws_connect(f"{server.ws_url}{p.CONVERSATION_PATH}?agent_id=raw", close_timeout=2) as ws:
        ws.send(init_message())
        seen = raw_collect(ws, lambda m: m.get("type") == "audio", 5.0)
        meta = seen[0]["conversation_initiation_metadata_event"]
        assert seen[0]["type"] == "conversation_initiation_metadata"
        assert meta["agent_output_audio_format"] == meta["user_input_audio_format"] == "pcm_16000"
        conv_id = meta["conversation_id"]
        for frame in garbage:
            ws.send(frame)
        for msg in accepted:
            ws.send(json.dumps(msg))
        # The call goes on: a text turn and a spoken turn are both answered.
        ws.send(json.dumps({"type": "user_message", "text": "hi"}))
        raw_collect(ws, lambda m: m.get("type") == "agent_response"
                    and m["agent_response_event"]["agent_response"] == LINES[1], 5.0, seen)
        speech = np.concatenate([caller_speech, np.zeros(RATE, dtype=np.int16)])
        for start in range(0, len(speech), CHUNK):
            chunk = speech[start : start + CHUNK].tobytes()
            ws.send(json.dumps({"user_audio_chunk": base64.b64encode(chunk).decode()}))
        raw_collect(ws, lambda m: m.get("type") == "agent_response"
                    and m["agent_response_event"]["agent_response"] == LINES[2], 8.0, seen)
        types = [m["type"] for m in seen]
        assert types.count("user_transcript") == 1, types  # the text turn has none
        ids = [m["audio_event"]["event_id"] for m in seen if m["type"] == "audio"]
        assert ids == sorted(set(ids)) and ids[0] >= 1, "audio event ids rise"
        t0 = time.monotonic()
    assert time.monotonic() - t0 < 1.0, "a normal close is answered at once"

    server.wait_log(rf"{conv_id}: ended \(client closed 1000\)", 3.0)
    malformed = server.wait_log(rf"{conv_id}: malformed message ignored", 1.0, len(garbage))
    assert len(malformed) == len(garbage)
    server.wait_log(rf"{conv_id}: unknown message type 'some_future_event' ignored", 1.0)
    server.wait_log(rf"{conv_id}: pong for unknown ping event_id 987654 ignored", 1.0)
    server.wait_log(rf"{conv_id}: contextual update \(25 chars\)", 1.0)
    assert not [line for line in server.stderr if conv_id in line and "Traceback" in line]


def test_text_only_overrides_and_user_messages(server: ServerProcess) -> None:
    responses: list[str] = []
    conv = Conversation(
        ElevenLabs(base_url=server.base_url, api_key="unused-key"),
        "agent_text",
        requires_auth=False,
        audio_interface=None,  # the SDK then asks for a text-only conversation
        config=ConversationInitiationData(
            conversation_config_override={"agent": {"first_message": "Hi {{name}}, welcome."}},
            dynamic_variables={"name": "Ada"},
        ),
        callback_agent_response=responses.append,
    )
    conv.start_session()
    try:
        wait_until(lambda: responses[:1] == ["Hi Ada, welcome."], 5.0, "the overridden greeting")
        conv.send_user_message("hello")
        conv.send_contextual_update("The caller is on a train.")
        conv.register_user_activity()
        wait_until(lambda: responses[1:2] == [LINES[1]], 5.0, "the answer to a text message")
    finally:
        conv.end_session()
        thread, out = in_thread(conv.wait_for_session_end)
        thread.join(5.0)
    assert not thread.is_alive()
    conv_id = out["result"]
    server.wait_log(rf"{conv_id}: initiation from python_sdk [\d.]+, text only, "
                    r"first_message override", 1.0)
    server.wait_log(rf"{conv_id}: agent line 0 \(0\.0 s\): Hi Ada, welcome\.", 1.0)
    server.wait_log(rf"{conv_id}: ended \(client closed 1000\): 1 caller turns, 2 lines", 3.0)


# --------------------------------------------------------------------------- auth


def test_signed_url_with_api_key_and_key_never_logged(start_server: Callable[..., ServerProcess]
                                                      ) -> None:
    srv = start_server("--require-auth", "--log-level", "debug")
    url = f"{srv.base_url}{p.SIGNED_URL_PATH}"
    assert httpx.get(url, params={"agent_id": "a"}, timeout=5).status_code == 401
    assert httpx.get(url, params={"agent_id": "a"}, headers={"xi-api-key": ""},
                     timeout=5).status_code == 401
    with pytest.raises(InvalidStatus) as refused:
        ws_connect(f"{srv.ws_url}{p.CONVERSATION_PATH}?agent_id=a", open_timeout=5)
    assert refused.value.response.status_code == 403  # require-auth: no token, no call
    with pytest.raises(InvalidStatus) as forged:
        ws_connect(f"{srv.ws_url}{p.CONVERSATION_PATH}?agent_id=a&conversation_signature=forged",
                   open_timeout=5)
    assert forged.value.response.status_code == 403

    iface, ev = FeedInterface(), Events()
    conv = ev.conversation(srv.base_url, iface, requires_auth=True, api_key=SENTINEL_KEY)
    conv.start_session()  # calls GET .../get-signed-url with the xi-api-key header
    try:
        wait_until(lambda: ev.texts()[:1] == [LINES[0]], 10.0, "the greeting")
        wait_until(lambda: iface.audio_s() > 0.5, 5.0, "greeting audio")
    finally:
        conv.end_session()
        thread, out = in_thread(conv.wait_for_session_end)
        thread.join(5.0)
    assert not thread.is_alive()
    assert out["result"].startswith("conv_")
    srv.wait_log(r"signed URL issued for agent 'agent_test'", 1.0)
    assert srv.terminate() == 0
    assert SENTINEL_KEY not in srv.output()
    assert "sk_SENTINEL" not in srv.output()


# --------------------------------------------------------------------------- faults


def test_fault_stall_freezes_reads_writes_and_close(
    start_server: Callable[..., ServerProcess],
) -> None:
    srv = start_server("--fault", "stall", "--fault-after", "0.5", "--ping-interval", "0.3")
    iface, ev = FeedInterface(), Events()
    conv = ev.conversation(srv.base_url, iface)
    conv.start_session()
    wait_until(lambda: ev.texts()[:1] == [LINES[0]], 10.0, "the greeting")
    srv.wait_log(r"fault stall: no more reading", 3.0)
    time.sleep(0.2)
    got = len(iface.outputs)
    time.sleep(0.6)
    assert len(iface.outputs) == got, "a stalled peer writes nothing"

    # A second client floods the stalled peer: TCP backpressure blocks its writes.
    flood_url = f"{srv.ws_url}{p.CONVERSATION_PATH}?agent_id=flood"
    # No deflate: every byte sent is a byte on the wire.
    with ws_connect(flood_url, close_timeout=1, compression=None) as flood:
        flood.send(init_message())
        srv.wait_log(r"fault stall: no more reading", 5.0, count=2)
        sent = [0]

        def flood_send() -> None:
            blob = json.dumps({"user_audio_chunk": base64.b64encode(os.urandom(192_000)).decode()})
            for _ in range(400):  # ~100 MB, more than the kernel buffers can hold
                flood.send(blob)
                sent[0] += len(blob)

        flooder, _ = in_thread(flood_send)
        time.sleep(1.5)
        assert flooder.is_alive(), f"writes never blocked ({sent[0] / 1e6:.1f} MB sent)"
        stuck_at = sent[0]
        time.sleep(0.5)
        assert sent[0] == stuck_at, "writes block for good: nobody reads"

        # end_session returns, but the close handshake is never answered.
        ender, _ = in_thread(conv.end_session)
        ender.join(2.0)
        assert not ender.is_alive(), "end_session itself must not block"
        waiter, out = in_thread(conv.wait_for_session_end)
        waiter.join(2.5)
        assert waiter.is_alive(), "wait_for_session_end completed against a stalled peer"

        # SIGTERM still shuts the server down cleanly, which releases both clients.
        assert srv.terminate(5.0) == 0
        waiter.join(5.0)
        flooder.join(5.0)
        assert not waiter.is_alive() and not flooder.is_alive()
        assert out["result"].startswith("conv_")


def test_fault_slow_close_never_answers_the_close_handshake(
    start_server: Callable[..., ServerProcess],
) -> None:
    srv = start_server("--fault", "slow-close", "--ping-interval", "0.3")
    # A raw client with a 1 s close timeout: close() waits it out, then drops TCP.
    with ws_connect(f"{srv.ws_url}{p.CONVERSATION_PATH}?agent_id=raw", close_timeout=1.0) as ws:
        ws.send(init_message())
        seen = raw_collect(ws, lambda m: m.get("type") == "ping", 5.0)  # the call works normally
        conv_id = seen[0]["conversation_initiation_metadata_event"]["conversation_id"]
        t0 = time.monotonic()
    assert time.monotonic() - t0 >= 0.9, "the close handshake was answered"
    srv.wait_log(rf"{conv_id}: fault slow-close: close frame from the client not answered", 1.0)
    srv.wait_log(rf"{conv_id}: ended \(connection lost without close frame\)", 3.0)

    # The SDK: end_session returns, wait_for_session_end hangs on the close handshake.
    iface, ev = FeedInterface(), Events()
    conv = ev.conversation(srv.base_url, iface)
    conv.start_session()
    wait_until(lambda: ev.texts()[:1] == [LINES[0]], 10.0, "the greeting")
    srv.wait_log(r"pong 1/", 3.0)
    conv.end_session()
    waiter, out = in_thread(conv.wait_for_session_end)
    waiter.join(2.0)
    assert waiter.is_alive(), "wait_for_session_end completed although close was not answered"
    assert srv.terminate(5.0) == 0  # the server's own close (1001) releases the client
    waiter.join(5.0)
    assert not waiter.is_alive()
    assert out["result"].startswith("conv_")


def test_fault_drop_resets_the_connection_mid_call(
    start_server: Callable[..., ServerProcess],
) -> None:
    srv = start_server("--fault", "drop", "--fault-after", "0.5")
    iface, ev = FeedInterface(), Events()
    conv = ev.conversation(srv.base_url, iface)
    conv.start_session()
    wait_until(lambda: ev.texts()[:1] == [LINES[0]], 10.0, "the greeting")
    wait_until(lambda: ev.disconnects, 5.0, "the SDK to notice the drop")
    details = ev.disconnects[0]
    assert details.reason == "error" and details.close_code == 1006  # no close frame
    waiter, out = in_thread(conv.wait_for_session_end)  # no end_session needed
    waiter.join(3.0)
    assert not waiter.is_alive()
    assert out["result"].startswith("conv_")
    assert iface.stopped.is_set()
    srv.wait_log(r"fault drop: resetting the TCP connection", 1.0)
    srv.wait_log(r"ended \(connection lost without close frame\)", 3.0)
    assert srv.terminate() == 0


# --------------------------------------------------------------------------- no task left behind


def _raw_handshake(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall(
        (
            f"GET {p.CONVERSATION_PATH}?agent_id=t HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
            f"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
            "Sec-WebSocket-Version: 13\r\n\r\n"
        ).encode()
    )
    head = b""
    while b"\r\n\r\n" not in head:
        data = sock.recv(4096)
        assert data, "server closed during the handshake"
        head += data
    assert head.startswith(b"HTTP/1.1 101"), head[:80]
    return sock


def _send_text(sock: socket.socket, text: str) -> None:
    sock.sendall(Frame(Opcode.TEXT, text.encode()).serialize(mask=True, extensions=[]))


def _read_at_least(sock: socket.socket, n_bytes: int) -> None:
    got = 0
    while got < n_bytes:
        data = sock.recv(65536)
        assert data, "server closed"
        got += len(data)


def _vanish(sock: socket.socket, reset: bool) -> None:
    if reset:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def test_vanished_clients_leave_no_task_behind(caller_speech: np.ndarray) -> None:
    script = parse_script(SCRIPT_TOML)
    # A long ping interval: a pinger left behind would still be asleep at the check.
    config = ServerConfig(session=SessionConfig(ping_interval_s=30.0, init_timeout_s=0.5))
    speech = caller_speech[: RATE // 2].tobytes()

    def mid_greeting_reset(port: int) -> None:
        sock = _raw_handshake(port)
        _send_text(sock, init_message())
        _read_at_least(sock, 20_000)  # metadata + audio are flowing
        _send_text(sock, json.dumps({"user_audio_chunk": base64.b64encode(speech).decode()}))
        _vanish(sock, reset=True)

    def before_initiation(port: int) -> None:
        _vanish(_raw_handshake(port), reset=False)

    def mid_line_fin(port: int) -> None:
        sock = _raw_handshake(port)
        _send_text(sock, init_message())
        _read_at_least(sock, 4_000)
        _send_text(sock, json.dumps({"type": "user_message", "text": "next"}))
        _vanish(sock, reset=False)

    def after_close_frame(port: int) -> None:
        with ws_connect(f"ws://127.0.0.1:{port}{p.CONVERSATION_PATH}?agent_id=t") as ws:
            ws.send(init_message())
            raw_collect(ws, lambda m: m.get("type") == "audio", 5.0)

    async def scenario() -> None:
        async with AgentServer(script, config) as server:
            baseline = len(asyncio.all_tasks())
            for client in (mid_greeting_reset, before_initiation, mid_line_fin, after_close_frame):
                await asyncio.to_thread(client, server.port)
                deadline = time.monotonic() + 3.0
                while len(asyncio.all_tasks()) != baseline or server.session_count:
                    assert time.monotonic() < deadline, (
                        f"{client.__name__}: {len(asyncio.all_tasks()) - baseline} tasks left: "
                        f"{asyncio.all_tasks()}"
                    )
                    await asyncio.sleep(0.02)

    asyncio.run(asyncio.wait_for(scenario(), 30.0))


# --------------------------------------------------------------------------- parts alone


def test_vad_onset_hangover_and_duration() -> None:
    vad = EnergyVad(threshold_dbfs=-40.0, min_speech_s=0.1, hangover_s=0.5)
    t = np.arange(RATE) / RATE
    tone = (8000 * np.sin(2 * np.pi * 300 * t)).astype(np.int16)
    silence = np.zeros(RATE, dtype=np.int16)
    click = tone[: int(0.04 * RATE)]  # 40 ms: below min_speech_s
    # 0.6 s speech, 0.3 s gap (inside the hangover), 0.5 s speech, then silence.
    stream = np.concatenate([silence[:3200], click, silence[:9600], tone[:9600], silence[:4800],
                             tone[:8000], silence])
    events = []
    for start in range(0, len(stream), 1000):  # odd chunk sizes on purpose
        events += vad.feed(stream[start : start + 1000])
    assert [type(e) for e in events] == [SpeechStart, SpeechEnd]
    start_ev, end_ev = events
    assert isinstance(start_ev, SpeechStart) and isinstance(end_ev, SpeechEnd)
    assert start_ev.at_s == pytest.approx(0.2 + 0.04 + 0.6, abs=0.021)
    assert end_ev.duration_s == pytest.approx(0.6 + 0.3 + 0.5, abs=0.041)
    assert not vad.in_speech


def test_scripts_and_protocol_parsing(tmp_path: Path) -> None:
    default = load_script()
    assert len(default.lines) >= 3 and default.greeting.startswith("Hello")
    assert default.turn_taking.barge_in_s == pytest.approx(0.2)
    assert default.reply(99) == default.fallback
    with pytest.raises(ScriptError):
        parse_script("[dialogue]\nlines = []\n")
    with pytest.raises(ScriptError):
        parse_script('[agent]\nvoice = "en; rm -rf"\n[dialogue]\nlines = ["hi"]\n')
    with pytest.raises(ScriptError):
        load_script(tmp_path / "missing.toml")
    msg = p.parse_client_message('{"type": "conversation_initiation_client_data", '
                                 '"conversation_config_override": {"agent": '
                                 '{"first_message": "Hi {{name}}"}}}')
    assert isinstance(msg, p.InitiationData) and msg.first_message == "Hi {{name}}"
    assert p.parse_client_message('{"type": "pong", "event_id": 3}') == p.Pong(3)
    assert isinstance(p.parse_client_message('{"type": "x"}'), p.UnknownMessage)
    assert p.speech_placeholder(1.44) == "[speech 1.4 s]"
