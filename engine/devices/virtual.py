"""A clocked, file-backed audio device with the same callback contract as PortAudio.

The microphone plays a WAV file (then silence); the speaker is written to a
WAV file. A thread keeps real time with absolute deadlines (no drift): period
``n`` is produced at ``t0 + n * period / rate`` and is taken to *play* from
that moment. While the stream is stopped the speaker file receives silence,
so the speaker file is one continuous timeline from ``t0``; the sidecar
``<speaker>.json`` records ``t0`` (``time.monotonic()``, seconds) and the rate,
which is how an observer maps a speaker sample index to a time.

An optional echo path (``echo=(delay_s, gain_db[, lowpass_hz])``, see
``EchoPath``) adds what the speaker played, delayed, attenuated and optionally
low-pass filtered, to the microphone, as a laptop's speakers would.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from callctl.engine.bridge import PeriodHandler
from callctl.engine.ring import SAMPLE_RATE
from callctl.engine.threads import name_os_thread
from callctl.engine.wavfile import GrowingWav, read_mono_16k

ECHO_FILTER_TAPS = 63
"""Length of the echo path's low-pass FIR (windowed sinc), samples: 3.9 ms at 16 kHz."""


def lowpass_fir(cutoff_hz: float, rate: int, taps: int = ECHO_FILTER_TAPS) -> np.ndarray:
    """A linear-phase low-pass FIR (Hamming-windowed sinc, unit DC gain, float64).

    ``taps`` is odd; its group delay is ``(taps - 1) // 2`` samples.
    """
    n = np.arange(taps) - (taps - 1) / 2
    h = np.sinc(2 * cutoff_hz / rate * n) * np.hamming(taps)
    return np.asarray(h / h.sum(), np.float64)


class EchoPath:
    """Loudspeaker → room → microphone, in whole periods (one thread: the device clock).

    What was played comes back ``delay_s`` later (at least one period, as a
    period is played only after its microphone samples were handed over),
    scaled by ``gain_db`` and, with ``lowpass_hz``, low-pass filtered (the
    FIR's group delay is taken out of the delay, so the echo's main peak
    lands at ``delay_s`` whenever that is at least a period plus the group
    delay). Without a filter it is an exact delay and gain:
    ``echo[n] = gain * played[n - delay]``.

    Per period: ``echo(n)`` gives the echo to add to the next ``n`` microphone
    samples, then ``played(samples)`` records what the speaker played in it.
    """

    def __init__(
        self,
        delay_s: float,
        gain_db: float,
        lowpass_hz: float | None = None,
        rate: int = SAMPLE_RATE,
        period_frames: int = 160,
    ) -> None:
        self.rate = rate
        self.period = period_frames
        self.gain = 10 ** (gain_db / 20)
        self.fir = (lowpass_fir(lowpass_hz, rate) if lowpass_hz
                    else np.ones(1, np.float64))
        group_delay = (len(self.fir) - 1) // 2
        # The FIR reads played samples up to ``delay`` back: they exist only if delay >= period.
        self.delay = max(round(delay_s * rate) - group_delay, period_frames)
        """Samples between a played sample and its echo's first FIR tap."""
        self._taps = self.fir * self.gain
        # History of played samples: x[T - delay - taps + 1 .. T - 1] for the period at T.
        self._line = np.zeros(self.delay + len(self.fir) - 1, np.float64)

    @property
    def delay_s(self) -> float:
        """Delay of the echo's main peak, in seconds."""
        return (self.delay + (len(self.fir) - 1) // 2) / self.rate

    def echo(self, n: int) -> np.ndarray:
        """The echo for the next ``n`` (<= delay) microphone samples, float64."""
        segment = self._line[: len(self.fir) - 1 + n]
        # valid-mode convolution: out[i] = sum_k taps[k] * x[T + i - delay - k]
        return np.convolve(segment, self._taps, mode="valid")

    def played(self, samples: np.ndarray) -> None:
        """Record the period the speaker just played (same ``n`` as ``echo``)."""
        n = len(samples)
        line = self._line
        line[:-n] = line[n:]
        line[-n:] = samples

    def run(self, played: np.ndarray, near: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Offline, for tests and benchmarks: the whole ``played`` signal through the path,
        period by period exactly as the device does, added to ``near`` (the caller).

        Both int16 and of the same length (a whole number of periods).
        Returns (microphone int16, echo float64).
        """
        if len(played) != len(near) or len(played) % self.period:
            raise ValueError("played and near: same length, a whole number of periods")
        mic = np.zeros(len(near), np.int16)
        echo = np.zeros(len(near), np.float64)
        for start in range(0, len(near), self.period):
            end = start + self.period
            echo[start:end] = self.echo(self.period)
            mic[start:end] = np.clip(np.rint(near[start:end] + echo[start:end]), -32768, 32767)
            self.played(played[start:end])
        return mic, echo

    def add_to(self, mic: np.ndarray) -> np.ndarray:
        """``mic`` (int16) plus the echo, rounded and clipped to int16 (a new array)."""
        mixed = mic.astype(np.float64) + self.echo(len(mic))
        return np.clip(np.rint(mixed), -32768, 32767).astype(np.int16)


class VirtualDevice:
    """See module docstring. ``mic``/``speaker`` are WAV paths; either may be None."""

    backend = "virtual"
    cuts_at_device = False
    handler_may_wait = False
    input_latency = 0.0

    def __init__(
        self,
        mic: str | Path | None = None,
        speaker: str | Path | None = None,
        rate: int = SAMPLE_RATE,
        period_frames: int = 160,
        echo: tuple[float, float] | tuple[float, float, float | None] | None = None,
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
        self.echo_path: EchoPath | None = None
        if echo is not None:
            lowpass = echo[2] if len(echo) > 2 else None
            self.echo_path = EchoPath(echo[0], echo[1], lowpass, rate, period_frames)
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

    def fade_stop(self, timeout: float) -> float | None:
        """Not a cutting device: the handler fades; this only stops."""
        self.stop()
        return None

    def status(self) -> dict[str, Any]:
        return {}

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
        name_os_thread()
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
                    if self.echo_path is not None:
                        mic = self.echo_path.add_to(mic)
                    handler(mic, out, 0)
                    played = out.copy()
                else:
                    played = np.zeros(period, np.int16)
            if self.echo_path is not None:
                self.echo_path.played(played)
            pending.append(played)
            if self._speaker and len(pending) * period >= self.rate // 10:
                self._speaker.append(np.concatenate(pending))
                pending.clear()
        if self._speaker and pending:
            self._speaker.append(np.concatenate(pending))
