"""The callctl wire protocol: every message name and field, defined once.

Documented in ``docs/protocol.md``; keep the two in step and bump
``PROTOCOL_VERSION`` on any incompatible change.

Requests and replies are single-frame JSON objects. A request names its
command in ``"cmd"``; a reply always carries ``"ok"`` and, when it is false,
``"error"`` (one line a person can read). Events are multipart
``[topic, json]``.

``decode_request`` is the one place a frame from outside is trusted: it checks
size, JSON, object-ness, the command name and every field's type, and raises
``ProtocolError`` with a one-line message otherwise. Callers turn that into an
error reply and carry on; a bad frame never disturbs a call.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

PROTOCOL_VERSION = 2
MAX_MESSAGE_BYTES = 64 * 1024
"""Largest accepted request frame, in bytes; a larger one gets an error reply."""
MAX_NUMBER = 2**53
"""Largest magnitude of a number field (JSON's exact-integer range); also refuses NaN."""
MAX_FRAME_BYTES = 1024 * 1024
"""ZMQ_MAXMSGSIZE on every socket: past this ZeroMQ drops the sender's connection
unread, so a flood of huge frames cannot exhaust memory."""


class ProtocolError(ValueError):
    """A frame that is not a valid request. ``str()`` is the one-line reason."""


@dataclass(frozen=True)
class Field:
    """One request field: its JSON type(s) and whether it may be left out."""

    types: tuple[type, ...]
    required: bool = False

    def describe(self) -> str:
        names = {bool: "boolean", int: "integer", float: "number", str: "string",
                 type(None): "null", list: "array", dict: "object"}
        return " or ".join(names.get(t, t.__name__) for t in self.types)


_NUM = (int, float)
_OPT_STR = (str, type(None))

# -- the audio process's commands (internal: controller -> audio process) -----

AUDIO_COMMANDS: dict[str, dict[str, Field]] = {
    # {"cmd": "status"} -> {"ok": true, "state": "stopped"|"running", ...}
    "status": {},
    # {"cmd": "start", "record": "/path.wav"|null} -> {"ok": true, "started_at": t}
    "start": {"record": Field(_OPT_STR)},
    # {"cmd": "flush"} -> {"ok": true, "dropped_frames": n}   (barge-in)
    "flush": {},
    # {"cmd": "hangup"} -> {"ok": true, "received_at": t, "first_silent_at": t,
    #                        "stopped_at": t, ...}
    "hangup": {},
    # {"cmd": "ping"} -> {"ok": true, "protocol": 1}
    "ping": {},
    # {"cmd": "shutdown"} -> {"ok": true}; the process then exits 0
    "shutdown": {},
}


# -- the agent process's commands (internal: controller -> agent process) -----

AGENT_COMMANDS: dict[str, dict[str, Field]] = {
    # {"cmd": "ping"} -> {"ok": true, "protocol": 1}
    "ping": {},
    # {"cmd": "status"} -> {"ok": true, "state": "standby"|"in_call"|"ending", ...}
    "status": {},
    # {"cmd": "start", "agent_id": "...", "rings": "<prefix>", "base_url": URL|null,
    #  "requires_auth": bool} -> {"ok": true}  (standby -> in_call)
    "start": {
        "agent_id": Field((str,), required=True),
        "rings": Field((str,), required=True),
        "base_url": Field(_OPT_STR),
        "requires_auth": Field((bool,)),
    },
    # {"cmd": "prepare", same fields as start} -> {"ok": true}: build everything that does
    # not depend on the call (rings attached, client, Conversation) while in standby
    "prepare": {
        "agent_id": Field((str,), required=True),
        "rings": Field((str,), required=True),
        "base_url": Field(_OPT_STR),
        "requires_auth": Field((bool,)),
    },
    # {"cmd": "end"} -> {"ok": true} at once; the process exits when the session has ended
    "end": {},
}

# -- events an agent process pushes to its controller (single-frame JSON) -----
# Every event is {"event": NAME, "t": monotonic seconds, "pid": sender, ...fields}.

AGENT_CONVERSATION = "agent.conversation"  # conversation_id, output_format
AGENT_RESPONSE = "agent.response"  # text: what the agent says
AGENT_USER_TRANSCRIPT = "agent.user_transcript"  # text: what the service heard
AGENT_LATENCY = "agent.latency"  # ms
AGENT_INTERRUPTION = "agent.interruption"  # dropped_frames
AGENT_DISCONNECT = "agent.disconnect"  # reason, close_code, close_reason, message
AGENT_ERROR = "agent.error"  # message
AGENT_ENDED = "agent.ended"  # conversation_id, exit code follows


# -- the controller's public commands (scripts, CLI, GUI -> controller) -------
# Each entry's comment is the request, the reply, and the CLI form.

PUBLIC_COMMANDS: dict[str, dict[str, Field]] = {
    # {"cmd": "ping"} -> {"ok": true, "protocol": 1, "pid": N}
    "ping": {},
    # {"cmd": "status"} -> {"ok": true, "state": "idle"|"starting"|"in_call"|"ending"|"failed",
    #   "call": {...}|null, "events": ENDPOINT, "protocol": 1, ...}      `callctl status`
    "status": {},
    # {"cmd": "call", "agent": "local"|AGENT_ID, "clone_voice": NAME}
    #   -> {"ok": true, "call_id": ID}                                        `callctl call`
    # No base_url: where the API key may go is the controller's configuration alone.
    "call": {"agent": Field(_OPT_STR), "clone_voice": Field(_OPT_STR)},
    # {"cmd": "cancel_clone"} -> {"ok": true, "call_id": ID}: stop a voice clone in progress
    "cancel_clone": {},
    # {"cmd": "hangup"} -> {"ok": true, "call_id": ID, "audio": {...timings}}
    #   or {"ok": false, "error": "no call to hang up"}                     `callctl hangup`
    "hangup": {},
    # {"cmd": "flush"} -> {"ok": true, "dropped_frames": N}  (barge-in by hand)
    "flush": {},
    # {"cmd": "devices"} -> {"ok": true, "devices": [...]}                 `callctl devices`
    "devices": {},
    # {"cmd": "shutdown"} -> {"ok": true}; the controller ends any call and exits
    "shutdown": {},
}

# -- the controller's public events: multipart [topic, json] on the PUB socket --

EVENT_STATE = "state"  # state, call_id, reason (for failed)
EVENT_TRANSCRIPT = "transcript"  # call_id, role ("agent"|"caller"), text
EVENT_LEVELS = "levels"  # call_id, in_dbfs, out_dbfs, about 10 a second during a call
EVENT_CALL_ENDED = "call.ended"  # call_id, reason, timings {...}, recording, agent_killed
EVENT_ERROR = "error"  # message, call_id
EVENT_AGENT = "agent"  # call_id, kind ("conversation"|"interruption"|"latency"), fields
EVENT_POSTCALL = "postcall"  # call_id, stage, progress (0..1 or null), message, voice_id
PUBLIC_EVENTS = (EVENT_STATE, EVENT_TRANSCRIPT, EVENT_LEVELS, EVENT_CALL_ENDED, EVENT_ERROR,
                 EVENT_AGENT, EVENT_POSTCALL)

# Stages of a ``postcall`` event; every run ends with exactly one of POSTCALL_FINAL_STAGES.
# The post-call process pushes the same frame (plus "pid", "t") to the controller's
# agent-events socket, where the controller republishes it.
POSTCALL_STAGES = ("saving", "trimming", "cloning", "done", "failed", "cancelled")
POSTCALL_FINAL_STAGES = ("done", "failed", "cancelled")


def decode_request(frame: bytes, commands: dict[str, dict[str, Field]]) -> dict[str, Any]:
    """Parse and validate one request frame against ``commands``.

    Returns the request object. Raises ``ProtocolError`` (one-line message)
    for an oversized frame, bad UTF-8 or JSON, a non-object, a missing or
    unknown ``cmd``, an unknown field, or a field of the wrong type.
    """
    if len(frame) > MAX_MESSAGE_BYTES:
        raise ProtocolError(f"request too large: {len(frame)} bytes (limit {MAX_MESSAGE_BYTES})")
    try:
        msg = json.loads(frame.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        # ValueError also covers integers past Python's digit limit.
        raise ProtocolError(f"request is not JSON: {str(exc)[:80]}") from None
    if not isinstance(msg, dict):
        raise ProtocolError(f"request must be a JSON object, got {type(msg).__name__}")
    cmd = msg.get("cmd")
    if not isinstance(cmd, str):
        raise ProtocolError('request needs a "cmd" string')
    spec = commands.get(cmd)
    if spec is None:
        known = ", ".join(sorted(commands))
        raise ProtocolError(f"unknown command {cmd[:40]!r} (known: {known})")
    for key, value in msg.items():
        if key == "cmd":
            continue
        field = spec.get(key)
        if field is None:
            raise ProtocolError(f"{cmd}: unknown field {key[:40]!r}")
        # bool is an int in Python; a number field must not take true/false.
        if isinstance(value, bool) and bool not in field.types:
            raise ProtocolError(f"{cmd}: field {key!r} must be {field.describe()}")
        if not isinstance(value, field.types):
            raise ProtocolError(f"{cmd}: field {key!r} must be {field.describe()}")
        if isinstance(value, int | float) and not abs(value) <= MAX_NUMBER:
            raise ProtocolError(f"{cmd}: field {key!r} is out of range")
    for key, field in spec.items():
        if field.required and key not in msg:
            raise ProtocolError(f"{cmd}: missing field {key!r}")
    return msg


def ok(**fields: Any) -> dict[str, Any]:
    """A successful reply."""
    return {"ok": True, **fields}


def error(message: str, **fields: Any) -> dict[str, Any]:
    """A failed reply; ``message`` is one line."""
    return {"ok": False, "error": message.splitlines()[0] if message else "error", **fields}


def encode(msg: dict[str, Any]) -> bytes:
    """One JSON frame."""
    return json.dumps(msg, separators=(",", ":")).encode()
