"""A controller as a user runs it: ``callctl serve`` in a subprocess, a client, its events.

``ServedController`` is the one harness the tests (the ``serve`` fixture in
``tests/conftest.py``) and the benchmark (``bench``) drive a controller with:
on the virtual device with a WAV as the caller (``on_virtual``), or on a
private PulseAudio server with an external observer on its speaker
(``on_pulse``). Used from one thread (the test's, the benchmark's main
thread). Every wait is bounded; times are seconds of ``time.monotonic()``.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import zmq

from callctl.engine.control_client import ControlClient
from testing.observer import PlaybackObserver
from testing.processes import StartStop
from testing.pulse import PulseServer

__all__ = ["READY_TIMEOUT_S", "ControllerStartError", "ServedController"]

READY_TIMEOUT_S = 30.0
"""How long a controller (or a window's own) may take to answer once started, seconds: it
starts its audio process and its agent server first, slow on a loaded 2-core machine."""


class ControllerStartError(RuntimeError):
    """The controller exited or did not answer ``status`` in time (its log attached)."""


class ServedController:
    """A ``callctl serve`` subprocess, a control client for it and a subscription to its
    events.

    Attributes:
        proc: the controller process (text mode; stdout as asked, stderr to ``log_path``).
        endpoint / events_endpoint: its control and event endpoints.
        tmp: the directory it works in (its socket, ``serve.log``), the caller's.
        client / sub: the control client and the event subscriber, owned (``close()``).
        events: every event received so far, oldest first (``collect``, ``wait_event``).
    """

    def __init__(self, *serve_args: str, tmp: Path, env: Mapping[str, str] | None = None,
                 stdout: int = subprocess.DEVNULL, ready_timeout: float = READY_TIMEOUT_S,
                 owned: Sequence[StartStop] = ()) -> None:
        """Start ``callctl serve --endpoint ipc://TMP/control SERVE_ARGS…`` and return once
        it answers ``status`` and the event subscription is in place.

        ``env``: the controller's whole environment (None: this process's). ``owned``:
        things ``close()`` stops after the controller, last first (a sound server and
        its observer). Raises ``ControllerStartError`` after ``ready_timeout`` s or
        when the controller exits first; what was started is stopped.
        """
        self.tmp = tmp
        self.endpoint = f"ipc://{tmp}/control"
        self.log_path = tmp / "serve.log"
        self.events: list[dict[str, Any]] = []
        self._owned = list(owned)
        self._pulse: PulseServer | None = None
        self._observer: PlaybackObserver | None = None
        with open(self.log_path, "w") as log:  # the child keeps its own descriptor
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "callctl.cli", "serve",
                 "--endpoint", self.endpoint, *serve_args],
                stdout=stdout, stderr=log, text=True, env=None if env is None else dict(env))
        self.client = ControlClient(self.endpoint)
        self.sub: zmq.Socket = zmq.Context.instance().socket(zmq.SUB)
        self.sub.setsockopt(zmq.LINGER, 0)
        self.sub.setsockopt(zmq.SUBSCRIBE, b"")
        try:
            status = self._wait_ready(ready_timeout)
        except BaseException:
            self.close()
            raise
        self.events_endpoint: str = status["events"]
        self.sub.connect(self.events_endpoint)
        time.sleep(0.2)  # the subscription reaches the publisher before anything is asked

    @classmethod
    def on_virtual(cls, tmp: Path, mic: Path, *serve_args: str,
                   env: Mapping[str, str] | None = None,
                   stdout: int = subprocess.DEVNULL) -> ServedController:
        """On the virtual device: ``mic`` (a WAV, ``testing.sounds.write_caller_wav``) is
        the caller, the speaker is written to ``tmp/speaker.wav``, calls go to
        ``tmp/calls``; ``serve_args`` come after those, so they can override them."""
        return cls("--device", "virtual", "--mic", str(mic), "--speaker",
                   str(tmp / "speaker.wav"), "--record-dir", str(tmp / "calls"), *serve_args,
                   tmp=tmp, env=env, stdout=stdout)

    @classmethod
    def on_pulse(cls, *serve_args: str) -> ServedController:
        """On a private PulseAudio server of its own (``--device pulse``), with a
        ``PlaybackObserver`` on its speaker, in a new temporary directory; ``close()``
        stops both after the controller."""
        tmp = Path(tempfile.mkdtemp(prefix="callctl-served-"))
        pulse = PulseServer().start()
        owned: list[StartStop] = [pulse]
        try:
            observer = PlaybackObserver(pulse).start()
            owned.append(observer)
            served = cls("--device", "pulse", "--record-dir", str(tmp / "calls"), *serve_args,
                         tmp=tmp, env=pulse.child_env(), owned=owned)
        except BaseException:
            for thing in reversed(owned):
                thing.stop()
            raise
        served._pulse, served._observer = pulse, observer
        return served

    @property
    def pulse(self) -> PulseServer:
        """The private PulseAudio server (``on_pulse`` only)."""
        if self._pulse is None:
            raise AttributeError("this controller is not on a private PulseAudio server")
        return self._pulse

    @property
    def observer(self) -> PlaybackObserver:
        """The observer on the server's speaker (``on_pulse`` only)."""
        if self._observer is None:
            raise AttributeError("this controller has no playback observer")
        return self._observer

    def _wait_ready(self, timeout: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise ControllerStartError(
                    f"the controller exited with {self.proc.returncode}:\n" + self.log()[-2000:])
            try:
                return self.client.request({"cmd": "status"}, timeout=1.0)
            except TimeoutError:
                continue
        raise ControllerStartError(
            f"the controller did not answer within {timeout:g} s:\n" + self.log()[-2000:])

    def log(self) -> str:
        """What the controller wrote to stderr so far."""
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    # -- asking and listening -------------------------------------------------------

    def request(self, message: dict[str, Any], timeout: float = 5.0) -> dict[str, Any]:
        """One request, its reply; ``TimeoutError`` after ``timeout`` s."""
        return self.client.request(message, timeout)

    def collect(self, seconds: float, until: str | None = None,
                where: Mapping[str, Any] | None = None) -> dict[str, Any] | None:
        """Receive events into ``events`` for at most ``seconds``; stop at, and return, the
        first one named ``until`` whose fields equal ``where``'s. None when none came."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if not self.sub.poll(20):
                continue
            event = json.loads(self.sub.recv_multipart()[1])
            self.events.append(event)
            if until and event["event"] == until and all(
                    event.get(k) == v for k, v in (where or {}).items()):
                return event
        return None

    def wait_event(self, name: str, timeout: float, **where: Any) -> dict[str, Any] | None:
        """The next event ``name`` with ``where``'s fields, within ``timeout`` s, or None."""
        return self.collect(timeout, until=name, where=where)

    def named(self, name: str) -> list[dict[str, Any]]:
        """The events received so far that are named ``name``."""
        return [e for e in self.events if e["event"] == name]

    def drain_events(self) -> None:
        """Forget the events received so far, and those waiting on the socket."""
        while self.sub.poll(0):
            self.sub.recv_multipart()
        self.events.clear()

    def wait_state(self, state: str, timeout: float = 20.0) -> dict[str, Any]:
        """Poll ``status`` until its state is ``state``; return that status.
        ``TimeoutError`` after ``timeout`` s."""
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            status = self.request({"cmd": "status"})
            last = status["state"]
            if last == state:
                return status
            time.sleep(0.02)
        raise TimeoutError(f"state never became {state!r} (last {last!r})")

    def children(self) -> list[int]:
        """Process ids of the controller's children (audio, agent, post-call…)."""
        out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(self.proc.pid)],
                             capture_output=True, text=True, timeout=5)
        return [int(x) for x in out.stdout.split()]

    def close(self) -> None:
        """Ask the controller to shut down (3 s), wait for it (15 s), else SIGKILL; close
        the client and the subscriber; stop what it owns. Idempotent."""
        if self.proc.poll() is None:
            try:
                self.request({"cmd": "shutdown"}, timeout=3)
                self.proc.wait(15)
            except (TimeoutError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait(5)
        self.client.close()
        self.sub.close(0)
        for thing in reversed(self._owned):
            thing.stop()
        self._owned.clear()
