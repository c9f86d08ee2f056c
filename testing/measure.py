"""What an external observer's recording says about the end of the agent's voice.

Pure functions over a recording: ``samples`` (int16, mono) and ``times``
(seconds of ``time.monotonic()``, the estimated moment each sample played,
from ``testing.observer.PlaybackObserver.times_of`` or any observer with the same clock).
The definitions are the project's, the same for every system measured
(bench/results/report.md, "The procedure"):

* **sound**: a sample whose magnitude exceeds −60 dBFS (``|x| > 32.77``).
* **speaking at t**: the peak of the 10 ms before ``t`` is at least
  ``SPEECH_DBFS``. A hangup or a barge-in that was not made while the
  observer heard speech proves nothing and is redone, never counted.
* **silence after t**: the first gap of at least ``GAP_S`` (0.4 s) with no
  sound, searched from ``t`` on. The figure is the time of the last sound
  before that gap (or ``t`` itself when the gap starts at once); nothing
  after the gap, such as a later call or line, can extend it.
* **click**: the peak of the last 1 ms before that silence relative to the
  peak of the 10 ms before ``t``, in dB. A fade that reached the speaker
  gives −20 dB or less; a hard cut about 0 dB.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import numpy.typing as npt

FULL_SCALE = 32768.0
SOUND_DBFS = -60.0
"""Above this a sample is sound."""
SPEECH_DBFS = -30.0
"""The 10 ms before a hangup must peak at least this loud: the agent was speaking. Also
the click figure's floor: its reference must stand 30 dB above the silence threshold
(``SOUND_DBFS``), or the last millisecond before silence, which is above that threshold by
definition, could not be 20 dB under it, fade or no fade."""
GAP_S = 0.4
"""A gap this long with no sound is silence."""
BEFORE_S = 0.010
"""The window before the hangup whose peak is the click figure's reference, seconds."""
TAIL_S = 0.001
"""The window before the silence whose peak is the click figure's tail, seconds."""


def amplitude(level_dbfs: float) -> float:
    """The int16 magnitude of ``level_dbfs`` (dBFS re 32768)."""
    return FULL_SCALE * 10.0 ** (level_dbfs / 20.0)


def dbfs(samples: npt.ArrayLike) -> float:
    """RMS level of int16 ``samples`` in dBFS (re 32768); ``-inf`` for silence or no samples.

    A full-scale square wave is 0 dBFS and a full-scale sine about -3 dBFS.
    """
    x = np.asarray(samples, dtype=np.float64)
    if x.size == 0:
        return -math.inf
    rms = float(np.sqrt(np.mean(x * x)))
    return db(rms / FULL_SCALE)


def peak_dbfs(samples: npt.ArrayLike) -> float:
    """Peak level of int16 ``samples`` in dBFS (re 32768); ``-inf`` for silence or no samples."""
    return db(peak(np.asarray(samples)) / FULL_SCALE)


def db(ratio: float) -> float:
    """20·log10(ratio); −inf for 0."""
    return 20.0 * math.log10(ratio) if ratio > 0 else -math.inf


def peak(samples: npt.NDArray[np.int16]) -> float:
    """Largest magnitude, 0.0 for no samples."""
    return float(np.max(np.abs(samples.astype(np.int32)))) if samples.size else 0.0


class Recording(Protocol):
    """What an observer offers: samples around a time span, and their play times."""

    def window(self, t0: float, t1: float
               ) -> tuple[npt.NDArray[np.int16], npt.NDArray[np.float64]]:
        """(samples, their play times in s) for the samples timed in ``[t0, t1)``."""
        ...

    def recorded_until(self) -> float | None:
        """Play time (s) just after the last recorded sample."""
        ...


def speaking_at(rec: Recording, t: float, level_dbfs: float = SPEECH_DBFS) -> bool:
    """Whether the observer heard the agent in the ``BEFORE_S`` before ``t``."""
    samples, _ = rec.window(t - BEFORE_S, t)
    return samples.size > 0 and peak(samples) >= amplitude(level_dbfs)


def silence_after(samples: npt.NDArray[np.int16], times: npt.NDArray[np.float64], t: float,
                  gap_s: float = GAP_S) -> float | None:
    """Time (s) of the last sound before the first ``gap_s`` gap at or after ``t``.

    ``t`` itself when no sound follows ``t`` for ``gap_s``. None when the
    recording ends before such a gap (measure later, with more recording).
    """
    loud = np.abs(samples.astype(np.int32)) > amplitude(SOUND_DBFS)
    after = times >= t
    sound = times[loud & after]
    end = float(times[-1]) if times.size else t
    points = np.concatenate(([t], sound))
    gaps = np.diff(np.concatenate((points, [end])))
    long_gaps = np.flatnonzero(gaps >= gap_s)
    if long_gaps.size == 0:
        return None
    i = int(long_gaps[0])
    if i == points.size - 1 and end - points[i] < gap_s:
        return None  # the recording stops inside the candidate gap
    return float(points[i])


def click_db(samples: npt.NDArray[np.int16], times: npt.NDArray[np.float64], t: float,
             silent_at: float) -> float | None:
    """Peak of the ``TAIL_S`` up to ``silent_at`` over the peak of ``BEFORE_S`` before ``t``, dB.

    None when there was no sound before ``t`` (no reference) or no sound
    after it (nothing ended after the hangup: the voice was already gone).
    """
    ref = peak(samples[(times >= t - BEFORE_S) & (times < t)])
    tail = peak(samples[(times >= silent_at - TAIL_S) & (times <= silent_at)])
    if ref <= 0 or silent_at <= t:
        return None
    return db(tail / ref)


def largest_step(samples: npt.NDArray[np.int16]) -> int:
    """The largest difference between consecutive samples (a click shows as a step)."""
    if samples.size < 2:
        return 0
    return int(np.max(np.abs(np.diff(samples.astype(np.int32)))))


@dataclass(frozen=True)
class Ending:
    """How the agent's voice ended after one hangup or barge-in at ``t`` (all from the recording).

    ``silence_ms``: ``t`` → the last sound before the first 0.4 s gap.
    ``click_db``: the click figure (None when there was nothing to fade).
    ``speaking``: the agent was heard in the 10 ms before ``t``; if False the
    event proves nothing and the caller redoes it.
    """

    t: float
    speaking: bool
    silence_ms: float | None
    click_db: float | None
    tail_step: int
    """Largest sample step in the 20 ms up to the silence (a cut shows as a step)."""
    before_step: int
    """Largest sample step in the 50 ms before ``t``: the signal's own steps."""


def ending(rec: Recording, t: float, gap_s: float = GAP_S, bound_s: float = 15.0,
           wait: float = 20.0) -> Ending:
    """Wait (at most ``wait`` s) until the recording shows the gap, then measure the ending.

    ``bound_s`` limits the search after ``t``: a sound still going then is
    reported as ``silence_ms`` of ``bound_s`` (a lower bound).
    """
    import time

    deadline = time.monotonic() + wait
    silent_at: float | None = None
    while True:
        samples, times = rec.window(t - 0.1, t + bound_s + gap_s)
        silent_at = silence_after(samples, times, t, gap_s)
        until = rec.recorded_until() or t
        if silent_at is not None or until >= t + bound_s + gap_s or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    before, _ = rec.window(t - 0.05, t)
    speaking = speaking_at(rec, t)
    if silent_at is None:
        return Ending(t, speaking, bound_s * 1000, None, 0, largest_step(before))
    tail, _ = rec.window(silent_at - 0.02, silent_at + 0.001)
    return Ending(t, speaking, round((silent_at - t) * 1000, 2),
                  click_db(samples, times, t, silent_at), largest_step(tail),
                  largest_step(before))


def wait_quiet(rec: Recording, quiet_s: float = 0.5, timeout: float = 30.0) -> bool:
    """Block until the last ``quiet_s`` of recording hold no sound (bounded by ``timeout`` s)."""
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        until = rec.recorded_until()
        if until is not None:
            samples, _ = rec.window(until - quiet_s, until)
            if samples.size and peak(samples) <= amplitude(SOUND_DBFS):
                return True
        time.sleep(0.05)
    return False


class ObserverRecording:
    """``Recording`` over any ``testing.observer.TimedObserver`` (``PlaybackObserver``,
    ``JackObserver``), which already offers ``window`` and ``recorded_until``: kept so
    that code typed against the protocol can wrap an observer explicitly."""

    def __init__(self, observer: Recording) -> None:
        self.observer = observer

    def window(self, t0: float, t1: float
               ) -> tuple[npt.NDArray[np.int16], npt.NDArray[np.float64]]:
        return self.observer.window(t0, t1)

    def recorded_until(self) -> float | None:
        return self.observer.recorded_until()
