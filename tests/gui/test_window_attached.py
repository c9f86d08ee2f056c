"""`callctl gui --attach`: the window on a real controller it did not start, which is made
to go silent (SIGSTOP) and whose local agent server holds a voice upload long enough to
watch its progress and cancel it."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from PyQt6.QtCore import Qt

from callctl.controller.postcall import MIN_SPEECH_ENV
from callctl.gui import link as gui_link
from callctl.gui import session as gui_session
from callctl.gui.app import build


def clone_env(tmp_path: Path) -> dict[str, str]:
    """A key (the local agent server gets callctl's stand-in, not this) and a short
    minimum of caller speech, so a few seconds of espeak-ng caller can be cloned."""
    env = dict(os.environ, CALLCTL_CONFIG=str(tmp_path / "no-config.toml"),
               ELEVENLABS_API_KEY="sk_gui_attached_test")
    env.pop("ELEVENLABS_BASE_URL", None)
    env[MIN_SPEECH_ENV] = "0.5"  # the test hangs up once the caller is transcribed: 0.8-1 s
    return env


@pytest.fixture
def attached(app: Any, qtbot: Any, tmp_path: Path, serve: Any,
             monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Any, Any]]:
    """The window attached to a real `callctl serve` on the virtual device, whose local
    agent server takes 30 s over a voice upload (``--voice-add-delay``)."""
    monkeypatch.setattr(gui_link, "DEFAULT_TIMEOUT_S", 0.5)
    monkeypatch.setattr(gui_session, "POLL_MS", 200)
    served = serve("--agent-server-arg=--voice-add-delay=30", speech_at=[1.0],
                   env=clone_env(tmp_path))
    gui = build(["--attach", "--endpoint", served.endpoint])
    gui.window.show()
    yield gui, served
    gui.shutdown()
    if served.proc.poll() is None:
        os.kill(served.proc.pid, signal.SIGCONT)


def test_clone_my_voice_is_asked_for_and_its_progress_shown_with_a_cancel(
        attached: tuple[Any, Any], qtbot: Any) -> None:
    gui, served = attached
    w = gui.window
    qtbot.waitUntil(lambda: w.call_button.isEnabled(), timeout=10000)
    assert not w.mic_combo.isEnabled(), "attached: the devices are the controller's"
    qtbot.mouseClick(w.clone_check, Qt.MouseButton.LeftButton)
    w.clone_name.setText("My voice")
    qtbot.mouseClick(w.call_button, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: w.state_text() == "In call", timeout=15000)
    status = served.request({"cmd": "status"})
    call_id = status["call"]["call_id"]
    served.collect(12, until="transcript", where={"role": "caller"})  # the caller spoke

    qtbot.mousePress(w.hangup_button, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: w.state_text() == "Ready", timeout=10000)
    qtbot.mouseRelease(w.hangup_button, Qt.MouseButton.LeftButton)
    ended = served.collect(5, until="call.ended") or served.named("call.ended")[-1]
    silent = ended["timings"]["audio_silent_ms"]
    assert w.timing_labels["audio_silent_ms"].text() == f"{silent:.1f} ms"

    # The upload waits 30 s at the server: the window shows it, with a cancel.
    qtbot.waitUntil(lambda: w.postcall_box.isVisible()
                    and "My voice" in w.postcall_label.text(), timeout=20000)
    assert served.collect(20, until="postcall", where={"stage": "cloning"}) is not None
    qtbot.waitUntil(lambda: w.clone_cancel.isVisible(), timeout=5000)
    qtbot.mouseClick(w.clone_cancel, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: "cancelled" in w.postcall_label.text(), timeout=10000)
    assert not w.clone_cancel.isVisible()
    final = served.collect(10, until="postcall", where={"call_id": call_id,
                                                        "stage": "cancelled"})
    assert final is not None, served.named("postcall")


def test_a_controller_that_stops_answering_is_shown_and_recovered_from(
        attached: tuple[Any, Any], qtbot: Any) -> None:
    gui, served = attached
    w = gui.window
    qtbot.waitUntil(lambda: w.call_button.isEnabled(), timeout=10000)
    qtbot.waitUntil(lambda: gui.session.link.pending == 0, timeout=3000)
    os.kill(served.proc.pid, signal.SIGSTOP)  # a controller that stops answering
    try:
        qtbot.waitUntil(lambda: w.state_text() == "Not responding", timeout=5000)
        assert "controller not responding" in w.banner_message()
        assert not w.call_button.isEnabled()
        assert not w.restart_button.isVisible(), "attached: not ours to restart"
    finally:
        os.kill(served.proc.pid, signal.SIGCONT)
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
