"""The agent process: one call's ``elevenlabs`` Conversation over the shared rings.

One process per call. It starts as a *standby*: the SDK imported, the control
socket bound, no session yet, so a call starts at once. ``start`` attaches
the audio process's rings and opens the session; ``end`` calls
``end_session()`` and the process exits once the session is over (the
controller kills it if that takes more than its grace period)::

    python -m engine.agent_process --control ipc://.../agent-1 --events ipc://.../events

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
import sys
import threading
import time
from typing import Any

import zmq
from elevenlabs.client import ElevenLabs
from elevenlabs.conversational_ai.conversation import Conversation, DisconnectionDetails

from engine import lifeline, protocol
from engine.audio_process import ring_names
from engine.credentials import ConfigError, Credentials, load_credentials
from engine.ring import AudioRing
from engine.ring_audio import RingAudioInterface

EXPECTED_FORMAT = "pcm_16000"
HTTP_TIMEOUT = 10.0
"""Seconds for the SDK's HTTP calls (the signed URL); its default is minutes."""


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
    """The SDK's Conversation, plus the check it does not make: the agent's
    output audio format (named in the initiation metadata) must be what the
    rings carry. Anything else would play as noise, so the session ends."""

    format_error: str | None = None
    output_format: str | None = None

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


class AgentSession:
    """One conversation. Created on ``start``; control thread calls ``end``."""

    def __init__(self, credentials: Credentials, agent_id: str, rings: str,
                 events: EventPusher, requires_auth: bool) -> None:
        self.events = events
        play_name, cap_name = ring_names(rings)
        self.playback = AudioRing.attach(play_name)
        self.capture = AudioRing.attach(cap_name)
        self.audio = RingAudioInterface(
            self.playback, self.capture,
            on_interrupt=lambda dropped: events.emit(protocol.AGENT_INTERRUPTION,
                                                     dropped_frames=dropped))
        client = ElevenLabs(api_key=credentials.api_key, base_url=credentials.base_url,
                            timeout=HTTP_TIMEOUT)
        self.ended = threading.Event()
        self.conversation = CheckedConversation(
            client, agent_id,
            requires_auth=requires_auth,
            audio_interface=self.audio,
            callback_agent_response=lambda text: events.emit(protocol.AGENT_RESPONSE, text=text),
            callback_user_transcript=lambda text: events.emit(protocol.AGENT_USER_TRANSCRIPT,
                                                              text=text),
            callback_latency_measurement=lambda ms: events.emit(protocol.AGENT_LATENCY, ms=ms),
            callback_disconnect=self._on_disconnect,
        )
        self._watcher = threading.Thread(target=self._watch, name="session-watch", daemon=True)

    def start(self) -> None:
        self.conversation.start_session()
        self._watcher.start()

    def end(self) -> None:
        """Ask the SDK to end; returns at once (``end_session`` runs on a thread)."""
        threading.Thread(target=self.conversation.end_session, name="end-session",
                         daemon=True).start()

    def _on_disconnect(self, details: DisconnectionDetails) -> None:
        conv = self.conversation
        message = conv.format_error or details.message
        self.events.emit(protocol.AGENT_DISCONNECT, reason=details.reason,
                         close_code=details.close_code, close_reason=details.close_reason,
                         message=message)

    def _watch(self) -> None:
        """Report the conversation id once known; mark the end when the SDK thread exits."""
        conv = self.conversation
        reported = False
        while True:
            thread = conv._thread
            if not reported and conv._conversation_id:
                self.events.emit(protocol.AGENT_CONVERSATION,
                                 conversation_id=conv._conversation_id,
                                 output_format=conv.output_format)
                reported = True
            if thread is None or not thread.is_alive():
                break
            time.sleep(0.02)
        self.events.emit(protocol.AGENT_ENDED, conversation_id=conv._conversation_id)
        self.ended.set()

    def status(self) -> dict[str, Any]:
        return {
            "conversation_id": self.conversation._conversation_id,
            "frames_out": self.audio.frames_out,
            "pending_frames": self.audio.pending_frames(),
            "interrupts": self.audio.interrupts,
        }

    def close(self) -> None:
        self.audio.stop()
        self.playback.close()
        self.capture.close()


def serve(socket: zmq.Socket, credentials: Credentials, events: EventPusher) -> int:
    """The control loop: standby until ``start``, in call until the session ends."""
    session: AgentSession | None = None
    state = "standby"
    poller = zmq.Poller()
    poller.register(socket, zmq.POLLIN)
    while True:
        if session is not None and session.ended.is_set():
            session.close()
            return 0
        if not poller.poll(50):
            continue
        frame = socket.recv()
        try:
            request = protocol.decode_request(frame, protocol.AGENT_COMMANDS)
        except protocol.ProtocolError as exc:
            socket.send(protocol.encode(protocol.error(str(exc))))
            continue
        cmd = request["cmd"]
        reply: dict[str, Any]
        if cmd == "ping":
            reply = protocol.ok(protocol=protocol.PROTOCOL_VERSION)
        elif cmd == "status":
            reply = protocol.ok(state=state, **(session.status() if session else {}))
        elif cmd == "start":
            if session is not None:
                reply = protocol.error("start: this agent process already has a session")
            else:
                try:
                    if request.get("base_url"):
                        credentials = Credentials(credentials.api_key, credentials.agent_id,
                                                  str(request["base_url"]).rstrip("/"))
                    session = AgentSession(credentials, request["agent_id"], request["rings"],
                                           events, bool(request.get("requires_auth")))
                    session.start()
                    state = "in_call"
                    reply = protocol.ok()
                except Exception as exc:  # a bad URL, the service refusing the key, ...
                    message = f"start failed: {exc}"
                    events.emit(protocol.AGENT_ERROR, message=message)
                    reply = protocol.error(message)
                    if session is not None:
                        session.close()
                    session = None
        elif cmd == "end":
            if session is None:
                socket.send(protocol.encode(protocol.ok(state="standby")))
                return 0
            state = "ending"
            session.end()
            reply = protocol.ok(state=state)
        else:
            reply = protocol.error(f"{cmd}: not handled by the agent process")
        if credentials.api_key:
            reply = _scrub(reply, credentials.api_key)
        socket.send(protocol.encode(reply))


def _scrub(reply: dict[str, Any], secret: str) -> dict[str, Any]:
    return {k: v.replace(secret, "[redacted]") if isinstance(v, str) else v
            for k, v in reply.items()}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m engine.agent_process",
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
    control.setsockopt(zmq.MAXMSGSIZE, protocol.MAX_FRAME_BYTES)
    control.setsockopt(zmq.LINGER, 0)
    push: zmq.Socket | None = None
    try:
        control.bind(args.control)
        if args.events:
            push = ctx.socket(zmq.PUSH)
            push.setsockopt(zmq.LINGER, 500)  # let the last events (agent.ended) out
            push.setsockopt(zmq.SNDHWM, 1000)
            push.connect(args.events)
        return serve(control, credentials, EventPusher(push, credentials.api_key))
    finally:
        control.close(0)
        if push is not None:
            push.close()
        ctx.term()


if __name__ == "__main__":
    sys.exit(main())
