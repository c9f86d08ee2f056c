"""The callctl wire protocol: every message name and field, defined once.

Documented in ``docs/protocol.md``; keep the two in step and bump
``PROTOCOL_VERSION`` on any incompatible change.

Requests and replies are single-frame JSON objects. A request names its
command in ``"cmd"``; a reply always carries ``"ok"`` and, when it is false,
``"error"`` (one line a person can read) and ``"code"`` (one of
``ERROR_CODES``, for programs to act on). Events are multipart ``[topic, json]``.

``decode_request`` is the one place a frame from outside is trusted: it checks
size, JSON, object-ness, the command name and every field's type, and raises
``ProtocolError`` with a one-line message and a code otherwise. Callers turn that into an
error reply and carry on; a bad frame never disturbs a call.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

PROTOCOL_VERSION = 3
MAX_MESSAGE_BYTES = 64 * 1024
"""Largest accepted request frame, in bytes; a larger one gets an error reply."""
MAX_NUMBER = 2**53
"""Largest magnitude of a number field (JSON's exact-integer range); also refuses NaN."""
MAX_FRAME_BYTES = 1024 * 1024
"""ZMQ_MAXMSGSIZE on every socket: past this ZeroMQ drops the sender's connection
unread, so a flood of huge frames cannot exhaust memory."""


# -- error codes: every error reply carries one as "code", beside the sentence ---
# Programs (the GUI's hints, scripts) act on the code, never on the sentence's words.

BAD_REQUEST = "bad_request"  # the frame: too large, not JSON, a field unknown or mistyped
UNKNOWN_COMMAND = "unknown_command"  # "cmd" names no command of this process
BUSY = "busy"  # a call (or session, or stream) is already running: end it first
NO_CALL = "no_call"  # hangup or flush with no call in progress
NO_CLONE = "no_clone"  # cancel_clone with no voice clone in progress
SHUTTING_DOWN = "shutting_down"  # the controller is ending: no new call
INVALID = "invalid"  # well-formed but unusable, e.g. a blank clone_voice name
AUDIO = "audio"  # the audio process or its device failed or is not running
AGENT_UNREACHABLE = "agent_unreachable"  # the agent service did not answer or dropped us
AGENT_AUTH = "agent_auth"  # the agent service refused the API key (HTTP 401/403)
AGENT_FAILED = "agent_failed"  # the agent process failed to build or start a session
AGENT_SERVER = "agent_server"  # the local agent server did not start
STORAGE = "storage"  # the call folder could not be created or written
ENDPOINT_TAKEN = "endpoint_taken"  # another controller already serves that endpoint
INTERNAL = "internal"  # a bug in the process that answered; the call goes on
# Made by clients, never sent by a callctl process: the reply that never came.
NOT_CONNECTED = "not_connected"  # no controller to ask
NOT_RESPONDING = "not_responding"  # the controller did not answer in time
BAD_REPLY = "bad_reply"  # the controller's reply was not JSON
ERROR_CODES = (BAD_REQUEST, UNKNOWN_COMMAND, BUSY, NO_CALL, NO_CLONE, SHUTTING_DOWN, INVALID,
               AUDIO, AGENT_UNREACHABLE, AGENT_AUTH, AGENT_FAILED, AGENT_SERVER, STORAGE,
               ENDPOINT_TAKEN, INTERNAL, NOT_CONNECTED, NOT_RESPONDING, BAD_REPLY)
"""Every ``code`` an error reply (or an ``error``/failed ``state`` event) can carry."""
SERVE_EXIT_STATUS = {ENDPOINT_TAKEN: 3, AUDIO: 4}
"""``callctl serve``'s exit status when it cannot serve for one of these reasons, so
whoever spawned it (the window) knows why by code, without reading its stderr."""


class ProtocolError(ValueError):
    """A frame that is not a valid request. ``str()`` is the one-line reason; ``code``
    is ``BAD_REQUEST`` or ``UNKNOWN_COMMAND``."""

    def __init__(self, message: str, code: str = BAD_REQUEST) -> None:
        super().__init__(message)
        self.code = code


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

def command_table(**commands: dict[str, Field]) -> dict[str, dict[str, Field]]:
    """A process's command specs, keyed by command name: ``cmd_hangup={}`` is ``"hangup"``.

    Spelled with the handlers' names (``engine.serving.Commands``) so that one search
    for ``cmd_hangup`` finds the spec, every handler, docs/protocol.md and the tests.
    """
    assert all(name.startswith("cmd_") for name in commands)
    return {name[len("cmd_"):]: fields for name, fields in commands.items()}


# -- the audio process's commands (internal: controller -> audio process) -----

AUDIO_COMMANDS = command_table(
    # {"cmd": "status"} -> {"ok": true, "state": "stopped"|"running", ...}
    cmd_status={},
    # {"cmd": "watch"} -> {"ok": true, "state": ..., "levels": {...}, "xruns": {...},
    #                       "reopens": [...], "last_device_error": ..., "recording_error": ...}
    cmd_watch={},
    # {"cmd": "start", "record": "/path.wav"|null} -> {"ok": true, "started_at": t}
    cmd_start={"record": Field(_OPT_STR)},
    # {"cmd": "flush"} -> {"ok": true, "dropped_frames": n}   (barge-in)
    cmd_flush={},
    # {"cmd": "hangup"} -> {"ok": true, "received_at": t, "first_silent_at": t,
    #                        "stopped_at": t, ...}
    cmd_hangup={},
    # {"cmd": "ping"} -> {"ok": true, "protocol": 3}
    cmd_ping={},
    # {"cmd": "shutdown"} -> {"ok": true}; the process then exits 0
    cmd_shutdown={},
)


# -- the agent process's commands (internal: controller -> agent process) -----

_SESSION_FIELDS = {
    "agent_id": Field((str,), required=True),
    "rings": Field((str,), required=True),
    "base_url": Field(_OPT_STR),
    "requires_auth": Field((bool,)),
}

AGENT_COMMANDS = command_table(
    # {"cmd": "ping"} -> {"ok": true, "protocol": 3}
    cmd_ping={},
    # {"cmd": "status"} -> {"ok": true, "state": "standby"|"in_call"|"ending", ...}
    cmd_status={},
    # {"cmd": "start", "agent_id": "...", "rings": "<prefix>", "base_url": URL|null,
    #  "requires_auth": bool} -> {"ok": true}  (standby -> in_call)
    cmd_start=_SESSION_FIELDS,
    # {"cmd": "prepare", same fields as start} -> {"ok": true}: build everything that does
    # not depend on the call (rings attached, client, Conversation) while in standby
    cmd_prepare=_SESSION_FIELDS,
    # {"cmd": "end"} -> {"ok": true} at once; the process exits when the session has ended
    cmd_end={},
)

# -- events an agent process pushes to its controller (single-frame JSON) -----
# Every event is {"event": NAME, "t": monotonic seconds, "pid": sender, ...fields}.

AGENT_CONVERSATION = "agent.conversation"  # conversation_id, output_format
AGENT_RESPONSE = "agent.response"  # text: what the agent says
AGENT_USER_TRANSCRIPT = "agent.user_transcript"  # text: what the service heard
AGENT_LATENCY = "agent.latency"  # ms
AGENT_INTERRUPTION = "agent.interruption"  # dropped_frames
AGENT_DISCONNECT = "agent.disconnect"  # reason, close_code, close_reason, message, code
AGENT_ERROR = "agent.error"  # message, code
AGENT_ENDED = "agent.ended"  # conversation_id, exit code follows


# -- the controller's public commands (scripts, CLI, GUI -> controller) -------
# Each entry's comment is the request, the reply, and the CLI form.

PUBLIC_COMMANDS = command_table(
    # {"cmd": "ping"} -> {"ok": true, "protocol": 3, "pid": N}
    cmd_ping={},
    # {"cmd": "status"} -> {"ok": true, "state": "idle"|"starting"|"in_call"|"ending"|"failed",
    #   "call": {...}|null, "events": ENDPOINT, "protocol": 3, ...}      `callctl status`
    cmd_status={},
    # {"cmd": "call", "agent": "local"|AGENT_ID, "clone_voice": NAME}
    #   -> {"ok": true, "call_id": ID}                                        `callctl call`
    # No base_url: where the API key may go is the controller's configuration alone.
    cmd_call={"agent": Field(_OPT_STR), "clone_voice": Field(_OPT_STR)},
    # {"cmd": "cancel_clone"} -> {"ok": true, "call_id": ID}: stop a voice clone in progress
    cmd_cancel_clone={},
    # {"cmd": "hangup"} -> {"ok": true, "call_id": ID, "audio": {...timings}}
    #   or {"ok": false, "code": "no_call", "error": "no call to hang up"}  `callctl hangup`
    cmd_hangup={},
    # {"cmd": "flush"} -> {"ok": true, "dropped_frames": N}  (barge-in by hand)
    cmd_flush={},
    # {"cmd": "devices"} -> {"ok": true, "devices": [...]}                 `callctl devices`
    cmd_devices={},
    # {"cmd": "shutdown"} -> {"ok": true}; the controller ends any call and exits
    cmd_shutdown={},
)

# -- the controller's public events: multipart [topic, json] on the PUB socket --

EVENT_STATE = "state"  # state, call_id, reason and reason_code (for failed, else null)
EVENT_TRANSCRIPT = "transcript"  # call_id, role ("agent"|"caller"), text
EVENT_LEVELS = "levels"  # call_id, in_dbfs, out_dbfs, about 10 a second during a call
EVENT_CALL_ENDED = "call.ended"  # call_id, reason, reason_code, timings {...}, recording
EVENT_ERROR = "error"  # message, code, call_id
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
        raise ProtocolError(f"unknown command {cmd[:40]!r} (known: {known})", UNKNOWN_COMMAND)
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


def error(code: str, message: str, **fields: Any) -> dict[str, Any]:
    """A failed reply: ``code`` (one of ``ERROR_CODES``) and ``message``, one line."""
    assert code in ERROR_CODES, code
    return {"ok": False, "error": message.splitlines()[0] if message else "error",
            "code": code, **fields}


def encode(msg: dict[str, Any]) -> bytes:
    """One JSON frame."""
    return json.dumps(msg, separators=(",", ":")).encode()
