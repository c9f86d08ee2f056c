"""The controller: supervises the processes of a call and serves the public protocol.

One thread — the one that calls ``Controller.run`` — does everything: it owns
every socket and every child, so no state is shared between threads. The
loop waits on the control socket (REP), the agent processes' event socket
(PULL), the agent processes' DEALER sockets and the children's pidfds, so a
child's exit wakes it at once; timers (the agent's kill deadline, the levels
tick) bound each wait.

Children (spawned from this thread through ``engine.child``, which ties their
lives to it): the audio process (warm across calls), a standby agent process
(imports done and, once ready, ``prepare``d for the default agent: its session
built before the call) and its spare (imports done; the next standby, begun
between calls), the call's agent process, and the local agent server
when the agent is ``local`` (started with the controller, so the standby can
be prepared for the first call). The audio process, the standby, the spare and
the local agent server are kept by ``controller.children``: one that dies is replaced
(a bounded number of times; a call asked for is a fresh attempt), and its
readiness is checked once a turn, never waited for.

The hangup: the agent is told to end (a message that waits for
nothing, sent first); the audio process silences and stops at once (one
local request); the reply goes out; at ``kill_after`` seconds after the
hangup arrived, an agent still alive is SIGKILLed and reaped; then
``call.ended`` carries the times of each step.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import zmq

from callctl.controller import endpoints
from callctl.controller.agent_events import (
    parse_agent_frame,
    public_agent_event,
    transcript_line,
)
from callctl.controller.audio_watch import audio_status_events
from callctl.controller.call import Call, CallState, new_call_id
from callctl.controller.children import (
    AUDIO_READY_TIMEOUT,
    STANDBY_READY_TIMEOUT,
    ChildLogs,
    KeptChildren,
)
from callctl.controller.config import ControllerConfig
from callctl.controller.curve import ServerKeys
from callctl.controller.device_list import DeviceList
from callctl.controller.endpoint_lock import EndpointLock
from callctl.controller.postcall import (
    PostcallRunner,
    make_call_folder,
    release_claim,
    reserve_failure_note,
)
from callctl.engine import protocol
from callctl.engine.agent_child import AgentProcess, AgentServerProcess
from callctl.engine.audio_child import AudioProcess, sweep_stale_segments
from callctl.engine.credentials import load_credentials
from callctl.engine.serving import Commands, CommandServer, Reply, Request
from callctl.engine.threads import freeze_heap

CONNECT_TIMEOUT = 15.0
LEVELS_INTERVAL = 0.1
STATUS_MAX_AGE = 0.1
"""Seconds a cached audio-process status may be old when a client asks ``status``."""


class Controller(Commands, spec=protocol.PUBLIC_COMMANDS):
    """See module docstring. Construct, then ``run()`` on the thread that owns it.

    Its public commands are its ``cmd_*`` methods (``engine.serving.Commands``)."""

    def __init__(self, config: ControllerConfig) -> None:
        self.config = config
        # First of all: the endpoint is ours for our whole life, or we stop here.
        self._endpoint_lock = EndpointLock.take(config.endpoint)
        self.ctx = zmq.Context()
        self.private = endpoints.private_dir_for(config.endpoint)
        try:
            self._setup(config)
        except BaseException:
            # A refused or failed start leaves nothing behind: sockets, keys' thread,
            # the private directory, the lock.
            self._abandon()
            raise

    def _abandon(self) -> None:
        for name in ("control", "pub", "pull"):
            sock = getattr(self, name, None)
            if sock is not None:
                sock.close(0)
        authenticator = getattr(self, "authenticator", None)
        if authenticator is not None:
            authenticator.stop()
        self.ctx.term()
        for path in (self.config.endpoint, getattr(self, "events_endpoint", "")):
            if path.startswith("ipc://") and self._endpoint_lock.held:
                Path(path[len("ipc://"):]).unlink(missing_ok=True)
        shutil.rmtree(self.private, ignore_errors=True)
        self._endpoint_lock.release()

    def _setup(self, config: ControllerConfig) -> None:
        self.events_endpoint = endpoints.events_endpoint(config.endpoint)
        self.keys = ServerKeys.load(config.curve_dir) if config.curve_dir else None
        self.authenticator = self.keys.start_authenticator(self.ctx) if self.keys else None
        self.control = self._bind(zmq.REP, config.endpoint, public=True)
        self.requests = CommandServer(self.control, self)
        self.pub = self._bind(zmq.PUB, self.events_endpoint, public=True)
        self.pull = self._bind(zmq.PULL, f"ipc://{self.private}/ev")
        self.has_key = load_credentials(Path(config.config_path) if config.config_path
                                        else None).has_key
        self.audio: AudioProcess | None = None
        """The audio process once it has answered; None while it is (re)starting."""
        self.agent: AgentProcess | None = None
        self.logs = ChildLogs(config.record_dir, config.verbose)
        self.kept = KeptChildren(
            private=self.private, events=f"ipc://{self.private}/ev", context=self.ctx,
            logs=self.logs, audio_args=config.audio_args(),
            agent_server_args=config.agent_server_args, config_path=config.config_path,
            next_call=lambda: self.calls_started + 1)
        self.call: Call | None = None
        self.state = CallState.IDLE
        self.reason: str | None = None
        self.reason_code: str | None = None
        """The ``protocol`` error code of ``reason`` (a failure's), else None."""
        self.last_ended: dict[str, Any] | None = None
        self.calls_started = 0
        self._stopping = False
        self._stop_requested = False
        self._end_code: str | None = None
        """The ending call's failure code (``_end_call``), None if it ends as it should."""
        self._next_levels = 0.0
        self._audio_cache: tuple[float, dict[str, Any]] | None = None
        self.devices = DeviceList()
        self.postcall = PostcallRunner(f"ipc://{self.private}/ev",
                                       self.logs("postcall"), config.config_path)

    # -- sockets and children ---------------------------------------------------

    def _bind(self, kind: int, endpoint: str, public: bool = False) -> zmq.Socket:
        return endpoints.bind(self.ctx, kind, endpoint, self.keys if public else None,
                              public=public)

    @property
    def standby(self) -> AgentProcess | None:
        """The next call's agent process (ready or not yet)."""
        return self.kept.standby.current

    @property
    def server(self) -> AgentServerProcess | None:
        """The local agent server (ready or not yet)."""
        return self.kept.server.current

    # -- publishing -------------------------------------------------------------

    def publish(self, topic: str, **fields: Any) -> None:
        self.pub.send_multipart([topic.encode(), protocol.encode({"event": topic, **fields})])

    def _set_state(self, state: CallState, reason: str | None = None,
                   code: str | None = None) -> None:
        self.state, self.reason, self.reason_code = state, reason, code
        self.publish(protocol.EVENT_STATE, state=state.value, reason=reason, reason_code=code,
                     call_id=self.call.call_id if self.call else None)

    # -- the loop ---------------------------------------------------------------

    def request_stop(self) -> None:
        """From a signal handler: end any call, then leave ``run`` (the loop picks it up)."""
        self._stop_requested = True

    def run(self, on_ready: Callable[[], None] | None = None) -> None:
        """Serve until ``shutdown``. Always reaps every child and unlinks every segment.

        ``on_ready`` is called once the audio process answers, before the loop.
        """
        try:
            sweep_stale_segments()  # a dead controller's, SIGKILLed with its children
            freeze_heap()
            self.audio = self.kept.start_audio()
            if on_ready is not None:
                on_ready()
            self.postcall.resume(self.config.record_dir)  # what a dead controller left
            if self.config.agent == "local":
                # Up before the first call, so the standby can be prepared for it.
                self.kept.server.begin()
            if self.config.standby:
                self.kept.standby.begin()
                self.kept.spare.begin()  # both at once: no call is starting yet
            while not (self._stopping and self.state not in (CallState.STARTING,
                                                              CallState.ENDING)):
                self._turn()
                self._tick()
        finally:
            self.close()

    def _turn(self) -> None:
        """One turn of the serving loop: a request answered the moment it arrives (a
        hangup never waits more than this turn), the agents' events read."""
        others: list[zmq.Socket | int] = [self.pull]
        for agent in (*self.kept.agents_kept(), self.agent):
            if agent is not None:
                others.append(agent.socket)
        others.extend(self.kept.pidfds())  # an exit wakes the loop
        if self.agent is not None and self.agent.child.pidfd is not None:
            others.append(self.agent.child.pidfd)
        busy = self.state in (CallState.STARTING, CallState.ENDING)
        timeout = 0.005 if busy else 0.05
        if self.call is not None and self.call.kill_at is not None:
            timeout = max(0.0, min(timeout, self.call.kill_at - time.monotonic()))
        if self.pull in self.requests.turn(timeout, others):
            while self.pull.poll(0):
                self._on_agent_event(self.pull.recv())

    def cmd_ping(self, request: Request) -> Reply:
        return protocol.ok(protocol=protocol.PROTOCOL_VERSION, pid=os.getpid())

    def cmd_cancel_clone(self, request: Request) -> Reply:
        return self.postcall.cancel(self.call)

    def cmd_flush(self, request: Request) -> Reply:
        """Barge-in by hand: the audio process drops the agent's queued audio."""
        if self.state != CallState.IN_CALL or self.audio is None:
            return protocol.error(protocol.NO_CALL, "no call in progress to flush")
        reply = self.audio.request({"cmd": "flush"}, timeout=1.0)
        return protocol.ok(dropped_frames=reply.get("dropped_frames", 0))

    def cmd_devices(self, request: Request) -> Reply:
        return protocol.ok(**self.devices.current())

    def cmd_shutdown(self, request: Request) -> Reply:
        """End any call, then leave ``run``."""
        self._stopping = True
        if self.state in (CallState.STARTING, CallState.IN_CALL):
            self._end_call("controller shutting down")
        return protocol.ok()

    def cmd_status(self, request: Request) -> Reply:
        audio = self._audio_status(max_age=STATUS_MAX_AGE)
        return protocol.ok(
            state=self.state.value, reason=self.reason, reason_code=self.reason_code,
            protocol=protocol.PROTOCOL_VERSION,
            pid=os.getpid(), endpoint=self.config.endpoint, events=self.events_endpoint,
            call=self.call.summary() if self.call else None, last_call=self.last_ended,
            audio=audio, agent_server=self.server.base_url if self.server else None,
            standby_ready=bool(self.standby and self.standby.ready),
            spare_ready=self.kept.spare.ready_child is not None,
            pids={"audio": self.audio.pid if self.audio else None,
                  "agent": self.agent.pid if self.agent else None,
                  "standby": self.standby.pid if self.standby else None,
                  "spare": self.kept.spare.current.pid if self.kept.spare.current else None,
                  "agent_server": self.server.pid if self.server else None},
        )

    # -- starting a call --------------------------------------------------------

    def cmd_call(self, request: Request) -> Reply:
        """Start a call (``starting``; progress follows as ``state`` events)."""
        agent: str | None = request.get("agent")
        clone_voice: str | None = request.get("clone_voice")
        clone_voice = (clone_voice if clone_voice is not None else self.config.clone_voice)
        if clone_voice is not None and not clone_voice.strip():
            return protocol.error(protocol.INVALID, "call: clone_voice needs a name")
        if self.state not in (CallState.IDLE, CallState.FAILED):
            return protocol.error(protocol.BUSY, "a call is already in progress (state "
                                  f"{self.state.value}); hang up first")
        if self._stopping:
            return protocol.error(protocol.SHUTTING_DOWN, "the controller is shutting down")
        agent = agent or self.config.agent
        self.kept.retry_for_call(agent)
        call_id = new_call_id()
        self.call = Call(call_id, agent, self.config.base_url,
                         self.config.record_dir / call_id,
                         clone_voice=clone_voice.strip() if clone_voice else None)
        self.calls_started += 1
        self._set_state(CallState.STARTING)
        return protocol.ok(call_id=call_id, state=self.state.value)

    def _session_fields(self, agent: str, base_url: str | None) -> dict[str, Any] | None:
        """What the agent process is started (or prepared) with; None while unknown."""
        if self.audio is None:
            return None
        requires_auth = self.has_key
        if agent == "local":
            if self.server is None or not self.server.poll_ready():
                return None
            base_url = self.server.base_url
            requires_auth = False  # the user's key is not the local server's business
        return {"agent_id": agent, "rings": self.audio.ring_prefix, "base_url": base_url,
                "requires_auth": requires_auth}

    def _prepare_standby(self) -> None:
        """Have a ready standby build the default agent's session before any call asks.

        Sent again whenever those fields change (a new audio process, a
        restarted local agent server); a call for another agent or service
        simply finds the standby prepared for something else and builds anew.
        """
        standby = self.standby
        if standby is None or not standby.ready:
            return
        fields = self._session_fields(self.config.agent, self.config.base_url)
        if fields is not None and fields != standby.prepared:
            standby.prepare(**fields)

    def _advance_start(self, call: Call) -> None:
        """One non-blocking step of ``starting``; called from every tick."""
        now = time.monotonic()
        if call.agent_started:
            if call.connected_at is None and now - call.requested_at > CONNECT_TIMEOUT:
                self._end_call("the agent did not answer (unreachable?)",
                               protocol.AGENT_UNREACHABLE)
            return
        if self.audio is None:  # being restarted: ready within a turn or a few
            why = self.kept.audio.gave_up
            if why is not None:
                self._end_call(f"the audio process is not running ({why})", protocol.AUDIO)
            elif now - call.requested_at > AUDIO_READY_TIMEOUT:
                self._end_call("the audio process did not start in time", protocol.AUDIO)
            return
        if call.agent == "local":
            server = self.server
            if server is None or not server.poll_ready():
                if server is None:  # given up on (its death this turn ended the call)
                    self._end_call("the local agent server failed to start",
                                   protocol.AGENT_SERVER)
                elif now - call.requested_at > STANDBY_READY_TIMEOUT:
                    self._end_call("the local agent server did not start in time",
                                   protocol.AGENT_SERVER)
                return
        standby = self.standby
        if standby is None:
            if self.kept.standby.gave_up is not None:
                self._end_call(f"the agent process did not start "
                               f"({self.kept.standby.gave_up})", protocol.AGENT_FAILED)
            else:
                self.kept.standby.begin()  # no standby kept (``--no-standby``): now
            return
        if not standby.alive():
            return  # its keeper replaces it next turn
        if not standby.ready:
            standby.poke()
            if now - standby.spawned_at > STANDBY_READY_TIMEOUT:
                self._end_call("the agent process did not become ready", protocol.AGENT_FAILED)
            return
        assert self.audio is not None
        try:
            make_call_folder(call.record_dir)
            call.claim = reserve_failure_note(call.record_dir)
        except OSError as exc:  # EACCES, EROFS, ENOTDIR, ENOSPC: this call fails, not us
            self._end_call(f"cannot create the call folder {call.record_dir}: "
                           f"{exc.strerror or exc}", protocol.STORAGE)
            return
        reply = self.audio.request({"cmd": "start", "record": str(call.recording)}, timeout=2.0)
        if not reply.get("ok"):
            self._end_call(f"audio: {reply.get('error')}", protocol.AUDIO)
            return
        call.audio_started = True
        self._audio_cache = None
        fields = self._session_fields(call.agent, call.base_url)
        assert fields is not None  # the audio process answered and any local server is ready
        standby.start(**fields)
        call.agent_started = True
        # With a standby kept, the next call's starts warming up while this one runs.
        self.agent = self.kept.take_standby(start_next=self.config.standby)

    # -- agent events -----------------------------------------------------------

    def _on_agent_event(self, frame: bytes) -> None:
        event = parse_agent_frame(frame)
        if event is None:
            return
        name = event["event"]
        if name == protocol.EVENT_POSTCALL:  # from a post-call process, not an agent
            public = self.postcall.on_event(event)
            if public is not None:
                self.publish(protocol.EVENT_POSTCALL, **public)
            return
        call = self.call
        if call is None or self.agent is None or event.get("pid") != self.agent.pid:
            return  # a previous call's agent, still saying goodbye
        announced = public_agent_event(event, call.call_id)
        if announced is not None:
            self.publish(announced[0], **announced[1])
        line = transcript_line(event)
        if line is not None:
            call.transcript.append(line)
        elif name == protocol.AGENT_CONVERSATION:
            call.conversation_id = event.get("conversation_id")
            call.connected_at = time.monotonic()
            if self.state == CallState.STARTING:
                self._set_state(CallState.IN_CALL)
        elif name == protocol.AGENT_ERROR:
            message = str(event.get("message"))
            code = str(event.get("code") or protocol.AGENT_FAILED)
            call.errors.append(message)
            self.publish(protocol.EVENT_ERROR, call_id=call.call_id, message=message, code=code)
            if self.state == CallState.STARTING:
                self._end_call(message, code)
        elif name == protocol.AGENT_DISCONNECT:
            if event.get("reason") != "user" and self.state in (CallState.STARTING,
                                                                 CallState.IN_CALL):
                why = event.get("message") or event.get("close_reason") or event.get("reason")
                failed = event.get("reason") == "error"
                self._end_call(f"the agent disconnected ({why})",
                               str(event.get("code") or protocol.AGENT_UNREACHABLE)
                               if failed else None)

    # -- ending a call ----------------------------------------------------------

    def cmd_hangup(self, request: Request) -> Reply:
        """End the call; answered once the audio is silent and stopped. Idempotent."""
        if self.state == CallState.ENDING and self.call is not None:
            return protocol.ok(call_id=self.call.call_id, already_ending=True)
        if self.state not in (CallState.STARTING, CallState.IN_CALL) or self.call is None:
            return protocol.error(protocol.NO_CALL, "no call to hang up")
        # Timed from the frame's arrival: whatever it waited for counts.
        audio = self._end_call("hangup", at=self.requests.received_at or None)
        return protocol.ok(call_id=self.call.call_id, audio=audio)

    def _end_call(self, reason: str, code: str | None = None,
                  at: float | None = None) -> dict[str, Any] | None:
        """Silence and stop the audio, tell the agent to end, arm the kill; → ending.

        ``code``: for a call that failed, the ``protocol`` error code of ``reason``
        (None: it ended as it should). ``at``: when the hangup arrived
        (``time.monotonic()``), default now."""
        call = self.call
        assert call is not None
        call.hangup_at = at if at is not None else time.monotonic()
        call.end_reason = reason
        self._end_code = code
        audio_reply = None
        # The agent first: its end waits for nothing, and its exit (the close
        # handshake with the service) then runs while the audio process fades.
        if self.agent is not None:
            self.agent.end()
            call.kill_at = call.hangup_at + self.config.kill_after
        else:
            call.agent_exited_at = call.hangup_at
        if call.audio_started and self.audio is not None and self.audio.alive():
            try:
                audio_reply = self.audio.request({"cmd": "hangup"}, timeout=0.5)
                call.audio_silent_at = audio_reply.get("first_silent_at")
                call.stream_stopped_at = audio_reply.get("stopped_at")
            except TimeoutError:
                call.errors.append("the audio process did not answer the hangup")
        elif not call.audio_started:
            call.audio_silent_at = call.stream_stopped_at = call.hangup_at  # nothing played
        # else: the audio process is dead: when its sound stopped is unknown (None).
        self._audio_cache = None
        self._set_state(CallState.ENDING, reason if code else None, code)
        return audio_reply

    def _advance_end(self, call: Call) -> None:
        agent = self.agent
        if agent is not None:
            if agent.alive():
                if call.kill_at is not None and time.monotonic() >= call.kill_at:
                    agent.kill()
                else:
                    return
            agent.reap(timeout=2.0)
            call.agent_exited_at = agent.exited_at
            call.agent_killed = agent.killed
            self.agent = None
        code = self._end_code
        ended = {"call_id": call.call_id, "reason": call.end_reason, "reason_code": code,
                 "timings": call.timings(), "recording": str(call.recording)
                 if call.audio_started else None, "conversation_id": call.conversation_id,
                 "errors": call.errors}
        self.last_ended = ended
        self.publish(protocol.EVENT_CALL_ENDED, **ended)
        failed = code is not None
        self._set_state(CallState.FAILED if failed else CallState.IDLE,
                        call.end_reason if failed else None, code)
        # After call.ended: the files and any voice clone, in a process of their own.
        self.postcall.spawn(  # a failure is published by the next _tick
            call, failed=failed,
            base_url=self.server.base_url if call.agent == "local" and self.server
            else call.base_url,
            audio_pid=self.audio.pid if self.audio else None,
            audio_status=self._audio_status(max_age=0.0) if call.audio_started else None)
        release_claim(call.claim)  # the post-call process holds it now
        call.claim = None

    # -- supervision ------------------------------------------------------------

    def _tick(self) -> None:
        now = time.monotonic()
        for failure in self.postcall.take_failures():
            self.publish(protocol.EVENT_POSTCALL, **failure)
        if self._stop_requested and not self._stopping:
            self.cmd_shutdown({"cmd": "shutdown"})
        for agent in (*self.kept.agents_kept(), self.agent):
            if agent is not None:
                agent.read_replies()
        self._supervise()
        call = self.call
        if self.state == CallState.STARTING and call is not None:
            self._advance_start(call)
        elif self.state == CallState.IN_CALL and call is not None:
            if self.agent is not None and not self.agent.alive():
                self._end_call("the agent process exited")
            elif now >= self._next_levels:
                self._next_levels = now + LEVELS_INTERVAL
                self._publish_levels(call)
        if self.state == CallState.ENDING and call is not None:
            self._advance_end(call)
        for kept in self.kept.agents_kept():
            if kept.alive():
                kept.poke()
        if self.standby is not None and self.standby.alive():
            self._prepare_standby()
        if (self.config.standby and self.state in (CallState.IDLE, CallState.FAILED)
                and not self._stopping):
            self.kept.begin_spare()

    def _supervise(self) -> None:
        """One turn of each kept child's restarter: deaths noticed, replacements started,
        readiness checked; never waits (a dead child's discard is a reap)."""
        turns = self.kept.poll(restart=not self._stopping)
        if turns.audio.died is not None and turns.audio.died is self.audio:
            self._on_audio_died()
        if turns.audio.became_ready:
            self.audio = self.kept.audio.ready_child
            self._audio_cache = None
        call = self.call
        if (turns.server.died is not None and self.state == CallState.STARTING
                and call is not None and call.agent == "local" and not call.agent_started):
            self._end_call("the local agent server failed to start",
                                   protocol.AGENT_SERVER)
        for turn, code in ((turns.audio, protocol.AUDIO), (turns.server, protocol.AGENT_SERVER),
                           (turns.standby, protocol.AGENT_FAILED),
                           (turns.spare, protocol.AGENT_FAILED)):
            if turn.gave_up is not None:
                self.publish(protocol.EVENT_ERROR, message=turn.gave_up, code=code,
                             call_id=call.call_id if call else None)

    def _audio_status(self, max_age: float) -> dict[str, Any] | None:
        """The audio process's status, asked at most every ``max_age`` seconds.

        A flood of public ``status`` requests costs the audio process nothing:
        they share one answer per ``max_age``.
        """
        if self.audio is None:
            return None
        if not self.audio.alive():  # its death is handled this turn: nothing to wait for
            return protocol.error(protocol.AUDIO, "the audio process died")
        now = time.monotonic()
        if self._audio_cache is None or now - self._audio_cache[0] > max_age:
            try:
                reply = self.audio.request({"cmd": "status"}, timeout=0.2)
            except TimeoutError:
                reply = protocol.error(protocol.AUDIO, "the audio process did not answer")
            self._audio_cache = (now, reply)
        return self._audio_cache[1]

    def _publish_levels(self, call: Call) -> None:
        if self.audio is None or not self.audio.alive():
            return  # its death is handled this turn
        try:
            status = self.audio.request({"cmd": "watch"}, timeout=0.2)
        except TimeoutError:
            return
        if not status.get("ok"):
            return
        watch = audio_status_events(status, call.call_id, call.device_reopens_seen,
                                    call.errors, call.audio_started)
        call.device_reopens_seen = watch.reopens_seen
        call.errors.extend(watch.new_errors)
        for topic, fields in watch.events:
            self.publish(topic, **fields)
        if watch.device_lost:
            self._end_call("audio device lost", protocol.AUDIO)

    def _on_audio_died(self) -> None:
        """The ready audio process died (its keeper has reaped it, unlinked its rings and,
        unless stopping, started another): the call it served fails."""
        self.audio = None
        self._audio_cache = None
        self.publish(protocol.EVENT_ERROR, message="the audio process died", code=protocol.AUDIO,
                     call_id=self.call.call_id if self.call else None)
        if self.state in (CallState.STARTING, CallState.IN_CALL):
            self._end_call("audio", protocol.AUDIO)

    # -- shutdown ---------------------------------------------------------------

    def close(self) -> None:
        """End everything: children killed if need be and reaped, segments unlinked."""
        self.kept.close(self.agent, self.config.kill_after)
        self.agent = self.audio = None
        self.control.close(0)
        self.pull.close(0)
        self.pub.close(linger=1000)  # let the last events (call.ended) reach subscribers
        if self.authenticator is not None:
            self.authenticator.stop()
        self.ctx.term()
        self.logs.close()
        for path in (self.config.endpoint, self.events_endpoint):
            if path.startswith("ipc://"):
                Path(path[len("ipc://"):]).unlink(missing_ok=True)
        shutil.rmtree(self.private, ignore_errors=True)
        self._endpoint_lock.release()  # last: the sockets above were ours to remove

