"""The local agent server's ``POST /v1/voices/add`` against the real elevenlabs SDK.

Each server is a real ``python -m callctl.engine.agent_server`` subprocess; requests go
over real sockets, through the same port as the websocket conversations.
Every wait is bounded.
"""

from __future__ import annotations

import io
import socket
import time
import wave
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from elevenlabs import ElevenLabs
from elevenlabs.errors.unprocessable_entity_error import UnprocessableEntityError

from callctl.engine.agent_server import wire as p
from callctl.engine.agent_server.voices import VOICES_ADD_PATH, check_audio, parse_form
from tests.engine.test_agent_server import (
    LINES,
    SENTINEL_KEY,
    Events,
    FeedInterface,
    ServerProcess,
    in_thread,
    wait_until,
)
from tests.engine.test_agent_server import script_path as script_path  # noqa: F401 (fixture)

RATE = 16000


def wav_bytes(seconds: float, rate: int = RATE) -> bytes:
    """A mono 16-bit WAV of a quiet tone."""
    t = np.arange(round(seconds * rate)) / rate
    pcm = (3000 * np.sin(2 * np.pi * 200 * t)).astype("<i2")
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(pcm.tobytes())
    return buf.getvalue()


@pytest.fixture
def start_server(script_path: Path) -> Iterator[Callable[..., ServerProcess]]:  # noqa: F811
    started: list[ServerProcess] = []

    def start(*args: str) -> ServerProcess:
        server = ServerProcess("--script", str(script_path), "--log-level", "debug", *args)
        started.append(server)
        return server

    yield start
    for server in started:
        server.kill()


def raw_request(port: int, data: bytes, timeout: float = 5.0) -> bytes:
    """Send raw bytes, read the answer until the server closes."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(data)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def test_the_sdk_clones_a_voice_and_the_key_is_never_logged(
        start_server: Callable[..., ServerProcess]) -> None:
    srv = start_server()
    client = ElevenLabs(api_key=SENTINEL_KEY, base_url=srv.base_url)
    made = client.voices.ivc.create(name="Test voice", files=[("me.wav", wav_bytes(2.0),
                                                               "audio/wav")])
    assert len(made.voice_id) == 20 and made.voice_id.isalnum()
    assert made.requires_verification is False
    two = client.voices.ivc.create(name="Two files", description="d",
                                   files=[wav_bytes(1.0), ("b.wav", io.BytesIO(wav_bytes(1.5)))])
    assert two.voice_id != made.voice_id
    srv.wait_log(r"voices/add received: name 'Test voice', 1 file\(s\), \d+ bytes", 2.0)
    srv.wait_log(rf"voices/add done: voice_id {made.voice_id} \(2\.0 s of audio\)", 2.0)
    srv.wait_log(rf"voices/add done: voice_id {two.voice_id} \(2\.5 s of audio\)", 2.0)
    assert srv.terminate() == 0
    assert SENTINEL_KEY not in srv.output() and "sk_SENTINEL" not in srv.output()
    assert "Traceback" not in srv.output()


def test_errors_are_answered_the_way_the_service_answers_them(
        start_server: Callable[..., ServerProcess]) -> None:
    srv = start_server()
    url = f"{srv.base_url}{VOICES_ADD_PATH}"
    good = {"files": ("me.wav", wav_bytes(1.0), "audio/wav")}
    key = {p.API_KEY_HEADER: "k"}

    for headers in ({}, {p.API_KEY_HEADER: ""}):
        no_key = httpx.post(url, data={"name": "x"}, files=good, headers=headers, timeout=5)
        assert no_key.status_code == 401
        assert no_key.json()["detail"]["status"] == "needs_authorization"

    no_name = httpx.post(url, files=good, headers=key, timeout=5)
    assert no_name.status_code == 422
    assert no_name.json() == {"detail": [{"type": "missing", "loc": ["body", "name"],
                                          "msg": "Field required", "input": None}]}
    no_files = httpx.post(url, data={"name": "x"}, headers=key, timeout=5)
    assert no_files.status_code == 422
    assert [d["loc"] for d in no_files.json()["detail"]] == [["body", "files"]]
    nothing = httpx.post(url, content=b"hello", headers=key, timeout=5)
    assert nothing.status_code == 422 and len(nothing.json()["detail"]) == 2

    client = ElevenLabs(api_key="k", base_url=srv.base_url)
    cases = [
        ({"name": "x", "files": [("notes.txt", b"not audio at all", "text/plain")]},
         "invalid_audio", "is not an audio file"),
        ({"name": "x", "files": [("empty.wav", wav_bytes(0.0), "audio/wav")]},
         "invalid_audio", "holds no audio"),
        ({"name": "x", "files": [("empty.wav", b"", "audio/wav")]}, "invalid_audio", "is empty"),
        ({"name": "   ", "files": [wav_bytes(1.0)]}, "invalid_name", "1 to 100 characters"),
        ({"name": "n" * 101, "files": [wav_bytes(1.0)]}, "invalid_name", "1 to 100 characters"),
    ]
    for kwargs, status, text in cases:
        with pytest.raises(UnprocessableEntityError) as refused:
            client.voices.ivc.create(**kwargs)
        detail = refused.value.body["detail"]
        assert detail["status"] == status and text in detail["message"], detail

    assert httpx.get(url, timeout=5).status_code == 405
    assert httpx.post(f"{srv.base_url}/v1/other", content=b"x", timeout=5).status_code == 404
    # Bodies the server will not read: too large (answered before the body), chunked.
    huge = raw_request(srv.port, b"POST /v1/voices/add HTTP/1.1\r\nHost: x\r\n"
                       b"Content-Length: 999999999\r\n\r\n")
    assert huge.startswith(b"HTTP/1.1 413 ")
    chunked = raw_request(srv.port, b"POST /v1/voices/add HTTP/1.1\r\nHost: x\r\n"
                          b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n")
    assert chunked.startswith(b"HTTP/1.1 411 ")
    garbage = raw_request(srv.port, b"PUT nonsense\r\n\r\n")
    assert garbage.startswith(b"HTTP/1.1 400 ")
    assert srv.terminate() == 0
    assert "Traceback" not in srv.output()


def test_a_slow_upload_holds_up_no_conversation_and_a_client_can_walk_away(
        start_server: Callable[..., ServerProcess]) -> None:
    srv = start_server("--voice-add-delay", "2.0")
    client = ElevenLabs(api_key="k", base_url=srv.base_url)
    began = time.monotonic()
    upload, result = in_thread(lambda: client.voices.ivc.create(name="Slow",
                                                                files=[wav_bytes(1.0)]))
    srv.wait_log(r"voices/add received: name 'Slow'", 2.0)

    # A conversation on the same port meanwhile: greeted at once.
    iface, ev = FeedInterface(), Events()
    conv = ev.conversation(srv.base_url, iface)
    opened = time.monotonic()
    conv.start_session()
    try:
        wait_until(lambda: ev.texts()[:1] == [LINES[0]], 5.0, "the greeting")
        greeted = time.monotonic() - opened
    finally:
        conv.end_session()
        ending, _ = in_thread(conv.wait_for_session_end)
        ending.join(5.0)
    assert greeted < 1.0, f"greeting took {greeted:.2f} s during a slow upload"
    upload.join(5.0)
    assert not upload.is_alive() and "error" not in result, result
    assert time.monotonic() - began >= 2.0 and len(result["result"].voice_id) == 20

    # A client that gives up mid-upload: the server drops the work, then shuts down at once.
    body = io.BytesIO()
    multipart = httpx.Request("POST", f"{srv.base_url}{VOICES_ADD_PATH}", headers={
        p.API_KEY_HEADER: "k"}, data={"name": "Gone"}, files={"files": wav_bytes(0.5)})
    body.write(multipart.read())
    head = "".join(f"{k}: {v}\r\n" for k, v in multipart.headers.items())
    with socket.create_connection(("127.0.0.1", srv.port), timeout=5) as sock:
        sock.sendall(f"POST {VOICES_ADD_PATH} HTTP/1.1\r\n{head}\r\n".encode() + body.getvalue())
        srv.wait_log(r"voices/add received: name 'Gone'", 2.0)
    srv.wait_log(r"POST /v1/voices/add abandoned: the client went away", 2.0)
    upload2, _ = in_thread(lambda: client.voices.ivc.create(name="Cut", files=[wav_bytes(1.0)]))
    srv.wait_log(r"voices/add received: name 'Cut'", 2.0)
    stopping = time.monotonic()
    assert srv.terminate() == 0
    assert time.monotonic() - stopping < 1.5, "shutdown waited for a pending upload"
    upload2.join(5.0)
    assert "voice_id Gone" not in srv.output() and "Traceback" not in srv.output()


def test_form_parsing_and_audio_checks() -> None:
    request = httpx.Request("POST", "http://x/", data={"name": "Zoë", "labels": "null"},
                            files=[("files", ("a.wav", wav_bytes(0.25), "audio/wav")),
                                   ("files", ("b.mp3", b"ID3\x04rest", "audio/mpeg"))])
    fields, files = parse_form(request.headers["content-type"], request.read())
    assert fields == {"name": "Zoë", "labels": "null"}
    assert [(name, len(data)) for name, data in files] == [("a.wav", len(wav_bytes(0.25))),
                                                          ("b.mp3", 8)]
    assert check_audio("a.wav", files[0][1]).duration_s == pytest.approx(0.25)
    assert check_audio("b.mp3", files[1][1]).duration_s is None
    assert parse_form("text/plain", b"name=x") == ({}, [])
    assert parse_form("application/x-www-form-urlencoded", b"name=x&files=y") == (
        {"name": "x"}, [])
    for bad in (b"", b"\x00\x01\x02\x03hello", b"RIFF\x00\x00\x00\x00WAVEjunk"):
        with pytest.raises(ValueError):
            check_audio("x", bad)
