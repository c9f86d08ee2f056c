"""What the microphone and speaker pickers offer, and the `serve` options a choice means.

Pure logic, no Qt. Entries come from the audio process's ``devices`` reply
(``index``, ``name``, ``inputs``, ``outputs``, ``default_rate``): every
device with inputs for the microphone, with outputs for the speaker, after a
"Default" entry (the system's default device). A "Virtual" entry (the
WAV-backed device, for demos and tests) is offered when it is appropriate:
the controller was started with ``--device virtual`` or ``--mic``/``--speaker``,
or no real device is known (then it is the only way to try a call).

Devices are passed to `serve` by name, not index: PortAudio's indexes move
when a device is plugged in. The virtual device is one full-duplex device,
so choosing it on one side chooses it on both, and leaving it on one side
returns the other to the default.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from callctl.gui.controller_process import VIRTUAL, ServeConfig

Direction = Literal["input", "output"]


@dataclass(frozen=True)
class Choice:
    label: str
    kind: Literal["default", "virtual", "device"]
    value: str | None = None
    """The device's name (``kind == "device"``)."""


DEFAULT = Choice("Default device", "default")
VIRTUAL_CHOICE = Choice("Virtual (WAV files)", "virtual")


def _usable(devices: list[dict[str, Any]], direction: Direction) -> list[dict[str, Any]]:
    key = "inputs" if direction == "input" else "outputs"
    return [d for d in devices if isinstance(d, dict) and isinstance(d.get("name"), str)
            and isinstance(d.get(key), int) and d[key] > 0]


def configured(config: ServeConfig, direction: Direction) -> Choice:
    """What ``config`` uses on one side."""
    if config.device == VIRTUAL:
        return VIRTUAL_CHOICE
    side = config.input_device if direction == "input" else config.output_device
    name = side or config.device
    return Choice(name, "device", name) if name else DEFAULT


def choices(devices: list[dict[str, Any]] | None, direction: Direction,
            config: ServeConfig) -> tuple[list[Choice], int]:
    """The picker's entries and the index of the one ``config`` uses.

    ``devices`` None: not known (the controller did not start).
    """
    usable = _usable(devices or [], direction)
    entries = [DEFAULT] + [Choice(d["name"], "device", d["name"]) for d in usable]
    wants_virtual = (config.device == VIRTUAL or bool(config.virtual_args)
                     or not _usable(devices or [], "input")
                     or not _usable(devices or [], "output"))
    if wants_virtual:
        entries.append(VIRTUAL_CHOICE)
    current = configured(config, direction)
    for i, entry in enumerate(entries):
        if entry == current:
            return entries, i
    if current.kind == "device":  # a name that is a substring, an index, or not there at all
        for i, entry in enumerate(entries):
            if entry.value and current.value and current.value.lower() in entry.value.lower():
                return entries, i
        if current.value and current.value.isdigit():
            for d in usable:
                if str(d.get("index")) == current.value:
                    return entries, entries.index(Choice(d["name"], "device", d["name"]))
        missing = Choice(f"{current.value} (not found)", "device", current.value)
        return entries + [missing], len(entries)
    entries.append(current)
    return entries, len(entries) - 1


def config_for(config: ServeConfig, mic: Choice, speaker: Choice,
               changed: Direction) -> tuple[ServeConfig, Choice, Choice]:
    """The config after the user picked ``mic``/``speaker`` (``changed`` is the side they
    touched); returns it with the two choices as they must now be shown."""
    picked = mic if changed == "input" else speaker
    if picked.kind == "virtual":
        return config.with_devices(VIRTUAL, None, None), VIRTUAL_CHOICE, VIRTUAL_CHOICE
    if mic.kind == "virtual":
        mic = DEFAULT
    if speaker.kind == "virtual":
        speaker = DEFAULT
    return config.with_devices(None, mic.value, speaker.value), mic, speaker
