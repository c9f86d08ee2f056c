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

``VoiceLibrary`` keeps the added voices in memory (name, and each sample's
file name, size and duration; never the audio). A body is read in pieces
(``read_form``), in a worker thread, from the file the HTTP layer spooled it
to, so memory stays bounded whatever the upload (see :mod:`.http`).
``delay_s`` makes every accepted upload take that long to answer (for tests
of work that must not wait for it). The key is never logged or stored.
"""

from __future__ import annotations

import asyncio
import email.message
import email.parser
import email.policy
import io
import logging
import secrets
import string
import urllib.parse
import wave
from dataclasses import dataclass, field
from typing import IO

from .http import HttpRequest, HttpResponse
from .wire import API_KEY_HEADER

log = logging.getLogger("agent_server")

#: The path the SDK posts an Instant Voice Clone to.
VOICES_ADD_PATH = "/v1/voices/add"
#: Longest voice name accepted, in characters.
MAX_NAME_CHARS = 100
#: Most parts a form may have.
MAX_PARTS = 64
#: Largest text field (or URL-encoded form), in bytes.
MAX_FIELD_BYTES = 64 * 1024
#: Longest head of one form part, in bytes.
MAX_PART_HEAD_BYTES = 16 * 1024
#: Bytes read at a time when scanning a form body.
READ_CHUNK = 1024 * 1024
_MAX_PADDING = 1024  # transport padding allowed after a delimiter (RFC 2046)
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
        """Answer one ``POST /v1/voices/add`` (see module docstring).

        The form is read in a worker thread, in pieces of ``READ_CHUNK`` bytes:
        a large upload neither blocks the conversations on the event loop nor
        is held in memory (only each file's size and header are kept).
        """
        if not request.headers.get(API_KEY_HEADER, "").strip():
            log.warning("voices/add refused: missing or empty %s header", API_KEY_HEADER)
            return HttpResponse(401, {"detail": {
                "status": "needs_authorization",
                "message": "Neither authorization header nor xi-api-key received, "
                           "please provide one."}})
        outcome = await asyncio.to_thread(_read_upload, request)
        if isinstance(outcome, HttpResponse):
            return outcome
        name, samples = outcome
        total = sum(s.size for s in samples)
        # Which key came, without writing it: callctl sends its stand-in, never a user's.
        key = request.headers.get(API_KEY_HEADER, "").strip()
        log.info("voices/add received: name %r, %d file(s), %d bytes, key %s", name[:40],
                 len(samples), total,
                 "stand-in" if key == "callctl-local-agent-server" else "other")
        if self.delay_s > 0:
            await asyncio.sleep(self.delay_s)
        voice_id = "".join(secrets.choice(_ID_ALPHABET) for _ in range(20))
        self.voices[voice_id] = (name, samples)
        seconds = sum(s.duration_s or 0.0 for s in samples)
        log.info("voices/add done: voice_id %s (%.1f s of audio)", voice_id, seconds)
        return HttpResponse(200, {"voice_id": voice_id, "requires_verification": False})


def _read_upload(request: HttpRequest) -> HttpResponse | tuple[str, list[Sample]]:
    """The voice name and samples of a ``voices/add`` body, or the 422 answer (worker thread)."""
    body, size = request.open_body()
    with body:
        try:
            fields, parts = read_form(request.headers.get("content-type", ""), body, size)
        except ValueError as exc:
            log.warning("voices/add refused: %s", exc)
            return _invalid("invalid_request", str(exc))
        missing = [name for name, present in (("name", "name" in fields),
                                              ("files", bool(parts))) if not present]
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
        for part in parts:
            try:
                samples.append(check_audio_in(part.filename, _Window(body, part.offset,
                                                                      part.size)))
            except ValueError as exc:
                log.warning("voices/add refused: %s", exc)
                return _invalid("invalid_audio", str(exc))
    return name, samples


def _invalid(status: str, message: str) -> HttpResponse:
    return HttpResponse(422, {"detail": {"status": status, "message": message}})


@dataclass(frozen=True)
class FilePart:
    """One ``files`` part of a form: its file name and where its bytes lie in the body."""

    filename: str
    offset: int
    size: int


class _Window:
    """Bytes ``offset`` to ``offset + size`` of a binary file, as a read-only file."""

    def __init__(self, file: IO[bytes], offset: int, size: int) -> None:
        self._file, self._offset, self.size, self._pos = file, offset, size, 0

    def read(self, n: int = -1) -> bytes:
        left = self.size - self._pos
        n = left if n is None or n < 0 else min(n, left)
        if n <= 0:
            return b""
        self._file.seek(self._offset + self._pos)
        data = self._file.read(n)
        self._pos += len(data)
        return data

    def seek(self, pos: int, whence: int = 0) -> int:
        base = {0: 0, 1: self._pos, 2: self.size}[whence]
        self._pos = max(0, base + pos)
        return self._pos

    def tell(self) -> int:
        return self._pos


def read_form(content_type: str, body: IO[bytes], size: int
              ) -> tuple[dict[str, str], list[FilePart]]:
    """Split a form body read from ``body`` (``size`` bytes) into text fields and ``files``
    parts, reading it in pieces: memory stays bounded whatever the size.

    Returns ``({field: text}, [FilePart, ...])``. A URL-encoded form (up to
    ``MAX_FIELD_BYTES``) has text fields only; any other body yields nothing
    (the caller reports the missing fields). ``ValueError`` (one line) for a
    form over ``MAX_PARTS`` parts or with a text field over ``MAX_FIELD_BYTES``.
    Parts are bounded by ``CRLF--boundary`` (RFC 2046); a part with no closing
    delimiter after it is ignored, as is the ``Content-Transfer-Encoding``
    (RFC 7578 deprecates it).
    """
    kind = content_type.lower()
    if kind.startswith("application/x-www-form-urlencoded"):
        if size > MAX_FIELD_BYTES:
            return {}, []
        query = urllib.parse.parse_qs(body.read(size).decode("latin-1"), keep_blank_values=True)
        return {k: v[0] for k, v in query.items() if k != "files"}, []
    if not kind.startswith("multipart/form-data"):
        return {}, []
    header = email.message.Message()
    header["Content-Type"] = content_type
    boundary = header.get_param("boundary")
    if not isinstance(boundary, str) or not 1 <= len(boundary) <= 70:
        return {}, []
    delimiter = b"\r\n--" + boundary.encode("latin-1")
    marks = _find_all(body, size, delimiter)
    fields: dict[str, str] = {}
    files: list[FilePart] = []
    for start, end in zip(marks, marks[1:], strict=False):
        body.seek(start + len(delimiter))
        after = body.read(_MAX_PADDING + 2)
        if after.startswith(b"--"):
            break  # the close delimiter
        line_end = after.find(b"\r\n")
        if line_end < 0:
            continue
        part_start = start + len(delimiter) + line_end + 2
        if len(fields) + len(files) >= MAX_PARTS:
            raise ValueError(f"the form has more than {MAX_PARTS} parts")
        body.seek(part_start)
        head = body.read(min(end - part_start, MAX_PART_HEAD_BYTES))
        head_end = 0 if head.startswith(b"\r\n") else head.find(b"\r\n\r\n")
        if head_end < 0:
            continue
        content_start = part_start + head_end + (2 if head_end == 0 else 4)
        headers = email.parser.BytesHeaderParser(policy=email.policy.HTTP).parsebytes(
            head[:head_end] + b"\r\n\r\n")
        name = headers.get_param("name", header="content-disposition")
        if not isinstance(name, str):
            continue
        length = end - content_start
        if name == "files":
            filename = headers.get_filename() or ""
            files.append(FilePart(filename, content_start, length))
            continue
        if length > MAX_FIELD_BYTES:
            raise ValueError(f"the form field {name[:40]!r} is over {MAX_FIELD_BYTES} bytes")
        body.seek(content_start)
        fields[name] = body.read(length).decode("utf-8", errors="replace")
    return fields, files


def _find_all(body: IO[bytes], size: int, needle: bytes) -> list[int]:
    """Offsets of every ``needle`` in ``body`` (read in ``READ_CHUNK`` pieces), reading
    the body as if ``CRLF`` came first (so a delimiter at offset 0 is found at -2)."""
    body.seek(0)
    found: list[int] = []
    carry, base, left = b"\r\n", -2, size
    while True:
        chunk = body.read(min(READ_CHUNK, left)) if left > 0 else b""
        left -= len(chunk)
        data = carry + chunk
        at = data.find(needle)
        while at >= 0:
            found.append(base + at)
            at = data.find(needle, at + 1)
        if not chunk:
            return found
        keep = min(len(data), len(needle) - 1)
        carry = data[len(data) - keep:]
        base += len(data) - keep


def parse_form(content_type: str, body: bytes) -> tuple[dict[str, str], list[tuple[str, bytes]]]:
    """:func:`read_form` for a body in memory, with each file's bytes:
    ``({field: text}, [(filename, bytes), ...])``."""
    stream = io.BytesIO(body)
    fields, parts = read_form(content_type, stream, len(body))
    return fields, [(p.filename, body[p.offset:p.offset + p.size]) for p in parts]


def check_audio(filename: str, data: bytes) -> Sample:
    """A ``Sample`` for one uploaded file; ``ValueError`` (one line) if it is not usable audio."""
    return check_audio_in(filename, _Window(io.BytesIO(data), 0, len(data)))


def check_audio_in(filename: str, data: _Window) -> Sample:
    """:func:`check_audio` for a file's bytes in a window of a larger body: only its
    first bytes and its WAV header are read."""
    label = repr(filename[:60]) if filename else "(unnamed)"
    if data.size == 0:
        raise ValueError(f"file {label} is empty")
    data.seek(0)
    start = data.read(12)
    mpeg = len(start) > 1 and start[0] == 0xFF and start[1] & 0xE0 == 0xE0
    mp4 = start[4:8] == b"ftyp"
    if not (start.startswith(_AUDIO_MAGIC) or mpeg or mp4):
        raise ValueError(f"file {label} is not an audio file")
    duration: float | None = None
    if start.startswith(b"RIFF"):
        data.seek(0)
        try:
            with wave.open(data) as w:  # type: ignore[call-overload]  # read, seek, tell suffice
                frames, rate = w.getnframes(), w.getframerate()
        except (wave.Error, EOFError) as exc:
            raise ValueError(f"file {label} is not a readable WAV file ({exc})") from None
        if frames == 0 or rate <= 0:
            raise ValueError(f"file {label} holds no audio")
        duration = frames / rate
    return Sample(filename, data.size, duration)
