"""The window's parts that need no controller: options passed through to `serve`, the
device pickers' choices, remembered settings, wording, the meter's scale."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import pytest

from callctl.controller.options import add_controller_options
from callctl.engine import protocol
from callctl.gui import device_pickers as devices
from callctl.gui import messages, settings
from callctl.gui.app import build_parser
from callctl.gui.controller_process import ServeConfig
from callctl.gui.meters import LevelMeter, fraction


def serve_config(*argv: str) -> ServeConfig:
    parser = build_parser()
    return ServeConfig.from_args(parser, parser.parse_args(list(argv)), "ipc:///x/control",
                                 skip={"attach"})


def test_controller_options_pass_through_to_serve_and_virtual_ones_only_with_virtual() -> None:
    config = serve_config("--device", "virtual", "--mic", "m.wav", "--speaker", "s.wav",
                          "--record-dir", "/r", "--no-aec", "--kill-after", "1.5",
                          "--agent-server-arg=--fault=stall", "--agent-server-arg=--port=0",
                          "--base-url", "http://127.0.0.1:9", "--attach")
    argv = config.argv()
    assert argv[:6] == [sys.executable, "-m", "callctl.cli", "serve", "--endpoint",
                        "ipc:///x/control"]
    for expected in ("--device=virtual", "--mic=m.wav", "--speaker=s.wav", "--record-dir=/r",
                     "--no-aec", "--kill-after=1.5", "--agent-server-arg=--fault=stall",
                     "--agent-server-arg=--port=0", "--base-url=http://127.0.0.1:9"):
        assert expected in argv, (expected, argv)
    assert "--attach" not in argv and not any(a.startswith("--agent=") for a in argv)
    # Leaving the virtual device drops --mic/--speaker (serve refuses them otherwise).
    real = config.with_devices(None, "USB Headset", "1").argv()
    assert "--input-device=USB Headset" in real and "--output-device=1" in real
    assert not any(a.startswith(("--mic", "--speaker", "--device=")) for a in real)
    assert "--record-dir=/r" in real
    # The parsed command line round-trips through serve's own parser.
    p = argparse.ArgumentParser()
    add_controller_options(p)
    back = p.parse_args(argv[4:])
    assert back.mic == "m.wav" and back.agent_server_arg == ["--fault=stall", "--port=0"]
    assert back.kill_after == 1.5 and back.no_aec and back.device == "virtual"


DEVICES: list[dict[str, Any]] = [
    {"index": 0, "name": "Built-in Audio", "inputs": 2, "outputs": 2, "default_rate": 48000.0},
    {"index": 1, "name": "HDMI", "inputs": 0, "outputs": 8, "default_rate": 48000.0},
    {"index": 2, "name": "USB Mic", "inputs": 1, "outputs": 0, "default_rate": 44100.0},
]


def test_device_pickers_offer_the_right_devices_and_virtual_only_when_it_makes_sense() -> None:
    config = ServeConfig("ipc:///x")
    mics, current = devices.choices(DEVICES, "input", config)
    assert [c.label for c in mics] == ["Default device", "Built-in Audio", "USB Mic"]
    assert current == 0
    speakers, _ = devices.choices(DEVICES, "output", config)
    assert [c.label for c in speakers] == ["Default device", "Built-in Audio", "HDMI"]
    # Nothing known (the controller did not start): the virtual device is the way to try.
    unknown, _ = devices.choices(None, "input", config)
    assert devices.VIRTUAL_CHOICE in unknown
    # Started on the virtual device: offered and selected.
    virtual = ServeConfig("ipc:///x", device="virtual", virtual_args=("--mic=m.wav",))
    entries, current = devices.choices(DEVICES, "output", virtual)
    assert entries[current] == devices.VIRTUAL_CHOICE
    # A configured device by index or substring is found; a missing one is shown as such.
    by_index, i = devices.choices(DEVICES, "input", ServeConfig("ipc:///x", input_device="2"))
    assert by_index[i].value == "USB Mic"
    by_part, i = devices.choices(DEVICES, "output", ServeConfig("ipc:///x", device="hdmi"))
    assert by_part[i].value == "HDMI"
    missing, i = devices.choices(DEVICES, "input", ServeConfig("ipc:///x", device="Gone"))
    assert missing[i].label == "Gone (not found)" and missing[i].value == "Gone"


def test_choosing_devices_builds_the_serve_options() -> None:
    virtual = ServeConfig("ipc:///x", device="virtual", virtual_args=("--mic=m.wav",))
    usb = devices.Choice("USB Mic", "device", "USB Mic")
    new, mic, speaker = devices.config_for(virtual, usb, devices.VIRTUAL_CHOICE, "input")
    assert (new.device, new.input_device, new.output_device) == (None, "USB Mic", None)
    assert speaker == devices.DEFAULT and mic == usb
    back, mic, speaker = devices.config_for(new, devices.VIRTUAL_CHOICE, devices.DEFAULT, "input")
    assert back.device == "virtual" and mic == speaker == devices.VIRTUAL_CHOICE
    assert "--mic=m.wav" in back.argv()


def test_settings_remember_the_agent_and_survive_a_broken_file(tmp_path: Path) -> None:
    path = tmp_path / "callctl" / "gui.json"
    assert settings.load(path) == settings.GuiSettings()
    s = settings.GuiSettings()
    for agent in ("agent_a", "local", "agent_b", "agent_a"):
        s.remember_agent(agent)
    assert s.agent == "agent_a" and s.recent_agents == ["agent_a", "agent_b"]
    s.clone_name = "Me"
    settings.save_later(s, path).result(timeout=5)
    assert settings.load(path) == s
    assert [p.name for p in path.parent.iterdir()] == ["gui.json"], "no temporary file left"
    path.write_text("{not json")
    assert settings.load(path) == settings.GuiSettings()
    path.write_text(json.dumps({"agent": 3, "recent_agents": ["x", 4, "local"]}))
    assert settings.load(path) == settings.GuiSettings(recent_agents=["x"])


def test_wording() -> None:
    assert messages.clock(0) == "00:00" and messages.clock(83.9) == "01:23"
    assert messages.clock(3725) == "1:02:05"
    assert messages.milliseconds(3.44) == "3.4 ms" and messages.milliseconds(241.5) == "242 ms"
    assert messages.milliseconds(2003.0) == "2.00 s" and messages.milliseconds(None) == "—"
    assert messages.dbfs(None) == "−∞ dB" and messages.dbfs(-12.4) == "−12 dB"
    assert messages.clean_reason("the agent disconnected ([Errno 111] Connection refused)") \
        == "the agent disconnected (Connection refused)"
    # Hints are chosen by the error's code, never by its words.
    assert "API key" in messages.hint(protocol.AGENT_AUTH)
    assert "microphone" in messages.hint(protocol.AUDIO)
    assert "--attach" in messages.hint(protocol.ENDPOINT_TAKEN)
    assert "could not be reached" in messages.hint(protocol.AGENT_UNREACHABLE)
    assert messages.hint("websocket rejected: HTTP 401") == ""
    assert messages.hint(protocol.NO_CALL) == "" and messages.hint(None) == ""


@pytest.mark.parametrize(("db", "expected"), [(None, 0.0), (-90.0, 0.0), (-60.0, 0.0),
                                              (-30.0, 0.5), (0.0, 1.0), (3.0, 1.0)])
def test_meter_scale(db: float | None, expected: float) -> None:
    assert fraction(db) == pytest.approx(expected)


def test_meter_holds_its_peak_and_falls(qtbot: Any) -> None:
    meter = LevelMeter()
    qtbot.addWidget(meter)
    meter.set_level(-6.0)
    assert meter.level_db == pytest.approx(-6.0, abs=0.5) and meter.peak_db == -6.0
    meter.set_level(None)
    qtbot.waitUntil(lambda: meter.level_db < -30, timeout=3000)
    assert meter.peak_db > meter.level_db, "the peak mark holds a while"
    meter.reset()
    assert meter.level_db == meter.peak_db == -60.0
    meter.grab()  # paints without error
