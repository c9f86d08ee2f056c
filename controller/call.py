"""One call's record: its state, its processes' times, and what ``call.ended`` reports.

States: ``idle → starting → in_call → ending → idle``, and ``failed`` (with a
reason) from any of them when a part breaks. Only the controller's loop
thread touches a ``Call``.
"""

from __future__ import annotations

import enum
import secrets
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


class CallState(enum.StrEnum):
    IDLE = "idle"
    STARTING = "starting"
    IN_CALL = "in_call"
    ENDING = "ending"
    FAILED = "failed"


def new_call_id() -> str:
    """Sortable and unique: UTC time, then random hex, e.g. ``20261126-001502-3fa9``."""
    return time.strftime("%Y%m%d-%H%M%S", time.gmtime()) + "-" + secrets.token_hex(2)


@dataclass
class Call:
    call_id: str
    agent: str
    base_url: str | None
    record_dir: Path
    requested_at: float = field(default_factory=time.monotonic)
    started_wall: float = field(default_factory=time.time)
    connected_at: float | None = None
    conversation_id: str | None = None
    audio_started: bool = False
    agent_started: bool = False
    # The hangup, in time.monotonic() seconds.
    hangup_at: float | None = None
    audio_silent_at: float | None = None
    stream_stopped_at: float | None = None
    agent_exited_at: float | None = None
    agent_killed: bool = False
    kill_at: float | None = None
    end_reason: str | None = None
    errors: list[str] = field(default_factory=list)
    transcript: list[dict[str, Any]] = field(default_factory=list)
    clone_voice: str | None = None
    """Clone the caller's voice under this name after the call (None: no clone)."""
    device_reopens_seen: int = 0
    """Device stream reopens (``status["reopens"]``) already published as events."""
    claim: int | None = None
    """The call folder's lock (``postcall.claim_call_folder``), held from the call's start
    until its post-call process has it: a controller that starts meanwhile leaves the
    folder alone, and one that starts after this one died knows the call was cut short."""

    @property
    def recording(self) -> Path:
        return self.record_dir / "recording.wav"

    def timings(self) -> dict[str, float | bool | None]:
        """Milliseconds from the hangup's arrival to each step (None if it did not happen)."""
        def since(t: float | None) -> float | None:
            if t is None or self.hangup_at is None:
                return None
            return round((t - self.hangup_at) * 1000, 2)

        done = [t for t in (self.stream_stopped_at, self.agent_exited_at) if t is not None]
        return {
            "hangup_received": self.hangup_at,
            "audio_silent_ms": since(self.audio_silent_at),
            "stream_stopped_ms": since(self.stream_stopped_at),
            "agent_exited_ms": since(self.agent_exited_at),
            "agent_killed": self.agent_killed,
            "total_ms": since(max(done)) if done else None,
        }

    def summary(self) -> dict[str, Any]:
        return {
            "call_id": self.call_id,
            "agent": self.agent,
            "conversation_id": self.conversation_id,
            "duration_s": round(time.monotonic() - self.requested_at, 2)
            if self.hangup_at is None else round(self.hangup_at - self.requested_at, 2),
            "recording": str(self.recording) if self.audio_started else None,
        }
