"""Call recording: both sides, sample-aligned, to a stereo 16-bit WAV.

Left channel: the microphone as captured (raw). Right channel: exactly what
was sent to the speaker. The device callback hands each period to
``CallRecorder.feed`` (no lock, no allocation: an interleaving copy into a
preallocated buffer and a ring write); a writer thread drains the ring to a
``GrowingWav`` every ``flush_interval`` seconds, so a killed process leaves a
valid file up to the last flush.
"""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np

from callctl.engine.ring import SAMPLE_RATE, AudioRing, next_power_of_two
from callctl.engine.threads import name_os_thread
from callctl.engine.wavfile import GrowingWav


class CallRecorder:
    """Records one call. Created and closed by the control thread; fed by the callback.

    ``feed`` is the only method the device callback may call. ``close`` drains
    what is left, finalises the file and returns its path; it may block for
    up to one flush interval plus the disk write.
    """

    def __init__(
        self,
        path: str | Path,
        max_period_frames: int,
        flush_interval: float = 0.25,
        rate: int = SAMPLE_RATE,
        ring_name: str | None = None,
    ) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.flush_interval = flush_interval
        self.error: str | None = None
        # Four seconds of stereo slack: the writer drains four times a second.
        # Named by the audio process after its rings, so a parent that outlives it
        # finds this segment too (``engine.audio_child.unlink_rings``).
        self._ring = AudioRing.create(next_power_of_two(2 * rate * 4), ring_name)
        self._frame = np.zeros(2 * max_period_frames, np.int16)
        self._dropped = 0
        self._wav: GrowingWav | None = None
        try:
            self._wav = GrowingWav(self.path, rate, channels=2)
        except OSError as exc:  # no space, no permission: the call goes on unrecorded
            self.error = f"recording not started: {exc.strerror or exc}"
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._drain_loop, name="recorder", daemon=True)
        self._thread.start()

    @property
    def frames(self) -> int:
        """Stereo frames written to disk so far."""
        return self._wav.frames if self._wav else 0

    def feed(self, mic: np.ndarray, speaker: np.ndarray) -> None:
        """Queue one period (callback thread only): int16 ``mic`` and ``speaker``, same length."""
        n = len(mic)
        buf = self._frame[: 2 * n]
        buf[0::2] = mic
        buf[1::2] = speaker
        if self._ring.write(buf) < len(buf):
            self._dropped += 1  # the disk fell behind by seconds; the call goes on

    def _drain_loop(self) -> None:
        name_os_thread()
        chunk = np.zeros(self._ring.capacity, np.int16)
        while True:
            stopping = self._stop.wait(self.flush_interval)
            n = self._ring.read_available_into(chunk)
            n -= n % 2
            if n and self.error is None and self._wav is not None:
                try:
                    self._wav.append(chunk[:n])
                except OSError as exc:  # disk full and friends: stop recording, keep the call
                    self.error = f"recording stopped: {exc.strerror or exc}"
            if stopping:
                return

    def close(self) -> Path:
        """Stop feeding first (the caller's job), then finalise. Returns the WAV path."""
        self._stop.set()
        self._thread.join(timeout=10)
        try:
            if self._wav is not None:
                self._wav.close()
        except OSError as exc:
            self.error = self.error or f"recording not finalised: {exc.strerror or exc}"
        self._ring.close()
        self._ring.unlink()
        return self.path
