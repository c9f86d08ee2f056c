"""Device backends: one full-duplex, callback-driven stream each.

Every backend calls ``handler(mic, out, status)`` once per period on its audio
thread (see ``engine.bridge.PeriodHandler``) and offers the same small surface,
``AudioDevice``. ``engine.audio_process.open_device`` picks one from the
user's ``--device`` value:

* ``pulse``, ``pulse:SINK[,SOURCE]``: ``engine.devices.pulse`` (native
  PulseAudio protocol; PulseAudio and PipeWire). The default on Linux when
  such a server answers.
* ``portaudio``, ``portaudio:NAME|INDEX`` (or a bare name or index):
  ``engine.devices.portaudio`` (JACK, ALSA hardware, macOS, Windows).
* ``virtual``: ``engine.devices.virtual`` (WAV files, clocked).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from callctl.engine.bridge import PeriodHandler


class DeviceError(RuntimeError):
    """The device cannot be opened or used; ``str()`` is one line for the user."""


class AudioDevice(Protocol):
    """A full-duplex callback stream. Owned and driven by the audio process's control thread.

    The hangup contract: a device whose ``cuts_at_device`` is False (PortAudio,
    virtual) plays what it is given until ``stop``, so the caller has the
    handler fade and write silence first, then stops it. A device whose
    ``cuts_at_device`` is True holds audio the handler already produced
    (a sound server's queue) that a plain stop would cut mid-waveform: the
    caller uses ``fade_stop`` instead, and the device fades what is playing
    at the moment of the hangup to zero itself. Such a device is also a
    ``FadingDevice``: it fades a barge-in (``fade_flush``) the same way, and the
    call goes on.
    """

    backend: str
    """"pulse", "portaudio" or "virtual"."""
    cuts_at_device: bool
    """True: hang up with ``fade_stop`` (see the class docstring)."""
    handler_may_wait: bool
    """True when the handler runs on a thread of the device's own with time to spare
    (a sound server's queue ahead of it), not in a real-time callback: the echo
    canceller may then run in the handler (``engine.echo.InlineEcho``)."""
    rate: int
    """Device rate, frames per second."""
    period_frames: int
    """Frames per callback, at the device rate."""
    name: str
    output_latency: float
    """Seconds from the callback producing a period to its first sample playing
    (PortAudio's or the sound server's own figure; 0 for the virtual device)."""
    input_latency: float
    """Seconds from a sample reaching the device to the callback receiving it (as reported)."""

    def set_handler(self, handler: PeriodHandler) -> None:
        """Install the per-period handler; call before ``start``."""

    def start(self) -> None:
        """Start calling the handler every period."""

    def stop(self) -> None:
        """Stop; when this returns the handler is not running and will not run again."""

    def fade_stop(self, timeout: float) -> float | None:
        """Hang up at the device: fade what plays now to zero, then stop (as ``stop``).

        Waits at most ``timeout`` seconds. Returns the ``time.monotonic()`` at
        which the device's output goes silent as the device reports it, or None
        when it could not fade (it is stopped anyway). Devices with
        ``cuts_at_device`` False just stop and return None. Control thread.
        """

    def status(self) -> dict[str, Any]:
        """Extra fields for the audio process's ``status`` (losses, reopens; may be empty)."""

    def close(self) -> None:
        """Release the device. Stops first if running."""

    @property
    def running(self) -> bool: ...


class FadingDevice(AudioDevice, Protocol):
    """An ``AudioDevice`` whose ``cuts_at_device`` is True (the native PulseAudio backend):
    it holds audio the handler already produced, and fades it out itself, on a hangup
    (``fade_stop``) and on a barge-in (``fade_flush``)."""

    def fade_flush(self, timeout: float,
                   ask_handler: Callable[[], object] | None = None) -> float | None:
        """Barge-in at the device: fade what plays now to zero; the stream runs on.

        The device's queue is refilled with silence to the depth it had, so the
        handler's next period plays where it would have, at the same latency.
        ``ask_handler`` asks the handler to drop its own queued audio
        (``DuplexCallback.request_flush``): the device calls it between two handler
        calls, together with registering the fade, and serves the fade before the
        handler's next call, so that the handler sees the flush in the period the
        fade asks for (``FADE_FLUSH``) and nothing from before the flush is written
        after the fade. Waits at most ``timeout`` seconds. Returns the
        ``time.monotonic()`` at which the fade's last sample plays as the device
        reports it, or None when it could not fade (or is not running; nothing
        changes then). Only devices with ``cuts_at_device`` True have it; the
        others' queue is the ring the callback flushes. Control thread.
        """

    def fade_flush_soon(self) -> None:
        """The same, asked by the handler itself (audio thread, inside the handler): the
        fade follows the period the handler is writing, and nobody waits for it."""
