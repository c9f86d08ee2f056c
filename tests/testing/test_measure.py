"""The observer-side definitions (testing/measure.py) on recordings whose answer is known."""

from __future__ import annotations

import math

import numpy as np
import pytest

from testing.measure import GAP_S, amplitude, click_db, dbfs, largest_step, peak_dbfs, silence_after

RATE = 16_000


def tone(seconds: float, level: float = 0.5) -> np.ndarray:
    t = np.arange(int(seconds * RATE)) / RATE
    return (level * 32767 * np.sin(2 * np.pi * 440 * t)).astype(np.int16)


def timed(samples: np.ndarray, t0: float = 100.0) -> tuple[np.ndarray, np.ndarray]:
    return samples, t0 + np.arange(samples.size) / RATE


def test_silence_is_the_last_sound_before_the_first_long_gap_not_a_later_call() -> None:
    # 1 s of tone, the hangup at 0.5 s, the voice gone at 0.52 s, then a later call
    # 0.45 s after it: the later call must not extend the figure.
    x = tone(2.0)
    x[int(0.52 * RATE):int(0.97 * RATE)] = 0
    samples, times = timed(x)
    at = silence_after(samples, times, 100.5)
    assert at is not None and at == pytest.approx(100.52, abs=2 / RATE)


def test_a_gap_shorter_than_the_rule_does_not_count_as_silence() -> None:
    x = tone(2.0)
    x[int(0.6 * RATE):int(0.6 * RATE + (GAP_S - 0.05) * RATE)] = 0  # a pause in speech
    x[int(1.5 * RATE):] = 0
    samples, times = timed(x)
    at = silence_after(samples, times, 100.5)
    assert at is not None and at == pytest.approx(101.5, abs=2 / RATE)


def test_no_answer_until_the_recording_shows_a_whole_gap() -> None:
    x = tone(1.0)
    x[int(0.8 * RATE):] = 0  # only 0.2 s of silence recorded so far
    samples, times = timed(x)
    assert silence_after(samples, times, 100.5) is None


def test_a_hard_cut_is_a_click_and_a_fade_is_not() -> None:
    cut = tone(1.0)
    cut[int(0.51 * RATE):] = 0
    samples, times = timed(np.concatenate([cut, np.zeros(RATE, np.int16)]))
    end = silence_after(samples, times, 100.5)
    assert end is not None
    assert click_db(samples, times, 100.5, end) == pytest.approx(0.0, abs=1.0)
    assert largest_step(samples[int(0.49 * RATE):int(0.52 * RATE)]) > 5000

    faded = tone(1.0).astype(np.float64)
    n = int(0.010 * RATE)
    at = int(0.51 * RATE)
    faded[at:at + n] *= 0.5 * (1 + np.cos(np.pi * np.arange(1, n + 1) / n))
    faded[at + n:] = 0
    f = np.rint(faded).astype(np.int16)
    samples, times = timed(np.concatenate([f, np.zeros(RATE, np.int16)]))
    end = silence_after(samples, times, 100.5)
    assert end is not None
    assert click_db(samples, times, 100.5, end) < -20


def test_levels_in_dbfs() -> None:
    square = np.full(1600, -32768, dtype=np.int16)
    square[::2] = 32767
    assert dbfs(square) == pytest.approx(0.0, abs=0.01)
    sine = (32767 * np.sin(2 * np.pi * 1000 * np.arange(16000) / RATE)).astype(np.int16)
    assert dbfs(sine) == pytest.approx(-3.01, abs=0.02)
    assert peak_dbfs(sine) == pytest.approx(0.0, abs=0.01)
    assert dbfs(np.zeros(100, np.int16)) == -math.inf
    assert dbfs(np.zeros(0, np.int16)) == -math.inf
    assert peak_dbfs([]) == -math.inf
    assert amplitude(-60.0) == pytest.approx(32.768)
