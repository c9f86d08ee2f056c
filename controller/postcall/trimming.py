"""The caller's voice cut out of a call recording: pure functions, no files.

``trim_caller`` finds the caller's speech in the microphone channel (leaving
out what was said over the agent and its echo tail), joins the pieces with
short gaps and normalises the peak; what ``caller.wav`` holds and what a
voice clone gets. ``min_speech_s`` is how much speech a clone needs.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import numpy as np

MIN_SPEECH_ENV = "CALLCTL_CLONE_MIN_SPEECH_S"
DEFAULT_MIN_SPEECH_S = 10.0
"""Seconds of the caller's trimmed speech a clone needs, unless ``$CALLCTL_CLONE_MIN_SPEECH_S``."""

RATE = 16_000
"""Sample rate of the recording and of ``caller.wav``, in Hz."""
FRAME_S = 0.02
"""Analysis frame of the trimming, in seconds."""
SPEECH_FLOOR_DBFS = -50.0
"""A frame of the caller's channel (RMS) is speech above the threshold: the noise floor (the
20th percentile of the frames) + ``ABOVE_NOISE_DB``, kept within [this, ``SPEECH_CEILING_DBFS``]."""
ABOVE_NOISE_DB = 12.0
SPEECH_CEILING_DBFS = -30.0
"""The threshold never goes above this (a recording that is mostly speech has no floor)."""
AGENT_DBFS = -50.0
"""A frame of the speaker channel above this (RMS, dBFS) is the agent speaking."""
ECHO_TAIL_S = 0.3
"""After the agent's audio, this long of the microphone is left out (room echo)."""
GAP_FILL_S = 0.3
"""Pauses this short inside speech are kept as speech."""
MIN_SPEECH_RUN_S = 0.1
"""Voiced runs shorter than this are clicks, not speech."""
PAD_S = 0.1
"""Kept around each piece of speech, in seconds (not into the agent's turns)."""
JOIN_SILENCE_S = 0.25
"""Silence put between the pieces in ``caller.wav``, in seconds."""
PEAK_DBFS = -3.0
"""Peak of the normalised ``caller.wav``."""
MAX_GAIN_DB = 30.0
FADE_S = 0.005
"""Fade in and out of each piece, so the joins do not click."""


@dataclass(frozen=True)
class Trimmed:
    """The caller's speech cut out of a recording."""

    audio: np.ndarray
    """int16 mono: the pieces of speech, joined by ``JOIN_SILENCE_S`` of silence, normalised."""
    speech_s: float
    """Seconds of speech found (without the padding and the joins)."""
    pieces: list[tuple[float, float]]
    """(start, end) of each piece in the recording, seconds."""
    gain_db: float


def _runs(mask: np.ndarray) -> list[tuple[int, int]]:
    """[start, end) of each run of True in a 1-D boolean array."""
    edges = np.diff(np.concatenate([[0], mask.astype(np.int8), [0]]))
    return list(zip(np.flatnonzero(edges == 1).tolist(), np.flatnonzero(edges == -1).tolist(),
                    strict=True))


def _frame_dbfs(samples: np.ndarray, hop: int, block_frames: int = 3000) -> np.ndarray:
    """RMS of each ``hop``-sample frame in dBFS (-inf for digital silence), in blocks so a
    long call needs little memory."""
    n = len(samples) // hop
    out = np.empty(n)
    for first in range(0, n, block_frames):
        last = min(n, first + block_frames)
        frames = samples[first * hop : last * hop].astype(np.float64).reshape(-1, hop)
        out[first:last] = np.sqrt(np.mean(frames * frames, axis=1))
    with np.errstate(divide="ignore"):
        return np.asarray(20 * np.log10(out / 32768.0))


def trim_caller(recording: np.ndarray, rate: int = RATE) -> Trimmed:
    """The caller's speech from a call recording: int16 frames ``(n, 2)`` (left: microphone,
    right: speaker) or ``(n, 1)``/``(n,)`` (microphone only).

    A frame (``FRAME_S``) is speech when the microphone is above the threshold
    (see ``SPEECH_FLOOR_DBFS``) and the agent has not been playing within
    ``ECHO_TAIL_S``; pauses up to ``GAP_FILL_S``
    are bridged and runs under ``MIN_SPEECH_RUN_S`` dropped. Each piece keeps
    ``PAD_S`` either side, fades in and out, and the whole is normalised to a
    ``PEAK_DBFS`` peak (at most ``MAX_GAIN_DB`` of gain).
    """
    frames = recording.reshape(len(recording), -1)
    mic = frames[:, 0]
    hop = max(1, round(FRAME_S * rate))
    mic_db = _frame_dbfs(mic, hop)
    n = len(mic_db)
    if n == 0:
        return Trimmed(np.zeros(0, np.int16), 0.0, [], 0.0)
    if frames.shape[1] > 1:
        agent = _frame_dbfs(frames[:, 1], hop) > AGENT_DBFS
        tail = round(ECHO_TAIL_S / FRAME_S)
        # Frame i is the agent's if it played in frames i-tail-1 .. i+1.
        window = np.convolve(agent.astype(np.int32), np.ones(tail + 3, np.int32))
        agent_zone = window[1 : n + 1] > 0
    else:
        agent_zone = np.zeros(n, bool)
    free = mic_db[~agent_zone]
    finite = free[np.isfinite(free)]
    floor = float(np.percentile(finite, 20)) if len(finite) else -math.inf
    threshold = max(SPEECH_FLOOR_DBFS, min(floor + ABOVE_NOISE_DB, SPEECH_CEILING_DBFS))
    voiced = (mic_db > threshold) & ~agent_zone
    runs = _runs(voiced)
    gap = round(GAP_FILL_S / FRAME_S)
    for (_, end), (start, _) in zip(runs, runs[1:], strict=False):
        if start - end <= gap and not agent_zone[end:start].any():
            voiced[end:start] = True
    shortest = max(1, round(MIN_SPEECH_RUN_S / FRAME_S))
    for start, end in _runs(voiced):
        if end - start < shortest:
            voiced[start:end] = False
    speech_s = float(voiced.sum()) * hop / rate
    pad = round(PAD_S / FRAME_S)
    padded = voiced.copy()
    for start, end in _runs(voiced):
        padded[max(0, start - pad) : min(n, end + pad)] = True
    padded &= ~agent_zone
    pieces_idx = _runs(padded)
    fade = max(1, round(FADE_S * rate))
    ramp = np.linspace(0.0, 1.0, fade, endpoint=False, dtype=np.float32)
    join = np.zeros(round(JOIN_SILENCE_S * rate), np.float32)
    parts: list[np.ndarray] = []
    for start, end in pieces_idx:
        piece = mic[start * hop : end * hop].astype(np.float32)
        piece = piece - piece.mean()
        k = min(fade, len(piece) // 2)
        piece[:k] *= ramp[:k]
        piece[len(piece) - k :] *= ramp[:k][::-1]
        if parts:
            parts.append(join)
        parts.append(piece)
    if not parts:
        return Trimmed(np.zeros(0, np.int16), 0.0, [], 0.0)
    audio = np.concatenate(parts)
    peak = float(np.abs(audio).max())
    gain = min(10 ** (PEAK_DBFS / 20) * 32767 / peak, 10 ** (MAX_GAIN_DB / 20)) if peak else 1.0
    out = np.clip(np.rint(audio * gain), -32768, 32767).astype(np.int16)
    seconds = [(s * hop / rate, e * hop / rate) for s, e in pieces_idx]
    return Trimmed(out, round(speech_s, 3), seconds, round(20 * math.log10(gain), 2))


def min_speech_s() -> float:
    """Seconds of trimmed speech a clone needs: ``$CALLCTL_CLONE_MIN_SPEECH_S``, else 10."""
    try:
        value = float(os.environ.get(MIN_SPEECH_ENV, DEFAULT_MIN_SPEECH_S))
    except ValueError:
        return DEFAULT_MIN_SPEECH_S
    return value if value >= 0 and math.isfinite(value) else DEFAULT_MIN_SPEECH_S
