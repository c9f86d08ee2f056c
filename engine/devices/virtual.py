"""A clocked, file-backed audio device with the same callback contract as PortAudio.

The microphone plays a WAV file (then silence); the speaker is written to a
WAV file. A thread keeps real time with absolute deadlines (no drift): period
``n`` is produced at ``t0 + n * period / rate`` and is taken to *play* from
that moment. While the stream is stopped the speaker file receives silence,
so the speaker file is one continuous timeline from ``t0``; the sidecar
``<speaker>.json`` records ``t0`` (``time.monotonic()``, seconds) and the rate,
which is how an observer maps a speaker sample index to a time.

An optional echo path (``echo=(delay_s, gain_db)``) adds what the speaker
played, delayed and attenuated, to the microphone, as a laptop's speakers
would.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import numpy as np

from engine.bridge import PeriodHandler
from engine.ring import SAMPLE_RATE
from engine.wavfile import GrowingWav, read_mono_16k


class VirtualDevice:
    """See module docstring. ``mic``/``speaker`` are WAV paths; either may be None."""

    def __init__(
        self,
        mic: str | Path | None = None,
        speaker: str | Path | None = None,
        rate: int = SAMPLE_RATE,
        period_frames: int = 160,
        echo: tuple[float, float] | None = None,
    ) -> None:
        self.rate = rate
        self.period_frames = period_frames
        self.name = "virtual"
        self.output_latency = 0.0  # a period plays from the moment it is produced
        self._mic = read_mono_16k(mic, rate) if mic else np.zeros(0, np.int16)
        self._mic_pos = 0
        self._handler: PeriodHandler | None = None
        self._running = False
        self._in_period = threading.Lock()  # held by the clock thread around each handler call
        self._closed = threading.Event()
        self._speaker: GrowingWav | None = None
        self.speaker_path = Path(speaker) if speaker else None
        # The echo path works in whole periods of history, so it is at least one period long.
        self._echo_delay = max(round(echo[0] * rate), period_frames) if echo else 0
        self._echo_gain = 10 ** (echo[1] / 20) if echo else 0.0
        self._echo_line = np.zeros(self._echo_delay + period_frames, np.int16)
        self.t0 = time.monotonic()
        if self.speaker_path:
            self._speaker = GrowingWav(self.speaker_path, rate, channels=1)
            sidecar = {"start_monotonic": self.t0, "rate": rate, "period_frames": period_frames}
            self.speaker_path.with_suffix(self.speaker_path.suffix + ".json").write_text(
                json.dumps(sidecar)
            )
        self._thread = threading.Thread(target=self._clock, name="virtual-device", daemon=True)
        self._thread.start()

    @property
    def running(self) -> bool:
        return self._running

    def set_handler(self, handler: PeriodHandler) -> None:
        self._handler = handler

    def start(self) -> None:
        self._running = True

    def stop(self) -> None:
        self._running = False
        with self._in_period:  # a period in progress finishes before we return
            pass

    def close(self) -> None:
        self.stop()
        self._closed.set()
        self._thread.join(timeout=2)
        if self._speaker:
            self._speaker.close()

    def _next_mic(self, n: int) -> np.ndarray:
        chunk = np.zeros(n, np.int16)
        part = self._mic[self._mic_pos : self._mic_pos + n]
        chunk[: len(part)] = part
        self._mic_pos += len(part)
        return chunk

    def _clock(self) -> None:
        period = self.period_frames
        out = np.zeros(period, np.int16)
        pending: list[np.ndarray] = []
        n = 0
        while not self._closed.is_set():
            deadline = self.t0 + n * period / self.rate  # period n plays from here
            n += 1
            delay = deadline - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            with self._in_period:
                handler = self._handler
                if self._running and handler is not None:
                    mic = self._next_mic(period)
                    if self._echo_delay:
                        echo = self._echo_line[period : 2 * period] * self._echo_gain
                        mic = np.clip(mic + echo, -32768, 32767).astype(np.int16)
                    handler(mic, out, 0)
                    played = out.copy()
                else:
                    played = np.zeros(period, np.int16)
            if self._echo_delay:
                line = self._echo_line
                line[:-period] = line[period:]
                line[-period:] = played
            pending.append(played)
            if self._speaker and len(pending) * period >= self.rate // 10:
                self._speaker.append(np.concatenate(pending))
                pending.clear()
        if self._speaker and pending:
            self._speaker.append(np.concatenate(pending))
