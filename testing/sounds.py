"""The sounds the tests and the benchmark play: a tone, the caller's voice, their WAV files.

Everything is int16 mono at ``RATE`` (16 kHz, the agent's format) unless a
``rate`` says otherwise; times are seconds.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import numpy.typing as npt

from callctl.engine.wavfile import GrowingWav

__all__ = ["CALLER_LINE", "RATE", "caller_speech", "tone", "write_caller_wav", "write_wav"]

RATE = 16_000
CALLER_LINE = "Hello, I would like to book a table for two people tonight please."
"""What the caller says in the tests (the controller's and the GUI's)."""


def tone(seconds: float, freq: float = 440.0, level: float = 0.5,
         rate: int = RATE) -> npt.NDArray[np.int16]:
    """A sine of ``freq`` Hz for ``seconds``, its peak ``level`` × 32767 (0.5: about -6 dBFS)."""
    t = np.arange(int(seconds * rate)) / rate
    return np.round(level * 32767 * np.sin(2 * np.pi * freq * t)).astype(np.int16)


def caller_speech(line: str = CALLER_LINE) -> npt.NDArray[np.int16]:
    """``line`` voiced by espeak-ng (the local agent server's ``Voice``), at ``RATE``."""
    from callctl.engine.agent_server.voice import Voice

    return Voice().render(line)


def write_wav(path: Path, samples: npt.ArrayLike, rate: int = RATE) -> Path:
    """Write ``samples`` (int16 mono) as a WAV file at ``path``; return ``path``."""
    wav = GrowingWav(path, rate, 1)
    try:
        wav.append(np.asarray(samples, np.int16))
    finally:
        wav.close()
    return path


def write_caller_wav(path: Path, speech: npt.NDArray[np.int16], at: list[float],
                     total: float) -> Path:
    """A microphone WAV of ``total`` s: silence, with ``speech`` starting at each time in
    ``at`` (s; cut at the end of the file). What ``--device virtual --mic`` plays as the
    caller. Returns ``path``."""
    mic = np.zeros(int(total * RATE), np.int16)
    for t in at:
        start = int(t * RATE)
        part = speech[: max(0, len(mic) - start)]
        mic[start : start + len(part)] = part
    return write_wav(path, mic)
