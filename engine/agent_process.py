"""The agent process: one call's ``elevenlabs`` Conversation over the shared rings.

One process per call. It starts as a *standby*: the SDK imported, the control
socket bound, no session yet. ``prepare`` then builds everything that does
not depend on the call — the audio process's rings attached, the SDK client,
the ``Conversation`` with its audio interface, a signed URL when the agent
needs one — so ``start`` only opens the websocket. ``end`` calls
``end_session()``, sends the websocket's close to the service, and the
process exits as soon as the service has answered the close (the controller
kills it if that takes more than its grace period)::

    python -m callctl.engine.agent_process --control ipc://.../agent-1 --events ipc://.../events

SDK callbacks become events (``engine.protocol.AGENT_*``) pushed to
``--events``. The API key is read here, from the environment or the config
file (``engine.credentials``), never received over ZeroMQ, and scrubbed from
everything this process writes.

The service is ElevenLabs or the local agent server, chosen by ``base_url``
alone: the same SDK code path serves both.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import socket
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import zmq
from elevenlabs.base_client import BaseElevenLabs
from elevenlabs.conversational_ai.conversation import Conversation, DisconnectionDetails

from callctl.engine import lifeline, protocol
from callctl.engine.audio_process import ring_names
from callctl.engine.credentials import ConfigError, Credentials, load_credentials
from callctl.engine.ring import AudioRing
from callctl.engine.ring_audio import RingAudioInterface
from callctl.engine.serving import Commands, CommandServer, Reply, Request
from callctl.engine.threads import freeze_heap

EXPECTED_FORMAT = "pcm_16000"
HTTP_TIMEOUT = 10.0
"""Seconds for the SDK's HTTP calls (the signed URL); its default is minutes."""
SIGNED_URL_MAX_AGE = 240.0
"""Seconds a prefetched signed URL is used for (ElevenLabs' are valid for 15 minutes);
an older one is fetched again in the background, and ``start`` never uses a stale one."""
SDK_THREAD_JOIN = 1.0
"""Bound on waiting for the SDK's thread once the close handshake is over, seconds."""
IDLE_POLL_S = 1.0
"""The control loop's longest sleep; the session's end wakes it at once (``Wakeup``)."""


@dataclass(frozen=True)
class SessionSpec:
    """What a session depends on before the call: ``prepare`` and ``start`` both carry it."""

    agent_id: str
    rings: str
    base_url: str | None
    requires_auth: bool

    @classmethod
    def from_request(cls, request: dict[str, Any], default_base_url: str | None) -> SessionSpec:
        base_url = request.get("base_url") or default_base_url
        return cls(str(request["agent_id"]), str(request["rings"]),
                   str(base_url).rstrip("/") if base_url else None,
                   bool(request.get("requires_auth")))


class Wakeup:
    """A pipe the control loop polls beside its socket, so another thread can wake it."""

    def __init__(self) -> None:
        self.read_fd, self._write_fd = os.pipe()
        os.set_blocking(self.read_fd, False)
        os.set_blocking(self._write_fd, False)

    def set(self) -> None:
        try:
            os.write(self._write_fd, b"!")
        except BlockingIOError:
            pass  # already pending: one wake is enough

    def drain(self) -> None:
        try:
            while os.read(self.read_fd, 64):
                pass
        except BlockingIOError:
            pass

    def close(self) -> None:
        os.close(self.read_fd)
        os.close(self._write_fd)


class EventPusher:
    """Pushes events to the controller. Any thread may call ``emit``."""

    def __init__(self, socket: zmq.Socket | None, secret: str | None) -> None:
        self._socket = socket
        self._secret = secret
        self._lock = threading.Lock()

    def emit(self, name: str, **fields: Any) -> None:
        if self._socket is None:
            return
        frame = protocol.encode({"event": name, "t": time.monotonic(), "pid": os.getpid(),
                                 **fields})
        if self._secret:
            frame = frame.replace(self._secret.encode(), b"[redacted]")
        with self._lock:
            try:
                self._socket.send(frame, zmq.NOBLOCK)
            except zmq.Again:
                pass  # the controller is gone or slow: events are not worth blocking for


class RedactKey(logging.Filter):
    """Belt and braces: no log record ever shows the API key."""

    def __init__(self, secret: str) -> None:
        super().__init__()
        self.secret = secret

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if self.secret in message:
            record.msg, record.args = message.replace(self.secret, "[redacted]"), None
        return True


class CheckedConversation(Conversation):
    """The SDK's Conversation, plus what it does not do for us.

    * The check it does not make: the agent's output audio format (named in
      the initiation metadata) must be what the rings carry. Anything else
      would play as noise, so the session ends.
    * Hooks instead of polling: ``on_conversation`` runs (on the SDK's
      thread) once the conversation id is known, ``on_thread_exit`` when the
      SDK's session thread is about to end, whatever ended it.
    * A signed URL fetched before the call (``prefetch_signed_url``) is used
      by ``start_session`` if younger than ``SIGNED_URL_MAX_AGE``; otherwise
      the SDK fetches one itself, as it always does.
    """

    format_error: str | None = None
    output_format: str | None = None
    on_conversation: Callable[[], None] | None = None
    on_thread_exit: Callable[[], None] | None = None
    _signed: tuple[str, float] | None = None
    _prefetching: threading.Thread | None = None

    def prefetch_signed_url(self) -> None:
        """Fetch a signed URL on a thread of its own (a failure is left for ``start`` to meet)."""
        if self._prefetching is not None and self._prefetching.is_alive():
            return

        def fetch() -> None:
            try:
                self._signed = (super(CheckedConversation, self)._get_signed_url(),
                                time.monotonic())
            except Exception:  # noqa: BLE001 - start_session fetches again and reports it
                self._signed = None

        self._prefetching = threading.Thread(target=fetch, name="signed-url", daemon=True)
        self._prefetching.start()

    def signed_url_age(self) -> float | None:
        signed = self._signed
        return None if signed is None else time.monotonic() - signed[1]

    def _get_signed_url(self) -> str:
        signed, self._signed = self._signed, None  # a signed URL opens one conversation
        if signed is not None and time.monotonic() - signed[1] < SIGNED_URL_MAX_AGE:
            return signed[0]
        url: str = super()._get_signed_url()
        return url

    def _run(self, ws_url: str) -> None:
        try:
            super()._run(ws_url)
        finally:
            if self.on_thread_exit is not None:
                self.on_thread_exit()

    def _handle_message(self, message: Any, ws: Any) -> None:
        if isinstance(message, dict) and message.get("type") == "conversation_initiation_metadata":
            event = message.get("conversation_initiation_metadata_event") or {}
            self.output_format = event.get("agent_output_audio_format")
            if self.output_format != EXPECTED_FORMAT:
                self.format_error = (f"the agent sends {self.output_format!r} audio; "
                                     f"callctl plays {EXPECTED_FORMAT!r}")
                self._end_session(DisconnectionDetails(reason="error", message=self.format_error))
                return
            super()._handle_message(message, ws)
            if self.on_conversation is not None:
                self.on_conversation()
            return
        super()._handle_message(message, ws)


class AgentSession:
    """One conversation, built before the call (``prepare``) or at ``start``.

    The constructor does everything that does not depend on the call: the
    rings attached, the audio interface, the SDK client, the Conversation
    (and, with ``requires_auth``, a signed URL fetched in the background).
    ``start`` opens the websocket; ``end`` ends it; ``ended`` is set, and
    ``wakeup`` fired, when the SDK's session thread is done.
    """

    def __init__(self, credentials: Credentials, spec: SessionSpec, events: EventPusher,
                 wakeup: Wakeup | None = None) -> None:
        self.spec = spec
        self.events = events
        self.wakeup = wakeup
        self.started = False
        self.ended = threading.Event()
        play_name, cap_name = ring_names(spec.rings)
        self.playback = AudioRing.attach(play_name)
        try:
            self.capture = AudioRing.attach(cap_name)
        except BaseException:
            self.playback.close()
            raise
        self.audio = RingAudioInterface(
            self.playback, self.capture,
            on_interrupt=lambda dropped: events.emit(protocol.AGENT_INTERRUPTION,
                                                     dropped_frames=dropped))
        # BaseElevenLabs, not elevenlabs.client.ElevenLabs: the conversation needs only
        # its conversational_ai client, and ElevenLabs' extra clients cost ~0.5 s of imports
        # (python -X importtime) in every standby, on the same cores as a call's start.
        client = BaseElevenLabs(api_key=credentials.api_key, base_url=spec.base_url,
                                timeout=HTTP_TIMEOUT)
        self.conversation = CheckedConversation(
            client, spec.agent_id,
            requires_auth=spec.requires_auth,
            audio_interface=self.audio,
            callback_agent_response=lambda text: events.emit(protocol.AGENT_RESPONSE, text=text),
            callback_user_transcript=lambda text: events.emit(protocol.AGENT_USER_TRANSCRIPT,
                                                              text=text),
            callback_latency_measurement=lambda ms: events.emit(protocol.AGENT_LATENCY, ms=ms),
            callback_disconnect=self._on_disconnect,
        )
        self.conversation.on_conversation = self._on_conversation
        self.conversation.on_thread_exit = self._on_thread_exit
        if spec.requires_auth:
            self.conversation.prefetch_signed_url()

    def start(self) -> None:
        self.conversation.start_session()
        self.started = True

    def refresh(self) -> None:
        """Before the call: fetch a new signed URL when the one held is getting old."""
        conv = self.conversation
        if self.spec.requires_auth and not self.started:
            age = conv.signed_url_age()
            if age is None or age > SIGNED_URL_MAX_AGE / 2:
                conv.prefetch_signed_url()

    def end(self) -> None:
        """End the session; returns at once (the work runs on a thread).

        ``end_session()`` stops the audio interface and tells the SDK's loop
        to stop — but that loop only looks between ``recv(timeout=0.5)``
        calls, and closes the websocket after it. So the close is sent here
        too, at once: the service learns the session ended, and its answer
        wakes the SDK's ``recv``, so the SDK's thread ends within a round
        trip instead of up to half a second later. A service that never
        answers holds the close for the websocket's close timeout; the
        controller's kill bounds that.
        """
        threading.Thread(target=self._end, name="end-session", daemon=True).start()

    def _end(self) -> None:
        conv = self.conversation
        ws = conv._ws  # end_session() forgets it
        conv.end_session()
        if ws is not None:
            try:
                ws.close()
            except Exception:  # noqa: BLE001 - the socket is already broken: nobody to tell
                pass

    def _on_disconnect(self, details: DisconnectionDetails) -> None:
        conv = self.conversation
        message = conv.format_error or details.message
        self.events.emit(protocol.AGENT_DISCONNECT, reason=details.reason,
                         close_code=details.close_code, close_reason=details.close_reason,
                         message=message, code=disconnect_code(details, conv.format_error))

    def _on_conversation(self) -> None:
        conv = self.conversation
        self.events.emit(protocol.AGENT_CONVERSATION, conversation_id=conv._conversation_id,
                         output_format=conv.output_format)

    def _on_thread_exit(self) -> None:
        self.events.emit(protocol.AGENT_ENDED, conversation_id=self.conversation._conversation_id)
        self.ended.set()
        if self.wakeup is not None:
            self.wakeup.set()

    def wait_sdk_thread(self, timeout: float) -> None:
        thread = self.conversation._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)

    def status(self) -> dict[str, Any]:
        return {
            "conversation_id": self.conversation._conversation_id,
            "frames_out": self.audio.frames_out,
            "pending_frames": self.audio.pending_frames(),
            "interrupts": self.audio.interrupts,
        }

    def close(self) -> None:
        self.audio.stop()
        if not self.started:
            self.conversation.client_tools.stop()  # end_session() would have stopped it
        self.playback.close()
        self.capture.close()


class AgentControl(Commands, spec=protocol.AGENT_COMMANDS):
    """The agent process's commands (``cmd_*``) and its one session. Control thread only.

    ``state``: ``standby`` (maybe prepared) until ``start``, ``in_call``, then
    ``ending`` after ``end``. ``exit_code`` is set when the process is to leave:
    at ``end`` in standby, or once the session's thread has ended.
    """

    def __init__(self, credentials: Credentials, events: EventPusher, wakeup: Wakeup) -> None:
        self.credentials = credentials
        self.events = events
        self.wakeup = wakeup
        self.session: AgentSession | None = None
        self.state = "standby"
        self.exit_code: int | None = None

    def cmd_ping(self, request: Request) -> Reply:
        return protocol.ok(protocol=protocol.PROTOCOL_VERSION)

    def cmd_status(self, request: Request) -> Reply:
        session = self.session
        return protocol.ok(state=self.state,
                           prepared=session is not None and self.state == "standby",
                           **(session.status() if session else {}))

    def cmd_prepare(self, request: Request) -> Reply:
        """Build the session for these fields before the call; ``busy`` once in a call."""
        return self._open(request, start=False)

    def cmd_start(self, request: Request) -> Reply:
        """Open the session (the prepared one if the fields match); ``busy`` once in a call."""
        return self._open(request, start=True)

    def _open(self, request: Request, start: bool) -> Reply:
        cmd = request["cmd"]
        if self.state != "standby":
            return protocol.error(protocol.BUSY, f"{cmd}: this agent process already has "
                                  "a session")
        spec = SessionSpec.from_request(request, self.credentials.base_url)
        try:
            if self.session is not None and self.session.spec != spec:
                self.session.close()  # prepared for another agent, service or audio process
                self.session = None
            if self.session is None:
                self.session = AgentSession(self.credentials, spec, self.events, self.wakeup)
            if not start:
                return protocol.ok(prepared=True)
            self.session.start()
            self.state = "in_call"
            return protocol.ok()
        except Exception as exc:  # a bad URL, rings gone, the service refusing the key
            message, code = f"{cmd} failed: {exc}", failure_code(exc)
            if start:
                self.events.emit(protocol.AGENT_ERROR, message=message, code=code)
            if self.session is not None:
                self.session.close()
            self.session = None
            return protocol.error(code, message)

    def cmd_end(self, request: Request) -> Reply:
        """End the session (the process exits once it has); in standby, exit at once."""
        session = self.session
        if session is None or self.state == "standby":
            if session is not None:
                session.close()
                self.session = None
            self.exit_code = 0
            return protocol.ok(state="standby")
        if self.state != "ending":
            self.state = "ending"
            session.end()
        return protocol.ok(state=self.state)

    def redact(self, reply: Reply) -> Reply:
        secret = self.credentials.api_key
        if not secret:
            return reply
        return {k: v.replace(secret, "[redacted]") if isinstance(v, str) else v
                for k, v in reply.items()}

    def between_requests(self) -> None:
        """Each loop turn: leave once the session has ended; keep a standby's URL fresh."""
        session = self.session
        if session is not None and session.ended.is_set():
            session.wait_sdk_thread(SDK_THREAD_JOIN)
            session.close()
            self.session = None
            self.exit_code = 0
        elif session is not None and self.state == "standby":
            session.refresh()


def failure_code(exc: BaseException) -> str:
    """The error code for a session that could not be built or opened.

    The SDK's HTTP errors carry ``status_code``; 401 and 403 are the key refused.
    A network failure (refused, reset, timed out, a name that does not resolve) is
    the service unreachable; anything else, a missing ring included, the agent
    process failing.
    """
    if getattr(exc, "status_code", None) in (401, 403):
        return protocol.AGENT_AUTH
    if (isinstance(exc, ConnectionError | TimeoutError | socket.gaierror)
            or "connect" in type(exc).__name__.lower()):
        return protocol.AGENT_UNREACHABLE
    return protocol.AGENT_FAILED


def disconnect_code(details: DisconnectionDetails, format_error: str | None) -> str | None:
    """The error code of a session's end: None for the caller's own end (``user``).

    The SDK hands over only the websocket library's sentence ("server rejected
    WebSocket connection: HTTP 401"), so this is the one place its words are read:
    here, where they enter callctl, never in a client.
    """
    if details.reason == "user":
        return None
    if format_error is not None:
        return protocol.AGENT_FAILED
    text = f"{details.message or ''} {details.close_reason or ''}"
    if re.search(r"\bHTTP (401|403)\b", text):
        return protocol.AGENT_AUTH
    return protocol.AGENT_UNREACHABLE


def serve(socket: zmq.Socket, endpoint: str, credentials: Credentials,
          events: EventPusher) -> int:
    """Bind ``socket`` to ``endpoint`` and serve: standby (maybe prepared) until ``start``,
    in call until the session ends; returns the exit code.

    Returns as soon as the session's thread has ended (woken through a
    ``Wakeup``, not by polling), or at once on ``end`` in standby.
    """
    wakeup = Wakeup()
    try:
        control = AgentControl(credentials, events, wakeup)
        server = CommandServer(socket, control)  # its options, before the bind
        socket.bind(endpoint)
        while True:
            control.between_requests()
            if control.exit_code is not None:
                return control.exit_code
            if server.turn(IDLE_POLL_S, [wakeup.read_fd]):
                wakeup.drain()
    finally:
        wakeup.close()


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m callctl.engine.agent_process",
        description="callctl's agent process: one conversation on the elevenlabs SDK, "
        "its audio through the audio process's shared rings.")
    p.add_argument("--control", required=True, help="ZeroMQ endpoint to bind (REP)")
    p.add_argument("--events", default=None, help="ZeroMQ endpoint to push events to")
    p.add_argument("--config", default=None, help="config file (default: see credentials)")
    p.add_argument("--verbose", action="store_true", help="log the SDK's messages")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    lifeline.die_with_parent(hard=True)  # it owns no segment; the SDK's threads are not daemons
    try:
        from pathlib import Path

        credentials = load_credentials(Path(args.config) if args.config else None)
    except ConfigError as exc:
        print(f"agent process: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="agent: %(levelname)s %(name)s: %(message)s")
    if credentials.api_key:
        for handler in logging.getLogger().handlers:
            handler.addFilter(RedactKey(credentials.api_key))
    ctx = zmq.Context()
    control = ctx.socket(zmq.REP)
    push: zmq.Socket | None = None
    try:
        if args.events:
            push = ctx.socket(zmq.PUSH)
            push.setsockopt(zmq.LINGER, 500)  # let the last events (agent.ended) out
            push.setsockopt(zmq.SNDHWM, 1000)
            push.connect(args.events)
        freeze_heap()
        return serve(control, args.control, credentials, EventPusher(push, credentials.api_key))
    finally:
        control.close(0)
        if push is not None:
            push.close()
        ctx.term()


def exit_now(code: int) -> None:
    """Leave without the interpreter's teardown.

    Once ``main`` returns, the session is over, the rings detached and the
    last events sent (the context's linger); what is left is Python freeing
    the elevenlabs SDK's modules, measured at 100–300 ms on a 2-core
    machine — all of it between the hangup and the agent's exit. Nothing in
    it is ours to wait for: the rings were attached without the resource
    tracker, and logging and stdio are flushed here.
    """
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(code)


if __name__ == "__main__":
    exit_now(main())
