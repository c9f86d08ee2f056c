"""A level meter: a horizontal bar from −60 to 0 dBFS with a falling peak-hold mark.

GUI thread only. ``set_level(dbfs)`` takes a peak in dBFS (``None`` for
digital silence), as the controller's ``levels`` events carry them, about
ten a second. Between updates the bar falls at ``FALL_DB_PER_S`` and the
peak mark holds for ``HOLD_S``, then falls, so ten updates a second read as
a smooth meter. An animation timer runs only while something is moving.
"""

from __future__ import annotations

import time

from PyQt6.QtCore import QPointF, QRectF, QSize, Qt, QTimer
from PyQt6.QtGui import QColor, QLinearGradient, QPainter, QPaintEvent, QPalette, QPen
from PyQt6.QtWidgets import QSizePolicy, QWidget

FLOOR_DB = -60.0
"""The left end of the scale, dBFS; anything quieter shows as empty."""
FALL_DB_PER_S = 24.0
HOLD_S = 1.5
FRAME_MS = 33
TICKS_DB = (-48, -36, -24, -12, -6)

GREEN = QColor("#22c55e")
AMBER = QColor("#f59e0b")
RED = QColor("#ef4444")


def fraction(dbfs: float | None) -> float:
    """Position on the scale, 0..1, for a level in dBFS (None, −∞ → 0)."""
    if dbfs is None or dbfs <= FLOOR_DB:
        return 0.0
    return min(1.0, (dbfs - FLOOR_DB) / -FLOOR_DB)


class LevelMeter(QWidget):
    """See module docstring."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.level_db = FLOOR_DB
        """The bar as shown now, dBFS."""
        self.peak_db = FLOOR_DB
        self.last_input: float | None = None
        """The last level given to ``set_level``."""
        self._peak_at = 0.0
        self._last_frame = time.monotonic()
        self._timer = QTimer(self)
        self._timer.setInterval(FRAME_MS)
        self._timer.timeout.connect(self._animate)
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Fixed)
        self.setAttribute(Qt.WidgetAttribute.WA_OpaquePaintEvent, False)

    def sizeHint(self) -> QSize:
        h = max(10, round(self.fontMetrics().height() * 0.75))
        return QSize(h * 16, h)

    def minimumSizeHint(self) -> QSize:
        hint = self.sizeHint()
        return QSize(hint.height() * 6, hint.height())

    def set_level(self, dbfs: float | None) -> None:
        """A new peak reading, dBFS (None: silence)."""
        self.last_input = dbfs
        now = time.monotonic()
        value = FLOOR_DB if dbfs is None else max(FLOOR_DB, min(0.0, float(dbfs)))
        self._fall(now)
        if value >= self.level_db:
            self.level_db = value
        if value >= self.peak_db:
            self.peak_db, self._peak_at = value, now
        if not self._timer.isActive():
            self._last_frame = now
            self._timer.start()
        self.update()

    def held_peak(self) -> float | None:
        """The peak mark's level, dBFS (None when the meter is empty)."""
        return self.peak_db if self.peak_db > FLOOR_DB else None

    def reset(self) -> None:
        """Empty at once (the call is over)."""
        self.last_input = None
        self.level_db = self.peak_db = FLOOR_DB
        self._timer.stop()
        self.update()

    def _fall(self, now: float) -> None:
        dt = max(0.0, now - self._last_frame)
        self._last_frame = now
        self.level_db = max(FLOOR_DB, self.level_db - FALL_DB_PER_S * dt)
        if now - self._peak_at > HOLD_S:
            self.peak_db = max(self.level_db, self.peak_db - FALL_DB_PER_S * dt)

    def _animate(self) -> None:
        self._fall(time.monotonic())
        if self.level_db <= FLOOR_DB and self.peak_db <= FLOOR_DB:
            self._timer.stop()
        self.update()

    def paintEvent(self, event: QPaintEvent | None) -> None:
        p = QPainter(self)
        p.setRenderHint(QPainter.RenderHint.Antialiasing)
        r = QRectF(self.rect()).adjusted(0.5, 0.5, -0.5, -0.5)
        radius = r.height() / 4
        pal = self.palette()
        trough = pal.color(QPalette.ColorRole.Window).darker(112)
        p.setPen(Qt.PenStyle.NoPen)
        p.setBrush(trough)
        p.drawRoundedRect(r, radius, radius)

        width = r.width() * fraction(self.level_db)
        if width > 0:
            grad = QLinearGradient(r.left(), 0, r.right(), 0)
            grad.setColorAt(0.0, GREEN)
            grad.setColorAt(fraction(-12.0), GREEN)
            grad.setColorAt(fraction(-6.0), AMBER)
            grad.setColorAt(fraction(-1.0), RED)
            grad.setColorAt(1.0, RED)
            if not self.isEnabled():
                p.setOpacity(0.4)
            p.setBrush(grad)
            p.drawRoundedRect(QRectF(r.left(), r.top(), width, r.height()), radius, radius)
            p.setOpacity(1.0)

        tick = QColor(pal.color(QPalette.ColorRole.Window))
        tick.setAlpha(170)
        p.setPen(QPen(tick, 1))
        for db in TICKS_DB:
            x = r.left() + r.width() * fraction(db)
            p.drawLine(QPointF(x, r.top() + 2), QPointF(x, r.bottom() - 2))

        if self.peak_db > FLOOR_DB:
            x = r.left() + r.width() * fraction(self.peak_db)
            color = RED if self.peak_db > -1.0 else pal.color(QPalette.ColorRole.WindowText)
            p.setPen(QPen(color, max(2.0, r.height() / 6)))
            p.drawLine(QPointF(x, r.top() + 1), QPointF(x, r.bottom() - 1))
        p.end()
