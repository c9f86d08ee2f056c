"""The window's look: the style sheet, the state colours, fonts scaled from the system's.

GUI thread only (the helpers touch widgets). Fusion style (``app.prepare_application``)
with this sheet looks the same on every desktop and under Xvfb.
"""

from __future__ import annotations

from PyQt6.QtGui import QFont, QKeySequence
from PyQt6.QtWidgets import QWidget

COLORS = {
    "idle": "#64748b",
    "busy": "#d97706",
    "live": "#16a34a",
    "bad": "#dc2626",
}
"""The header's dot and state line, by what is going on: ready, working, in a call, wrong."""
AGENT_COLOR = "#2563eb"
CALLER_COLOR = "#15803d"

STYLE = """
QFrame#header { background: palette(base); border: none;
                border-bottom: 1px solid palette(midlight); }
QLabel#state { font-weight: 600; }
QLabel#detail, QLabel#hint { color: palette(placeholder-text); }
QLabel#timer { font-weight: 500; }
QFrame#banner { background: #fef2f2; border: 1px solid #fca5a5; border-radius: 6px; }
QFrame#banner QLabel { color: #7f1d1d; background: transparent; }
QFrame#banner QLabel#bannerHint { color: #991b1b; }
QPushButton#call, QPushButton#hangup {
    font-weight: 600; border-radius: 8px; padding: 8px 18px; color: white; border: none; }
QPushButton#call { background: #16a34a; }
QPushButton#call:hover { background: #15803d; }
QPushButton#call:pressed { background: #166534; }
QPushButton#hangup { background: #dc2626; }
QPushButton#hangup:hover { background: #b91c1c; }
QPushButton#hangup:pressed { background: #991b1b; }
QPushButton#call:disabled, QPushButton#hangup:disabled {
    background: palette(midlight); color: palette(placeholder-text); }
QGroupBox { font-weight: 600; }
QGroupBox QLabel, QGroupBox QCheckBox, QGroupBox QComboBox, QGroupBox QLineEdit {
    font-weight: normal; }
"""
"""The window's style sheet; widgets are picked by their ``objectName``."""


def scaled_font(widget: QWidget, factor: float, weight: QFont.Weight | None = None,
                mono: bool = False) -> QFont:
    """``widget``'s font, ``factor`` times its point size (so the system's size setting
    still counts), optionally with ``weight`` and a monospaced family."""
    font = QFont(widget.font())
    if mono:
        font.setStyleHint(QFont.StyleHint.Monospace)
        font.setFamilies(["DejaVu Sans Mono", "Menlo", "Consolas", "monospace"])
    font.setPointSizeF(font.pointSizeF() * factor)
    if weight is not None:
        font.setWeight(weight)
    return font


def restyle(widget: QWidget, sheet: str) -> None:
    """``setStyleSheet`` only on a change: each call re-polishes the widget (milliseconds)."""
    if widget.styleSheet() != sheet:
        widget.setStyleSheet(sheet)


def native_key(key: str) -> str:
    """A shortcut as this platform writes it (``Ctrl+Return`` → ``⌘↩`` on macOS)."""
    return QKeySequence(key).toString(QKeySequence.SequenceFormat.NativeText)
