"""The callctl window: call, hang up, levels, transcript, and how the last hangup went.

GUI thread only. The window is a view over a ``Session`` (gui/session.py):
it sends ``call`` / ``hangup`` / ``cancel_clone`` through it and draws what
comes back — the link's phase, the call's state, and the controller's events.
Nothing here waits for anything.

Layout, top to bottom: a header that reads at a glance (a coloured dot, the
state in large type — "Ready", "Calling…", "In call", "Stopping…", "Call
failed" — a line of detail, and the call's timer); an error banner, only
when something is wrong, saying what and what to do; the Call and Hang up
buttons; the microphone and speaker meters; then the transcript beside a
column with the call's setup (agent, devices, voice clone) and the last
call's measured hangup timings and recording.

Hang up acts on *press* (``QPushButton.pressed``), as does its shortcut,
because the whole point of callctl is that the agent's voice is gone the
moment you decide: Esc or Ctrl+H. Call: Ctrl+Return.

The panels are built in ``gui/panels.py``, the look is ``gui/style.py``; this
module is what the window does.
"""

from __future__ import annotations

import html
import time
from pathlib import Path
from typing import Any

from PyQt6.QtCore import QSize, Qt, QTimer, QUrl
from PyQt6.QtGui import QCloseEvent, QDesktopServices, QKeySequence, QShortcut
from PyQt6.QtWidgets import QHBoxLayout, QMainWindow, QVBoxLayout, QWidget

from callctl.engine import protocol
from callctl.engine.protocol import POSTCALL_FINAL_STAGES
from callctl.gui import device_pickers as device_choices
from callctl.gui import messages, panels
from callctl.gui.device_pickers import Choice
from callctl.gui.panels import CALL_KEYS, HANGUP_KEYS
from callctl.gui.session import IDLE_STATES, Session
from callctl.gui.settings import LOCAL_AGENT, GuiSettings
from callctl.gui.settings import save as save_settings
from callctl.gui.settings import save_later as save_settings_later
from callctl.gui.settings import start_writer as start_settings_writer
from callctl.gui.style import AGENT_COLOR, CALLER_COLOR, COLORS, STYLE, restyle

START_NEWS_GRACE_MS = 3000
"""After ``call`` is answered, how long "Calling…" waits for the call's first state event."""


class MainWindow(QMainWindow):
    """See module docstring. The session must not be started yet (the window connects first)."""

    def __init__(self, session: Session, settings: GuiSettings,
                 settings_file: Path | None = None) -> None:
        super().__init__()
        self.session = session
        self.settings = settings
        self.settings_file = settings_file
        self.devices: list[dict[str, Any]] | None = None
        self.call_id: str | None = None
        self.last_ended: dict[str, Any] | None = None
        self._phase, self._phase_message = session.phase, ""
        self._call_state = "idle"
        self._call_requested = False
        self._hangup_requested = False
        self._in_call_since: float | None = None
        self._frozen_duration: float | None = None
        self._recording: Path | None = None
        self._clone_names: dict[str, str] = {}
        """Voice-clone name per call id, for the calls this window started with one."""
        self._clone_pending: str | None = None
        self._postcall_call: str | None = None
        self._mic_choices: list[Choice] = []
        self._speaker_choices: list[Choice] = []
        self._build()
        self._wire()
        self._render()
        start_settings_writer()  # its thread now, not in the middle of a Call click

    # -- building ------------------------------------------------------------------

    def _build(self) -> None:
        """Make the panels (``gui/panels.py``) and keep the widgets the window drives."""
        self.setWindowTitle("callctl")
        self.setStyleSheet(STYLE)
        root = QWidget(self)
        self.setCentralWidget(root)
        outer = QVBoxLayout(root)
        outer.setContentsMargins(0, 0, 0, 0)
        outer.setSpacing(0)
        header = panels.build_header(self)
        self.dot, self.state_label = header.dot, header.state
        self.detail_label, self.timer_label = header.detail, header.timer
        outer.addWidget(header.frame)
        body = QVBoxLayout()
        body.setContentsMargins(16, 12, 16, 16)
        body.setSpacing(12)
        outer.addLayout(body, 1)
        banner = panels.build_banner(self)
        self.banner, self.banner_title = banner.frame, banner.title
        self.banner_text, self.banner_hint = banner.text, banner.hint
        self.restart_button, self.dismiss_button = banner.restart_button, banner.dismiss_button
        body.addWidget(banner.frame)
        controls = panels.build_controls(self)
        self.call_button, self.hangup_button = controls.call_button, controls.hangup_button
        body.addLayout(controls.grid)
        meters = panels.build_meters(self)
        self.mic_meter, self.speaker_meter = meters.mic_meter, meters.speaker_meter
        self.mic_level, self.speaker_level = meters.mic_level, meters.speaker_level
        body.addLayout(meters.grid)
        lower = QHBoxLayout()
        lower.setSpacing(16)
        transcript_box, self.transcript = panels.build_transcript(self)
        lower.addWidget(transcript_box, 3)
        setup = panels.build_setup(self, self.settings)
        self.agent_combo, self.mic_combo = setup.agent_combo, setup.mic_combo
        self.speaker_combo = setup.speaker_combo
        self.clone_check, self.clone_name = setup.clone_check, setup.clone_name
        postcall = panels.build_postcall(self)
        self.postcall_box, self.postcall_label = postcall.box, postcall.label
        self.postcall_progress, self.clone_cancel = postcall.progress, postcall.clone_cancel
        self.hangup_details = details = panels.build_hangup_details(self)
        self.timing_labels = details.timing_labels
        self.recording_label = details.recording_label
        self.open_folder_button = details.open_folder_button
        side = QVBoxLayout()
        side.setSpacing(12)
        for box in (setup.box, postcall.box, details.box):
            side.addWidget(box)
        side.addStretch(1)
        lower.addLayout(side, 2)
        body.addLayout(lower, 1)
        self.resize(self.sizeHint())  # the layout keeps it from shrinking below its minimum

    # -- wiring --------------------------------------------------------------------

    def _wire(self) -> None:
        s = self.session
        s.phase_changed.connect(self._on_phase)
        s.call_state_changed.connect(self._on_call_state)
        s.event_received.connect(self._on_event)
        s.devices_changed.connect(self._on_devices)
        s.status_changed.connect(self._on_status)
        self.call_button.clicked.connect(self.start_call)
        self.hangup_button.pressed.connect(self.hang_up)  # on press, not on release
        for keys, slot in ((CALL_KEYS, self.start_call), (HANGUP_KEYS, self.hang_up)):
            for key in keys:
                shortcut = QShortcut(QKeySequence(key), self)
                shortcut.setAutoRepeat(False)
                shortcut.setContext(Qt.ShortcutContext.WindowShortcut)
                shortcut.activated.connect(slot)
        self.restart_button.clicked.connect(self._restart)
        self.dismiss_button.clicked.connect(self._hide_banner)
        self.clone_check.toggled.connect(self._on_clone_toggled)
        self.clone_cancel.clicked.connect(self._cancel_clone)
        self.open_folder_button.clicked.connect(self.open_recording_folder)
        self.mic_combo.activated.connect(lambda _i: self._on_device_picked("input"))
        self.speaker_combo.activated.connect(lambda _i: self._on_device_picked("output"))
        self._tick = QTimer(self)
        self._tick.setInterval(200)
        self._tick.timeout.connect(self._update_timer)
        self._fill_device_pickers()

    # -- actions -------------------------------------------------------------------

    @property
    def can_call(self) -> bool:
        return (self._phase == "ready" and self._call_state in IDLE_STATES
                and not self._call_requested)

    @property
    def can_hang_up(self) -> bool:
        return (self._phase in ("ready", "unresponsive") and not self._hangup_requested
                and (self._call_state in ("starting", "in_call") or self._call_requested))

    def agent(self) -> str:
        return self.agent_combo.currentText().strip() or LOCAL_AGENT

    def start_call(self) -> None:
        """Call button / Ctrl+Return: ask the controller for a call with the chosen agent."""
        if not self.can_call:
            return
        clone = None
        if self.clone_check.isChecked():
            clone = self.clone_name.text().strip()
            if not clone:
                self._show_banner("Name the cloned voice",
                                  "Type a name next to “Clone my voice as”, or untick it.")
                self.clone_name.setFocus()
                return
            self.settings.clone_name = clone
        agent = self.agent()
        self.settings.remember_agent(agent)
        if self.agent_combo.findText(agent) < 0:
            self.agent_combo.insertItem(1, agent)
        save_settings_later(self.settings, self.settings_file)
        self._clone_pending = clone
        self._hide_banner()
        self.transcript.clear()
        self.postcall_box.hide()
        self._in_call_since = None
        self._frozen_duration = None
        self._call_requested = True
        self._render()
        self.session.call(agent, clone, self._on_call_reply)

    def _on_call_reply(self, reply: dict[str, Any]) -> None:
        if reply.get("ok"):
            self.call_id = reply.get("call_id")
            if self.call_id and self._clone_pending:
                self._clone_names[self.call_id] = self._clone_pending
            if self.session.state_call_id == self.call_id:
                self._call_requested = False  # its state news came first (another socket)
            else:  # "Calling…" until the news arrives; a status poll or this timer settles it
                QTimer.singleShot(START_NEWS_GRACE_MS, self._start_news_overdue)
        else:
            self._call_requested = False
            error = str(reply.get("error"))
            self._show_banner("The call did not start", error, messages.hint(reply.get("code")))
        self._render()

    def _start_news_overdue(self) -> None:
        if self._call_requested and self.call_id and self.session.state_call_id != self.call_id:
            self._call_requested = False
            self._render()

    def hang_up(self) -> None:
        """Hang up (on press, and Esc / Ctrl+H): ``Stopping…`` at once, the reply follows."""
        if not self.can_hang_up:
            return
        self._hangup_requested = True
        self._freeze_timer()
        self._render()
        self.session.hangup(self._on_hangup_reply)

    def _on_hangup_reply(self, reply: dict[str, Any]) -> None:
        if not reply.get("ok"):
            error = str(reply.get("error"))
            self._hangup_requested = False
            if reply.get("code") != protocol.NO_CALL:  # already over: nothing to confirm
                self._show_banner("The hangup was not confirmed", error,
                                  messages.hint(reply.get("code")))
        self._render()

    def _cancel_clone(self) -> None:
        self.clone_cancel.setEnabled(False)
        self.postcall_label.setText("Cancelling the voice clone…")

        def done(reply: dict[str, Any]) -> None:
            if not reply.get("ok"):
                self.postcall_label.setText(f"Could not cancel: {reply.get('error')}")
                self.clone_cancel.setEnabled(True)

        self.session.cancel_clone(done)

    def open_recording_folder(self) -> bool:
        """Show the last recording's folder in the desktop's file manager."""
        if self._recording is None:
            return False
        return QDesktopServices.openUrl(QUrl.fromLocalFile(str(self._recording.parent)))

    def _restart(self) -> None:
        self._hide_banner()
        self.session.restart()

    def _on_clone_toggled(self, on: bool) -> None:
        self.clone_name.setEnabled(on)
        if on and not self.clone_name.text().strip():
            self.clone_name.setFocus()

    # -- devices -------------------------------------------------------------------

    def _on_devices(self, devices: list[dict[str, Any]]) -> None:
        self.devices = devices
        self._fill_device_pickers()

    def _fill_device_pickers(self) -> None:
        config = self.session.config
        if config is None:
            for combo in (self.mic_combo, self.speaker_combo):
                combo.clear()
                combo.addItem("as the controller was started")
            return
        for combo, direction in ((self.mic_combo, "input"), (self.speaker_combo, "output")):
            entries, current = device_choices.choices(self.devices, direction, config)  # type: ignore[arg-type]
            combo.clear()
            for entry in entries:
                combo.addItem(entry.label)
            combo.setCurrentIndex(current)
            if direction == "input":
                self._mic_choices = entries
            else:
                self._speaker_choices = entries

    def _on_device_picked(self, direction: str) -> None:
        config = self.session.config
        if config is None or not self._mic_choices or not self._speaker_choices:
            return
        mic = self._mic_choices[max(0, self.mic_combo.currentIndex())]
        speaker = self._speaker_choices[max(0, self.speaker_combo.currentIndex())]
        new, mic, speaker = device_choices.config_for(config, mic, speaker,
                                                      "input" if direction == "input" else "output")
        if new == config:
            return
        if self.session.restart(new):
            self._hide_banner()
            self._fill_device_pickers()
        else:
            self._fill_device_pickers()  # refused (a call runs): show what is in use

    # -- what the session says --------------------------------------------------------

    def _on_phase(self, phase: str, message: str) -> None:
        previous = self._phase
        self._phase, self._phase_message = phase, message
        if phase == "down":
            title = "The audio engine stopped"
            self._show_banner(title, message, messages.hint(self.session.down_code), restart=True)
            self._call_requested = self._hangup_requested = False
            self._call_state = "idle"
            self._stop_meters()
        elif phase == "unresponsive":
            self._show_banner("Controller not responding", message,
                              messages.hint(protocol.NOT_RESPONDING),
                              restart=self.session.owns_controller)
        elif phase == "ready" and previous == "unresponsive":
            self._hide_banner()
        if phase == "ready" and previous in ("starting", "connecting"):
            self._fill_device_pickers()
        self._render()

    def _on_status(self, status: dict[str, Any]) -> None:
        call = status.get("call")
        duration = _num(call.get("duration_s")) if isinstance(call, dict) else None
        if self._call_state == "in_call" and self._in_call_since is None and duration is not None:
            self._in_call_since = time.monotonic() - duration  # attached mid-call
            self._tick.start()
        if isinstance(call, dict) and not self.call_id:
            self.call_id = call.get("call_id")
        if self.last_ended is None and isinstance(status.get("last_call"), dict):
            self._show_ended(status["last_call"], announce=False)
        audio = status.get("audio")
        if self.session.config is None and isinstance(audio, dict) and audio.get("device"):
            for combo in (self.mic_combo, self.speaker_combo):
                if combo.itemText(0) != audio["device"]:
                    combo.clear()
                    combo.addItem(str(audio["device"]))

    def _on_call_state(self, state: str, reason: str | None) -> None:
        previous = self._call_state
        self._call_state = state
        if self._call_requested and self.call_id and self.session.state_call_id == self.call_id:
            self._call_requested = False
        if state == "starting" and previous in IDLE_STATES and not self._call_requested:
            self.transcript.clear()  # a call started by someone else (a script, the CLI)
            self.postcall_box.hide()
            self._in_call_since = None
            self._frozen_duration = None
        if state == "in_call":
            if self._in_call_since is None:
                self._in_call_since = time.monotonic()
            self._tick.start()
        elif state == "ending":
            self._hangup_requested = True
            self._freeze_timer()
        elif state in IDLE_STATES:
            self._hangup_requested = False
            self._freeze_timer()
            self._stop_meters()
            if state == "failed" and reason:
                text = messages.clean_reason(str(reason))
                self._show_banner("Call failed", text, messages.hint(self.session.reason_code))
            if self.devices is None and self.session.owns_controller:
                self.session.request_devices()
        self._render()

    def _on_event(self, topic: str, body: dict[str, Any]) -> None:
        if topic == protocol.EVENT_LEVELS:
            if self._call_state == "in_call":
                for meter, label, key in ((self.mic_meter, self.mic_level, "in_dbfs"),
                                          (self.speaker_meter, self.speaker_level, "out_dbfs")):
                    meter.set_level(_num(body.get(key)))
                    label.setText(messages.dbfs(meter.held_peak()))  # the mark's figure
        elif topic == protocol.EVENT_TRANSCRIPT:
            self._add_line(str(body.get("role")), str(body.get("text", "")))
        elif topic == protocol.EVENT_CALL_ENDED:
            self._show_ended(body, announce=True)
        elif topic == protocol.EVENT_ERROR:
            message = messages.clean_reason(str(body.get("message")))
            self._show_banner("Error", message, messages.hint(body.get("code")))
        elif topic == protocol.EVENT_POSTCALL:
            self._on_postcall(body)

    def _add_line(self, role: str, text: str) -> None:
        if role == "agent":
            who, color = "Agent", AGENT_COLOR
        else:
            who, color = "You", CALLER_COLOR
        body = html.escape(text)
        if text.startswith("[") and text.endswith("]"):  # offline: "[speech 1.4 s]"
            body = f'<i style="color:#6b7280">{body}</i>'
        self.transcript.appendHtml(f'<b style="color:{color}">{who}</b>&nbsp;&nbsp;{body}')

    def _show_ended(self, event: dict[str, Any], announce: bool) -> None:
        self.last_ended = event
        self._recording = self.hangup_details.show(event)
        reason = event.get("reason")
        if announce and isinstance(reason, str) and reason not in messages.ENDED_NORMALLY:
            text = messages.clean_reason(reason)
            errors = [messages.clean_reason(str(e)) for e in event.get("errors") or []
                      if messages.clean_reason(str(e)) != text]
            self._show_banner("The call ended", "\n".join([text, *errors]),
                              messages.hint(event.get("reason_code")))

    def _on_postcall(self, event: dict[str, Any]) -> None:
        """``postcall``: the call folder being filled, and the voice clone, after each call."""
        call_id = str(event.get("call_id") or "")
        if self._postcall_call and call_id != self._postcall_call:
            newer = self.last_ended is not None and self.last_ended.get("call_id") == call_id
            if not newer:
                return  # a previous call's late news
        self._postcall_call = call_id
        stage = str(event.get("stage") or "")
        progress = _num(event.get("progress"))
        message = str(event.get("message") or stage or "working")
        clone = self._clone_names.get(call_id)
        final = stage in POSTCALL_FINAL_STAGES
        if final and stage == "done" and event.get("voice_id"):
            text = f"Voice “{clone or 'clone'}” is ready (voice id {event['voice_id']})."
        elif final and stage == "cancelled":
            text = f"Voice clone cancelled. {message}"
        elif final and stage == "failed":
            text = f"Failed: {message}"
        elif stage == "cloning" and clone:
            text = f"Cloning “{clone}”: {message}"
        else:
            text = message[:1].upper() + message[1:]
        self.postcall_label.setText(text)
        self.postcall_label.setStyleSheet(f"color: {COLORS['bad']}" if stage == "failed" else "")
        if final:
            self.postcall_progress.setValue(1000 if stage == "done" else
                                            self.postcall_progress.value())
        elif progress is not None:
            self.postcall_progress.setValue(round(max(0.0, min(1.0, progress)) * 1000))
        cancellable = not final and (stage == "cloning" or clone is not None)
        self.clone_cancel.setVisible(cancellable)
        self.clone_cancel.setEnabled(cancellable)
        if self.postcall_box.isHidden():
            self.postcall_box.show()

    # -- drawing ---------------------------------------------------------------------

    def _freeze_timer(self) -> None:
        if self._in_call_since is not None and self._frozen_duration is None:
            self._frozen_duration = time.monotonic() - self._in_call_since
        self._tick.stop()
        self._update_timer()

    def _update_timer(self) -> None:
        if self._frozen_duration is not None:
            seconds = self._frozen_duration
        elif self._in_call_since is not None:
            seconds = time.monotonic() - self._in_call_since
        else:
            seconds = 0.0
        self.timer_label.setText(messages.clock(seconds))

    def _stop_meters(self) -> None:
        self.mic_meter.reset()
        self.speaker_meter.reset()
        self.mic_level.setText(messages.dbfs(None))
        self.speaker_level.setText(messages.dbfs(None))

    def state_text(self) -> str:
        return self.state_label.text()

    def _headline(self) -> tuple[str, str, str]:
        """(state line, detail line, colour key) for what is going on now."""
        phase, state = self._phase, self._call_state
        if phase == "starting":
            return "Starting…", self._phase_message or "Starting the audio engine…", "busy"
        if phase == "connecting":
            return "Connecting…", self._phase_message, "busy"
        if phase == "down":
            return "Not running", "The audio engine is not running — see below", "bad"
        if phase == "unresponsive":
            return "Not responding", "The controller does not answer; still trying", "bad"
        where = self._where()
        if self._hangup_requested or state == "ending":
            return "Stopping…", "Hanging up — the speaker is already silent", "busy"
        if self._call_requested or state == "starting":
            return "Calling…", f"Connecting to {where}", "busy"
        if state == "in_call":
            return "In call", where, "live"
        if state == "failed":
            return "Call failed", "You can call again", "bad"
        return "Ready", f"{where} — press Call", "idle"

    def _where(self) -> str:
        agent = self.agent()
        who = "the local agent" if agent == LOCAL_AGENT else f"agent {agent}"
        device = self.mic_combo.currentText()
        if self.session.config is not None and self.session.config.device == "virtual":
            device = "the virtual device"
        return f"{who} · {device}" if device else who

    def _render(self) -> None:
        title, detail, color = self._headline()
        self.state_label.setText(title)
        self.detail_label.setText(detail)
        restyle(self.dot, f"color: {COLORS[color]}")
        restyle(self.state_label, f"color: {COLORS[color]}" if color != "idle" else "")
        self.call_button.setEnabled(self.can_call)
        self.hangup_button.setEnabled(self.can_hang_up)
        idle = self._call_state in IDLE_STATES and not self._call_requested
        can_pick = (self.session.owns_controller and idle
                    and self._phase in ("ready", "down"))
        self.mic_combo.setEnabled(can_pick)
        self.speaker_combo.setEnabled(can_pick)
        if not self.session.owns_controller:
            tip = "Attached to a running controller: its devices were chosen where it started"
        else:
            tip = "Changing it restarts the audio engine (between calls only)"
        if self.mic_combo.toolTip() != tip:
            self.mic_combo.setToolTip(tip)
            self.speaker_combo.setToolTip(tip)
        self.agent_combo.setEnabled(idle)
        self.clone_check.setEnabled(idle)
        self.clone_name.setEnabled(idle and self.clone_check.isChecked())
        live = self._call_state == "in_call"
        restyle(self.timer_label, "" if live else "color: palette(placeholder-text)")
        self.mic_meter.setEnabled(live)
        self.speaker_meter.setEnabled(live)
        self.restart_button.setVisible(self.session.owns_controller
                                       and self._phase in ("down", "unresponsive"))

    def _show_banner(self, title: str, text: str, hint: str = "", restart: bool = False) -> None:
        self.banner_title.setText(title)
        self.banner_text.setText(text)
        self.banner_text.setVisible(bool(text))
        self.banner_hint.setText(hint)
        self.banner_hint.setVisible(bool(hint))
        self.banner.show()
        self._render()

    def _hide_banner(self) -> None:
        self.banner.hide()

    def banner_message(self) -> str:
        """Everything the banner says now ("" when hidden)."""
        if self.banner.isHidden():
            return ""
        return "\n".join(x.text() for x in (self.banner_title, self.banner_text,
                                            self.banner_hint) if x.text())

    def sizeHint(self) -> QSize:
        em = self.fontMetrics().height()
        return QSize(max(900, em * 52), max(720, em * 42))

    # -- closing -------------------------------------------------------------------

    def closeEvent(self, event: QCloseEvent | None) -> None:
        """Remember the agent; ask a spawned controller to end (it ends any call first)."""
        agent = self.agent()
        if agent != self.settings.agent:
            self.settings.agent = agent
        if self.clone_name.text().strip():
            self.settings.clone_name = self.clone_name.text().strip()
        save_settings(self.settings, self.settings_file)
        self._tick.stop()
        self.session.close()
        super().closeEvent(event)


def _num(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)
