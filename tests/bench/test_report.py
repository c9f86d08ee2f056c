"""The benchmark report says what it measured, hangup by hangup where it matters."""

from __future__ import annotations

from bench.report import loud_hangups, machine_stalls


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


def test_a_loud_hangup_says_whether_the_machine_stalled_around_it() -> None:
    callctl = {"late_device_fades": 0, "loud_hangups": [
        {"click_db": -1.3, "silence_ms": 12.0, "tail_step": 9000, "before_step": 2900,
         "device_fade": {"late": True}, "machine_stalls": "a 23.6 ms stall"},
        {"click_db": -18.0, "silence_ms": 11.0, "tail_step": 2900, "before_step": 2900,
         "device_fade": {"late": False}, "machine_stalls": None}]}
    lines = loud_hangups(callctl).splitlines()
    assert lines[1].endswith("the machine around it: a 23.6 ms stall"), lines
    assert lines[2].endswith("the machine around it: no stall of 5 ms or more"), lines


def test_every_systems_hangups_near_a_stall_are_counted_and_callctls_slowest_shown() -> None:
    systems = {k: {"hangup_silence": {"n": 30}, "hangups_near_stall": n}
               for k, n in (("callctl", 3), ("sdk", 5), ("pipecat", 0))}
    systems["callctl"]["slowest_hangups"] = [
        {"silence_ms": 27.0, "machine_stalls": "a 12.0 ms stall"},
        {"silence_ms": 19.5, "machine_stalls": None}]
    text = machine_stalls(systems)
    assert "callctl 3 of 30" in text and "0 of 30" in text and "5 of 30" in text
    assert "27.0 ms (a 12.0 ms stall); 19.5 ms (no stall)" in text
