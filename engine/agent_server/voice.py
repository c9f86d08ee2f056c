"""The agent's voice: espeak-ng speech, resampled with soxr to int16 mono at 16 kHz."""

from __future__ import annotations

import shutil
import struct
import subprocess
import threading
from collections.abc import Iterator

import numpy as np
import soxr

from .wire import SAMPLE_RATE

ESPEAK = "espeak-ng"
#: Longest time one line may take to synthesise, in seconds.
SYNTH_TIMEOUT_S = 20.0


class VoiceError(RuntimeError):
    """espeak-ng is missing or failed."""


def parse_wav(data: bytes) -> tuple[np.ndarray, int]:
    """Decode a 16-bit PCM mono RIFF/WAVE byte string.

    Tolerates the bogus chunk sizes espeak-ng writes when streaming to stdout
    (the data chunk is taken as running to the end of the input).

    Returns:
        (samples as int16 array, sample rate in Hz)

    Raises:
        VoiceError: not a 16-bit mono PCM WAV.
    """
    if len(data) < 12 or data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        raise VoiceError("espeak-ng did not produce a WAV file")
    pos = 12
    rate = 0
    while pos + 8 <= len(data):
        chunk_id = data[pos : pos + 4]
        (size,) = struct.unpack("<I", data[pos + 4 : pos + 8])
        body = pos + 8
        if chunk_id == b"fmt ":
            fmt, channels, rate, _, _, bits = struct.unpack("<HHIIHH", data[body : body + 16])
            if fmt != 1 or channels != 1 or bits != 16:
                raise VoiceError(f"unexpected WAV format {fmt}/{channels} ch/{bits} bit")
        elif chunk_id == b"data":
            if not rate:
                raise VoiceError("WAV data before its format")
            end = min(len(data), body + size)
            end -= (end - body) % 2
            return np.frombuffer(data[body:end], dtype="<i2").astype(np.int16), rate
        pos = body + size + (size & 1)
    raise VoiceError("WAV file has no data")


def to_int16(samples: np.ndarray) -> np.ndarray:
    """Round and clip float samples (full scale ±32768) to int16."""
    return np.clip(np.rint(samples), -32768, 32767).astype(np.int16)


def resample(pcm: np.ndarray, rate_in: int, rate_out: int = SAMPLE_RATE) -> np.ndarray:
    """Resample int16 mono audio from ``rate_in`` Hz to ``rate_out`` Hz with soxr (HQ)."""
    if rate_in == rate_out or pcm.size == 0:
        return pcm.astype(np.int16, copy=True)
    out = soxr.resample(pcm.astype(np.float32), rate_in, rate_out, quality="HQ")
    return to_int16(np.asarray(out))


class Voice:
    """Synthesises lines with espeak-ng; results are cached per text.

    Thread-safe: :meth:`render` may run in worker threads (``asyncio.to_thread``).
    """

    def __init__(self, voice: str = "en-us", words_per_minute: int = 165) -> None:
        """``voice``: espeak-ng voice name; ``words_per_minute``: espeak-ng speed."""
        self.voice = voice
        self.words_per_minute = words_per_minute
        self._cache: dict[str, np.ndarray] = {}
        self._lock = threading.Lock()

    @staticmethod
    def available() -> bool:
        """True when the espeak-ng executable is on PATH."""
        return shutil.which(ESPEAK) is not None

    def render(self, text: str) -> np.ndarray:
        """The line ``text`` as int16 mono samples at 16 kHz (read-only array).

        Raises:
            VoiceError: espeak-ng is missing, failed, or timed out.
        """
        with self._lock:
            cached = self._cache.get(text)
        if cached is not None:
            return cached
        try:
            proc = subprocess.run(
                [ESPEAK, "-v", self.voice, "-s", str(self.words_per_minute), "--stdout"],
                input=text.encode("utf-8"),
                capture_output=True,
                timeout=SYNTH_TIMEOUT_S,
                check=False,
            )
        except FileNotFoundError:
            raise VoiceError(f"{ESPEAK} is not installed") from None
        except subprocess.TimeoutExpired:
            raise VoiceError(f"{ESPEAK} took more than {SYNTH_TIMEOUT_S:.0f} s") from None
        if proc.returncode != 0:
            err = proc.stderr.decode("utf-8", "replace").strip().splitlines()
            raise VoiceError(f"{ESPEAK} failed ({proc.returncode}): {err[-1] if err else ''}")
        pcm, rate = parse_wav(proc.stdout)
        out = resample(pcm, rate, SAMPLE_RATE)
        out.setflags(write=False)
        with self._lock:
            self._cache[text] = out
        return out


def chunks(pcm: np.ndarray, chunk_samples: int) -> Iterator[np.ndarray]:
    """Split ``pcm`` into pieces of ``chunk_samples`` samples (the last may be short)."""
    if chunk_samples <= 0:
        raise ValueError("chunk_samples must be positive")
    for start in range(0, len(pcm), chunk_samples):
        yield pcm[start : start + chunk_samples]
