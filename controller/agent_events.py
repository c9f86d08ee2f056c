"""How an agent process's events (``protocol.AGENT_*``, on the controller's PULL socket)
become the public events of the call (``protocol.EVENT_*``).

Pure functions: the controller (``Controller._on_agent_event``) publishes what they
return and keeps the call's own state (its conversation id, its transcript, its end).
"""

from __future__ import annotations

import json
from typing import Any

from callctl.engine import protocol

PublicEvent = tuple[str, dict[str, Any]]
"""A public event to publish: its topic and its fields."""


def parse_agent_frame(frame: bytes) -> dict[str, Any] | None:
    """An agent or post-call process's event frame as a dict with a string ``event``;
    None for a frame that is not one (dropped: a child's bug must not stop the loop)."""
    try:
        event = json.loads(frame)
    except ValueError:
        return None
    if not isinstance(event, dict) or not isinstance(event.get("event"), str):
        return None
    return event


def transcript_line(event: dict[str, Any]) -> dict[str, Any] | None:
    """The call transcript's line for an agent's or the caller's words, else None."""
    name = event["event"]
    if name not in (protocol.AGENT_RESPONSE, protocol.AGENT_USER_TRANSCRIPT):
        return None
    role = "agent" if name == protocol.AGENT_RESPONSE else "caller"
    return {"t": event.get("t"), "role": role, "text": event.get("text", "")}


def public_agent_event(event: dict[str, Any], call_id: str) -> PublicEvent | None:
    """The public event that an agent's ``event`` during call ``call_id`` becomes: the
    conversation's start, a transcript line, an interruption, a latency figure. None for
    errors and disconnects, which the controller turns into the call's end."""
    name = event["event"]
    if name == protocol.AGENT_CONVERSATION:
        return protocol.EVENT_AGENT, {"call_id": call_id, "kind": "conversation",
                                      "conversation_id": event.get("conversation_id")}
    line = transcript_line(event)
    if line is not None:
        return protocol.EVENT_TRANSCRIPT, {"call_id": call_id, "role": line["role"],
                                           "text": line["text"]}
    if name == protocol.AGENT_INTERRUPTION:
        return protocol.EVENT_AGENT, {"call_id": call_id, "kind": "interruption",
                                      "dropped_frames": event.get("dropped_frames"),
                                      "t": event.get("t")}
    if name == protocol.AGENT_LATENCY:
        return protocol.EVENT_AGENT, {"call_id": call_id, "kind": "latency",
                                      "ms": event.get("ms")}
    return None
