"""How the window words things: durations, levels, and what to do about an error.

Pure functions, no Qt: easy to test, shared by the window and the screenshot.
"""

from __future__ import annotations

import math
import re


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


_HINTS: list[tuple[tuple[str, ...], str]] = [
    (("already serving",),
     "Another controller already serves that endpoint: start the window with --attach to use "
     "it, or drop --endpoint."),
    (("401", "403", "unauthorized", "api key", "api_key", "authenticat", "invalid key",
      "forbidden", "needs a key"),
     "Check your ElevenLabs API key: set ELEVENLABS_API_KEY, or api_key in "
     "~/.config/callctl/config.toml."),
    (("no audio device", "audio device", "sound server", "no default audio", "audio process",
      "audio:", "has no input", "has no output"),
     "Pick another microphone or speaker above (or the virtual device), or check that a sound "
     "server (PulseAudio, PipeWire or JACK) is running."),
    (("local agent server",),
     "The offline agent server did not start: run `callctl agent-server` in a terminal to see "
     "why."),
    (("not responding",),
     "The controller did not answer in time; the window keeps asking and recovers by itself."),
    (("refused", "unreachable", "did not answer", "disconnected", "name or service",
      "timed out", "timeout", "agent server", "network", "resolve"),
     "The agent could not be reached: check the network, the agent id and --base-url."),
]


def hint(message: str) -> str:
    """One line on what to do about ``message``, or ``""`` when there is nothing to add."""
    low = message.lower()
    for needles, text in _HINTS:
        if any(n in low for n in needles):
            return text
    return ""


ENDED_NORMALLY = {"hangup", "controller shutting down"}


def ended_reason(reason: str | None) -> str:
    """``call.ended``'s reason for the details panel."""
    if reason in (None, ""):
        return "—"
    if reason == "hangup":
        return "hung up"
    return clean_reason(str(reason))
