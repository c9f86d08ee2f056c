"""The hangup fade's shape (``engine.fade``): smooth, ending at exact zero, and a tail low
enough under what was heard before the hangup even when the voice grows into the fade."""

from __future__ import annotations

import numpy as np
import pytest

from callctl.engine.fade import (
    QUIET,
    TAIL_DB,
    TAIL_SECONDS,
    fade_curve,
    fade_for,
    fade_lengths,
    tail_for,
)

RATE = 16_000


def test_the_curve_falls_smoothly_to_exact_zero() -> None:
    for frames in (8, 48, 96, 160):
        gains = fade_curve(frames).astype(np.float64)
        assert len(gains) == frames and gains[-1] == 0.0
        assert 0.9 < gains[0] < 1.0, "starts just below 1: no step"
        assert np.all(np.diff(gains) <= 1e-7), "never rises"


def test_a_lower_tail_starts_where_it_is_asked_and_keeps_the_length() -> None:
    tail = round(0.0015 * RATE)
    for tail_db in (TAIL_DB, -45.0, -60.0):
        gains = fade_curve(96, tail_db=tail_db).astype(np.float64)
        assert len(gains) == 96 and gains[-1] == 0.0
        start = gains[96 - tail - 1]  # the last gain of the body: the tail's start
        assert abs(20 * np.log10(start) - tail_db) < 0.5, (tail_db, start)


def test_the_usual_tail_unless_the_voice_grows_into_the_fade() -> None:
    usual = (round(TAIL_SECONDS * RATE), TAIL_DB)
    assert tail_for(3000.0, 2500.0, 96) == usual
    assert tail_for(3000.0, 7000.0, 96) == usual  # 7 dB up: the usual tail is 23 dB under
    frames, tail_db = tail_for(1000.0, 20_000.0, 96)
    assert tail_db < TAIL_DB and usual[0] < frames <= 48
    # The tail starts 22 dB under what was heard.
    assert abs(20_000 * 10 ** (tail_db / 20) - 1000 * 10 ** (-22 / 20)) < 1e-6
    assert tail_for(0.0, 50.0, 96) == usual  # no louder than the tail itself would be


def click_db(before: np.ndarray, faded: np.ndarray) -> float:
    """The bench's click figure on a synthetic ending: the peak of the last 1 ms above
    -60 dBFS over the peak of what played before, dB."""
    loud = np.nonzero(np.abs(faded) > QUIET)[0]
    end = loud[-1] + 1
    tail = np.abs(faded[max(0, end - RATE // 1000) : end]).max()
    return float(20 * np.log10(tail / np.abs(before).max()))


@pytest.mark.parametrize("heard", [1000, 3000, 10_000])
def test_a_voice_that_grows_into_the_fade_ends_20_db_under_what_was_heard(heard: int) -> None:
    t = np.arange(RATE // 10) / RATE
    tone = np.sin(2 * np.pi * 220 * t)
    before = np.round(heard * tone[:160])  # -30, -20, -10 dBFS: a consonant
    during = np.round(30_000 * tone[160:256])  # the vowel after it, 10-30 dB up
    plain = during * fade_curve(96).astype(np.float64)
    tail = tail_for(float(np.abs(before).max()), float(np.abs(during).max()), 96)
    adapted = during * fade_curve(96, *tail).astype(np.float64)
    if heard <= 3000:  # 20 dB or more of growth
        assert click_db(before, plain) > -20, "the usual tail is not enough: the test can fail"
    assert click_db(before, adapted) <= -20, click_db(before, adapted)


def test_a_quiet_voice_ends_in_an_audible_tail_20_db_under_what_was_heard() -> None:
    """At -30 dBFS the usual tail (30 dB under) would start below -60 dBFS, silent: the
    last audible millisecond would be the body's steep end, only 14 dB under."""
    t = np.arange(RATE // 10) / RATE
    tone = np.sin(2 * np.pi * 220 * t)
    before = np.round(1071 * tone[:160])
    during = np.round(852 * tone[160:256])
    frames, tail_db = tail_for(float(np.abs(before).max()), float(np.abs(during).max()), 96)
    assert tail_db > TAIL_DB, "the tail starts higher re the signal, at twice QUIET"
    assert abs(852 * 10 ** (tail_db / 20) - 2 * QUIET) < 1e-6
    plain = during * fade_curve(96).astype(np.float64)
    adapted = during * fade_curve(96, frames, tail_db).astype(np.float64)
    assert click_db(before, plain) > -20, "the usual tail is not enough: the test can fail"
    assert click_db(before, adapted) <= -20, click_db(before, adapted)


def pitch_pulses(frames: int, period: int = 96, decay: float = 10.0) -> np.ndarray:
    """A voiced sound as a synthetic voice makes it: a burst every ``period`` frames (6 ms,
    a 167 Hz voice) that decays to nearly nothing before the next (``decay`` frames)."""
    t = np.arange(frames)
    return np.round(8000 * np.exp(-(t % period) / decay) * np.sin(2 * np.pi * 700 * t / RATE))


def ending_db(before: np.ndarray, faded: np.ndarray) -> float:
    return click_db(before, np.concatenate([before[-16:], faded]))


def test_a_fade_whose_tail_would_fall_between_two_pitch_pulses_is_made_to_end_on_one() -> None:
    voice = pitch_pulses(2000)
    usual, chosen = [], []
    for at in range(400, 496, 4):  # every phase of the pulses, 0.25 ms apart
        before, ahead = voice[at - 160 : at], voice[at : at + 400]
        heard = float(np.abs(before).max())
        tail = tail_for(heard, float(np.abs(ahead[:96]).max()), 96)
        usual.append(ending_db(before, np.rint(ahead[:96] * fade_curve(96, *tail))))
        gains, _, _, _ = fade_for(ahead, before, heard, fade_lengths(96))
        assert gains[-1] == 0.0 and 48 <= len(gains) <= 128
        chosen.append(ending_db(before, np.rint(ahead[: len(gains)] * gains)))
    assert max(usual) > -20, "some phase ends in a valley: the test can fail"
    assert max(chosen) <= -20, chosen


def test_a_voice_that_ends_by_itself_inside_the_fade_is_faded_before_its_end() -> None:
    t = np.arange(400)
    voice = np.round(6000 * np.sin(2 * np.pi * 220 * t / RATE))
    voice[200 + 52 :] = 0  # the voice stops, steeply, 52 frames after the read index
    before, ahead = voice[40:200], voice[200:]
    heard = float(np.abs(before).max())
    tail = tail_for(heard, float(np.abs(ahead[:96]).max()), 96)
    assert ending_db(before, np.rint(ahead[:96] * fade_curve(96, *tail))) > -20
    gains, _, _, _ = fade_for(ahead, before, heard, fade_lengths(96))
    assert len(gains) < 96, "shorter: its end is quiet by the time the voice stops"
    assert ending_db(before, np.rint(ahead[: len(gains)] * gains)) <= -20


def test_fade_lengths_start_with_the_one_asked_and_keep_a_short_one_short() -> None:
    lengths = fade_lengths(96)
    assert lengths[:3] == [96, 104, 88] and min(lengths) == 48 and max(lengths) == 128
    assert fade_lengths(16) == [16], "a fade asked to be this short is not lengthened"
