"""The systems the benchmark compares, each behind the same small driver (``System``).

``bench.procedure`` drives every system by one procedure; a driver only
knows how to start a call, hang up, make the agent be interrupted and which
process does the audio. Each system runs on its own private PulseAudio
server of the same configuration, with an external observer on its speaker.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from testing.observer import PlaybackObserver
from testing.pulse import PulseServer


@dataclass
class HangupStamps:
    """What a system says about one hangup (``time.monotonic()`` seconds, ms for durations).

    ``sent``: the parent sent the hangup (the moment every figure starts from).
    ``agent_done_ms``: ``sent`` → the agent side finished: callctl's agent
    process reaped, the SDK's ``wait_for_session_end()`` returned, Pipecat's
    pipeline task done; None if it did not within the system's bound.
    ``killed``: callctl killed the agent process (its 2 s bound).
    ``crashed``: the process doing the audio died of the hangup itself.
    """

    sent: float
    agent_done_ms: float | None
    killed: bool = False
    crashed: bool = False
    """The system's process died of the hangup (Pipecat 1.14, see bench/pipecat_baseline.py)."""
    device_fade: dict[str, Any] | None = None
    """callctl only: the engine's own account of its fade at the device (the hangup
    reply's ``audio.fade``, docs/protocol.md), to set beside what the observer heard."""


class System(Protocol):
    """One system under test, with its rig. Used from the benchmark's main thread only."""

    key: str
    """Short name in bench.json: ``callctl``, ``sdk``, ``pipecat``."""
    label: str
    """Name in the report."""
    pulse: PulseServer
    observer: PlaybackObserver

    def start_call(self) -> float:
        """Ask for a call (the agent greets at once); return the time it was asked."""
        ...

    def hangup(self) -> HangupStamps:
        """Hang up now and wait (bounded) until the system is ready for the next call."""
        ...

    def interrupt(self, at: float) -> float:
        """Make the agent be interrupted at about ``at`` (s); return when the client acted on
        the interruption (the moment the barge-in figure starts from)."""
        ...

    def audio_pid(self) -> int:
        """The process that does the audio during a call (its CPU is measured)."""
        ...

    def close(self) -> None:
        """Stop everything this system started (bounded)."""
        ...
