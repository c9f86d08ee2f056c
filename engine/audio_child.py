"""The parent's side of the audio process: spawn it, talk to it, stop it, clean up after it.

``AudioProcess`` is what the controller, the demo and the tests hold. Its
requests go through a ``ControlClient`` (every one with a timeout). ``stop``
asks for a ``shutdown``, then SIGTERM, then SIGKILL (``engine.child``), and
finally unlinks the rings by name in case the child could not.
"""

from __future__ import annotations

import os
import sys
import time
from multiprocessing import shared_memory
from pathlib import Path
from typing import Any

import zmq

from callctl.engine import child
from callctl.engine.audio_process import ring_names
from callctl.engine.control_client import ControlClient
from callctl.engine.credentials import without_secrets

READY_RESEND_S = 0.5
"""``poll_ready`` sends its ``status`` again after this long unanswered, in seconds."""


class AudioProcessError(RuntimeError):
    """The audio process did not start or did not answer."""


class AudioProcess:
    """A running audio process (child of this process; owned by the thread that made it).

    ``extra_args`` are passed to ``engine.audio_process`` (``--device``,
    ``--mic``, ...). The child's stderr goes to ``stderr`` (inherited when
    None); its environment is ``env`` (default ours), less the API key.
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
        self.child = child.spawn(cmd, stderr=stderr,
                                 env=without_secrets(dict(os.environ if env is None else env)))
        self.client = ControlClient(control)
        self.ready_status: dict[str, Any] | None = None
        """The first ``status`` it answered (``poll_ready``/``wait_ready``), None before."""

    @property
    def pid(self) -> int:
        return self.child.pid

    def alive(self) -> bool:
        return self.child.alive()

    def poll_ready(self) -> bool:
        """True once the child has answered ``status``. Never waits: sends the request,
        and looks for its reply on each later call (resent after ``READY_RESEND_S``)."""
        if self.ready_status is not None:
            return True
        reply = self.client.poll_reply()
        if reply is not None:
            self.ready_status = reply
            return True
        pending = self.client.pending_for
        if pending is None or pending > READY_RESEND_S:
            self.client.send({"cmd": "status"})
        return False

    def wait_ready(self, timeout: float = 15.0) -> dict[str, Any]:
        """Wait until the child answers ``status`` (at most ``timeout`` s); returns that status."""
        deadline = time.monotonic() + timeout
        while not self.poll_ready():
            if self.child.poll() is not None:
                raise AudioProcessError(f"audio process exited with {self.child.returncode}")
            if time.monotonic() > deadline:
                raise AudioProcessError(f"audio process did not answer within {timeout:g} s")
            self.child.wait(0.02)  # an exit wakes it at once
        assert self.ready_status is not None
        return self.ready_status

    def request(self, message: dict[str, Any], timeout: float = 2.0) -> dict[str, Any]:
        return self.client.request(message, timeout)

    def _ask_shutdown(self) -> None:
        try:
            self.client.request({"cmd": "shutdown"}, timeout=0.5)
        except (TimeoutError, zmq.ZMQError):
            pass  # SIGTERM follows

    def stop(self, timeout: float = 3.0) -> int | None:
        """End the child (``shutdown``, then SIGTERM, then SIGKILL, each given ``timeout``
        s); reap; unlink the rings. Returns the exit status."""
        stopped = self.child.stop(self._ask_shutdown, timeout)
        self.client.close()
        unlink_rings(self.ring_prefix)
        return stopped.returncode

    def discard(self) -> None:
        """For one that died or hangs: SIGKILL (nothing to ask), reap, unlink the rings.
        Returns within ``child.KILL_WAIT_S``."""
        self.child.kill()
        self.child.stop(grace=0.0, term_grace=0.0)
        self.client.close()
        unlink_rings(self.ring_prefix)


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
