"""What the audio process's ``watch`` reply, read during a call, means for the call's clients.

``audio_status_events`` is the controller's reading of one ``watch`` reply (about ten a
second during a call; ``status`` has the same fields and more): the level meters, a
device stream lost and reopened, a device gone for good, a recording that could not be
written. It publishes nothing itself and keeps no state: it returns the events to
publish and what changed, and the controller acts on them
(``Controller._publish_levels``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from callctl.engine import protocol


@dataclass
class AudioWatch:
    """One status reply's consequences: ``events`` as ``(topic, fields)`` in order;
    ``reopens_seen``, the device reopens accounted for so far; ``new_errors``, messages
    for the call's error list; ``device_lost``: the call must end ("audio device lost")."""

    events: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    reopens_seen: int = 0
    new_errors: list[str] = field(default_factory=list)
    device_lost: bool = False


def audio_status_events(status: dict[str, Any], call_id: str, reopens_seen: int,
                        errors: list[str], audio_started: bool) -> AudioWatch:
    """Read one ``ok`` status reply of the audio process during call ``call_id``.

    ``reopens_seen``: how many of ``status["reopens"]`` earlier replies reported;
    ``errors``: the call's errors so far (a recording error is reported once).
    """
    watch = AudioWatch(reopens_seen=reopens_seen)
    reopens = status.get("reopens") or []
    for entry in reopens[reopens_seen:]:
        # A stream lost and reopened (or being reopened) by the device: the call goes on.
        what = "reopened" if entry.get("reopened") else "lost, reopening"
        watch.events.append((protocol.EVENT_ERROR, {
            "call_id": call_id, "kind": "device_reopened", "code": protocol.AUDIO,
            "message": f"audio stream {what}: {entry.get('error')}",
            "gap_ms": entry.get("gap_ms")}))
    watch.reopens_seen = len(reopens)
    if status.get("state") == "stopped" and audio_started:
        # The device went away under us and could not be reopened (3 failed reopens
        # within 5 s on the pulse backend; at once on the others).
        detail = status.get("last_device_error")
        watch.events.append((protocol.EVENT_ERROR, {
            "call_id": call_id, "code": protocol.AUDIO,
            "message": "the audio device stopped (disconnected?)"
                       + (f": {detail}" if detail else "")}))
        watch.device_lost = True
        return watch
    error = status.get("recording_error")
    if error and error not in errors:
        watch.new_errors.append(error)
        watch.events.append((protocol.EVENT_ERROR, {
            "call_id": call_id, "message": error, "code": protocol.STORAGE}))
    levels = status.get("levels") or {}
    watch.events.append((protocol.EVENT_LEVELS, {
        "call_id": call_id, "in_dbfs": levels.get("in_dbfs"),
        "out_dbfs": levels.get("out_dbfs"), "xruns": status.get("xruns")}))
    return watch
