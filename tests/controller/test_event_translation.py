"""The controller's readings, alone: an agent process's events and the audio process's
status become the public events of the call (``controller.agent_events``,
``controller.audio_watch``)."""

from __future__ import annotations

import json

from callctl.controller.agent_events import (
    parse_agent_frame,
    public_agent_event,
    transcript_line,
)
from callctl.controller.audio_watch import audio_status_events
from callctl.engine import protocol


def test_agent_frames_that_are_not_events_are_dropped() -> None:
    assert parse_agent_frame(b"not json") is None
    assert parse_agent_frame(b"[1, 2]") is None
    assert parse_agent_frame(json.dumps({"event": 3}).encode()) is None
    assert parse_agent_frame(json.dumps({"event": "x"}).encode()) == {"event": "x"}


def test_agent_words_become_transcript_events_and_lines() -> None:
    said = {"event": protocol.AGENT_RESPONSE, "text": "Hello", "t": 1.5}
    assert public_agent_event(said, "c1") == (
        protocol.EVENT_TRANSCRIPT, {"call_id": "c1", "role": "agent", "text": "Hello"})
    assert transcript_line(said) == {"t": 1.5, "role": "agent", "text": "Hello"}
    heard = {"event": protocol.AGENT_USER_TRANSCRIPT, "text": "Hi"}
    assert public_agent_event(heard, "c1")[1]["role"] == "caller"  # type: ignore[index]
    interruption = {"event": protocol.AGENT_INTERRUPTION, "dropped_frames": 800, "t": 2.0}
    assert public_agent_event(interruption, "c1") == (
        protocol.EVENT_AGENT, {"call_id": "c1", "kind": "interruption",
                               "dropped_frames": 800, "t": 2.0})
    # Errors and disconnects end the call: the controller's business, not an event here.
    assert public_agent_event({"event": protocol.AGENT_ERROR, "message": "x"}, "c1") is None
    assert transcript_line(interruption) is None


def status(**fields: object) -> dict[str, object]:
    return {"ok": True, "state": "running", "reopens": [], "levels": {"in_dbfs": -30.0,
            "out_dbfs": -12.0}, "xruns": {"device": 0}, **fields}


def test_levels_every_reading_and_each_reopen_once() -> None:
    reopen = {"error": "stream killed", "reopened": True, "gap_ms": 120.0}
    first = audio_status_events(status(reopens=[reopen]), "c1", 0, [], True)
    topics = [topic for topic, _ in first.events]
    assert topics == [protocol.EVENT_ERROR, protocol.EVENT_LEVELS]
    assert first.events[0][1]["code"] == protocol.AUDIO and first.reopens_seen == 1
    assert first.events[1][1]["out_dbfs"] == -12.0 and not first.device_lost
    again = audio_status_events(status(reopens=[reopen]), "c1", 1, [], True)
    assert [topic for topic, _ in again.events] == [protocol.EVENT_LEVELS]


def test_a_stopped_device_ends_the_call_and_a_recording_error_is_said_once() -> None:
    lost = audio_status_events(status(state="stopped", last_device_error="gone"), "c1", 0,
                               [], True)
    assert lost.device_lost and "gone" in lost.events[-1][1]["message"]
    failing = status(recording_error="disk full")
    told = audio_status_events(failing, "c1", 0, [], True)
    assert told.new_errors == ["disk full"]
    assert told.events[0][1]["code"] == protocol.STORAGE
    assert audio_status_events(failing, "c1", 0, ["disk full"], True).new_errors == []
