"""The window on a real sound server: PortAudio's `pulse` device on a private PulseAudio,
caller speech played into its microphone, an external observer on its speaker."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from PyQt6.QtCore import Qt

from testing.observer import PlaybackObserver
from testing.pulse import PulseServer
from tests.gui.test_window_calls import wait_ready


@pytest.fixture
def pulse(monkeypatch: pytest.MonkeyPatch) -> Iterator[PulseServer]:
    with PulseServer() as server:
        for key, value in server.env.items():  # the spawned controller inherits these
            monkeypatch.setenv(key, value)
        yield server


def test_a_full_call_on_a_real_sound_server(window: Any, qtbot: Any, pulse: PulseServer,
                                            caller_speech: np.ndarray) -> None:
    with PlaybackObserver(pulse) as observer:
        gui = window("--device", "pulse", virtual=False)
        w = gui.window
        wait_ready(qtbot, gui)
        qtbot.mouseClick(w.call_button, Qt.MouseButton.LeftButton)
        qtbot.waitUntil(lambda: w.state_text() == "In call", timeout=15_000)
        qtbot.waitUntil(lambda: "Agent" in w.transcript.toPlainText(), timeout=10_000)
        qtbot.wait(5000)  # the greeting plays out
        pulse.feed_mic(caller_speech).wait(15)
        qtbot.waitUntil(lambda: "You" in w.transcript.toPlainText(), timeout=10_000)
        qtbot.waitUntil(lambda: w.transcript.toPlainText().count("Agent") >= 2,
                        timeout=10_000)

        def agent_talking() -> bool:  # as the observer hears the speaker
            return observer.last_sound_after(time.monotonic() - 0.1) is not None

        qtbot.waitUntil(agent_talking, timeout=10_000)
        sent = time.monotonic()
        qtbot.mousePress(w.hangup_button, Qt.MouseButton.LeftButton)
        qtbot.waitUntil(lambda: w.state_text() == "Ready", timeout=10_000)
        qtbot.mouseRelease(w.hangup_button, Qt.MouseButton.LeftButton)
        assert observer.wait_until(sent + 1.0, timeout=5)
        last = observer.last_sound_after(sent - 0.3, until=sent + 1.0)
        assert last is not None and last > sent - 0.1, "the agent was talking at the hangup"
        assert last - sent < 0.1, f"voice gone {1000 * (last - sent):.0f} ms after the press"
        assert w.timing_labels["audio_silent_ms"].text() != "—"
