"""``RingAudioInterface``: the elevenlabs SDK's ``AudioInterface`` over the shared rings.

The SDK calls ``output`` and ``interrupt`` from its websocket receive thread,
``start``/``stop`` from whichever thread starts or ends the session — and
``stop`` possibly from our own input thread, when a send fails inside the
input callback. So:

* ``output`` never blocks: it writes what fits into the playback ring and
  keeps the rest in ``pending`` (this process's memory); a feeder thread moves
  pending audio into the ring as the device consumes it.
* ``interrupt`` (barge-in) drops ``pending`` and requests a ring flush; the
  device callback, the ring's reader, honours it at its next period. A write
  that follows the interrupt lies after the flush mark and plays; nothing
  queued before it ever does.
* ``stop`` signals the threads and joins them with a bound, and never joins
  the thread that called it.

The ring has one producer: ``output``, ``interrupt`` and the feeder take
``_producer_lock`` (a lock in this process; the device callback, in the
audio process, takes none).

Input chunks are ``INPUT_CHUNK_FRAMES`` = 1600 frames (100 ms at 16 kHz,
3200 bytes, ~4.3 KB as base64 JSON). Smaller chunks cut the latency the
service sees for end-of-turn and barge-in (a chunk waits until full) but
multiply messages: 100 ms gives 10 messages a second, against the SDK's own
250 ms (4 a second, up to 250 ms of added latency).
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable

import numpy as np
from elevenlabs.conversational_ai.conversation import AudioInterface

from callctl.engine.ring import CAPTURE_CHUNK_FRAMES, SAMPLE_RATE, AudioRing

INPUT_CHUNK_FRAMES = CAPTURE_CHUNK_FRAMES
FEED_INTERVAL = 0.010
"""How often the feeder tops up the ring from ``pending``, seconds."""
THREAD_JOIN_TIMEOUT = 1.0


class RingAudioInterface(AudioInterface):
    """See module docstring. The caller owns the rings (attached, not created here)."""

    def __init__(
        self,
        playback: AudioRing,
        capture: AudioRing,
        chunk_frames: int = INPUT_CHUNK_FRAMES,
        on_interrupt: Callable[[int], None] | None = None,
    ) -> None:
        self.playback = playback
        self.capture = capture
        self.chunk_frames = chunk_frames
        self.on_interrupt = on_interrupt
        self.pending: deque[np.ndarray] = deque()
        self.frames_out = 0
        self.interrupts = 0
        self._producer_lock = threading.Lock()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    # -- the SDK's AudioInterface ----------------------------------------------

    def start(self, input_callback: Callable[[bytes], None]) -> None:
        self._stop.clear()
        self.capture.flush()  # only what the caller says from now on
        self._threads = [
            threading.Thread(target=self._input_loop, args=(input_callback,),
                             name="ring-input", daemon=True),
            threading.Thread(target=self._feed_loop, name="ring-feeder", daemon=True),
        ]
        for thread in self._threads:
            thread.start()

    def stop(self) -> None:
        self._stop.set()
        me = threading.current_thread()
        for thread in self._threads:
            if thread is not me:
                thread.join(THREAD_JOIN_TIMEOUT)

    def output(self, audio: bytes) -> None:
        samples = np.frombuffer(audio[: len(audio) - len(audio) % 2], dtype="<i2")
        if not len(samples):
            return
        with self._producer_lock:
            self.frames_out += len(samples)
            if not self.pending:
                written = self.playback.write(samples)
                samples = samples[written:]
            if len(samples):
                self.pending.append(samples.copy())

    def interrupt(self) -> None:
        with self._producer_lock:
            dropped = sum(len(p) for p in self.pending) + self.playback.available()
            self.pending.clear()
            self.playback.request_flush()
            self.interrupts += 1
        if self.on_interrupt is not None:
            self.on_interrupt(dropped)

    # -- threads ----------------------------------------------------------------

    def pending_frames(self) -> int:
        with self._producer_lock:
            return sum(len(p) for p in self.pending)

    def _feed_loop(self) -> None:
        while not self._stop.wait(FEED_INTERVAL):
            with self._producer_lock:
                while self.pending:
                    head = self.pending[0]
                    written = self.playback.write(head)
                    if written < len(head):
                        self.pending[0] = head[written:]
                        break
                    self.pending.popleft()

    def _input_loop(self, input_callback: Callable[[bytes], None]) -> None:
        chunk = np.zeros(self.chunk_frames, np.int16)
        filled = 0
        period = self.chunk_frames / SAMPLE_RATE / 4
        while not self._stop.is_set():
            filled += self.capture.read_available_into(chunk[filled:])
            if filled < len(chunk):
                self._stop.wait(period)
                continue
            filled = 0
            input_callback(chunk.tobytes())
