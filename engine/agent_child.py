"""The parent's side of the agent process and of the local agent server.

``AgentProcess`` spawns a standby agent process (SDK imported, waiting), sends
it ``start`` and ``end``, and kills it. Nothing waits for a reply: a frozen
(SIGSTOPped) agent must not hold up the controller, whose deadline for the
agent is a kill, not a reply. Both run through ``engine.child`` (spawn, pidfd,
bounded stop).

``AgentServerProcess`` runs ``callctl agent-server`` on a free loopback port
and reads its ready line (bounded wait).
"""

from __future__ import annotations

import json
import os
import re
import select
import subprocess
import sys
import time
from typing import IO, Any

import zmq

from callctl.engine import child, protocol
from callctl.engine.credentials import without_secrets


def _child_env(env: dict[str, str] | None) -> dict[str, str]:
    return dict(os.environ if env is None else env)


class AgentProcess:
    """One agent process (one call), driven asynchronously by one thread of the parent.

    Requests go out on a DEALER socket (``socket``, for the caller's poller)
    and never wait; ``read_replies`` collects what came back. ``ready`` turns
    true when the standby has answered a ``ping`` (its imports are done).
    ``prepared`` is what the last ``prepare`` asked for (None before one):
    the agent processes requests in order, so a ``start`` sent after a
    ``prepare`` with the same fields finds the session built.
    """

    def __init__(self, control: str, events: str, stderr: IO[Any] | int | None = None,
                 env: dict[str, str] | None = None, config: str | None = None,
                 context: zmq.Context | None = None) -> None:
        self.control = control
        cmd = [sys.executable, "-m", "callctl.engine.agent_process", "--control", control,
               "--events", events]
        if config:
            cmd += ["--config", config]
        self.child = child.spawn(cmd, stdout=subprocess.DEVNULL, stderr=stderr,
                                 env=_child_env(env))
        self.spawned_at = self.child.spawned_at
        self.socket = (context or zmq.Context.instance()).socket(zmq.DEALER)
        self.socket.setsockopt(zmq.LINGER, 0)
        self.socket.connect(control)
        self.ready = False
        self.prepared: dict[str, Any] | None = None
        self.killed = False
        self.exited_at: float | None = None
        self._last_ping = 0.0

    @property
    def pid(self) -> int:
        return self.child.pid

    def alive(self) -> bool:
        return self.child.alive()

    def send(self, message: dict[str, Any]) -> None:
        try:
            self.socket.send_multipart([b"", protocol.encode(message)], zmq.NOBLOCK)
        except zmq.Again:
            pass

    def poke(self, interval: float = 0.2) -> None:
        """Ping the standby (at most every ``interval`` s) until it is ready."""
        now = time.monotonic()
        if not self.ready and now - self._last_ping >= interval:
            self._last_ping = now
            self.send({"cmd": "ping"})

    def read_replies(self) -> list[dict[str, Any]]:
        """Replies waiting on the socket (never blocks). A ``ping`` reply sets ``ready``."""
        replies = []
        while self.socket.poll(0):
            frames = self.socket.recv_multipart()
            try:
                reply = json.loads(frames[-1])
            except ValueError:
                continue
            if reply.get("protocol") is not None:
                self.ready = True
            replies.append(reply)
        return replies

    def prepare(self, agent_id: str, rings: str, base_url: str | None,
                requires_auth: bool) -> None:
        """Have the standby build the session for these fields before the call."""
        self.prepared = {"agent_id": agent_id, "rings": rings, "base_url": base_url,
                         "requires_auth": requires_auth}
        self.send({"cmd": "prepare", **self.prepared})

    def start(self, agent_id: str, rings: str, base_url: str | None, requires_auth: bool) -> None:
        self.send({"cmd": "start", "agent_id": agent_id, "rings": rings,
                   "base_url": base_url, "requires_auth": requires_auth})

    def end(self) -> None:
        """Tell the agent to end its session; waits for nothing."""
        self.send({"cmd": "end"})

    def kill(self) -> None:
        """SIGKILL now (``killed`` records it); waits for nothing."""
        if self.alive() and self.child.kill():
            self.killed = True

    def reap(self, timeout: float = 5.0) -> int | None:
        """Wait for the exit (bounded); release the socket and the pidfd. None on timeout."""
        code = self.child.wait(timeout)
        if code is None:
            return None
        if self.exited_at is None:
            self.exited_at = time.monotonic()
        self.close()
        return code

    def stop(self, grace: float) -> int | None:
        """``end``, wait up to ``grace`` s, then SIGKILL (``killed`` set) and reap
        (``child.KILL_WAIT_S`` at most). The agent exits at once on SIGTERM, so the
        kill comes straight after the grace."""
        code = self.child.wait(0)
        if code is None:
            stopped = self.child.stop(self.end, grace, term_grace=0.0)
            self.killed = stopped.step in ("terminated", "killed", "unreaped")
            code = stopped.returncode
        if code is not None and self.exited_at is None:
            self.exited_at = time.monotonic()
        self.close()
        return code

    def close(self) -> None:
        self.socket.close(0)
        self.child.close()


class AgentServerProcess:
    """``callctl agent-server`` on loopback, on a free port.

    The constructor only spawns. ``poll_ready`` (never blocks) or
    ``wait_ready`` (bounded) read the server's ready line; ``base_url`` is set
    from it.
    """

    READY = re.compile(r"listening on ws://([^:/\s]+):(\d+)")

    def __init__(self, extra_args: list[str] | None = None, stderr: IO[Any] | int | None = None,
                 env: dict[str, str] | None = None) -> None:
        cmd = [sys.executable, "-m", "callctl.engine.agent_server", "--host", "127.0.0.1",
               "--port", "0", *(extra_args or [])]
        # The user's key is not the local server's business.
        self.child = child.spawn(cmd, stdout=subprocess.PIPE, stderr=stderr,
                                 env=without_secrets(_child_env(env)))
        self.popen = self.child.popen
        self.spawned_at = self.child.spawned_at
        self.base_url: str | None = None
        self._buffered = b""

    def poll_ready(self) -> bool:
        """Read what the server printed so far; true once its ready line is in."""
        if self.base_url is not None:
            return True
        assert self.popen.stdout is not None
        fd = self.popen.stdout.fileno()
        while select.select([fd], [], [], 0)[0]:
            chunk = os.read(fd, 4096)
            if not chunk:
                break
            self._buffered += chunk
        match = self.READY.search(self._buffered.decode(errors="replace"))
        if match:
            self.base_url = f"http://{match.group(1)}:{match.group(2)}"
        return self.base_url is not None

    def wait_ready(self, timeout: float = 20.0) -> str:
        deadline = time.monotonic() + timeout
        while not self.poll_ready():
            if self.child.poll() is not None or time.monotonic() > deadline:
                code = self.child.poll()
                self.stop()
                raise RuntimeError("the local agent server did not start"
                                   + (f" (exit {code})" if code else ""))
            time.sleep(0.02)
        assert self.base_url is not None
        return self.base_url

    @property
    def pid(self) -> int:
        return self.child.pid

    def alive(self) -> bool:
        return self.child.alive()

    def stop(self, timeout: float = 3.0) -> None:
        """SIGTERM, then SIGKILL after ``timeout`` s; reaped; its pipe closed."""
        self.child.stop(grace=timeout)
        if self.popen.stdout:
            self.popen.stdout.close()

    def discard(self) -> None:
        """For one that died or never got ready: SIGKILL, reap, close its pipe (prompt)."""
        self.child.kill()
        self.stop(timeout=0.0)
