"""The hangup fade's shape, shared by the callback (PortAudio, virtual) and the native
PulseAudio backend, which fades at the device."""

from __future__ import annotations

import numpy as np

from callctl.engine.ring import SAMPLE_RATE

TAIL_DB = -30.0
"""Where the hangup fade's quiet tail starts, dB re the signal."""
TAIL_SECONDS = 0.0015
"""Length of that tail, seconds (24 frames at 16 kHz)."""


def fade_curve(frames: int, tail_frames: int = round(TAIL_SECONDS * SAMPLE_RATE),
               tail_db: float = TAIL_DB) -> np.ndarray:
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
    ``tail_db`` (≤ 0) moves the tail's start lower, for a fade over audio
    louder than what played just before it (see ``tail_db_for``).
    """
    if frames <= 0:
        return np.zeros(0, np.float32)
    if frames < 2 * tail_frames or tail_frames <= 0:
        i = np.arange(1, frames + 1, dtype=np.float64)
        return (0.5 * (1.0 + np.cos(np.pi * i / frames))).astype(np.float32)
    floor = 10.0 ** (min(0.0, tail_db) / 20.0)
    body = frames - tail_frames
    i = np.arange(1, body + 1, dtype=np.float64)
    first = floor + (1.0 - floor) * 0.5 * (1.0 + np.cos(np.pi * i / body))
    j = np.arange(1, tail_frames + 1, dtype=np.float64)
    second = floor * 0.5 * (1.0 + np.cos(np.pi * j / tail_frames))
    return np.concatenate([first, second]).astype(np.float32)


QUIET = 33
"""Sample magnitude below which the output counts as silent: -60 dBFS."""
HEARD_MARGIN_DB = -22.0
"""How far under the peak heard before the hangup the tail starts when the voice grows
into the fade (dB): the -20 dB click bound, and 2 dB to spare."""
TAIL_AUDIBLE_SECONDS = 0.0011
"""The tail lasts at least this long above ``QUIET``: the last audible millisecond is
all tail (1 ms, and 0.1 ms to spare)."""


def tail_for(before_peak: float, fade_peak: float, frames: int) -> tuple[int, float]:
    """The tail (its length in frames, its start in dB re the faded signal) of a
    ``frames``-long fade over samples peaking at ``fade_peak``, after a listener heard
    ``before_peak`` (sample units) in the 10 ms before the hangup.

    What is still audible in the fade's last millisecond must be the tail, at least
    ``HEARD_MARGIN_DB`` under what was heard. The usual tail starts ``TAIL_DB``
    (-30 dB) under the faded samples. Two cases move it:

    * the voice grows into the fade (a vowel after a consonant, 20 dB within the few
      milliseconds between a hangup and the fade at the device): the usual tail
      would be only 10 dB under what was heard, so it starts ``HEARD_MARGIN_DB``
      under ``before_peak`` instead;
    * the voice is quiet: the usual tail would start below ``QUIET``, silent, and the
      last audible millisecond would be the body's steep end, so it starts at twice
      ``QUIET`` instead (still ``HEARD_MARGIN_DB`` under what was heard when that
      was -30 dBFS or louder).

    The tail is then made long enough to stay above ``QUIET`` for
    ``TAIL_AUDIBLE_SECONDS``. The fade's length, and so the moment of silence, does
    not change. Returns the usual ``(TAIL_SECONDS in frames, TAIL_DB)`` when neither
    case applies.
    """
    usual = round(TAIL_SECONDS * SAMPLE_RATE)
    if fade_peak <= 0:
        return usual, TAIL_DB
    start = fade_peak * 10.0 ** (TAIL_DB / 20.0)
    limit = before_peak * 10.0 ** (HEARD_MARGIN_DB / 20.0)
    if 2.0 * QUIET <= start <= max(limit, 2.0 * QUIET):
        return usual, TAIL_DB
    start = max(min(start, limit), 2.0 * QUIET)
    if start >= fade_peak:  # a fade of audio this quiet needs no tail of its own
        return usual, TAIL_DB
    # A raised cosine from ``start`` to 0 over n frames is above QUIET for
    # n * acos(2 QUIET / start - 1) / pi frames.
    audible = TAIL_AUDIBLE_SECONDS * SAMPLE_RATE
    needed = int(np.ceil(audible * np.pi / np.arccos(2.0 * QUIET / start - 1.0)))
    return min(max(usual, needed), frames // 2), float(20.0 * np.log10(start / fade_peak))


ENDING_BOUND_DB = -23.0
"""How far under what was heard the last audible millisecond of a fade must be (dB): the
-20 dB click bound, and 3 dB to spare. (With 1 dB to spare, ``make bench`` at b73e63d
heard one hangup of 30 end at -19.4 dB; the engine did not yet report the level it had
computed, ``fade_for``'s ``ending_db``, so what the observer and the engine disagree on
is not known.)"""
MS = SAMPLE_RATE // 1000
"""Frames in a millisecond."""


def last_ms_peak(ending: np.ndarray) -> float:
    """Peak magnitude of the millisecond up to the last sample above ``QUIET`` in
    ``ending`` (0 when none is): what a listener hears last before the silence."""
    loud = np.flatnonzero(np.abs(ending) > QUIET)
    if loud.size == 0:
        return 0.0
    end = int(loud[-1]) + 1
    return float(np.abs(ending[max(0, end - MS) : end]).max())


FADE_STEP = 8
"""Frames (0.5 ms) between the fade lengths ``fade_lengths`` offers."""


def fade_lengths(frames: int) -> list[int]:
    """Fade lengths to try, in order of preference, around ``frames``: itself, then
    longer and shorter by ``FADE_STEP`` in turn (up to 4 steps longer, 2 shorter), then
    shorter still, down to two tails: for a voice that ends by itself, steeply, right
    after the hangup, only a fade that ends before it does can end quietly."""
    shortest = 2 * round(TAIL_SECONDS * SAMPLE_RATE)
    if frames < shortest:  # a fade asked to be this short (``--fade-ms``) stays so
        return [max(1, frames)]
    steps = [0, 1, -1, 2, -2, 3, 4]
    steps += list(range(-3, -(frames - shortest) // FADE_STEP - 1, -1))
    return [frames + k * FADE_STEP for k in steps if frames + k * FADE_STEP >= shortest]


def fade_for(voice: np.ndarray, before: np.ndarray, heard_peak: float,
             lengths: list[int]) -> tuple[np.ndarray, int, float, float]:
    """The fade over ``voice`` whose last audible millisecond is quietest, among fades of
    the given ``lengths`` (frames, in order of preference; each at most ``len(voice)``).

    Why choose: a voice's own level can fall 30 dB between two pitch pulses within a
    millisecond. When the fade's quiet tail lands in such a valley it is silent, and
    the last audible millisecond is the body's steep end: a step a listener hears as a
    click. So each length is tried in turn (``fade_curve`` with ``tail_for``'s tail),
    the faded samples are computed exactly as they will play, after ``before`` (what
    plays right before them), and the first whose last audible millisecond is
    ``ENDING_BOUND_DB`` under ``heard_peak`` (what the listener heard before the
    hangup) is taken; if none is, the one that comes closest.

    Returns ``(gains, tail_frames, tail_db, ending_db)``: float64 gains, one per frame
    of the chosen length, the last one 0.0; the tail (``tail_for``); and the last
    audible millisecond's peak re ``heard_peak``, dB, as computed here (-inf: silent).
    """
    bound = heard_peak * 10.0 ** (ENDING_BOUND_DB / 20.0)

    def db(last: float) -> float:
        return 20.0 * float(np.log10(last / heard_peak)) if last > 0 and heard_peak > 0 \
            else float("-inf")

    prefix = np.asarray(before[-MS:], np.float64)
    samples = np.asarray(voice, np.float64)
    best: tuple[float, np.ndarray, int, float] | None = None
    for n in lengths:
        fade_peak = float(np.abs(samples[:n]).max(initial=0.0))
        tail_frames, tail_db = tail_for(heard_peak, fade_peak, n)
        gains = fade_curve(n, tail_frames, tail_db).astype(np.float64)
        last = last_ms_peak(np.concatenate([prefix, np.rint(samples[:n] * gains)]))
        if last <= bound:
            return gains, tail_frames, tail_db, db(last)
        if best is None or last < best[0]:
            best = (last, gains, tail_frames, tail_db)
    assert best is not None, "no fade length given"
    return best[1], best[2], best[3], db(best[0])
