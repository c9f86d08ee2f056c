"""The parent's side of the audio process: spawn it, talk to it, reap it.

``AudioProcess`` is what the controller, the demo and the tests hold. Every
request has a timeout; a request that times out leaves the client usable (the
REQ socket is replaced: the "lazy pirate" pattern). ``stop`` asks politely,
then SIGTERM, then SIGKILL, and finally unlinks the rings by name in case the
child could not.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from multiprocessing import shared_memory
from pathlib import Path
from typing import Any

import zmq

from callctl.engine import lifeline, protocol
from callctl.engine.audio_process import ring_names
from callctl.engine.credentials import without_secrets


class AudioProcessError(RuntimeError):
    """The audio process did not start or did not answer."""


class ControlClient:
    """A REQ client with timeouts for one ZeroMQ endpoint. One thread uses it."""

    def __init__(self, endpoint: str, context: zmq.Context | None = None,
                 secure: Callable[[zmq.Socket], None] | None = None) -> None:
        self.endpoint = endpoint
        self._ctx = context or zmq.Context.instance()
        self._sock: zmq.Socket | None = None
        self._secure = secure  # e.g. CurveZMQ client keys' ``apply``

    def _socket(self) -> zmq.Socket:
        if self._sock is None:
            sock = self._ctx.socket(zmq.REQ)
            sock.setsockopt(zmq.LINGER, 0)
            sock.setsockopt(zmq.MAXMSGSIZE, protocol.MAX_FRAME_BYTES)
            if self._secure is not None:
                self._secure(sock)
            sock.connect(self.endpoint)
            self._sock = sock
        return self._sock

    def request(self, message: dict[str, Any], timeout: float = 2.0) -> dict[str, Any]:
        """Send one request, wait at most ``timeout`` seconds for the reply."""
        sock = self._socket()
        sock.send(protocol.encode(message))
        if not sock.poll(int(timeout * 1000)):
            self.close()
            raise TimeoutError(f"no reply to {message.get('cmd')!r} from {self.endpoint} "
                               f"within {timeout:g} s")
        reply: dict[str, Any] = sock.recv_json()  # type: ignore[assignment]
        return reply

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close(0)
            self._sock = None


class AudioProcess:
    """A running audio process (child of this process).

    ``extra_args`` are passed to ``engine.audio_process`` (``--device``,
    ``--mic``, ...). The child's stderr goes to ``stderr`` (inherited when
    None).
    """

    def __init__(
        self,
        control: str,
        ring_prefix: str,
        extra_args: list[str] | None = None,
        stderr: int | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        self.control = control
        self.ring_prefix = ring_prefix
        cmd = [sys.executable, "-m", "callctl.engine.audio_process",
               "--control", control, "--rings", ring_prefix, *(extra_args or [])]
        # Never the API key: the audio process and its resource tracker have no use for it.
        child_env = without_secrets(dict(os.environ if env is None else env))
        self.popen = lifeline.spawn(cmd, stdin=subprocess.DEVNULL, stderr=stderr, env=child_env)
        self.client = ControlClient(control)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def wait_ready(self, timeout: float = 15.0) -> dict[str, Any]:
        """Wait until the child answers ``status``; returns that status."""
        deadline = time.monotonic() + timeout
        while True:
            if self.popen.poll() is not None:
                raise AudioProcessError(f"audio process exited with {self.popen.returncode}")
            try:
                return self.client.request({"cmd": "status"}, timeout=0.5)
            except TimeoutError:
                if time.monotonic() > deadline:
                    raise AudioProcessError(
                        f"audio process did not answer within {timeout:g} s") from None

    def request(self, message: dict[str, Any], timeout: float = 2.0) -> dict[str, Any]:
        return self.client.request(message, timeout)

    def stop(self, timeout: float = 3.0) -> int:
        """End the child (shutdown, then SIGTERM, then SIGKILL); reap; unlink rings."""
        if self.popen.poll() is None:
            try:
                self.client.request({"cmd": "shutdown"}, timeout=0.5)
            except (TimeoutError, zmq.ZMQError):
                pass
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                lifeline.terminate(self.popen, timeout)
        self.client.close()
        unlink_rings(self.ring_prefix)
        return self.popen.returncode


def unlink_rings(prefix: str) -> None:
    """Remove every segment of the audio process of ``prefix`` that still exists (after
    its SIGKILL): the two rings, and its echo and recorder rings, ``<prefix>-…``."""
    names = set(ring_names(prefix))
    shm = Path("/dev/shm")  # where Linux keeps POSIX shared memory
    if shm.is_dir():
        names.update(p.name for p in shm.glob(f"{prefix}-*"))
    for name in sorted(names):
        try:
            seg = shared_memory.SharedMemory(name, create=False)
        except FileNotFoundError:
            continue
        seg.close()
        try:
            seg.unlink()
        except FileNotFoundError:
            pass  # the dead owner's resource tracker got there first


def sweep_stale_segments() -> list[str]:
    """Unlink the segments of controllers that are gone: ``callctl-<pid>-…`` in /dev/shm
    whose ``pid`` no longer runs (a whole process group SIGKILLed leaves them, as no
    process of it lived to clean up). Returns the names removed."""
    shm = Path("/dev/shm")
    removed: list[str] = []
    if not shm.is_dir():
        return removed
    for path in shm.glob("callctl-*-*"):
        pid_text = path.name.split("-")[1]
        if not pid_text.isdigit():
            continue
        try:
            os.kill(int(pid_text), 0)
            continue  # alive (or not ours to judge): leave it
        except ProcessLookupError:
            pass
        except PermissionError:
            continue
        try:
            path.unlink()
            removed.append(path.name)
        except OSError:
            pass
    return removed

