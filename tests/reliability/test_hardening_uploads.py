"""Issue 14, item 10: ``POST /v1/voices/add`` keeps the agent server's memory bounded.

A real ``python -m callctl.engine.agent_server`` process; ``UPLOADS`` parallel uploads
of a 60 MB WAV (the ElevenLabs SDK's multipart form, sent with httpx) while
its resident memory is read from ``/proc/PID/status`` every 10 ms; the
kernel's high-water mark (``VmHWM``) gives the peak. A server crossing
``RSS_LIMIT`` is killed at once, so a regression costs the machine little.

    pytest -s tests/reliability/test_hardening_uploads.py   # prints the figures
"""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from callctl.engine.agent_server import http as agent_http
from callctl.engine.agent_server import wire as p
from callctl.engine.agent_server.voices import VOICES_ADD_PATH
from tests.engine.test_agent_server import ServerProcess, wait_until
from tests.engine.test_agent_server import script_path as script_path  # noqa: F401 (fixture)

UPLOADS = 4
"""Parallel uploads the server takes (``MAX_CONCURRENT_UPLOADS``); one more is refused (503)."""
UPLOAD_BYTES = 60_000_000
RSS_LIMIT = 200 * 1024 * 1024


def vm(pid: int, field: str) -> int:
    """``VmRSS`` / ``VmHWM`` of ``pid`` in bytes (0 once it is gone)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except FileNotFoundError:
        return 0
    return 0


def tmp_files_open(pid: int) -> list[str]:
    """Unnamed or deleted temporary files ``pid`` holds open (spooled bodies)."""
    held = []
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if "(deleted)" in target:
            held.append(target)
    return held


def voice_form(size: int, name: str) -> tuple[bytes, str]:
    """A multipart ``voices/add`` body with one WAV of ``size`` bytes, as the SDK sends it."""
    header = (b"RIFF" + (size - 8).to_bytes(4, "little") + b"WAVEfmt "
              + bytes.fromhex("1000000001000100803e0000007d00000200100064617461")
              + (size - 44).to_bytes(4, "little"))
    wav = header + bytes(size - len(header))
    request = httpx.Request("POST", "http://x/", data={"name": name},
                            files={"files": ("me.wav", wav, "audio/wav")})
    return request.read(), request.headers["content-type"]


class Watch:
    """Samples a process's RSS every 10 ms; SIGKILLs it past ``RSS_LIMIT``."""

    def __init__(self, server: ServerProcess) -> None:
        self.server = server
        self.pid = server.proc.pid
        self.peak = 0
        self.killed_at: int | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.01):
            rss = vm(self.pid, "VmRSS")
            self.peak = max(self.peak, rss)
            if rss > RSS_LIMIT:
                self.killed_at = rss
                self.server.kill()
                return

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(2.0)


@pytest.fixture
def server(script_path: Path) -> Iterator[ServerProcess]:  # noqa: F811
    srv = ServerProcess("--script", str(script_path), "--voice-add-delay", "3")
    yield srv
    srv.kill()


def post(url: str, body: bytes, content_type: str, out: dict[str, Any]) -> None:
    try:
        r = httpx.post(url, content=body, timeout=60,
                       headers={"content-type": content_type, p.API_KEY_HEADER: "k"})
        out["status"], out["json"] = r.status_code, r.json()
    except Exception as exc:  # reported by the assertion that reads ``out``
        out["error"] = f"{type(exc).__name__}: {exc}"


def test_parallel_60_mb_uploads_stay_under_200_mb_and_one_more_is_refused(
        server: ServerProcess) -> None:
    assert getattr(agent_http, "MAX_CONCURRENT_UPLOADS", None) == UPLOADS
    url = f"{server.base_url}{VOICES_ADD_PATH}"
    body, content_type = voice_form(UPLOAD_BYTES, "Big")
    baseline = vm(server.proc.pid, "VmRSS")
    watch = Watch(server)
    try:
        # An upload cut off half-way first: its slot and its spooled file must be freed.
        with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
            sock.sendall(f"POST {VOICES_ADD_PATH} HTTP/1.1\r\nHost: x\r\nxi-api-key: k\r\n"
                         f"Content-Type: {content_type}\r\nContent-Length: {len(body)}\r\n\r\n"
                         .encode() + body[: len(body) // 2])
        results: list[dict[str, Any]] = [{} for _ in range(UPLOADS)]
        threads = [threading.Thread(target=post, args=(url, body, content_type, out))
                   for out in results]
        began = time.monotonic()
        for t in threads:
            t.start()
        # While all of them are held (the server answers 3 s after each is received):
        wait_until(lambda: watch.killed_at is not None or sum(
            "voices/add received: name 'Big'" in line for line in list(server.stderr)
        ) >= UPLOADS, 60.0, f"{UPLOADS} uploads received")
        assert watch.killed_at is None, f"RSS reached {watch.killed_at / 2**20:.0f} MB: killed"
        extra_body, extra_type = voice_form(2_000_000, "One too many")
        extra: dict[str, Any] = {}
        post(url, extra_body, extra_type, extra)
        for t in threads:
            t.join(90.0)
        took = time.monotonic() - began
    finally:
        watch.stop()
    hwm = vm(server.proc.pid, "VmHWM")
    print(f"\n{UPLOADS} parallel uploads of {UPLOAD_BYTES / 1e6:.0f} MB in {took:.1f} s: "
          f"RSS {baseline / 2**20:.0f} MB before, peak {watch.peak / 2**20:.0f} MB sampled, "
          f"VmHWM {hwm / 2**20:.0f} MB")
    assert watch.killed_at is None, f"RSS reached {watch.killed_at / 2**20:.0f} MB: killed"
    assert not any(t.is_alive() for t in threads)
    for out in results:
        assert out.get("status") == 200 and len(out["json"]["voice_id"]) == 20, out
    assert extra.get("status") == 503, extra
    assert hwm < RSS_LIMIT
    # Nothing left behind; the slots are free again; the server lives on.
    wait_until(lambda: not tmp_files_open(server.proc.pid), 5.0, "spooled files closed")
    again: dict[str, Any] = {}
    post(url, extra_body, extra_type, again)
    assert again.get("status") == 200, again
    assert server.terminate() == 0
    assert "Traceback" not in server.output()
