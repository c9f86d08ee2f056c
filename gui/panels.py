"""The window's panels, built: each function makes one part of the window and returns
the widgets the window later reads or changes. No behaviour here beyond showing
what it is given — the window (``gui/window.py``) wires the signals and decides
what to show.

GUI thread only. Every widget is parented to ``parent`` (the window), so Qt owns
and frees them with it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PyQt6.QtCore import Qt
from PyQt6.QtGui import QFont
from PyQt6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QFormLayout,
    QFrame,
    QGridLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPlainTextEdit,
    QProgressBar,
    QPushButton,
    QSizePolicy,
    QVBoxLayout,
    QWidget,
)

from callctl.gui import messages
from callctl.gui.meters import LevelMeter
from callctl.gui.settings import LOCAL_AGENT, GuiSettings
from callctl.gui.style import COLORS, native_key, scaled_font

CALL_KEYS: tuple[str, ...] = ("Ctrl+Return", "Ctrl+Enter")
HANGUP_KEYS: tuple[str, ...] = ("Esc", "Ctrl+H")
SELECTABLE = Qt.TextInteractionFlag.TextSelectableByMouse


@dataclass
class Header:
    """The top strip: a coloured dot, the state in large type, a detail line, the timer."""

    frame: QFrame
    dot: QLabel
    state: QLabel
    detail: QLabel
    timer: QLabel


def build_header(parent: QWidget) -> Header:
    header = QFrame(parent)
    header.setObjectName("header")
    row = QHBoxLayout(header)
    row.setContentsMargins(20, 14, 20, 14)
    row.setSpacing(14)
    dot = QLabel("●", header)
    dot.setFont(scaled_font(parent, 2.0))
    dot.setAlignment(Qt.AlignmentFlag.AlignCenter)
    row.addWidget(dot, 0, Qt.AlignmentFlag.AlignVCenter)
    texts = QVBoxLayout()
    texts.setSpacing(2)
    state = QLabel("Starting…", header)
    state.setObjectName("state")
    state.setFont(scaled_font(parent, 1.9, QFont.Weight.DemiBold))
    detail = QLabel("", header)
    detail.setObjectName("detail")
    detail.setTextFormat(Qt.TextFormat.PlainText)
    detail.setTextInteractionFlags(SELECTABLE)
    texts.addWidget(state)
    texts.addWidget(detail)
    row.addLayout(texts, 1)
    timer = QLabel("00:00", header)
    timer.setObjectName("timer")
    timer.setFont(scaled_font(parent, 2.3, QFont.Weight.Medium, mono=True))
    timer.setToolTip("Time in call")
    row.addWidget(timer, 0, Qt.AlignmentFlag.AlignVCenter)
    return Header(header, dot, state, detail, timer)


@dataclass
class Banner:
    """The error banner (hidden until something is wrong): what, the details, what to do."""

    frame: QFrame
    title: QLabel
    text: QLabel
    hint: QLabel
    restart_button: QPushButton
    dismiss_button: QPushButton


def build_banner(parent: QWidget) -> Banner:
    banner = QFrame(parent)
    banner.setObjectName("banner")
    row = QHBoxLayout(banner)
    row.setContentsMargins(12, 10, 10, 10)
    row.setSpacing(10)
    icon = QLabel("⚠", banner)
    icon.setFont(scaled_font(parent, 1.4))
    row.addWidget(icon, 0, Qt.AlignmentFlag.AlignTop)
    texts = QVBoxLayout()
    texts.setSpacing(4)
    title = QLabel("", banner)
    title.setFont(scaled_font(parent, 1.0, QFont.Weight.DemiBold))
    title.setWordWrap(True)
    text = QLabel("", banner)
    text.setWordWrap(True)
    text.setTextInteractionFlags(SELECTABLE)
    text.setFont(scaled_font(parent, 0.92, mono=True))
    hint = QLabel("", banner)
    hint.setObjectName("bannerHint")
    hint.setWordWrap(True)
    for label in (title, text, hint):
        label.setTextFormat(Qt.TextFormat.PlainText)
        texts.addWidget(label)
    row.addLayout(texts, 1)
    buttons = QVBoxLayout()
    restart = QPushButton("Restart engine", banner)
    restart.setToolTip("Start the controller again with the devices chosen above")
    dismiss = QPushButton("Dismiss", banner)
    buttons.addWidget(restart)
    buttons.addWidget(dismiss)
    buttons.addStretch(1)
    row.addLayout(buttons)
    banner.hide()
    return Banner(banner, title, text, hint, restart, dismiss)


@dataclass
class Controls:
    """The Call and Hang up buttons, their shortcuts written underneath."""

    grid: QGridLayout
    call_button: QPushButton
    hangup_button: QPushButton


def build_controls(parent: QWidget) -> Controls:
    grid = QGridLayout()
    grid.setHorizontalSpacing(12)
    grid.setVerticalSpacing(4)
    big = scaled_font(parent, 1.3, QFont.Weight.DemiBold)
    em = parent.fontMetrics().height()
    call = QPushButton("Call", parent)
    call.setObjectName("call")
    hangup = QPushButton("Hang up", parent)
    hangup.setObjectName("hangup")
    for button, shortcuts, tip in (
            (call, CALL_KEYS, "Call the agent"),
            (hangup, HANGUP_KEYS, "End the call: the agent's voice stops the moment you press")):
        button.setFont(big)
        button.setMinimumHeight(round(em * 2.6))
        button.setMinimumWidth(em * 9)
        button.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Fixed)
        button.setToolTip(f"{tip} ({' or '.join(native_key(k) for k in shortcuts)})")
        button.setAutoDefault(False)
    grid.addWidget(call, 0, 0)
    grid.addWidget(hangup, 0, 1)
    for col, keys in ((0, CALL_KEYS[:1]), (1, HANGUP_KEYS)):
        hint = QLabel(" or ".join(native_key(k) for k in keys), parent)
        hint.setObjectName("hint")
        hint.setAlignment(Qt.AlignmentFlag.AlignCenter)
        grid.addWidget(hint, 1, col)
    return Controls(grid, call, hangup)


@dataclass
class Meters:
    """The microphone and speaker meters, each with its peak in dBFS."""

    grid: QGridLayout
    mic_meter: LevelMeter
    speaker_meter: LevelMeter
    mic_level: QLabel
    speaker_level: QLabel


def build_meters(parent: QWidget) -> Meters:
    grid = QGridLayout()
    grid.setHorizontalSpacing(10)
    grid.setVerticalSpacing(6)
    meters = Meters(grid, LevelMeter(parent), LevelMeter(parent),
                    QLabel(messages.dbfs(None), parent), QLabel(messages.dbfs(None), parent))
    width = parent.fontMetrics().horizontalAdvance("−60 dB ")
    for row, (name, meter, value, tip) in enumerate((
            ("Microphone", meters.mic_meter, meters.mic_level, "What the agent hears (peak)"),
            ("Speaker", meters.speaker_meter, meters.speaker_level,
             "What the agent says (peak)"))):
        label = QLabel(name, parent)
        label.setToolTip(tip)
        meter.setToolTip(f"{tip}, −60 to 0 dBFS; the mark and the figure hold the peak "
                         "for 1.5 s")
        value.setMinimumWidth(width)
        value.setAlignment(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
        value.setFont(scaled_font(parent, 1.0, mono=True))
        grid.addWidget(label, row, 0)
        grid.addWidget(meter, row, 1)
        grid.addWidget(value, row, 2)
    grid.setColumnStretch(1, 1)
    return meters


def build_transcript(parent: QWidget) -> tuple[QGroupBox, QPlainTextEdit]:
    """The transcript box and its text (read-only, the last 5,000 lines kept)."""
    box = QGroupBox("Transcript", parent)
    lay = QVBoxLayout(box)
    transcript = QPlainTextEdit(box)
    transcript.setReadOnly(True)
    transcript.setPlaceholderText("What you and the agent say appears here.")
    transcript.setMaximumBlockCount(5000)
    transcript.setFrameShape(QFrame.Shape.NoFrame)
    font = QFont(parent.font())
    font.setPointSizeF(font.pointSizeF() * 1.08)
    transcript.setFont(font)
    lay.addWidget(transcript)
    return box, transcript


@dataclass
class Setup:
    """The call's setup: the agent (remembered), the devices, the voice clone."""

    box: QGroupBox
    agent_combo: QComboBox
    mic_combo: QComboBox
    speaker_combo: QComboBox
    clone_check: QCheckBox
    clone_name: QLineEdit


def build_setup(parent: QWidget, settings: GuiSettings) -> Setup:
    """``settings``: what the window remembers (the agents used, the clone's name)."""
    box = QGroupBox("Call setup", parent)
    form = QFormLayout(box)
    form.setFieldGrowthPolicy(QFormLayout.FieldGrowthPolicy.AllNonFixedFieldsGrow)
    agent = QComboBox(box)
    agent.setEditable(True)
    agent.setInsertPolicy(QComboBox.InsertPolicy.NoInsert)
    agent.addItem(LOCAL_AGENT)
    for name in settings.recent_agents:
        agent.addItem(name)
    agent.setCurrentText(settings.agent)
    line = agent.lineEdit()
    if line is not None:
        line.setPlaceholderText("local, or an ElevenLabs agent id")
    agent.setToolTip("'local' is the offline agent; or type an ElevenLabs agent id (the API "
                     "key comes from ELEVENLABS_API_KEY or ~/.config/callctl/config.toml). "
                     "Remembered.")
    form.addRow("Agent", agent)
    mic, speaker = QComboBox(box), QComboBox(box)
    for combo in (mic, speaker):
        combo.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
        combo.setMinimumContentsLength(12)
    form.addRow("Microphone", mic)
    form.addRow("Speaker", speaker)
    clone_row = QHBoxLayout()
    clone_check = QCheckBox("Clone my voice as", box)
    clone_check.setToolTip("After the call, clone your voice from the recording on ElevenLabs "
                           "under this name (needs an API key)")
    clone_name = QLineEdit(settings.clone_name, box)
    clone_name.setPlaceholderText("voice name")
    clone_name.setEnabled(False)
    clone_row.addWidget(clone_check)
    clone_row.addWidget(clone_name, 1)
    form.addRow(clone_row)
    return Setup(box, agent, mic, speaker, clone_check, clone_name)


@dataclass
class Postcall:
    """After the call (hidden until then): the call folder being filled, the voice clone."""

    box: QGroupBox
    label: QLabel
    progress: QProgressBar
    clone_cancel: QPushButton


def build_postcall(parent: QWidget) -> Postcall:
    box = QGroupBox("After the call", parent)
    box.setToolTip("The call's folder is filled (recording, the caller's speech, transcript, "
                   "summary); with “Clone my voice”, the voice is cloned")
    lay = QVBoxLayout(box)
    label = QLabel("", box)
    label.setWordWrap(True)
    label.setTextFormat(Qt.TextFormat.PlainText)
    label.setTextInteractionFlags(SELECTABLE)
    row = QHBoxLayout()
    progress = QProgressBar(box)
    progress.setRange(0, 1000)  # per mille: the events' progress is 0..1
    progress.setTextVisible(False)
    progress.setMaximumHeight(max(8, parent.fontMetrics().height() // 2))
    cancel = QPushButton("Cancel clone", box)
    cancel.setToolTip("Stop cloning the voice (the call's files are kept)")
    cancel.hide()
    row.addWidget(progress, 1)
    row.addWidget(cancel)
    lay.addWidget(label)
    lay.addLayout(row)
    box.hide()
    return Postcall(box, label, progress, cancel)


@dataclass
class HangupDetails:
    """The last hangup as the controller measured it, and the call's recording."""

    box: QGroupBox
    timing_labels: dict[str, QLabel]
    """By ``call.ended`` timing key (``audio_silent_ms`` …), and ``ended`` (the reason)."""
    recording_label: QLabel
    open_folder_button: QPushButton

    def show(self, ended: dict[str, Any]) -> Path | None:
        """Show a ``call.ended`` event's reason, timings and recording; returns the
        recording's path (None without one)."""
        timings = ended.get("timings") if isinstance(ended.get("timings"), dict) else {}
        assert isinstance(timings, dict)
        reason = ended.get("reason")
        labels = self.timing_labels
        labels["ended"].setText(messages.ended_reason(reason if isinstance(reason, str)
                                                      else None))
        for key in ("audio_silent_ms", "stream_stopped_ms", "total_ms"):
            labels[key].setText(messages.milliseconds(timings.get(key)))
        exited = messages.milliseconds(timings.get("agent_exited_ms"))
        killed = bool(timings.get("agent_killed"))
        labels["agent_exited_ms"].setText(f"{exited} (killed)" if killed else exited)
        labels["agent_exited_ms"].setStyleSheet(f"color: {COLORS['busy']}" if killed else "")
        recording = ended.get("recording")
        path = Path(recording) if isinstance(recording, str) and recording else None
        self.recording_label.setText(path.name if path else "none")
        self.recording_label.setToolTip(str(path) if path else "")
        self.open_folder_button.setEnabled(path is not None)
        if path is not None:
            self.open_folder_button.setToolTip(f"Open {path.parent}")
        return path


def build_hangup_details(parent: QWidget) -> HangupDetails:
    box = QGroupBox("Last hangup", parent)
    box.setToolTip("Measured by the controller, from the moment the hangup reached it")
    form = QFormLayout(box)
    form.setLabelAlignment(Qt.AlignmentFlag.AlignLeft)
    labels: dict[str, QLabel] = {}
    mono = scaled_font(parent, 1.0, mono=True)
    for key, name, tip in (
            ("ended", "Ended", "Why the last call ended"),
            ("audio_silent_ms", "Audio silent", "Hangup → the speaker faded to silence"),
            ("stream_stopped_ms", "Stream stopped", "Hangup → the audio stream stopped"),
            ("agent_exited_ms", "Agent exited", "Hangup → the agent process was reaped"),
            ("total_ms", "Total", "Hangup → everything stopped")):
        label = QLabel("—", box)
        label.setToolTip(tip)
        if key != "ended":
            label.setFont(mono)
        label.setTextInteractionFlags(SELECTABLE)
        name_label = QLabel(name, box)
        name_label.setToolTip(tip)
        form.addRow(name_label, label)
        labels[key] = label
    labels["ended"].setWordWrap(True)
    rec_row = QHBoxLayout()
    recording = QLabel("—", box)
    recording.setTextInteractionFlags(SELECTABLE)
    recording.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Preferred)
    open_folder = QPushButton("Open folder", box)
    open_folder.setToolTip("Show the call's folder (recording, transcript)")
    open_folder.setEnabled(False)
    rec_row.addWidget(recording, 1)
    rec_row.addWidget(open_folder)
    form.addRow("Recording", rec_row)
    return HangupDetails(box, labels, recording, open_folder)
