"""The benchmark report says what it measured, hangup by hangup where it matters."""

from __future__ import annotations

from bench.report import loud_hangups


def test_a_loud_hangup_is_listed_with_the_engines_account_of_its_fade() -> None:
    callctl = {"late_device_fades": 1, "loud_hangups": [
        {"click_db": -12.7, "silence_ms": 9.8, "tail_step": 4100, "before_step": 2900,
         "device_fade": {"late": True, "queued_frames": 256, "hold_frames": 80,
                         "fade_frames": 96, "tail_db": -30.0, "left_before_ms": -0.4}}]}
    text = loud_hangups(callctl)
    assert "above -20 dB: 1;" in text and "landed late (`late`): 1" in text
    assert "-12.7 dB, silence 9.8 ms" in text
    assert "late True" in text and "left_before_ms -0.4" in text


def test_no_loud_hangup_says_none() -> None:
    text = loud_hangups({"loud_hangups": [], "late_device_fades": 0})
    assert text.splitlines() == [text]
    assert "above -20 dB: 0;" in text
