"""Device backends: one full-duplex, callback-driven stream each.

Every backend calls ``handler(mic, out, status)`` once per period on its audio
thread (see ``engine.bridge.PeriodHandler``) and offers the same small surface,
``AudioDevice``. ``open_device`` picks one from the user's ``--device`` value.
"""

from __future__ import annotations

from typing import Protocol

from engine.bridge import PeriodHandler


class DeviceError(RuntimeError):
    """The device cannot be opened or used; ``str()`` is one line for the user."""


class AudioDevice(Protocol):
    """A full-duplex callback stream. Owned and driven by the audio process's control thread."""

    rate: int
    """Device rate, frames per second."""
    period_frames: int
    """Frames per callback, at the device rate."""
    name: str
    output_latency: float
    """Seconds from the callback producing a period to its first sample playing
    (PortAudio's own figure; 0 for the virtual device)."""

    def set_handler(self, handler: PeriodHandler) -> None:
        """Install the per-period handler; call before ``start``."""

    def start(self) -> None:
        """Start calling the handler every period."""

    def stop(self) -> None:
        """Stop; when this returns the handler is not running and will not run again."""

    def close(self) -> None:
        """Release the device. Stops first if running."""

    @property
    def running(self) -> bool: ...
