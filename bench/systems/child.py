"""A baseline that runs as a child process steered over stdin/stdout JSON lines.

The protocol (``bench.sdk_baseline``, ``bench.pipecat_baseline``): commands
``call``, ``interrupt``, ``hangup``, ``quit`` on stdin; events as JSON lines
on stdout (``ready``, ``started``, ``interrupted``, ``hungup``, ``error``),
times in ``time.monotonic()`` seconds.
"""

from __future__ import annotations

import json
import queue
import subprocess
import threading
import time
from collections.abc import Sequence
from typing import IO, Any

from testing.observer import PlaybackObserver
from testing.pulse import PulseServer


class ChildError(RuntimeError):
    """The child said ``error``, exited, or did not answer in time."""


class LineChild:
    """A child process speaking the baseline line protocol. Main thread only, but for the
    reader thread that queues its lines."""

    def __init__(self, argv: Sequence[str], env: dict[str, str], log: IO[Any]) -> None:
        self.proc = subprocess.Popen(list(argv), env=env, stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=log, text=True, bufsize=1)
        self._lines: queue.Queue[dict[str, Any] | None] = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True, name="baseline-reader")
        self._reader.start()
        self.pid = int(self.expect("ready", 60)["pid"])

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            try:
                self._lines.put(json.loads(line))
            except ValueError:
                continue  # a library printed to stdout: not ours
        self._lines.put(None)

    def send(self, command: str) -> float:
        """Write one command; return the time just before it was written."""
        assert self.proc.stdin is not None
        t = time.monotonic()
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()
        return t

    def expect(self, event: str, timeout: float) -> dict[str, Any]:
        """The next line with ``event`` (others of kind ``interrupted`` are kept aside)."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise ChildError(f"no {event!r} from the baseline within {timeout} s")
            try:
                line = self._lines.get(timeout=left)
            except queue.Empty:
                continue
            if line is None:
                raise ChildError(f"the baseline exited ({self.proc.poll()}) before {event!r}")
            if line.get("event") == "error":
                raise ChildError(f"the baseline failed: {line.get('message')}")
            if line.get("event") == event:
                return line

    def drain(self) -> None:
        """Forget queued lines (an interruption reported after the one measured)."""
        while True:
            try:
                if self._lines.get_nowait() is None:
                    self._lines.put(None)
                    return
            except queue.Empty:
                return

    def close(self) -> None:
        try:
            self.send("quit")
        except (BrokenPipeError, OSError):
            pass
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
        self._reader.join(2)


class ChildSystem:
    """Shared by the SDK and Pipecat drivers: a private server, an observer, a child."""

    key = ""
    label = ""
    SESSION_BOUND_S = 5.0

    def __init__(self) -> None:
        self.pulse = PulseServer().start()
        self.observer = PlaybackObserver(self.pulse).start()
        self.child: LineChild | None = None
        self._argv: list[str] = []
        self._log: IO[Any] | None = None
        self.crashes: list[int] = []
        """Exit codes of children that died on a hangup (a new child replaced each)."""

    def spawn(self, argv: Sequence[str], log: IO[Any]) -> None:
        """Start the child (again, after a crash) with the server's environment."""
        self._argv, self._log = list(argv), log
        self.child = LineChild(self._argv, self.pulse.child_env(), log)

    def _child(self) -> LineChild:
        assert self.child is not None
        return self.child

    def start_call(self) -> float:
        child = self._child()
        if child.proc.poll() is not None:
            child = self._replace(child)
        child.drain()
        try:
            asked = child.send("call")
        except BrokenPipeError:  # it died just now
            child = self._replace(child)
            asked = child.send("call")
        child.expect("started", 20)
        return asked

    def _replace(self, child: LineChild) -> LineChild:
        """A child that exited after it answered its last hangup (a Pipecat run had one
        die between calls): counted with those that died of a hangup, and replaced."""
        try:
            code = child.proc.wait(5)
        except subprocess.TimeoutExpired:
            raise ChildError("the baseline stopped reading its commands") from None
        self.crashes.append(code)
        child.close()
        assert self._log is not None
        self.child = LineChild(self._argv, self.pulse.child_env(), self._log)
        return self.child

    def hangup(self) -> Any:
        from bench.systems import HangupStamps

        child = self._child()
        sent = child.send("hangup")
        try:
            line = child.expect("hungup", self.SESSION_BOUND_S + 20)
        except ChildError:
            try:  # its stdout closed: it is exiting, or already gone
                child.proc.wait(5)
            except subprocess.TimeoutExpired:
                raise ChildError("the baseline stopped answering after a hangup") from None
            # The baseline died of its own hangup: what the user heard is still measured
            # by the observer; the agent side never reported, and a new child takes over.
            self._replace(child)
            return HangupStamps(sent, None, crashed=True)
        done = line.get("session_ended")
        return HangupStamps(sent, None if done is None else round((done - sent) * 1000, 2))

    def audio_pid(self) -> int:
        return self._child().pid

    def close(self) -> None:
        if self.child is not None:
            self.child.close()
        self.observer.stop()
        self.pulse.stop()
