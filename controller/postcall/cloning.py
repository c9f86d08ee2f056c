"""The voice clone: the caller's voice uploaded to ElevenLabs Instant Voice Cloning.

``clone_voice`` blocks (it runs on the post-call process's upload thread),
reports the upload's progress through ``on_read``, and fails with a one-line
``CloneError``. The elevenlabs SDK and httpx are imported only when a clone
is made.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

CLONE_TIMEOUT_S = 120.0
"""The SDK's HTTP timeout for the upload, in seconds."""
MAX_CLONE_AUDIO_S = 300.0
"""At most this much of ``caller.wav`` (from its start) is uploaded, in seconds: Instant
Voice Cloning gains nothing from more than a few minutes."""


class _CountingReader:
    """A binary file that reports how much of it has been read (the upload's progress)."""

    def __init__(self, handle: IO[bytes], total: int,
                 on_read: Callable[[int, int], None]) -> None:
        self._handle = handle
        self._on_read = on_read
        self.total = total
        self.done = 0

    def read(self, size: int = -1) -> bytes:
        data = self._handle.read(size)
        self.done += len(data)
        self._on_read(self.done, self.total)
        return data

    def seek(self, offset: int, whence: int = 0) -> int:
        position = self._handle.seek(offset, whence)
        self.done = position
        return position

    def tell(self) -> int:
        return self._handle.tell()


def clone_sample(wav: Path, max_s: float = MAX_CLONE_AUDIO_S) -> tuple[IO[bytes], int]:
    """What is uploaded: ``wav`` itself, or its first ``max_s`` seconds (a WAV in memory).
    Returns an open binary file and its size in bytes."""
    import io
    import wave

    with wave.open(str(wav), "rb") as w:
        rate, frames = w.getframerate(), w.getnframes()
        if frames <= max_s * rate:
            handle = open(wav, "rb")  # noqa: SIM115 - the caller closes it
            return handle, os.fstat(handle.fileno()).st_size
        params, data = w.getparams(), w.readframes(round(max_s * rate))
    buf = io.BytesIO()
    with wave.open(buf, "wb") as out:
        out.setparams(params)
        out.writeframes(data)
    return io.BytesIO(buf.getvalue()), len(buf.getvalue())


def api_error_message(status: int | None, body: Any) -> str:
    """One line from an ElevenLabs error answer (``{"detail": {...}|[...]|str}``)."""
    detail = body.get("detail", body) if isinstance(body, dict) else body
    if isinstance(detail, dict):
        text = str(detail.get("message") or detail.get("status") or detail)
    elif isinstance(detail, list):
        parts = []
        for item in detail:
            if isinstance(item, dict):
                loc = ".".join(str(x) for x in item.get("loc", [])[1:])
                parts.append(f"{loc}: {item.get('msg')}" if loc else str(item.get("msg")))
            else:
                parts.append(str(item))
        text = "; ".join(parts)
    else:
        text = str(detail)
    if status in (401, 403):
        what = "refused the API key"
    elif status is not None and status >= 500:
        what = "failed to clone the voice"
    else:
        what = "refused the voice clone"
    return " ".join(f"ElevenLabs {what} (HTTP {status}): {text}".split())[:300]


def clone_voice(name: str, wav: Path, api_key: str, base_url: str, description: str,
                on_read: Callable[[int, int], None]) -> str:
    """Instant Voice Cloning of ``wav`` as ``name``; returns the new voice id.

    Blocking (up to ``CLONE_TIMEOUT_S`` per attempt; the SDK retries 5xx and
    429 twice). Raises ``CloneError`` with a one-line message.
    """
    import httpx
    from elevenlabs import ElevenLabs
    from elevenlabs.core.api_error import ApiError

    client = ElevenLabs(api_key=api_key, base_url=base_url, timeout=CLONE_TIMEOUT_S)
    handle, size = clone_sample(wav)
    try:
        with handle:
            reader = _CountingReader(handle, size, on_read)
            result = client.voices.ivc.create(
                name=name, files=[(wav.name, reader, "audio/wav")],  # type: ignore[list-item]
                description=description)
    except ApiError as exc:
        raise CloneError(api_error_message(exc.status_code, exc.body)) from None
    except httpx.TimeoutException:
        raise CloneError(f"no answer from {base_url} within {CLONE_TIMEOUT_S:.0f} s") from None
    except httpx.HTTPError as exc:
        raise CloneError(f"could not reach {base_url} ({type(exc).__name__}: {exc})") from None
    voice_id = getattr(result, "voice_id", None)
    if not isinstance(voice_id, str) or not voice_id:
        raise CloneError("ElevenLabs answered without a voice id")
    return voice_id


class CloneError(RuntimeError):
    """A voice clone that did not happen; ``str()`` is one line."""
