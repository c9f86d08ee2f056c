"""Shared fixtures: a caller's voice, and a running controller (`callctl serve`) as a subprocess."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zmq

from callctl.engine.control_client import ControlClient
from callctl.engine.wavfile import GrowingWav

RATE = 16_000
CALLER_LINE = "Hello, I would like to book a table for two people tonight please."


@pytest.fixture(scope="session")
def caller_speech() -> np.ndarray:
    """A caller's sentence, int16 at 16 kHz, voiced by espeak-ng."""
    from callctl.engine.agent_server.voice import Voice

    return Voice().render(CALLER_LINE)


def write_caller_wav(path: Path, speech: np.ndarray, at: list[float], total: float) -> Path:
    """A microphone WAV: silence with ``speech`` starting at each time in ``at`` (seconds)."""
    mic = np.zeros(int(total * RATE), np.int16)
    for t in at:
        start = int(t * RATE)
        part = speech[: max(0, len(mic) - start)]
        mic[start : start + len(part)] = part
    wav = GrowingWav(path, RATE, 1)
    wav.append(mic)
    wav.close()
    return path


@dataclass
class Served:
    """A `callctl serve` subprocess and a client for it."""

    proc: subprocess.Popen[str]
    endpoint: str
    tmp: Path
    events_endpoint: str = ""
    client: ControlClient | None = None
    sub: zmq.Socket | None = None
    events: list[dict[str, Any]] = field(default_factory=list)

    def request(self, message: dict[str, Any], timeout: float = 5.0) -> dict[str, Any]:
        assert self.client is not None
        return self.client.request(message, timeout)

    def collect(self, seconds: float, until: str | None = None,
                where: dict[str, Any] | None = None) -> dict[str, Any] | None:
        """Gather events for at most ``seconds``; return the first ``until`` event matching."""
        assert self.sub is not None
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if not self.sub.poll(20):
                continue
            _, body = self.sub.recv_multipart()
            event = json.loads(body)
            self.events.append(event)
            if until and event["event"] == until and all(
                    event.get(k) == v for k, v in (where or {}).items()):
                return event
        return None

    def named(self, name: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e["event"] == name]

    def wait_state(self, state: str, timeout: float = 20.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            status = self.request({"cmd": "status"})
            if status["state"] == state:
                return status
            time.sleep(0.05)
        raise AssertionError(f"state never became {state!r} (last {status['state']!r})")

    def children(self) -> list[int]:
        out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(self.proc.pid)],
                             capture_output=True, text=True, timeout=5)
        return [int(x) for x in out.stdout.split()]


@pytest.fixture
def serve(tmp_path: Path, caller_speech: np.ndarray) -> Iterator[Any]:
    """Factory: ``serve(*args, speech_at=[...])``: a controller on the virtual device."""
    started: list[Served] = []

    def start(*extra: str, speech_at: list[float] | None = None, total: float = 40.0,
              env: dict[str, str] | None = None) -> Served:
        mic = write_caller_wav(tmp_path / "mic.wav", caller_speech,
                               speech_at if speech_at is not None else [6.0], total)
        endpoint = f"ipc://{tmp_path}/control"
        proc = subprocess.Popen(
            [sys.executable, "-m", "callctl.controller.cli", "serve", "--endpoint", endpoint,
             "--device", "virtual", "--mic", str(mic), "--speaker", str(tmp_path / "speaker.wav"),
             "--record-dir", str(tmp_path / "calls"), *extra],
            stdout=subprocess.PIPE, stderr=open(tmp_path / "serve.log", "w"),  # noqa: SIM115
            text=True, env=env)
        served = Served(proc, endpoint, tmp_path)
        started.append(served)
        served.client = ControlClient(endpoint)
        deadline = time.monotonic() + 30
        while True:
            try:
                status = served.request({"cmd": "status"}, timeout=1.0)
                break
            except TimeoutError:
                assert proc.poll() is None, (tmp_path / "serve.log").read_text()
                assert time.monotonic() < deadline, "controller did not start"
        served.events_endpoint = status["events"]
        sub = zmq.Context.instance().socket(zmq.SUB)
        sub.setsockopt(zmq.LINGER, 0)
        sub.setsockopt(zmq.SUBSCRIBE, b"")
        sub.connect(served.events_endpoint)
        served.sub = sub
        time.sleep(0.2)  # the subscription reaches the publisher
        return served

    yield start
    for served in started:
        if served.proc.poll() is None:
            try:
                served.request({"cmd": "shutdown"}, timeout=2)
            except (TimeoutError, AssertionError):
                pass
            try:
                served.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.kill(served.proc.pid, signal.SIGKILL)
                served.proc.wait(5)
        if served.client:
            served.client.close()
        if served.sub is not None:
            served.sub.close(0)
