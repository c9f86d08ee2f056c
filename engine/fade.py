"""The hangup fade's shape, shared by the callback (PortAudio, virtual) and the native
PulseAudio backend, which fades at the device."""

from __future__ import annotations

import numpy as np

from callctl.engine.ring import SAMPLE_RATE

TAIL_DB = -30.0
"""Where the hangup fade's quiet tail starts, dB re the signal."""
TAIL_SECONDS = 0.0015
"""Length of that tail, seconds (24 frames at 16 kHz)."""


def fade_curve(frames: int, tail_frames: int = round(TAIL_SECONDS * SAMPLE_RATE)) -> np.ndarray:
    """The hangup fade's gains, from just below 1 down to exactly 0 (float32, ``frames`` long).

    Two raised-cosine stages: the body falls to ``TAIL_DB`` (−30 dB) in
    ``frames - tail_frames``, then the tail falls from there to zero in
    ``tail_frames``. Both ends of both stages are flat, so there is no step
    and no kink a listener could hear; and whatever is still audible in the
    last millisecond of the fade is the tail, 30 dB or more down. (A single
    raised cosine spends about the last tenth of its length between −20 and
    −30 dB, which is why a 5 ms one sits right at the −20 dB click bound.)
    Fades shorter than two tails are a single raised cosine. The last gain is
    0.0, so the faded signal meets the silence after it with no step.
    """
    if frames <= 0:
        return np.zeros(0, np.float32)
    if frames < 2 * tail_frames or tail_frames <= 0:
        i = np.arange(1, frames + 1, dtype=np.float64)
        return (0.5 * (1.0 + np.cos(np.pi * i / frames))).astype(np.float32)
    floor = 10.0 ** (TAIL_DB / 20.0)
    body = frames - tail_frames
    i = np.arange(1, body + 1, dtype=np.float64)
    first = floor + (1.0 - floor) * 0.5 * (1.0 + np.cos(np.pi * i / body))
    j = np.arange(1, tail_frames + 1, dtype=np.float64)
    second = floor * 0.5 * (1.0 + np.cos(np.pi * j / tail_frames))
    return np.concatenate([first, second]).astype(np.float32)
