"""Dialogue scripts: what the local agent says, in which voice, and how it takes turns.

A script is a TOML file::

    [agent]
    voice = "en-us"            # espeak-ng voice name
    words_per_minute = 165     # espeak-ng speed

    [turn_taking]
    threshold_dbfs = -40.0     # frame RMS above this is speech (dB re full scale)
    min_speech_s = 0.1         # shorter bursts are not a turn (seconds)
    hangover_s = 0.5           # silence that ends a turn (seconds)
    barge_in_s = 0.2           # caller speech over the agent that interrupts it (seconds)

    [dialogue]
    lines = ["Hello ...", "..."]   # the first line is the greeting
    fallback = "..."               # said for every turn after the last line

Lines may contain ``{{name}}`` placeholders, filled from the client's
``dynamic_variables`` (unknown names are left as they are).
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

DEFAULT_SCRIPT_NAME = "default_script.toml"
_PLACEHOLDER = re.compile(r"\{\{\s*([A-Za-z0-9_.-]+)\s*\}\}")


class ScriptError(ValueError):
    """A script file that cannot be used."""


@dataclass(frozen=True)
class TurnTaking:
    """Voice-activity and barge-in settings (seconds and dBFS)."""

    threshold_dbfs: float = -40.0
    min_speech_s: float = 0.1
    hangover_s: float = 0.5
    barge_in_s: float = 0.2


@dataclass(frozen=True)
class Script:
    """A scripted dialogue: ``lines[0]`` greets, ``lines[n]`` answers caller turn n."""

    lines: tuple[str, ...]
    fallback: str = "I have nothing more to add."
    voice: str = "en-us"
    words_per_minute: int = 165
    turn_taking: TurnTaking = TurnTaking()

    @property
    def greeting(self) -> str:
        """The first line, spoken as soon as the conversation starts."""
        return self.lines[0]

    def reply(self, turn: int) -> str:
        """The agent's answer to caller turn ``turn`` (1-based); the fallback when past the end."""
        if turn < 1:
            raise ValueError("turn numbers start at 1")
        return self.lines[turn] if turn < len(self.lines) else self.fallback


def fill_placeholders(text: str, variables: dict[str, Any]) -> str:
    """Replace ``{{name}}`` with ``variables[name]``; unknown names stay as written."""

    def sub(match: re.Match[str]) -> str:
        name = match.group(1)
        return str(variables[name]) if name in variables else match.group(0)

    return _PLACEHOLDER.sub(sub, text)


def _section(data: dict[str, Any], name: str) -> dict[str, Any]:
    section = data.get(name, {})
    if not isinstance(section, dict):
        raise ScriptError(f"[{name}] must be a table")
    return section


def _number(section: dict[str, Any], key: str, default: float, *, positive: bool) -> float:
    value = section.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ScriptError(f"{key} must be a number")
    if positive and value <= 0:
        raise ScriptError(f"{key} must be positive")
    return float(value)


def parse_script(text: str) -> Script:
    """Parse a script from TOML text.

    Raises:
        ScriptError: invalid TOML, no lines, or a setting of the wrong type.
    """
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ScriptError(f"invalid TOML: {exc}") from None

    dialogue = _section(data, "dialogue")
    lines = dialogue.get("lines")
    if not isinstance(lines, list) or not lines:
        raise ScriptError("[dialogue] lines must be a non-empty list of strings")
    if not all(isinstance(line, str) and line.strip() for line in lines):
        raise ScriptError("[dialogue] lines must be non-empty strings")
    fallback = dialogue.get("fallback", Script.fallback)
    if not isinstance(fallback, str) or not fallback.strip():
        raise ScriptError("[dialogue] fallback must be a non-empty string")

    agent = _section(data, "agent")
    voice = agent.get("voice", Script.voice)
    if not isinstance(voice, str) or not re.fullmatch(r"[A-Za-z0-9_+\-/]+", voice):
        raise ScriptError("[agent] voice must be an espeak-ng voice name")
    wpm = _number(agent, "words_per_minute", Script.words_per_minute, positive=True)

    tt = _section(data, "turn_taking")
    defaults = TurnTaking()
    turn_taking = TurnTaking(
        threshold_dbfs=_number(tt, "threshold_dbfs", defaults.threshold_dbfs, positive=False),
        min_speech_s=_number(tt, "min_speech_s", defaults.min_speech_s, positive=True),
        hangover_s=_number(tt, "hangover_s", defaults.hangover_s, positive=True),
        barge_in_s=_number(tt, "barge_in_s", defaults.barge_in_s, positive=True),
    )
    return Script(
        lines=tuple(line.strip() for line in lines),
        fallback=fallback.strip(),
        voice=voice,
        words_per_minute=int(wpm),
        turn_taking=turn_taking,
    )


def load_script(path: str | Path | None = None) -> Script:
    """Load a script file, or the default script shipped with the package when ``path`` is None.

    Raises:
        ScriptError: the file cannot be read or parsed.
    """
    if path is None:
        text = resources.files(__package__ or "callctl.engine.agent_server").joinpath(
            DEFAULT_SCRIPT_NAME
        ).read_text(encoding="utf-8")
    else:
        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError as exc:
            raise ScriptError(f"cannot read script {path}: {exc.strerror}") from None
    return parse_script(text)
