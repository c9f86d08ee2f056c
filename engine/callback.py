"""What the device callback does each period, independent of the device backend.

``DuplexCallback.process(mic, out)`` is called once per device period, at the
rings' rate (16 kHz; the backend resamples around it). It

* honours a pending barge-in flush or hangup (flags set by the control thread),
  and the agent's own barge-in (a flush of the playback ring it writes), whose
  cut-off audio it fades out over ``fade_frames`` rather than stopping it dead,
* reads the playback ring into ``out`` (speaker) — or, after a hangup, a fade
  of at most ``fade_frames`` and then only zeros, flushing the ring every
  period so nothing the agent writes afterwards can reach the speaker,
* writes ``mic`` to the capture ring — or, with echo cancellation, hands the
  raw ``mic`` and the ``out`` it just wrote to ``echo.feed`` (``EchoFeed``;
  ``engine.echo.EchoThread``), whose thread writes the cancelled microphone
  to the capture ring instead,
* feeds the recorder, keeps the buffers for the level meters (read by the
  control thread: ``levels``), and counts device status flags.

Contract (python-sounddevice style): ``process`` runs on the audio thread. It
takes no lock, never blocks, and allocates nothing beyond numpy scalars. The
control thread talks to it only through ``request_flush``/``request_hangup``
(plain attribute stores, atomic under the GIL) and reads its published
fields (``first_silent_at``, counters) and ``levels``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Protocol

import numpy as np

from callctl.engine.bridge import DEVICE_GAP, FADE_FLUSH, NOT_XRUNS
from callctl.engine.fade import fade_curve
from callctl.engine.recorder import CallRecorder
from callctl.engine.ring import SAMPLE_RATE, AudioRing

DEFAULT_FADE_SECONDS = 0.010
"""The hangup fade on the callback path (PortAudio, virtual), seconds: one 10 ms period,
with ``engine.fade``'s quiet tail, so its last millisecond is 30 dB down."""


class EchoFeed(Protocol):
    """Where the callback sends each period when echo cancellation is on."""

    def feed(self, mic: np.ndarray, ref: np.ndarray) -> None:
        """Audio thread: the raw ``mic`` and the ``ref`` sent to the speaker (int16, same
        length). Must not lock, block or allocate."""


def dbfs(peak: float) -> float:
    """Peak int16 magnitude as dBFS (−inf for silence)."""
    return 20 * math.log10(peak / 32768.0) if peak > 0 else -math.inf


def _peak(samples: np.ndarray) -> int:
    return max(int(samples.max(initial=0)), -int(samples.min(initial=0)))


class DuplexCallback:
    """Per-period audio logic between the device and the rings. See module docstring."""

    def __init__(
        self,
        playback: AudioRing,
        capture: AudioRing,
        max_period_frames: int,
        fade_frames: int = round(DEFAULT_FADE_SECONDS * SAMPLE_RATE),
    ) -> None:
        self.playback = playback
        self.capture = capture
        self.recorder: CallRecorder | None = None
        self.echo: EchoFeed | None = None
        """Set once, before the stream first starts; None: the mic goes straight to capture."""
        self._fade = fade_curve(fade_frames)
        self._fade_buf = np.zeros(len(self._fade), np.float32)
        self._fades = [fade_curve(n) for n in range(1, len(self._fade))] + [self._fade]
        """The whole fade curve of every length up to ``fade_frames`` (index: length - 1),
        made here so that a barge-in in a period shorter than the fade allocates nothing."""
        self._fade_pos = 0
        """Frames of the hangup fade already played (audio thread)."""
        self.max_period_frames = max_period_frames
        # Requests from the control thread: counters the callback catches up with.
        self._flush_requests = 0
        self._flush_seen = 0
        self._hangup = False
        # Published by the callback.
        self.silent = False
        self.first_silent_at: float | None = None
        self.last_flush_dropped = 0
        self.agent_flushes = 0
        """Flushes the agent asked for (``AudioRing.request_flush``) that this callback faded."""
        self.on_agent_flush: Callable[[], None] | None = None
        """Called on the audio thread, in the period that fades an agent's flush: a device
        that fades what it holds (``PulseDevice.fade_flush_soon``). Set before the
        stream first starts."""
        self.periods = 0
        self.device_xruns = 0
        self.gap_periods = 0
        """Periods the device stood for lost time (``DEVICE_GAP``): silence both ways."""
        self._last_mic: np.ndarray = np.zeros(0, np.int16)
        self._last_out: np.ndarray = np.zeros(0, np.int16)

    # -- control thread ---------------------------------------------------------

    def request_flush(self) -> int:
        """Ask for a barge-in flush at the next period; returns the request number."""
        self._flush_requests += 1
        return self._flush_requests

    def flush_done(self, request: int) -> bool:
        return self._flush_seen >= request

    def request_hangup(self) -> None:
        """From the next period: fade, then only silence, ring flushed every period."""
        self._hangup = True

    def levels(self) -> tuple[int, int]:
        """Peak magnitudes (int16) of the microphone and the speaker in the buffers the
        last period used, read now. The audio thread may be refilling those buffers
        meanwhile, so a reading can mix that period with the next: fine for a meter, and it
        keeps four reductions a period off the audio thread."""
        return _peak(self._last_mic), _peak(self._last_out)

    def rearm(self) -> None:
        """Before a new call (stream stopped): clear hangup state and counters."""
        self._hangup = False
        self._fade_pos = 0
        self.silent = False
        self.first_silent_at = None
        self._flush_seen = self._flush_requests

    # -- audio thread -----------------------------------------------------------

    def process(self, mic: np.ndarray, out: np.ndarray, device_status: int = 0) -> None:
        """One period: ``mic`` (int16, read-only) in, ``out`` (int16, same length) filled."""
        self.periods += 1
        gap = device_status & DEVICE_GAP
        if gap:
            self.gap_periods += 1
        elif device_status & ~NOT_XRUNS:
            self.device_xruns += 1
        faded = False
        if self._flush_seen != self._flush_requests:
            wanted = self._flush_requests
            if device_status & FADE_FLUSH and not gap and not self._hangup:
                self._flush_fade(out, self.playback.read_into)
                faded = True
            # The count first: the control thread reads it once it sees the request done.
            self.last_flush_dropped = self.playback.flush()
            self._flush_seen = wanted
        elif not gap and not self._hangup and self.playback.flush_pending():
            # The agent's barge-in (its SDK's ``interrupt``, a flush of the ring it
            # writes): what it cuts off fades out instead of stopping dead, and the device
            # that can fades what it already holds, right after this period's write.
            self._flush_fade(out, self.playback.read_flushed_into)
            faded = True
            self.agent_flushes += 1
            if self.on_agent_flush is not None:
                self.on_agent_flush()

        if gap:
            # Nothing played during a device gap: keep the agent's audio for when the
            # device is back, and record silence so the channels keep wall time.
            out[:] = 0
            if self._hangup:
                self.playback.flush()
        elif self._hangup:
            if not self.silent:
                start = time.monotonic()
                if self._fade_out(out):
                    self.silent = True
                    self.first_silent_at = start
                    self.playback.flush()
            else:
                out[:] = 0
                self.playback.flush()
        elif not faded:
            self.playback.read_into(out)

        echo = self.echo
        if echo is None:
            self.capture.write(mic)
        else:
            echo.feed(mic, out)
        recorder = self.recorder
        if recorder is not None:
            recorder.feed(mic, out)
        self._last_mic, self._last_out = mic, out

    def _flush_fade(self, out: np.ndarray, read: Callable[[np.ndarray], int]) -> None:
        """A barge-in period that fades what the barge-in cuts off: the ring's next audio
        (``read``) through the whole fade curve (a shorter whole curve when the period is
        shorter than the fade), ending at exact zero, then zeros. The rest is dropped (by
        ``read``, or by the caller)."""
        self._faded_read(out, self._fades[min(len(out), len(self._fade)) - 1], read)

    def _faded_read(self, out: np.ndarray, gains: np.ndarray,
                    read: Callable[[np.ndarray], int]) -> None:
        """``out[:len(gains)]`` read by ``read`` and multiplied by ``gains``, the rest zeros
        (no allocation: the products go through ``_fade_buf``)."""
        n = len(gains)
        if read(out[:n]):
            buf = self._fade_buf[:n]
            np.multiply(out[:n], gains, out=buf)
            np.rint(buf, out=buf)
            out[:n] = buf
        out[n:] = 0

    def _fade_out(self, out: np.ndarray) -> bool:
        """A hangup period: the next frames of the fade over what the ring holds, then zeros.

        The fade may span several periods (it continues where the last period
        left it). Returns True in the period where it reached zero.
        """
        pos = self._fade_pos
        n = min(len(self._fade) - pos, len(out))
        self._faded_read(out, self._fade[pos : pos + n], self.playback.read_into)
        self._fade_pos = pos + n
        return self._fade_pos >= len(self._fade)
