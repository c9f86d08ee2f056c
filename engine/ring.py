"""Single-producer, single-consumer ring buffer of int16 mono PCM in shared memory.

``AudioRing`` is the one data path between processes: the agent process writes
the *playback* ring and the device callback reads it; the device callback
writes the *capture* ring and the agent process reads it.

Layout of the shared segment (all little-endian, 8-byte aligned)::

    header: 8 x uint64
      [0] write_index   frames ever written           (producer stores)
      [1] read_index    frames ever consumed           (consumer stores)
      [2] flush_seq     flushes requested by producer  (producer stores)
      [3] flush_mark    write_index at that request    (producer stores)
      [4] flush_done    last flush_seq honoured        (consumer stores)
      [5] underruns     short reads                    (consumer stores)
      [6] overruns      writes that did not fit whole  (producer stores)
      [7] capacity      frames, a power of two         (creator stores, once)
    data: capacity x int16

Indices only grow (64 bits never wrap in practice), so ``write - read`` tells
full from empty without wasting a slot; ``index & (capacity - 1)`` is the slot.

Contracts
---------
* Exactly one producer and one consumer, and they never swap roles. Each
  header word has exactly one storing side, so no lock is needed anywhere.
* The producer copies samples *before* it publishes the new ``write_index``;
  the consumer reads ``write_index`` before it copies. On x86-64 (TSO) and
  under CPython, where each numpy store is a call that completes before the
  next, this ordering is what readers observe.
* Flushes are done by the **consumer**, never by a third party:
  ``request_flush()`` (producer side) publishes a mark and bumps a sequence
  number; the consumer honours it at its next read by dropping everything
  before the mark and zeroing it. Anything written after the request lies
  after the mark and plays. A third party (e.g. the audio process's control
  thread) asks the consumer through its own in-process flag and the consumer
  calls ``flush()`` itself.
* ``read_into`` and ``write`` never block and never allocate: they copy with
  numpy slices into preallocated memory. They are safe to call from a
  PortAudio callback.
* The creator (``AudioRing.create``) owns the segment and must ``unlink()``
  it; use the ring as a context manager, which unlinks on exit and on errors.
  Attachers (``AudioRing.attach``) only ``close()``.
"""

from __future__ import annotations

import secrets
import threading
from multiprocessing import resource_tracker, shared_memory
from types import TracebackType

import numpy as np

_HEADER_WORDS = 8
_HEADER_BYTES = _HEADER_WORDS * 8
_W, _R, _FSEQ, _FMARK, _FDONE, _UNDER, _OVER, _CAP = range(_HEADER_WORDS)

_untracked = threading.Lock()

SAMPLE_RATE = 16_000
"""Rate of every ring, in frames per second (the agent's rate)."""

CAPTURE_CHUNK_FRAMES = SAMPLE_RATE // 10
"""The agent takes the capture ring in chunks of this many frames (100 ms;
``engine.ring_audio``); the echo canceller on the device's thread writes it in batches
of the same size (``engine.echo.InlineEcho``), so a chunk is whole the moment a batch is."""


class AudioRing:
    """A shared-memory SPSC ring of int16 mono frames. See the module docstring."""

    def __init__(self, shm: shared_memory.SharedMemory, owner: bool) -> None:
        self._shm = shm
        self.owner = owner
        self.name = shm.name
        self._header: np.ndarray = np.ndarray((_HEADER_WORDS,), np.uint64, shm.buf, 0)
        capacity = int(self._header[_CAP])
        self._data: np.ndarray = np.ndarray((capacity,), np.int16, shm.buf, _HEADER_BYTES)
        self.capacity = capacity
        self._mask = capacity - 1

    # -- lifecycle ------------------------------------------------------------

    @classmethod
    def create(cls, capacity: int, name: str | None = None) -> AudioRing:
        """Create a ring of ``capacity`` frames (a power of two); the caller owns it."""
        if capacity < 2 or capacity & (capacity - 1):
            raise ValueError(f"ring capacity must be a power of two >= 2, got {capacity}")
        name = name or f"callctl-{secrets.token_hex(6)}"
        shm = shared_memory.SharedMemory(name, create=True, size=_HEADER_BYTES + 2 * capacity)
        try:
            header = np.ndarray((_HEADER_WORDS,), np.uint64, shm.buf, 0)
            header[:] = 0
            header[_CAP] = capacity
            del header
            np.ndarray((capacity,), np.int16, shm.buf, _HEADER_BYTES)[:] = 0
            return cls(shm, owner=True)
        except BaseException:
            shm.close()
            shm.unlink()
            raise

    @classmethod
    def attach(cls, name: str) -> AudioRing:
        """Attach to a ring another process created. The attacher never unlinks it."""
        # Python < 3.13 registers attached segments with the resource tracker,
        # which would unlink the owner's segment when this process exits (and a
        # later unregister confuses a tracker shared with the owner).
        with _untracked:
            register = resource_tracker.register
            resource_tracker.register = lambda name, rtype: None
            try:
                shm = shared_memory.SharedMemory(name, create=False)
            finally:
                resource_tracker.register = register
        return cls(shm, owner=False)

    def close(self) -> None:
        """Drop this process's mapping. Views into the ring become invalid."""
        self._header = np.zeros(_HEADER_WORDS, np.uint64)
        self._data = np.zeros(0, np.int16)
        try:
            self._shm.close()
        except BufferError:
            pass  # a numpy view still alive somewhere; the mapping goes with the process

    def unlink(self) -> None:
        """Remove the segment's name (owner only). Safe to call twice."""
        if not self.owner:
            return
        try:
            self._shm.unlink()
        except FileNotFoundError:
            pass
        self.owner = False

    def __enter__(self) -> AudioRing:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        owner = self.owner
        self.close()
        if owner:
            self.owner = True
            self.unlink()

    # -- both sides -----------------------------------------------------------

    def available(self) -> int:
        """Frames queued for the consumer (not counting a pending flush)."""
        return int(self._header[_W]) - int(self._header[_R])

    def free(self) -> int:
        """Frames the producer can write now without overrunning."""
        return self.capacity - self.available()

    @property
    def write_index(self) -> int:
        """Frames ever written (grows forever)."""
        return int(self._header[_W])

    @property
    def read_index(self) -> int:
        """Frames ever consumed or dropped (grows forever)."""
        return int(self._header[_R])

    @property
    def underruns(self) -> int:
        """Reads that found fewer frames than asked (padded with silence)."""
        return int(self._header[_UNDER])

    @property
    def overruns(self) -> int:
        """Writes that did not fit whole (the excess was refused)."""
        return int(self._header[_OVER])

    # -- producer -------------------------------------------------------------

    def write(self, samples: np.ndarray) -> int:
        """Append as many of ``samples`` (int16 mono) as fit; return the frame count.

        Producer only. Never blocks: what does not fit is refused and counted as
        an overrun; the caller keeps it and retries when ``free()`` grows.
        """
        header = self._header
        w = int(header[_W])
        space = self.capacity - (w - int(header[_R]))
        n = min(len(samples), space)
        if n < len(samples):
            header[_OVER] += 1
        if n <= 0:
            return 0
        start = w & self._mask
        first = min(n, self.capacity - start)
        self._data[start : start + first] = samples[:first]
        if n > first:
            self._data[: n - first] = samples[first:n]
        header[_W] = w + n  # publish only after the samples are in place
        return n

    def request_flush(self) -> None:
        """Producer side of a flush: everything written so far must never play.

        The consumer drops it at its next read. Writes after this call play.
        """
        header = self._header
        header[_FMARK] = header[_W]
        header[_FSEQ] = header[_FSEQ] + 1  # published after the mark

    # -- consumer -------------------------------------------------------------

    def flush(self) -> int:
        """Consumer side: drop and zero everything queued now. Returns frames dropped."""
        return self._drop_until(int(self._header[_W]))

    def _drop_until(self, mark: int) -> int:
        header = self._header
        r = int(header[_R])
        n = mark - r
        if n <= 0:
            return 0
        n = min(n, self.capacity)
        start = r & self._mask
        first = min(n, self.capacity - start)
        self._data[start : start + first] = 0
        if n > first:
            self._data[: n - first] = 0
        header[_R] = mark
        return n

    def flush_pending(self) -> bool:
        """Consumer side: whether the producer asked for a flush the consumer has not yet
        honoured (``request_flush``; the next read will drop)."""
        header = self._header
        return bool(header[_FSEQ] != header[_FDONE])

    def read_flushed_into(self, out: np.ndarray) -> int:
        """Consumer side, with a flush pending (``flush_pending``): fill ``out`` with the
        oldest of the frames the flush drops (zero-padded), then honour the flush: the
        rest of them are dropped, frames written after it stay. Returns how many frames
        were real audio. For a consumer that fades what a barge-in cuts off instead of
        stopping it dead (``DuplexCallback``). Never blocks, never allocates."""
        header = self._header
        seq = header[_FSEQ]
        n = 0
        if seq != header[_FDONE]:
            r = int(header[_R])
            n = max(0, min(len(out), int(header[_FMARK]) - r))
            if n:
                start = r & self._mask
                first = min(n, self.capacity - start)
                out[:first] = self._data[start : start + first]
                if n > first:
                    out[first:n] = self._data[: n - first]
            self._drop_until(int(header[_FMARK]))
            header[_FDONE] = seq
        out[n:] = 0
        return n

    def _honour_flush_request(self) -> None:
        header = self._header
        seq = header[_FSEQ]
        if seq != header[_FDONE]:
            self._drop_until(int(header[_FMARK]))
            header[_FDONE] = seq

    def read_into(self, out: np.ndarray) -> int:
        """Fill ``out`` (int16, any length) with the oldest queued frames.

        Consumer only. Returns how many frames were real audio; the rest of
        ``out`` is zero-filled. A read that ran out part-way (some audio, then
        padding) counts as an underrun; an empty ring is just silence. Honours
        a producer's pending flush first. Never blocks, never allocates.
        """
        self._honour_flush_request()
        header = self._header
        r = int(header[_R])
        n = min(len(out), int(header[_W]) - r)
        if n > 0:
            start = r & self._mask
            first = min(n, self.capacity - start)
            out[:first] = self._data[start : start + first]
            if n > first:
                out[first:n] = self._data[: n - first]
            header[_R] = r + n
        else:
            n = 0
        if n < len(out):
            out[n:] = 0
            if n:
                header[_UNDER] += 1
        return n

    def read_available_into(self, out: np.ndarray) -> int:
        """Like ``read_into`` but never pads: copies at most ``available()`` frames.

        For consumers that poll (the agent's input thread) rather than being
        clocked (the device callback); a short read is not an underrun.
        """
        self._honour_flush_request()
        n = min(len(out), self.available())
        if n <= 0:
            return 0
        return self.read_into(out[:n])


def next_power_of_two(frames: int) -> int:
    """Smallest power of two >= ``frames`` (at least 2)."""
    return max(2, 1 << (max(frames, 1) - 1).bit_length())
