"""Message shapes of the ElevenLabs Conversational AI websocket, as the SDK uses them.

Server → client messages are built by the ``*_message`` functions (each returns
the JSON text of one websocket frame). Client → server messages are parsed by
:func:`parse_client_message` into small frozen dataclasses; anything that is not
valid JSON, not an object, or lacks a field the SDK always sends raises
:class:`MalformedMessage`. A well-formed message of a type this server does not
know becomes :class:`UnknownMessage`.

The shapes follow ``elevenlabs.conversational_ai.conversation`` (SDK 2.x):

* ``conversation_initiation_metadata`` → ``conversation_initiation_metadata_event``
  with ``conversation_id``, ``agent_output_audio_format``, ``user_input_audio_format``;
* ``audio`` → ``audio_event`` with ``audio_base_64`` and a rising ``event_id``;
* ``agent_response`` → ``agent_response_event.agent_response``;
* ``agent_response_correction`` → original and corrected text;
* ``user_transcript`` → ``user_transcription_event.user_transcript``;
* ``interruption`` → ``interruption_event.event_id`` (the client drops every
  ``audio`` event whose ``event_id`` is at most this one);
* ``ping`` → ``ping_event`` with ``event_id`` and ``ping_ms``; the client answers
  ``{"type": "pong", "event_id": ...}``.

The client's microphone audio arrives as ``{"user_audio_chunk": "<base64>"}``
(no ``type`` field): 16-bit little-endian mono PCM at 16 kHz.
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass, field
from typing import Any

#: Websocket path of a conversation (``build_ws_url(base, ["v1", "convai", "conversation"])``).
CONVERSATION_PATH = "/v1/convai/conversation"
#: HTTP path the SDK calls for a signed URL when ``requires_auth=True``.
SIGNED_URL_PATH = "/v1/convai/conversation/get-signed-url"
#: Query parameter that carries the token of a signed URL.
SIGNATURE_PARAM = "conversation_signature"
#: HTTP header that carries the API key.
API_KEY_HEADER = "xi-api-key"

#: Audio format name of both directions (16-bit PCM, mono, 16 kHz).
AUDIO_FORMAT = "pcm_16000"
#: Sample rate of both directions, in Hz.
SAMPLE_RATE = 16000
#: Bytes per sample of both directions (int16).
SAMPLE_WIDTH = 2


class MalformedMessage(ValueError):
    """A client frame that is not a message this protocol can carry."""


# --------------------------------------------------------------------------- client → server


@dataclass(frozen=True)
class InitiationData:
    """``conversation_initiation_client_data``: the first message the SDK sends.

    ``config_override`` is ``conversation_config_override`` (e.g.
    ``{"agent": {"first_message": ...}}`` or ``{"text_only": True}``);
    ``dynamic_variables`` fill ``{{name}}`` placeholders of the script.
    """

    config_override: dict[str, Any] = field(default_factory=dict)
    dynamic_variables: dict[str, Any] = field(default_factory=dict)
    source: str = ""
    version: str = ""
    user_id: str | None = None

    @property
    def first_message(self) -> str | None:
        """The ``agent.first_message`` override, if the client sent one."""
        agent = self.config_override.get("agent")
        if isinstance(agent, dict):
            first = agent.get("first_message")
            if isinstance(first, str) and first.strip():
                return first
        return None

    @property
    def text_only(self) -> bool:
        """True when the client asked for a text-only conversation (no audio)."""
        if self.config_override.get("text_only") is True:
            return True
        conversation = self.config_override.get("conversation")
        return isinstance(conversation, dict) and conversation.get("text_only") is True


@dataclass(frozen=True)
class UserAudioChunk:
    """``user_audio_chunk``: ``pcm`` is int16 little-endian mono at 16 kHz (bytes)."""

    pcm: bytes


@dataclass(frozen=True)
class Pong:
    """``pong``: the answer to the ``ping`` with this ``event_id``."""

    event_id: int


@dataclass(frozen=True)
class UserActivity:
    """``user_activity``: the client keeps the session from timing out."""


@dataclass(frozen=True)
class ContextualUpdate:
    """``contextual_update``: non-interrupting context for the agent."""

    text: str


@dataclass(frozen=True)
class UserMessage:
    """``user_message``: the caller typed ``text`` instead of speaking."""

    text: str


@dataclass(frozen=True)
class MultimodalMessage:
    """``multimodal_message``: text and/or uploaded file references."""

    text: str
    file_ids: tuple[str, ...]


@dataclass(frozen=True)
class ClientToolResult:
    """``client_tool_result``: the result of a client tool call."""

    tool_call_id: str
    is_error: bool


@dataclass(frozen=True)
class Feedback:
    """``feedback``: a like/dislike score for an agent response."""

    score: str


@dataclass(frozen=True)
class OnPremSetup:
    """``enclave_setup_config``: the on-prem setup message (accepted, ignored)."""


@dataclass(frozen=True)
class UnknownMessage:
    """A well-formed JSON object whose ``type`` this server does not handle."""

    type: str


ClientMessage = (
    InitiationData
    | UserAudioChunk
    | Pong
    | UserActivity
    | ContextualUpdate
    | UserMessage
    | MultimodalMessage
    | ClientToolResult
    | Feedback
    | OnPremSetup
    | UnknownMessage
)


def _str_field(obj: dict[str, Any], key: str, *, required: bool = True) -> str:
    value = obj.get(key)
    if value is None and not required:
        return ""
    if not isinstance(value, str):
        raise MalformedMessage(f"{key!r} must be a string")
    return value


def _dict_field(obj: dict[str, Any], key: str) -> dict[str, Any]:
    value = obj.get(key)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise MalformedMessage(f"{key!r} must be an object")
    return value


def _int_field(obj: dict[str, Any], key: str) -> int:
    value = obj.get(key)
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise MalformedMessage(f"{key!r} must be an integer")
    try:
        return int(value)
    except ValueError:
        raise MalformedMessage(f"{key!r} must be an integer") from None


def _decode_audio(value: object) -> bytes:
    if not isinstance(value, str):
        raise MalformedMessage("'user_audio_chunk' must be a base64 string")
    try:
        pcm = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise MalformedMessage("'user_audio_chunk' is not valid base64") from None
    if len(pcm) % SAMPLE_WIDTH:
        raise MalformedMessage(f"'user_audio_chunk' has an odd byte count ({len(pcm)})")
    return pcm


def parse_client_message(raw: str | bytes) -> ClientMessage:
    """Parse one websocket frame from the client.

    Args:
        raw: the frame's payload (text, or bytes that must be UTF-8 JSON).

    Raises:
        MalformedMessage: not JSON, not an object, or a known type with bad fields.
    """
    try:
        obj = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as exc:
        raise MalformedMessage(f"not JSON ({exc.__class__.__name__})") from None
    if not isinstance(obj, dict):
        raise MalformedMessage(f"not a JSON object ({type(obj).__name__})")

    if "user_audio_chunk" in obj:
        return UserAudioChunk(_decode_audio(obj["user_audio_chunk"]))

    kind = obj.get("type")
    if not isinstance(kind, str):
        raise MalformedMessage("no 'type' field")

    if kind == "conversation_initiation_client_data":
        source_info = _dict_field(obj, "source_info")
        user_id = obj.get("user_id")
        return InitiationData(
            config_override=_dict_field(obj, "conversation_config_override"),
            dynamic_variables=_dict_field(obj, "dynamic_variables"),
            source=str(source_info.get("source", "")),
            version=str(source_info.get("version", "")),
            user_id=user_id if isinstance(user_id, str) else None,
        )
    if kind == "pong":
        return Pong(_int_field(obj, "event_id"))
    if kind == "user_activity":
        return UserActivity()
    if kind == "contextual_update":
        return ContextualUpdate(_str_field(obj, "text"))
    if kind == "user_message":
        return UserMessage(_str_field(obj, "text", required=False))
    if kind == "multimodal_message":
        text_part = _dict_field(obj, "text")
        files = obj.get("files") or ([obj["file"]] if isinstance(obj.get("file"), dict) else [])
        if not isinstance(files, list):
            raise MalformedMessage("'files' must be a list")
        file_ids = tuple(str(f.get("file_id", "")) for f in files if isinstance(f, dict))
        return MultimodalMessage(_str_field(text_part, "text", required=False), file_ids)
    if kind == "client_tool_result":
        return ClientToolResult(
            _str_field(obj, "tool_call_id", required=False), bool(obj.get("is_error"))
        )
    if kind == "feedback":
        return Feedback(str(obj.get("score", "")))
    if kind == "enclave_setup_config":
        return OnPremSetup()
    return UnknownMessage(kind)


# --------------------------------------------------------------------------- server → client


def _dump(obj: dict[str, Any]) -> str:
    return json.dumps(obj, separators=(",", ":"))


def initiation_metadata_message(conversation_id: str, output_format: str = AUDIO_FORMAT) -> str:
    """``conversation_initiation_metadata`` naming the conversation and the audio formats.

    ``output_format`` other than pcm_16000 exists only to test clients that
    must refuse it; the audio sent is pcm_16000 regardless."""
    return _dump(
        {
            "type": "conversation_initiation_metadata",
            "conversation_initiation_metadata_event": {
                "conversation_id": conversation_id,
                "agent_output_audio_format": output_format,
                "user_input_audio_format": AUDIO_FORMAT,
            },
        }
    )


def audio_message(pcm: bytes, event_id: int) -> str:
    """``audio``: one chunk of agent speech (int16 LE mono 16 kHz bytes) with its event id."""
    return _dump(
        {
            "type": "audio",
            "audio_event": {
                "audio_base_64": base64.b64encode(pcm).decode("ascii"),
                "event_id": event_id,
            },
        }
    )


def agent_response_message(text: str) -> str:
    """``agent_response``: the text of the line the agent is about to speak."""
    return _dump({"type": "agent_response", "agent_response_event": {"agent_response": text}})


def agent_response_correction_message(original: str, corrected: str) -> str:
    """``agent_response_correction``: what the caller actually heard of an interrupted line."""
    return _dump(
        {
            "type": "agent_response_correction",
            "agent_response_correction_event": {
                "original_agent_response": original,
                "corrected_agent_response": corrected,
            },
        }
    )


def user_transcript_message(text: str) -> str:
    """``user_transcript``: what the server made of the caller's turn."""
    return _dump(
        {"type": "user_transcript", "user_transcription_event": {"user_transcript": text}}
    )


def interruption_message(event_id: int) -> str:
    """``interruption``: drop all agent audio with ``event_id`` up to this one."""
    return _dump({"type": "interruption", "interruption_event": {"event_id": event_id}})


def ping_message(event_id: int, ping_ms: int | None) -> str:
    """``ping``: ``ping_ms`` is the last measured round trip in ms (``None`` before the first)."""
    return _dump({"type": "ping", "ping_event": {"event_id": event_id, "ping_ms": ping_ms}})


def speech_placeholder(duration_s: float) -> str:
    """The honest stand-in transcript of a caller turn: ``[speech 1.4 s]``."""
    return f"[speech {duration_s:.1f} s]"
