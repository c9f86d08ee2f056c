"""``POST /v1/voices/add``: Instant Voice Cloning, as the ElevenLabs API answers it.

The SDK's ``ElevenLabs(...).voices.ivc.create(name=..., files=[...])`` sends a
``multipart/form-data`` body: ``name``, optional ``description`` and ``labels``
(a JSON string), ``remove_background_noise``, and one ``files`` part per
sample. The answers, shaped like the service's:

* no (or an empty) ``xi-api-key`` header — 401
  ``{"detail": {"status": "needs_authorization", "message": ...}}``;
* a body that is not ``multipart/form-data``, no ``name``, no ``files`` — 422
  with FastAPI's ``{"detail": [{"type": "missing", "loc": ["body", FIELD], ...}]}``;
* an empty name, a file that is not audio, a WAV with no samples — 422
  ``{"detail": {"status": ..., "message": ...}}``;
* otherwise 200 ``{"voice_id": "<20 characters>", "requires_verification": false}``.

``VoiceLibrary`` keeps the added voices in memory (name, samples, bytes).
``delay_s`` makes every accepted upload take that long to answer (for tests
of work that must not wait for it). The key is never logged or stored.
"""

from __future__ import annotations

import asyncio
import email.parser
import email.policy
import io
import logging
import secrets
import string
import urllib.parse
import wave
from dataclasses import dataclass, field

from .http import HttpRequest, HttpResponse
from .protocol import API_KEY_HEADER

log = logging.getLogger("agent_server")

#: The path the SDK posts an Instant Voice Clone to.
VOICES_ADD_PATH = "/v1/voices/add"
#: Longest voice name accepted, in characters.
MAX_NAME_CHARS = 100
_ID_ALPHABET = string.ascii_letters + string.digits

# Leading bytes of the audio containers the service takes.
_AUDIO_MAGIC = (b"RIFF", b"ID3", b"OggS", b"fLaC", b"\x1aE\xdf\xa3", b"FORM")


@dataclass(frozen=True)
class Sample:
    """One uploaded file: its name, size in bytes and (for WAV) duration in seconds."""

    filename: str
    size: int
    duration_s: float | None


@dataclass
class VoiceLibrary:
    """The voices added to this server (lost when it exits)."""

    delay_s: float = 0.0
    """Seconds every accepted upload waits before it is answered."""
    voices: dict[str, tuple[str, list[Sample]]] = field(default_factory=dict)

    async def add(self, request: HttpRequest) -> HttpResponse:
        """Answer one ``POST /v1/voices/add`` (see module docstring)."""
        if not request.headers.get(API_KEY_HEADER, "").strip():
            log.warning("voices/add refused: missing or empty %s header", API_KEY_HEADER)
            return HttpResponse(401, {"detail": {
                "status": "needs_authorization",
                "message": "Neither authorization header nor xi-api-key received, "
                           "please provide one."}})
        fields, files = parse_form(request.headers.get("content-type", ""), request.body)
        missing = [name for name, present in (("name", "name" in fields),
                                              ("files", bool(files))) if not present]
        if missing:
            log.warning("voices/add refused: missing %s", ", ".join(missing))
            return HttpResponse(422, {"detail": [
                {"type": "missing", "loc": ["body", name], "msg": "Field required",
                 "input": None} for name in missing]})
        name = fields["name"].strip()
        if not name or len(name) > MAX_NAME_CHARS:
            log.warning("voices/add refused: bad name (%d characters)", len(name))
            return _invalid("invalid_name",
                            f"The voice name must be 1 to {MAX_NAME_CHARS} characters long.")
        samples = []
        for filename, data in files:
            try:
                samples.append(check_audio(filename, data))
            except ValueError as exc:
                log.warning("voices/add refused: %s", exc)
                return _invalid("invalid_audio", str(exc))
        total = sum(s.size for s in samples)
        log.info("voices/add received: name %r, %d file(s), %d bytes", name[:40], len(samples),
                 total)
        if self.delay_s > 0:
            await asyncio.sleep(self.delay_s)
        voice_id = "".join(secrets.choice(_ID_ALPHABET) for _ in range(20))
        self.voices[voice_id] = (name, samples)
        seconds = sum(s.duration_s or 0.0 for s in samples)
        log.info("voices/add done: voice_id %s (%.1f s of audio)", voice_id, seconds)
        return HttpResponse(200, {"voice_id": voice_id, "requires_verification": False})


def _invalid(status: str, message: str) -> HttpResponse:
    return HttpResponse(422, {"detail": {"status": status, "message": message}})


def parse_form(content_type: str, body: bytes) -> tuple[dict[str, str], list[tuple[str, bytes]]]:
    """Split a ``multipart/form-data`` body into text fields and ``files`` parts.

    Returns ``({field: text}, [(filename, bytes), ...])``. A URL-encoded form
    has text fields only; any other body yields nothing (the caller reports
    the missing fields).
    """
    kind = content_type.lower()
    if kind.startswith("application/x-www-form-urlencoded"):
        query = urllib.parse.parse_qs(body.decode("latin-1"), keep_blank_values=True)
        return {k: v[0] for k, v in query.items() if k != "files"}, []
    if not kind.startswith("multipart/form-data") or "boundary=" not in kind:
        return {}, []
    head = f"Content-Type: {content_type}\r\nMIME-Version: 1.0\r\n\r\n".encode("latin-1")
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(head + body)
    if not message.is_multipart():
        return {}, []
    fields: dict[str, str] = {}
    files: list[tuple[str, bytes]] = []
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        if not isinstance(name, str):
            continue
        payload = part.get_payload(decode=True)
        data = payload if isinstance(payload, bytes) else b""
        if name == "files":
            files.append((part.get_filename() or "", data))
        else:
            fields[name] = data.decode("utf-8", errors="replace")
    return fields, files


def check_audio(filename: str, data: bytes) -> Sample:
    """A ``Sample`` for one uploaded file; ``ValueError`` (one line) if it is not usable audio."""
    label = repr(filename[:60]) if filename else "(unnamed)"
    if not data:
        raise ValueError(f"file {label} is empty")
    mpeg = len(data) > 1 and data[0] == 0xFF and data[1] & 0xE0 == 0xE0
    mp4 = data[4:8] == b"ftyp"
    if not (data.startswith(_AUDIO_MAGIC) or mpeg or mp4):
        raise ValueError(f"file {label} is not an audio file")
    duration: float | None = None
    if data.startswith(b"RIFF"):
        try:
            with wave.open(io.BytesIO(data)) as w:
                frames, rate = w.getnframes(), w.getframerate()
        except (wave.Error, EOFError) as exc:
            raise ValueError(f"file {label} is not a readable WAV file ({exc})") from None
        if frames == 0 or rate <= 0:
            raise ValueError(f"file {label} holds no audio")
        duration = frames / rate
    return Sample(filename, len(data), duration)

