"""`callctl gui --attach`: the window on a controller it did not start — here a fake one
that can go silent and can report a voice clone's progress on cue."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from PyQt6.QtCore import Qt

from gui import link as gui_link
from gui import session as gui_session
from gui.app import build
from tests.gui.fake_controller import FakeController


@pytest.fixture
def attached(app: Any, qtbot: Any, tmp_path: Path,
             monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Any, FakeController]]:
    monkeypatch.setattr(gui_link, "DEFAULT_TIMEOUT_S", 0.5)
    monkeypatch.setattr(gui_session, "POLL_MS", 200)
    fake = FakeController(f"ipc://{tmp_path}/control").start()
    gui = build(["--attach", "--endpoint", fake.endpoint])
    gui.window.show()
    yield gui, fake
    gui.shutdown()
    fake.stop()


def test_clone_my_voice_is_asked_for_and_its_progress_shown_with_a_cancel(
        attached: tuple[Any, FakeController], qtbot: Any) -> None:
    gui, fake = attached
    w = gui.window
    qtbot.waitUntil(lambda: w.call_button.isEnabled(), timeout=5000)
    assert not w.mic_combo.isEnabled(), "attached: the devices are the controller's"
    qtbot.waitUntil(lambda: w.mic_combo.currentText() == "Fake device", timeout=3000)
    qtbot.mouseClick(w.clone_check, Qt.MouseButton.LeftButton)
    w.clone_name.setText("My voice")
    qtbot.mouseClick(w.call_button, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: w.state_text() == "In call", timeout=5000)
    call = [r for r in fake.requests if r.get("cmd") == "call"][-1]
    assert call == {"cmd": "call", "agent": "local", "clone_voice": "My voice"}

    qtbot.mousePress(w.hangup_button, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: w.state_text() == "Ready", timeout=5000)
    qtbot.mouseRelease(w.hangup_button, Qt.MouseButton.LeftButton)
    assert w.timing_labels["audio_silent_ms"].text() == "1.0 ms"
    assert w.postcall_box.isHidden(), "nothing to show before the first postcall event"

    fake.publish("postcall", call_id="fake-1", stage="cloning", progress=0.4,
                 message="uploading the caller's speech", voice_id=None)
    qtbot.waitUntil(lambda: w.postcall_box.isVisible(), timeout=3000)
    assert w.postcall_progress.value() == 400
    assert "My voice" in w.postcall_label.text()
    assert w.clone_cancel.isVisible()
    qtbot.mouseClick(w.clone_cancel, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: "cancel_clone" in fake.commands(), timeout=3000)
    fake.publish("postcall", call_id="fake-1", stage="cancelled", progress=1.0,
                 message="the clone was cancelled", voice_id=None)
    qtbot.waitUntil(lambda: "cancelled" in w.postcall_label.text(), timeout=3000)
    assert not w.clone_cancel.isVisible()


def test_a_controller_that_stops_answering_is_shown_and_recovered_from(
        attached: tuple[Any, FakeController], qtbot: Any) -> None:
    gui, fake = attached
    w = gui.window
    qtbot.waitUntil(lambda: w.call_button.isEnabled(), timeout=5000)
    qtbot.waitUntil(lambda: "devices" in fake.commands() and gui.session.link.pending == 0,
                    timeout=3000)
    fake.mute.set()
    qtbot.waitUntil(lambda: w.state_text() == "Not responding", timeout=5000)
    assert "controller not responding" in w.banner_message()
    assert not w.call_button.isEnabled()
    assert not w.restart_button.isVisible(), "attached: not ours to restart"
    fake.mute.clear()
    qtbot.waitUntil(lambda: w.state_text() == "Ready", timeout=5000)
    assert w.banner.isHidden() and w.call_button.isEnabled()


def test_no_controller_at_the_endpoint_is_said_plainly(app: Any, qtbot: Any,
                                                       tmp_path: Path) -> None:
    gui = build(["--attach", "--endpoint", f"ipc://{tmp_path}/nobody"])
    try:
        w = gui.window
        qtbot.waitUntil(lambda: "No controller answers" in w.detail_label.text(), timeout=6000)
        assert w.state_text() == "Connecting…" and not w.call_button.isEnabled()
    finally:
        gui.shutdown()
