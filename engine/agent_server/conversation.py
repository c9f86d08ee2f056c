"""One conversation with one client over one websocket.

Timeline: the client connects and sends ``conversation_initiation_client_data``;
the session answers with ``conversation_initiation_metadata``, speaks the
greeting, pings every ``ping_interval_s`` and then answers each caller turn
(end of speech found by :class:`~.vad.EnergyVad` in the ``user_audio_chunk``
audio) with a ``user_transcript`` placeholder and the next script line.

Speech is streamed as ``audio`` events of ``chunk_s`` seconds, paced at
``rate`` times real time after the first ``lead_s`` seconds. The session keeps
the client's *playback clock*: the wall-clock time at which the client, playing
at real time from the moment each chunk was sent, will have played everything
sent so far. While that clock is ahead of now the agent is "playing"; caller
speech of ``barge_in_s`` or more in that window sends ``interruption`` (with the
last audio ``event_id``) and drops the rest of the line.

Every task the session starts is cancelled and awaited when it ends, whatever
way the client goes: nothing is left behind.
"""

from __future__ import annotations

import asyncio
import logging
import math
import secrets
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any

import numpy as np
from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed, ConnectionClosedOK

from . import faults
from . import wire as p
from .faults import Fault
from .script import Script, fill_placeholders
from .vad import EnergyVad, SpeechEnd, SpeechStart
from .voice import Voice, VoiceError, chunks

log = logging.getLogger("agent_server")


@dataclass(frozen=True)
class SessionConfig:
    """Pacing, keepalive and fault settings of a session (times in seconds)."""

    chunk_s: float = 0.25
    """Audio per ``audio`` event."""
    rate: float = 3.0
    """Streaming speed as a multiple of real time (after the lead)."""
    lead_s: float = 0.5
    """Audio sent at once at the start of a line, before pacing starts."""
    ping_interval_s: float | None = 2.0
    """Time between ``ping`` events; None sends none."""
    init_timeout_s: float = 2.0
    """How long to wait for ``conversation_initiation_client_data`` before starting anyway."""
    fault: Fault | None = None
    """Misbehaviour to inject (off by default)."""
    fault_after_s: float = 2.0
    """For ``stall`` and ``drop``: delay from the start of the greeting to the fault."""
    announced_output_format: str = p.AUDIO_FORMAT
    """What the metadata claims the agent sends (a test hook; the audio stays pcm_16000)."""


def new_conversation_id() -> str:
    """A fresh conversation id shaped like the service's (``conv_`` + 26 lowercase alnum)."""
    alphabet = "0123456789abcdefghjkmnpqrstvwxyz"
    return "conv_" + "".join(secrets.choice(alphabet) for _ in range(26))


@dataclass
class _Line:
    """The line being spoken: its text, audio length (s) and playback start (loop time, s)."""

    number: int
    text: str
    duration_s: float = 0.0
    play_start: float | None = None


class Session:
    """Serves one conversation on ``ws`` until the client goes away."""

    def __init__(
        self,
        ws: ServerConnection,
        script: Script,
        voice: Voice,
        config: SessionConfig,
        conversation_id: str | None = None,
    ) -> None:
        """``ws``: an accepted websocket; ``voice`` renders the script's lines."""
        self.ws = ws
        self.script = script
        self.voice = voice
        self.config = config
        self.conversation_id = conversation_id or new_conversation_id()
        tt = script.turn_taking
        self._vad = EnergyVad(tt.threshold_dbfs, tt.min_speech_s, tt.hangover_s)
        self._loop = asyncio.get_running_loop()
        self._tasks: set[asyncio.Task[None]] = set()
        self._speaker: asyncio.Task[None] | None = None
        self._reader: asyncio.Task[None] | None = None
        self._line: _Line | None = None
        self._greeting_started = asyncio.Event()
        self._event_id = 0  # last audio event_id used
        self._play_end = 0.0  # loop time when the client will have played all audio sent
        self._barged = False  # interruption already sent for the current caller utterance
        self._turns = 0  # caller turns answered
        self._lines_spoken = 0
        self._interruptions = 0
        self._malformed = 0
        self._ping_id = 0
        self._ping_sent: dict[int, float] = {}
        self._pongs = 0
        self._last_rtt_ms: int | None = None
        self._variables: dict[str, Any] = {}
        self._text_only = False
        self._greeting_override: str | None = None
        self._quiet = False  # a fault froze this side: send nothing more
        self._stalled = False
        self._end_reason = "ended"

    # ------------------------------------------------------------------ public

    @property
    def stalled(self) -> bool:
        """True once the ``stall`` fault has frozen this conversation."""
        return self._stalled

    async def run(self) -> None:
        """Serve the conversation; returns when the connection is gone (or on cancellation)."""
        self._info("connected from %s", _peer(self.ws))
        if self.config.fault is Fault.SLOW_CLOSE:
            faults.ignore_close_frames(self.ws, self._on_close_ignored)
        try:
            connected, pending = await self._await_initiation()
            if not connected:
                return
            if not await self._send(p.initiation_metadata_message(
                    self.conversation_id, self.config.announced_output_format)):
                return
            if self.config.ping_interval_s:
                self._spawn(self._pinger(self.config.ping_interval_s))
            if self.config.fault in (Fault.STALL, Fault.DROP):
                self._spawn(self._fault_timer(self.config.fault))
            self._start_line(0, self.script.greeting)
            self._reader = self._spawn(self._read_loop(pending))
            await asyncio.wait({self._reader})
            if self._stalled:
                # Frozen: hold the socket, unread and unwritten, until it is torn down.
                await self.ws.wait_closed()
                self._end_reason = "stalled connection torn down"
        finally:
            await self._cancel_all()
            self._info(
                "ended (%s): %d caller turns, %d lines, %d interruptions, %d/%d pings answered, "
                "%d malformed messages",
                self._end_reason,
                self._turns,
                self._lines_spoken,
                self._interruptions,
                self._pongs,
                self._ping_id,
                self._malformed,
            )

    # ------------------------------------------------------------------ start-up

    async def _await_initiation(self) -> tuple[bool, str | bytes | None]:
        """Wait for the client's initiation data and apply it.

        Returns (connected, pending): ``connected`` is False when the connection
        closed first; ``pending`` is the first frame when it was something else
        (it is handled once the conversation runs).
        """
        try:
            raw = await asyncio.wait_for(self.ws.recv(), self.config.init_timeout_s)
        except TimeoutError:
            self._info("no conversation_initiation_client_data within %.1f s; starting anyway",
                       self.config.init_timeout_s)
            return True, None
        except ConnectionClosed as exc:
            self._end_reason = _close_reason(exc)
            return False, None
        try:
            msg = p.parse_client_message(raw)
        except p.MalformedMessage:
            return True, raw  # logged when handled
        if not isinstance(msg, p.InitiationData):
            return True, raw
        self._variables = dict(msg.dynamic_variables)
        self._text_only = msg.text_only
        if msg.first_message:
            self._greeting_override = msg.first_message
        self._info(
            "initiation from %s %s%s%s",
            msg.source or "unknown client",
            msg.version,
            ", text only" if self._text_only else "",
            ", first_message override" if msg.first_message else "",
        )
        return True, None

    # ------------------------------------------------------------------ reading

    async def _read_loop(self, pending: str | bytes | None) -> None:
        if pending is not None:
            await self._handle_frame(pending)
        while True:
            try:
                raw = await self.ws.recv()
            except ConnectionClosed as exc:
                self._end_reason = _close_reason(exc)
                return
            await self._handle_frame(raw)

    async def _handle_frame(self, raw: str | bytes) -> None:
        try:
            msg = p.parse_client_message(raw)
        except p.MalformedMessage as exc:
            self._malformed += 1
            self._warn("malformed message ignored (%d bytes): %s", len(raw), exc)
            return
        try:
            await self._dispatch(msg)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a bad message must never end the call
            self._malformed += 1
            self._warn("message %s not handled: %r", type(msg).__name__, exc)

    async def _dispatch(self, msg: p.ClientMessage) -> None:
        if isinstance(msg, p.UserAudioChunk):
            await self._on_audio(msg.pcm)
        elif isinstance(msg, p.Pong):
            self._on_pong(msg.event_id)
        elif isinstance(msg, p.UserMessage | p.MultimodalMessage):
            await self._on_user_text(msg.text)
        elif isinstance(msg, p.ContextualUpdate):
            self._info("contextual update (%d chars)", len(msg.text))
        elif isinstance(msg, p.UserActivity):
            log.debug("%s: user activity", self.conversation_id)
        elif isinstance(msg, p.InitiationData):
            self._info("repeated conversation_initiation_client_data ignored")
        elif isinstance(msg, p.ClientToolResult):
            self._info("client tool result %s ignored (no tools)", msg.tool_call_id or "?")
        elif isinstance(msg, p.Feedback):
            self._info("feedback %r", msg.score)
        elif isinstance(msg, p.OnPremSetup):
            self._info("on-prem setup message ignored")
        elif isinstance(msg, p.UnknownMessage):
            self._warn("unknown message type %r ignored", msg.type[:40])

    # ------------------------------------------------------------------ caller audio and turns

    async def _on_audio(self, pcm_bytes: bytes) -> None:
        pcm = np.frombuffer(pcm_bytes, dtype="<i2")
        for event in self._vad.feed(pcm):
            if isinstance(event, SpeechStart):
                self._barged = False
                log.debug("%s: caller speech starts at %.2f s", self.conversation_id, event.at_s)
            elif isinstance(event, SpeechEnd):
                await self._on_speech_end(event.duration_s)
        barge_in_s = self.script.turn_taking.barge_in_s
        if (
            self._vad.in_speech
            and not self._barged
            and self._vad.speech_s >= barge_in_s
            and self._agent_playing()
        ):
            self._barged = True
            await self._interrupt(f"caller spoke over the agent for {self._vad.speech_s:.2f} s")

    async def _on_speech_end(self, duration_s: float) -> None:
        if self._agent_playing():
            self._info("caller speech of %.2f s over the agent ignored (no barge-in)", duration_s)
            return
        self._turns += 1
        transcript = p.speech_placeholder(duration_s)
        self._info("caller turn %d: %s", self._turns, transcript)
        await self._send(p.user_transcript_message(transcript))
        self._start_line(self._turns, self.script.reply(self._turns))

    async def _on_user_text(self, text: str) -> None:
        if self._agent_playing():
            await self._interrupt("caller sent a text message")
        self._turns += 1
        self._info("caller turn %d: text message (%d chars)", self._turns, len(text))
        self._start_line(self._turns, self.script.reply(self._turns))

    def _agent_playing(self) -> bool:
        return self._loop.time() < self._play_end

    async def _interrupt(self, why: str) -> None:
        """Drop the rest of the current line and tell the client to flush what it holds."""
        event_id = self._event_id
        now = self._loop.time()
        if self._speaker is not None:
            self._speaker.cancel()
            self._speaker = None
        self._play_end = now
        self._interruptions += 1
        line, self._line = self._line, None
        self._info("interruption at event_id %d: %s", event_id, why)
        await self._send(p.interruption_message(event_id))
        if line is not None and line.play_start is not None and line.duration_s > 0:
            heard = min(1.0, max(0.0, (now - line.play_start) / line.duration_s))
            words = line.text.split()
            corrected = " ".join(words[: round(len(words) * heard)])
            await self._send(p.agent_response_correction_message(line.text, corrected))

    # ------------------------------------------------------------------ speaking

    def _start_line(self, number: int, text: str) -> None:
        if number == 0 and self._greeting_override:
            text = self._greeting_override
        text = fill_placeholders(text, self._variables)
        if self._speaker is not None:
            self._speaker.cancel()
        self._speaker = self._spawn(self._speak(number, text))

    async def _speak(self, number: int, text: str) -> None:
        cfg = self.config
        pcm: np.ndarray | None = None
        if not self._text_only:
            try:
                pcm = await asyncio.to_thread(self.voice.render, text)
            except VoiceError as exc:
                self._error("cannot voice line %d, sending text only: %s", number, exc)
        line = _Line(number, text)
        self._line = line
        self._lines_spoken += 1
        audio_s = 0.0 if pcm is None else len(pcm) / p.SAMPLE_RATE
        self._info("agent line %d (%.1f s): %s", number, audio_s, text)
        if number == 0:
            self._greeting_started.set()
        if not await self._send(p.agent_response_message(text)):
            return
        if pcm is None:
            return
        line.duration_s = audio_s
        chunk_samples = max(1, round(cfg.chunk_s * p.SAMPLE_RATE))
        start = self._loop.time()
        sent_s = 0.0
        for piece in chunks(pcm, chunk_samples):
            due = start + max(0.0, sent_s - cfg.lead_s) / cfg.rate
            delay = due - self._loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            now = self._loop.time()
            piece_s = len(piece) / p.SAMPLE_RATE
            play_at = max(self._play_end, now)
            if line.play_start is None:
                line.play_start = play_at
            self._play_end = play_at + piece_s
            self._event_id += 1
            if not await self._send(p.audio_message(piece.tobytes(), self._event_id)):
                return
            sent_s += piece_s
        log.debug("%s: line %d sent", self.conversation_id, number)

    # ------------------------------------------------------------------ keepalive

    async def _pinger(self, interval_s: float) -> None:
        while True:
            await asyncio.sleep(interval_s)
            self._ping_id += 1
            now = self._loop.time()
            self._ping_sent[self._ping_id] = now
            for old in [k for k, t in self._ping_sent.items() if now - t > 60.0]:
                del self._ping_sent[old]
            if not await self._send(p.ping_message(self._ping_id, self._last_rtt_ms)):
                return

    def _on_pong(self, event_id: int) -> None:
        sent = self._ping_sent.pop(event_id, None)
        if sent is None:
            self._warn("pong for unknown ping event_id %d ignored", event_id)
            return
        rtt_ms = (self._loop.time() - sent) * 1000.0
        self._last_rtt_ms = max(1, math.ceil(rtt_ms))
        self._pongs += 1
        self._info("pong %d/%d (event_id %d) rtt %.1f ms",
                   self._pongs, self._ping_id, event_id, rtt_ms)

    # ------------------------------------------------------------------ faults

    async def _fault_timer(self, fault: Fault) -> None:
        await self._greeting_started.wait()
        await asyncio.sleep(self.config.fault_after_s)
        if fault is Fault.STALL:
            self._warn("fault stall: no more reading or writing on this connection")
            self._quiet = True
            self._stalled = True
            faults.stop_reading(self.ws)
            current = asyncio.current_task()
            for task in list(self._tasks):
                if task is not current:
                    task.cancel()
        elif fault is Fault.DROP:
            self._warn("fault drop: resetting the TCP connection")
            self._quiet = True
            faults.reset_connection(self.ws)

    def _on_close_ignored(self) -> None:
        self._warn("fault slow-close: close frame from the client not answered")
        self._quiet = True
        current = asyncio.current_task()
        for task in list(self._tasks):
            if task is not current and task is not self._reader:
                task.cancel()

    # ------------------------------------------------------------------ plumbing

    async def _send(self, message: str) -> bool:
        """Send one frame; False when the connection is gone or this side is frozen."""
        if self._quiet:
            return False
        try:
            await self.ws.send(message)
        except ConnectionClosed:
            return False
        return True

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        task = asyncio.create_task(self._guard(coro))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _guard(self, coro: Coroutine[Any, Any, None]) -> None:
        try:
            await coro
        except ConnectionClosed:
            pass
        except Exception:
            log.exception("%s: task failed", self.conversation_id)

    async def _cancel_all(self) -> None:
        tasks = [t for t in self._tasks if not t.done()]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)

    def _info(self, fmt: str, *args: object) -> None:
        log.info("%s: " + fmt, self.conversation_id, *args)

    def _warn(self, fmt: str, *args: object) -> None:
        log.warning("%s: " + fmt, self.conversation_id, *args)

    def _error(self, fmt: str, *args: object) -> None:
        log.error("%s: " + fmt, self.conversation_id, *args)


def _peer(ws: ServerConnection) -> str:
    addr = ws.remote_address
    if isinstance(addr, tuple) and len(addr) >= 2:
        return f"{addr[0]}:{addr[1]}"
    return str(addr)


def _close_reason(exc: ConnectionClosed) -> str:
    if exc.rcvd is not None:
        kind = "client closed" if isinstance(exc, ConnectionClosedOK) else "client closed (error)"
        return f"{kind} {exc.rcvd.code}"
    return "connection lost without close frame"
