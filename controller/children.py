"""The controller's kept children: the audio process, the standby agent process and its
spare, the local agent server, each kept running by an ``engine.child.Restarter``.

Why a spare: an agent process is ready (the SDK imported) about 0.8 s after it
is spawned, so a call that ends sooner than that after the standby was taken,
followed at once by another, would find the next standby still importing. The
spare is an agent process spawned earlier; taking the standby moves the spare
up (``take_standby``), and a new spare is begun when the owner says
(``begin_spare``): the controller does between calls, so that no import (a
core for most of a second) runs while a call is hung up.

``KeptChildren`` spawns them (from the controller's loop thread, which
``engine.child`` ties their lives to), replaces one that dies (at most
``RESTART_LIMIT`` times in ``RESTART_WINDOW_S``; a call asked for is a fresh
attempt, ``retry_for_call``), checks each one's readiness once a turn
(``poll``; never waiting) and stops them all, bounded, at the end (``close``).
What a death means for a call is the controller's business: ``poll`` returns
what it saw. ``ChildLogs`` is where the children's stderr goes.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import zmq

from callctl.controller.postcall import make_call_folder
from callctl.engine import child
from callctl.engine.agent_child import AgentProcess, AgentServerProcess
from callctl.engine.audio_child import AudioProcess, AudioProcessError

AUDIO_READY_TIMEOUT = 15.0
"""Seconds a (re)started audio process has to answer ``status``."""
STANDBY_READY_TIMEOUT = 30.0
"""Seconds a (re)started agent process or local agent server has to become ready."""
RESTART_LIMIT = 5
RESTART_WINDOW_S = 60.0
"""A kept child is restarted at most ``RESTART_LIMIT`` times in ``RESTART_WINDOW_S``
seconds; then not until a call is asked for."""


class ChildLogs:
    """Where a child's stderr goes: the terminal when ``verbose``, else
    ``<record_dir>/logs/<name>.log`` (0600: the agent's log can hold what was said).

    One handle per log name for the controller's life: every standby agent
    shares ``agent.log`` (opening one per call would leak a descriptor a call).
    The controller owns the handles (``close``).
    """

    def __init__(self, record_dir: Path, verbose: bool) -> None:
        self.record_dir = record_dir
        self.verbose = verbose
        self._handles: dict[str, IO[Any]] = {}

    def __call__(self, name: str) -> IO[Any] | None:
        if self.verbose:
            return None
        if name not in self._handles:
            log_dir = self.record_dir / "logs"
            make_call_folder(log_dir)
            fd = os.open(log_dir / f"{name}.log",
                         os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
            self._handles[name] = os.fdopen(fd, "ab")
        return self._handles[name]

    def close(self) -> None:
        for handle in self._handles.values():
            handle.close()
        self._handles.clear()


@dataclass
class Turns:
    """What one ``KeptChildren.poll`` saw, child by child."""

    audio: child.Turn[AudioProcess]
    server: child.Turn[AgentServerProcess]
    standby: child.Turn[AgentProcess]
    spare: child.Turn[AgentProcess]


class KeptChildren:
    """See the module docstring. Loop thread only.

    ``private``: the controller's private directory (the children's ipc
    endpoints); ``events``: its agent-events endpoint; ``next_call``: the
    number of the call a new standby will serve (it names its endpoint).
    """

    def __init__(self, *, private: Path, events: str, context: zmq.Context, logs: ChildLogs,
                 audio_args: list[str], agent_server_args: list[str],
                 config_path: str | None, next_call: Callable[[], int]) -> None:
        self.private = private
        self.events = events
        self.context = context
        self.logs = logs
        self.audio_args = audio_args
        self.agent_server_args = agent_server_args
        self.config_path = config_path
        self.next_call = next_call
        self.audio: child.Restarter[AudioProcess] = child.Restarter(
            self._new_audio, alive=AudioProcess.alive, ready=AudioProcess.poll_ready,
            discard=AudioProcess.discard, limit=RESTART_LIMIT, window_s=RESTART_WINDOW_S,
            ready_timeout_s=AUDIO_READY_TIMEOUT, what="the audio process")
        self.standby: child.Restarter[AgentProcess] = self._agent_keeper()
        self.spare: child.Restarter[AgentProcess] = self._agent_keeper()
        self.server: child.Restarter[AgentServerProcess] = child.Restarter(
            self._new_server, alive=AgentServerProcess.alive,
            ready=AgentServerProcess.poll_ready, discard=AgentServerProcess.discard,
            limit=RESTART_LIMIT, window_s=RESTART_WINDOW_S,
            ready_timeout_s=STANDBY_READY_TIMEOUT, what="the local agent server")

    # -- the children's making -------------------------------------------------

    def _new_audio(self) -> AudioProcess:
        prefix = f"callctl-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        return AudioProcess(f"ipc://{self.private}/a{uuid.uuid4().hex[:4]}", prefix,
                            self.audio_args)

    def _agent_keeper(self) -> child.Restarter[AgentProcess]:
        return child.Restarter(
            self._new_standby, alive=AgentProcess.alive, ready=lambda a: a.ready,
            discard=_discard_agent, limit=RESTART_LIMIT, window_s=RESTART_WINDOW_S,
            ready_timeout_s=STANDBY_READY_TIMEOUT, what="the agent process")

    def _new_standby(self) -> AgentProcess:
        return AgentProcess(f"ipc://{self.private}/g{self.next_call()}-{uuid.uuid4().hex[:4]}",
                            self.events, stderr=self.logs("agent"), config=self.config_path,
                            context=self.context)

    def _new_server(self) -> AgentServerProcess:
        return AgentServerProcess(self.agent_server_args, stderr=self.logs("agent-server"))

    # -- keeping them ------------------------------------------------------------

    def start_audio(self) -> AudioProcess:
        """The first audio process, waited for (at most ``AUDIO_READY_TIMEOUT``: before the
        loop runs). Raises ``RuntimeError`` (``audio: …``) when it does not answer."""
        audio = self.audio.begin()
        try:
            audio.wait_ready(AUDIO_READY_TIMEOUT)
        except AudioProcessError as exc:
            self.audio.stop(how=AudioProcess.stop)
            raise RuntimeError(f"audio: {exc}") from None
        self.audio.poll()  # it answered: ready from this turn
        assert self.audio.ready_child is audio
        return audio

    def take_standby(self, start_next: bool) -> AgentProcess:
        """Hand the standby over (the caller owns it now). With ``start_next``, the spare
        (ready or not) becomes the standby, or a new standby is begun when there is no
        spare; the next spare waits for ``begin_spare``."""
        agent = self.standby.take(start_next=False)
        if start_next:
            if self.spare.current is not None:
                self.standby.take_over(self.spare)
            else:
                self.standby.begin()
        return agent

    def begin_spare(self) -> None:
        """Begin a spare if none is kept (nor given up on) and the standby is ready, so
        that at most one agent process imports at a time. (The controller begins the
        first spare with the first standby, before any call.)"""
        if (self.spare.current is None and self.spare.gave_up is None
                and self.standby.ready_child is not None):
            self.spare.begin()

    def agents_kept(self) -> list[AgentProcess]:
        """The standby and the spare that exist (ready or not)."""
        return [a for a in (self.standby.current, self.spare.current) if a is not None]

    def retry_for_call(self, agent: str) -> None:
        """A call was asked for (``agent``): a fresh attempt at each child it needs that was
        given up on, or is not running (the audio process; the local server for ``local``)."""
        if self.standby.gave_up is not None:
            self.standby.reset()
        if self.spare.gave_up is not None:
            self.spare.reset(begin=False)  # begun when the standby is ready
        for keeper in (self.audio, self.server) if agent == "local" else (self.audio,):
            if keeper.gave_up is not None or keeper.current is None:
                keeper.reset()

    def pidfds(self) -> list[int]:
        """The kept children's pidfds, for the loop's poller: an exit wakes the loop."""
        kept = (self.audio.current, self.standby.current, self.spare.current,
                self.server.current)
        return [k.child.pidfd for k in kept if k is not None and k.child.pidfd is not None]

    def poll(self, restart: bool) -> Turns:
        """One turn of each restarter (``restart`` False once the controller is stopping:
        the dead are reaped, not replaced). Never waits, but for reaping the dead."""
        return Turns(self.audio.poll(restart), self.server.poll(restart),
                     self.standby.poll(restart), self.spare.poll(restart))

    def close(self, agent: AgentProcess | None, kill_after: float) -> None:
        """Stop everything, the call's ``agent`` too: the agents are told to end together
        and SIGKILLed at ``kill_after`` s; the audio process gets ``shutdown``, SIGTERM,
        SIGKILL (and its rings are unlinked); the local server SIGTERM, SIGKILL."""
        kept = self.agents_kept()
        for keeper in (self.standby, self.spare):
            keeper.stop(how=lambda _: None)  # stopped below, with the call's agent
        agents = [a for a in (agent, *kept) if a is not None]
        for each in agents:
            each.end()  # all at once: they share the deadline
        deadline = time.monotonic() + kill_after
        for each in agents:
            each.stop(grace=max(0.0, deadline - time.monotonic()))
        self.audio.stop(how=AudioProcess.stop)
        self.server.stop(how=AgentServerProcess.stop)


def _discard_agent(agent: AgentProcess) -> None:
    """A standby that died or never got ready: SIGKILL, reap (bounded), release."""
    agent.kill()
    agent.reap(child.KILL_WAIT_S)
    agent.close()
