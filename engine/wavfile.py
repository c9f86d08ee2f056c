"""16-bit PCM WAV files: a crash-safe incremental writer and a checking reader.

``GrowingWav`` keeps the RIFF header true after every ``append``: it writes the
samples, then patches the two size fields. If the process is killed between
the two, the header still describes a valid (slightly shorter) file, and
readers such as Python's ``wave`` and sox stop at the declared size.
"""

from __future__ import annotations

import os
import struct
import wave
from pathlib import Path

import numpy as np

_HEADER_BYTES = 44


class WavFormatError(ValueError):
    """A WAV file callctl cannot use; ``str()`` names the file and the problem."""


class GrowingWav:
    """A 16-bit PCM WAV being written in pieces; valid on disk after each piece.

    One thread owns an instance. ``append`` takes int16 frames, interleaved
    when ``channels`` > 1. The file is created (or truncated) with mode 0600.
    """

    def __init__(self, path: str | os.PathLike[str], rate: int, channels: int) -> None:
        self.path = Path(path)
        self.rate = rate
        self.channels = channels
        self.frames = 0
        # 0600 from creation: recordings hold people's voices.
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            os.fchmod(fd, 0o600)  # a file that existed keeps its mode through O_TRUNC
        except OSError:
            os.close(fd)
            raise
        self._file = os.fdopen(fd, "wb")
        block = 2 * channels
        self._file.write(
            b"RIFF" + struct.pack("<I", 36) + b"WAVE"
            + b"fmt " + struct.pack("<IHHIIHH", 16, 1, channels, rate, rate * block, block, 16)
            + b"data" + struct.pack("<I", 0)
        )
        self._file.flush()

    def append(self, samples: np.ndarray) -> None:
        """Append int16 samples (``frames * channels`` of them), then fix the header."""
        if len(samples) == 0:
            return
        self._file.seek(0, os.SEEK_END)
        self._file.write(np.ascontiguousarray(samples, dtype="<i2").tobytes())
        self.frames += len(samples) // self.channels
        data_bytes = self.frames * 2 * self.channels
        self._file.seek(4)
        self._file.write(struct.pack("<I", 36 + data_bytes))
        self._file.seek(40)
        self._file.write(struct.pack("<I", data_bytes))
        self._file.flush()

    def close(self) -> None:
        if not self._file.closed:
            self._file.flush()
            os.fsync(self._file.fileno())
            self._file.close()


MIN_RATE, MAX_RATE = 8_000, 192_000
"""Sample rates a WAV may declare (Hz); anything else is refused before reading."""
MAX_CHANNELS = 8
"""Most channels a WAV may declare."""


def read_wav(path: str | os.PathLike[str]) -> tuple[np.ndarray, int]:
    """Read a 16-bit PCM WAV; return (int16 array of shape (frames, channels), rate).

    The header is checked before any sample is read: 16-bit PCM, 1 to
    ``MAX_CHANNELS`` channels, ``MIN_RATE`` to ``MAX_RATE`` Hz, and a data chunk
    no larger than what the file holds after its start (a forged size would
    make ``readframes`` allocate it). A file holding more than its header
    declares (a recording cut mid-append) is read up to the declared size.
    Raises ``WavFormatError``, one line naming the file and what is wrong.
    """
    try:
        with open(path, "rb") as f, wave.open(f, "rb") as w:
            width, channels, rate = w.getsampwidth(), w.getnchannels(), w.getframerate()
            if width != 2:
                raise WavFormatError(
                    f"{path}: {8 * width}-bit samples; callctl needs 16-bit PCM"
                )
            if not 1 <= channels <= MAX_CHANNELS:
                raise WavFormatError(f"{path}: {channels} channels; callctl reads 1 to "
                                     f"{MAX_CHANNELS}")
            if not MIN_RATE <= rate <= MAX_RATE:
                raise WavFormatError(f"{path}: sample rate {rate} Hz; callctl reads "
                                     f"{MIN_RATE} to {MAX_RATE} Hz")
            declared = w.getnframes() * width * channels
            # wave stops right after the data chunk's header: what follows is the audio.
            available = os.fstat(f.fileno()).st_size - f.tell()
            if declared > available:
                raise WavFormatError(f"{path}: the header declares {declared} bytes of audio "
                                     f"but the file holds {max(0, available)} (truncated or "
                                     "forged)")
            raw = w.readframes(w.getnframes())
    except FileNotFoundError:
        raise WavFormatError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise WavFormatError(f"{path}: a directory, not a WAV file") from None
    except PermissionError:
        raise WavFormatError(f"{path}: permission denied") from None
    except (wave.Error, EOFError, struct.error) as exc:
        raise WavFormatError(f"{path}: not a PCM WAV file ({exc})") from None
    samples = np.frombuffer(raw, dtype="<i2").astype(np.int16)
    usable = len(samples) - len(samples) % channels
    return samples[:usable].reshape(-1, channels), rate


def read_mono_16k(path: str | os.PathLike[str], rate: int = 16_000) -> np.ndarray:
    """Read a 16-bit WAV as int16 mono at ``rate`` (channels averaged, resampled).

    The file is checked by :func:`read_wav` first, so the resampler never sees
    a rate outside ``MIN_RATE``..``MAX_RATE`` (at most a 2x upsample to 16 kHz).
    """
    frames, file_rate = read_wav(path)
    mono = frames.mean(axis=1) if frames.shape[1] > 1 else frames[:, 0].astype(np.float64)
    if file_rate != rate:
        import soxr

        mono = soxr.resample(mono.astype(np.float32), file_rate, rate)
    return np.clip(np.rint(mono), -32768, 32767).astype(np.int16)
