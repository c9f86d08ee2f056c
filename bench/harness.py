"""Benchmark harness: a controller on a real sound server, an external observer, CPU load.

``ControllerOnPulse`` runs ``callctl serve --device pulse`` against a private
PulseAudio daemon (``engine.soundserver``), with a ``PlaybackObserver``
recording the speaker's monitor: hangup → silence is read off that
recording, never taken from the engine's own report.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import zmq

from callctl.engine.control_client import ControlClient
from callctl.engine.soundserver import PlaybackObserver, PulseServer


def summarise(values: list[float]) -> dict[str, float | int | None]:
    """Median, p90, p99, max, mean and count (None when empty); units as given."""
    if not values:
        return {"n": 0, "median": None, "p90": None, "p99": None, "max": None, "mean": None}
    ordered = sorted(values)

    def pct(p: float) -> float:
        return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]

    return {"n": len(values), "median": round(statistics.median(ordered), 2),
            "p90": round(pct(90), 2), "p99": round(pct(99), 2), "max": round(ordered[-1], 2),
            "mean": round(statistics.fmean(ordered), 2)}


class ControllerOnPulse:
    """A `callctl serve` on a private PulseAudio server, its events, and an observer."""

    def __init__(self, *serve_args: str) -> None:
        self.tmp = Path(tempfile.mkdtemp(prefix="callctl-bench-"))
        self.pulse = PulseServer().start()
        self.observer = PlaybackObserver(self.pulse).start()
        self.endpoint = f"ipc://{self.tmp}/control"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "callctl.controller.cli", "serve", "--endpoint", self.endpoint,
             "--device", "pulse", "--record-dir", str(self.tmp / "calls"), *serve_args],
            stdout=subprocess.DEVNULL, stderr=open(self.tmp / "serve.log", "w"),  # noqa: SIM115
            env=self.pulse.child_env())
        self.client = ControlClient(self.endpoint)
        status = self._wait_ready()
        self.sub: zmq.Socket = zmq.Context.instance().socket(zmq.SUB)
        self.sub.setsockopt(zmq.LINGER, 0)
        self.sub.setsockopt(zmq.SUBSCRIBE, b"")
        self.sub.connect(status["events"])
        time.sleep(0.3)

    def _wait_ready(self) -> dict[str, Any]:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError((self.tmp / "serve.log").read_text()[-2000:])
            try:
                return self.client.request({"cmd": "status"}, timeout=1)
            except TimeoutError:
                pass
        raise RuntimeError("controller did not start")

    def request(self, message: dict[str, Any], timeout: float = 5.0) -> dict[str, Any]:
        return self.client.request(message, timeout)

    def wait_event(self, name: str, timeout: float, **where: Any) -> dict[str, Any] | None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.sub.poll(20):
                event = json.loads(self.sub.recv_multipart()[1])
                if event["event"] == name and all(event.get(k) == v for k, v in where.items()):
                    return event
        return None

    def drain_events(self) -> None:
        """Forget the events received so far."""
        while self.sub.poll(0):
            self.sub.recv_multipart()

    def wait_state(self, state: str, timeout: float = 20.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            status = self.request({"cmd": "status"})
            if status["state"] == state:
                return status
            time.sleep(0.02)
        raise RuntimeError(f"state never became {state}")

    def close(self) -> None:
        try:
            self.request({"cmd": "shutdown"}, timeout=3)
            self.proc.wait(15)
        except (TimeoutError, subprocess.TimeoutExpired):
            self.proc.kill()
            self.proc.wait()
        self.client.close()
        self.sub.close(0)
        self.observer.stop()
        self.pulse.stop()


def _spin(stop_at: float) -> None:
    while time.monotonic() < stop_at:
        pass


class CpuLoad:
    """``n`` processes that keep a core busy each, for at most ``seconds``."""

    def __init__(self, n: int = os.cpu_count() or 2, seconds: float = 900) -> None:
        stop_at = time.monotonic() + seconds
        ctx = mp.get_context("spawn")
        self.procs = [ctx.Process(target=_spin, args=(stop_at,), daemon=True) for _ in range(n)]
        for p in self.procs:
            p.start()

    def stop(self) -> None:
        for p in self.procs:
            p.kill()
            p.join(5)
