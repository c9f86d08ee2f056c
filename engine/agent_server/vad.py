"""Energy voice-activity detection with onset and hangover, on a stream of int16 audio.

The stream is cut into 20 ms frames. A frame whose RMS level is above the
threshold (dBFS, 0 dB = full-scale square wave) is *voiced*. An utterance
starts at its first voiced frame once ``min_speech_s`` of voiced frames have
been seen within it (short clicks are ignored), and ends when ``hangover_s`` of
unvoiced frames follow its last voiced frame. Gaps shorter than the hangover
(between words) stay inside the utterance.

Time is stream time: seconds of audio fed so far, not wall-clock time.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .wire import SAMPLE_RATE

FRAME_S = 0.02
FRAME_SAMPLES = int(SAMPLE_RATE * FRAME_S)


@dataclass(frozen=True)
class SpeechStart:
    """An utterance began at ``at_s`` (stream seconds)."""

    at_s: float


@dataclass(frozen=True)
class SpeechEnd:
    """An utterance of ``duration_s`` seconds (first to last voiced frame) ended at ``at_s``."""

    at_s: float
    duration_s: float


VadEvent = SpeechStart | SpeechEnd


def frame_dbfs(frame: np.ndarray) -> float:
    """RMS level of an int16 frame in dBFS (``-inf`` for digital silence)."""
    if frame.size == 0:
        return float("-inf")
    x = frame.astype(np.float64) / 32768.0
    power = float(np.mean(x * x))
    return 10.0 * np.log10(power) if power > 0.0 else float("-inf")


class EnergyVad:
    """Streaming energy VAD; feed it any number of samples at a time."""

    def __init__(
        self,
        threshold_dbfs: float = -40.0,
        min_speech_s: float = 0.1,
        hangover_s: float = 0.5,
    ) -> None:
        """Thresholds: level in dBFS, minimum utterance and hangover in seconds."""
        self.threshold_dbfs = threshold_dbfs
        self._min_frames = max(1, round(min_speech_s / FRAME_S))
        self._hangover_frames = max(1, round(hangover_s / FRAME_S))
        self._pending = np.zeros(0, dtype=np.int16)
        self._frames = 0  # frames processed so far
        self._first_voiced: int | None = None  # frame index of the candidate/utterance start
        self._last_voiced = 0  # frame index of the last voiced frame
        self._voiced_count = 0  # voiced frames in the candidate/utterance
        self._in_speech = False

    @property
    def in_speech(self) -> bool:
        """True while an utterance is in progress (started and not yet ended)."""
        return self._in_speech

    @property
    def now_s(self) -> float:
        """Stream time of the end of the last processed frame, in seconds."""
        return self._frames * FRAME_S

    @property
    def speech_s(self) -> float:
        """Length of the current utterance so far (first to last voiced frame), in seconds."""
        if not self._in_speech or self._first_voiced is None:
            return 0.0
        return (self._last_voiced - self._first_voiced + 1) * FRAME_S

    def feed(self, pcm: np.ndarray) -> list[VadEvent]:
        """Process int16 samples; return the events they completed, in order."""
        if pcm.size:
            buf = np.concatenate([self._pending, pcm.astype(np.int16, copy=False)])
        else:
            buf = self._pending
        events: list[VadEvent] = []
        n_frames = len(buf) // FRAME_SAMPLES
        for i in range(n_frames):
            frame = buf[i * FRAME_SAMPLES : (i + 1) * FRAME_SAMPLES]
            event = self._step(frame_dbfs(frame) > self.threshold_dbfs)
            if event is not None:
                events.append(event)
        self._pending = buf[n_frames * FRAME_SAMPLES :].copy()
        return events

    def _step(self, voiced: bool) -> VadEvent | None:
        index = self._frames
        self._frames += 1
        if voiced:
            if self._first_voiced is None:
                self._first_voiced = index
                self._voiced_count = 0
            self._last_voiced = index
            self._voiced_count += 1
            if not self._in_speech and self._voiced_count >= self._min_frames:
                self._in_speech = True
                return SpeechStart(self._first_voiced * FRAME_S)
            return None
        if self._first_voiced is None:
            return None
        if index - self._last_voiced >= self._hangover_frames:
            event: VadEvent | None = None
            if self._in_speech:
                duration = (self._last_voiced - self._first_voiced + 1) * FRAME_S
                event = SpeechEnd(self._frames * FRAME_S, duration)
            self._in_speech = False
            self._first_voiced = None
            self._voiced_count = 0
            return event
        return None
