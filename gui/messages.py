"""How the window words things: durations, levels, and what to do about an error.

Pure functions, no Qt: easy to test, shared by the window and the screenshot.
"""

from __future__ import annotations

import math
import re

from callctl.engine import protocol


def clock(seconds: float) -> str:
    """A call's duration: ``mm:ss``, or ``h:mm:ss`` past an hour."""
    whole = max(0, int(seconds))
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes:02d}:{secs:02d}"


def milliseconds(value: object) -> str:
    """A ``*_ms`` timing: ``3.4 ms``, ``241 ms``, ``2.00 s``; ``—`` when missing."""
    if isinstance(value, bool) or not isinstance(value, int | float) or math.isnan(value):
        return "—"
    if value >= 1000:
        return f"{value / 1000:.2f} s"
    if value >= 100:
        return f"{value:.0f} ms"
    return f"{value:.1f} ms"


def dbfs(value: float | None) -> str:
    """A level in dBFS for the meters' labels; ``None`` (digital silence) is ``−∞``."""
    if value is None:
        return "−∞ dB"
    return f"{value:.0f} dB".replace("-", "−")


def clean_reason(reason: str) -> str:
    """A controller reason without errno noise: ``[Errno 111] Connection refused`` →
    ``Connection refused``."""
    text = re.sub(r"\[Errno -?\d+\]\s*", "", reason).strip()
    return text


_AUDIO_HINT = ("Pick another microphone or speaker above (or the virtual device), or check "
               "that a sound server (PulseAudio, PipeWire or JACK) is running.")
_HINTS: dict[str, str] = {
    protocol.AGENT_AUTH:
        "Check your ElevenLabs API key: set ELEVENLABS_API_KEY, or api_key in "
        "~/.config/callctl/config.toml.",
    protocol.ENDPOINT_TAKEN:
        "Another controller already serves that endpoint: start the window with --attach to "
        "use it, or drop --endpoint.",
    protocol.AUDIO: _AUDIO_HINT,
    protocol.AGENT_SERVER:
        "The offline agent server did not start: run `callctl agent-server` in a terminal "
        "to see why.",
    protocol.NOT_RESPONDING:
        "The controller did not answer in time; the window keeps asking and recovers by "
        "itself.",
    protocol.AGENT_UNREACHABLE:
        "The agent could not be reached: check the network, the agent id and --base-url.",
    protocol.STORAGE:
        "The call's folder could not be written: check --record-dir and the free space.",
}
"""What to do, by the error's ``code`` (``engine.protocol``): never read off its words."""


def hint(code: object) -> str:
    """One line on what to do about an error whose code is ``code`` (an error reply's
    ``code``, an event's ``code`` or ``reason_code``), or ``""`` when there is nothing to add."""
    return _HINTS.get(code, "") if isinstance(code, str) else ""


ENDED_NORMALLY = {"hangup", "controller shutting down"}


def ended_reason(reason: str | None) -> str:
    """``call.ended``'s reason for the details panel."""
    if reason in (None, ""):
        return "—"
    if reason == "hangup":
        return "hung up"
    return clean_reason(str(reason))
