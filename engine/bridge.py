"""Between a device period and the 16 kHz ``DuplexCallback``: resampling when needed.

A device that runs at the rings' rate is passed straight through. Otherwise
the microphone is resampled down (streaming soxr, cubic quality), the callback runs on the
resulting 16 kHz chunk, and the speaker side is resampled back up through a
small FIFO primed with one period of silence, which absorbs the ±1-frame
jitter of the rate conversion (so one extra period of output latency).

Runs on the audio thread: no locks. soxr's streaming calls allocate small
arrays; that cost exists only when the device does not run at 16 kHz.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from callctl.engine.ring import SAMPLE_RATE

PeriodHandler = Callable[[np.ndarray, np.ndarray, int], None]
"""``handler(mic, out, device_status)``: int16 arrays at the device rate, ``out`` to fill.

``device_status`` is PortAudio's status flags (under/overflow, bits 0-4), or
``DEVICE_GAP``, or ``FADE_FLUSH``."""

DEVICE_GAP = 0x100
"""Status flag: this period stands for time the device did not run (its stream was lost
and has been reopened). ``mic`` is silence and ``out`` is discarded, so the handler must
not consume playback for it; it exists so that recordings stay aligned with wall time."""
FADE_FLUSH = 0x200
"""Status flag: a barge-in flush is pending and the device found too little audio queued
to fade in its own queue (the native backend's ``PulseDevice._defer``). The handler
writes this period as the agent's next audio faded to zero, not as silence, so what
the device holds continues into a fade; the device fades the whole queue after this
write. A device that never sets it keeps the handler's plain flush."""
NOT_XRUNS = DEVICE_GAP | FADE_FLUSH
"""Status flags that are not a device's under- or overflow."""


class RateBridge:
    """Adapts ``process(mic16k, out16k, status)`` to a device at ``device_rate`` Hz."""

    def __init__(self, process: PeriodHandler, device_rate: int, max_period_frames: int) -> None:
        self.process = process
        self.device_rate = device_rate
        self.passthrough = device_rate == SAMPLE_RATE
        if self.passthrough:
            return
        import soxr

        # soxr's "quick" (cubic) quality answers every chunk at once; its
        # higher qualities buffer internally and release output only every
        # few periods, which would add tens of milliseconds of latency.
        self._down = soxr.ResampleStream(device_rate, SAMPLE_RATE, 1, dtype="int16", quality="QQ")
        self._up = soxr.ResampleStream(SAMPLE_RATE, device_rate, 1, dtype="int16", quality="QQ")
        core_max = max_period_frames * SAMPLE_RATE // device_rate + 64
        self._core_out = np.zeros(core_max, np.int16)
        self._fifo = np.zeros(4 * max_period_frames + 64, np.int16)
        self._fifo_len = max_period_frames  # primed with one period of silence

    def __call__(self, mic: np.ndarray, out: np.ndarray, status: int) -> None:
        if self.passthrough:
            self.process(mic, out, status)
            return
        mic16 = self._down.resample_chunk(mic)
        n = len(mic16)
        core_out = self._core_out[:n]
        self.process(mic16, core_out, status)
        up = self._up.resample_chunk(core_out)
        room = len(self._fifo) - self._fifo_len
        up = up[:room]
        self._fifo[self._fifo_len : self._fifo_len + len(up)] = up
        self._fifo_len += len(up)
        m = min(len(out), self._fifo_len)
        out[:m] = self._fifo[:m]
        out[m:] = 0
        self._fifo[: self._fifo_len - m] = self._fifo[m : self._fifo_len]
        self._fifo_len -= m
