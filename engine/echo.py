"""Acoustic echo cancellation on the capture path: the agent must not hear itself.

``EchoCanceller`` wraps WebRTC's audio processing module (AEC3 echo
cancellation and high-pass filter; noise suppression when asked), as LiveKit
ships it (``livekit.rtc.AudioProcessingModule``). It works on exact 10 ms frames
(``FRAME`` = 160 samples at 16 kHz, int16 mono): for each frame, first the
*reference* (far end: exactly what the device callback sent to the speaker)
through ``process_reverse_stream``, then the stream delay, then the
microphone (near end) through ``process_stream``, which is cancelled in place.

``EchoThread`` runs the canceller *beside* the device callback, never in it.
The CPU cost per frame would fit the callback's budget (about 70 µs median on
the development machine, see ``bench/echo.py``), but each APM call goes
through LiveKit's FFI: it serialises a protobuf message (allocates), takes
locks on the native side, and releases and re-takes the GIL, which can cost
up to ``sys.getswitchinterval()`` (5 ms) when another thread holds it. The
device callback takes no lock and never blocks, so instead:

* the callback calls ``EchoThread.feed(mic, out)``: the raw microphone and the
  speaker samples of the period, interleaved into an in-process SPSC
  ``AudioRing`` (a copy into preallocated memory; no lock, no allocation);
* the ``echo-canceller`` thread reads exact 10 ms frame pairs from that ring
  (whatever the device period: the ring is the buffer that cuts the stream
  into 160-sample frames), runs the canceller and writes the cancelled
  microphone into the capture ring, which it then produces instead of the
  callback. It polls every ``poll_s`` (10 ms, one frame; every ``idle_poll_s``,
  20 ms, once nothing has come for ``IDLE_AFTER_S``, as between calls), so it
  adds at most a frame to the capture path and never delays the callback: if it
  falls behind by more than the ring's second of slack, whole periods are
  dropped and counted (``dropped_periods``), never waited for.

Because each reference frame is handed to the APM right before the
microphone frame captured in the same period, the stream delay the APM wants
(render time − analysis time + processing time − capture time) is the
device's own latency: output latency plus input latency as PortAudio reports
them (0 for the virtual device, whose echo delay the engine cannot know).
AEC3's delay estimator finds the rest.

The recording keeps the raw microphone (the callback feeds the recorder);
the cancelled signal is only what the agent hears.

``InlineEcho`` is the other way to run it, for a device whose handler runs on
a thread of its own with time to spare (the native PulseAudio backend): in the
handler, a few frames at a time.

Noise suppression is off in ``EchoCanceller`` unless asked for, and the audio
process asks for it: in a call it is on unless ``--no-noise-suppression``. Echo
cancellation itself does not need it
(without it the residual echo stays below −58 dBFS, 18 dB under the local
agent's −40 dBFS voice threshold), it costs the caller about 1.5 dB, and it
takes steady tones for noise (−8 dB on a 1 kHz test tone from the first
frame, −12 dB after a second), hence the switch to turn it off.
"""

from __future__ import annotations

import ctypes
import threading
import time
from typing import Any

import numpy as np

from callctl.engine.ring import CAPTURE_CHUNK_FRAMES, SAMPLE_RATE, AudioRing
from callctl.engine.threads import name_os_thread

try:  # built with the package (setup.py); a checkout without the build runs frames in Python
    from callctl.engine import _echo_batch
except ImportError:  # a build without the extension: tests fail (test_echo.py), calls go on
    _echo_batch = None  # type: ignore[assignment]

FRAME = SAMPLE_RATE // 100
"""Samples in one APM frame: exactly 10 ms at 16 kHz."""

PAIR_RING_CAPACITY = 1 << 15
"""In-process ring between the callback and the canceller thread, int16 values:
16384 interleaved (mic, speaker) pairs, about 1 s at 16 kHz."""

INLINE_BATCH = CAPTURE_CHUNK_FRAMES // FRAME
"""10 ms frames ``InlineEcho`` cancels back to back: the agent's input chunk (100 ms,
``engine.ring.CAPTURE_CHUNK_FRAMES``), so the batch adds no wait to what the agent hears
(see ``InlineEcho``)."""

IDLE_AFTER_S = 0.5
"""With no frame for this long (seconds), the canceller thread polls at ``idle_poll_s``."""

_STATS_WINDOW = 1024
"""Frames whose processing times ``EchoThread.stats`` summarises (about 10 s)."""


class EchoUnavailable(RuntimeError):
    """The WebRTC audio processing module cannot be loaded; ``str()`` says why."""


class EchoCanceller:
    """WebRTC APM (AEC3 + high-pass filter, optionally noise suppression) on 10 ms frames.

    Not thread-safe: one thread calls ``process`` (the canceller thread in the
    audio process; the caller's thread in tests and the benchmark).
    ``stream_delay_ms``: the device's output plus input latency in ms (see
    the module docstring); AEC3 estimates whatever the device adds beyond it.
    """

    def __init__(
        self,
        stream_delay_ms: int = 0,
        noise_suppression: bool = False,
        high_pass_filter: bool = True,
    ) -> None:
        try:
            from livekit import rtc
        except Exception as exc:  # ImportError, or the native library failing to load
            raise EchoUnavailable(f"WebRTC audio processing unavailable: {exc}") from None
        self.stream_delay_ms = max(0, int(stream_delay_ms))
        self.noise_suppression = noise_suppression
        self._apm = rtc.AudioProcessingModule(
            echo_cancellation=True,
            noise_suppression=noise_suppression,
            high_pass_filter=high_pass_filter,
            auto_gain_control=False,
        )
        # The APM works in place on these buffers; the numpy views share their memory.
        self._near_bytes = bytearray(2 * FRAME)
        self._far_bytes = bytearray(2 * FRAME)
        self._near_frame = rtc.AudioFrame(self._near_bytes, SAMPLE_RATE, 1, FRAME)
        self._far_frame = rtc.AudioFrame(self._far_bytes, SAMPLE_RATE, 1, FRAME)
        self._near = np.frombuffer(self._near_bytes, np.int16)
        self._far = np.frombuffer(self._far_bytes, np.int16)
        self._direct = _DirectApm.build(self._apm, self._far_bytes, self._near_bytes,
                                        self.stream_delay_ms)
        """The same three requests, serialised once (``_DirectApm``); None: the public API."""

    def process(self, mic: np.ndarray, ref: np.ndarray) -> np.ndarray:
        """Cancel one 10 ms frame: ``mic`` and ``ref`` are int16, ``FRAME`` samples each.

        ``ref`` is what the speaker played in the same period as ``mic`` was
        captured. Returns the cancelled microphone frame: a view into an
        internal buffer, valid until the next call (copy it to keep it).
        """
        self._far[:] = ref
        self._near[:] = mic
        if self._direct is not None:
            self._direct.process()
            return self._near
        self._apm.process_reverse_stream(self._far_frame)
        self._apm.set_stream_delay_ms(self.stream_delay_ms)
        self._apm.process_stream(self._near_frame)
        return self._near

    def cancel_frames(self, mic: np.ndarray, ref: np.ndarray, out: np.ndarray,
                      cpu_us: np.ndarray, index: int) -> None:
        """Cancel whole frames in a row: ``mic``, ``ref`` and ``out`` are int16,
        C-contiguous, the same whole number of ``FRAME`` samples (``out`` may be ``mic``).
        Frame ``i``'s time (µs) goes to ``cpu_us[(index + i) % len(cpu_us)]`` (float64).
        Raises RuntimeError when the APM fails; ``out`` is then partly written.

        With the serialised requests (``_DirectApm``) the frames run in C
        (``engine/echo_batch.c``), the interpreter left once for all of them."""
        if self._direct is not None and self._direct.batch is not None:
            self._direct.cancel(mic, ref, out, cpu_us, index)
            return
        for i, start in enumerate(range(0, len(mic), FRAME)):
            began = time.perf_counter()
            end = start + FRAME
            out[start:end] = self.process(mic[start:end], ref[start:end])
            cpu_us[(index + i) % len(cpu_us)] = (time.perf_counter() - began) * 1e6

    def process_signal(self, mic: np.ndarray, ref: np.ndarray) -> np.ndarray:
        """Cancel whole signals (tests, benchmark): int16, same length; a trailing
        partial frame passes through unprocessed. Returns a new int16 array."""
        if len(mic) != len(ref):
            raise ValueError(f"mic and ref differ in length: {len(mic)} != {len(ref)}")
        out = np.array(mic, np.int16, copy=True)
        for start in range(0, len(mic) - FRAME + 1, FRAME):
            end = start + FRAME
            out[start:end] = self.process(mic[start:end], ref[start:end])
        return out


class _DirectApm:
    """The canceller's three FFI requests a frame, each serialised once.

    ``livekit.rtc.AudioProcessingModule`` builds a protobuf request, serialises
    it, parses the reply and frees a handle for every call: about 30 µs of
    Python a frame on the development machine, beside about 75 µs of WebRTC's
    own work (``bench/echo.py``). The requests never change (the same APM
    handle, the same two buffers at the same addresses, the same delay), so
    they are serialised here once and sent as they are; a reply that is not
    the empty "done" reply is parsed and raised as the public API would. It
    uses ``livekit.rtc`` internals (``FfiClient``, ``livekit_ffi_request``):
    ``build`` returns None when they are not what it expects, and the canceller
    uses the public API instead. The buffers must stay where they are (they are
    bytearrays with numpy views on them: they cannot be resized).
    """

    def __init__(self, ffi: Any, requests: list[tuple[bytes, bytes, str]],
                 far: bytearray, near: bytearray) -> None:
        self._request = ffi.livekit_ffi_request
        self._drop = ffi.livekit_ffi_drop_handle
        self._reply_ptr = ctypes.POINTER(ctypes.c_ubyte)()
        self._reply_len = ctypes.c_size_t()
        self._reply_args = (ctypes.byref(self._reply_ptr), ctypes.byref(self._reply_len))
        self._requests = [((ctypes.c_ubyte * len(raw)).from_buffer_copy(raw), len(raw), done, field)
                          for raw, done, field in requests]
        self._fields = [field for _, _, field in requests]
        self.batch: tuple[int, int, tuple[tuple[bytes, bytes], ...], int, int, int] | None = None
        """``cancel``'s fixed arguments for ``engine/echo_batch.c``; None: not built."""
        if _echo_batch is not None:
            self.batch = (
                _address(self._request), _address(self._drop),
                tuple((raw, done) for raw, done, _ in requests),
                ctypes.addressof(ctypes.c_char.from_buffer(far)),
                ctypes.addressof(ctypes.c_char.from_buffer(near)), FRAME)

    @classmethod
    def build(cls, apm: Any, far: bytearray, near: bytearray, delay_ms: int) -> _DirectApm | None:
        try:
            from livekit.rtc._ffi_client import FfiClient
            from livekit.rtc._proto import ffi_pb2
            from livekit.rtc._utils import get_address

            handle = apm._ffi_handle.handle
            requests = []
            for field, buf in (("apm_process_reverse_stream", far),
                               ("apm_set_stream_delay", None),
                               ("apm_process_stream", near)):
                req = ffi_pb2.FfiRequest()
                part = getattr(req, field)
                part.apm_handle = handle
                if buf is None:
                    part.delay_ms = delay_ms
                else:
                    part.data_ptr = get_address(buf)
                    part.size = len(buf)
                    part.sample_rate = SAMPLE_RATE
                    part.num_channels = 1
                done = ffi_pb2.FfiResponse()
                getattr(done, field).SetInParent()
                requests.append((req.SerializeToString(), done.SerializeToString(), field))
            return cls(FfiClient.instance._ffi_lib, requests, far, near)
        except Exception:  # other internals in this livekit release: the public API
            return None

    def process(self) -> None:
        """Reverse stream, stream delay, stream: the buffers are processed in place."""
        ptr, length = self._reply_ptr, self._reply_len
        for raw, size, done, field in self._requests:
            handle = self._request(raw, size, *self._reply_args)
            reply = ctypes.string_at(ptr, length.value)
            self._drop(handle)
            if reply != done:
                self._raise(reply, field)

    def cancel(self, mic: np.ndarray, ref: np.ndarray, out: np.ndarray,
               cpu_us: np.ndarray, index: int) -> None:
        """``EchoCanceller.cancel_frames`` in C (``batch`` must be set)."""
        assert self.batch is not None and _echo_batch is not None
        frames = len(mic) // FRAME
        if len(mic) % FRAME or len(ref) != len(mic) or len(out) != len(mic):
            raise ValueError(f"not whole, equal frames: {len(mic)}, {len(ref)}, {len(out)}")
        for a in (mic, ref, out):
            if a.dtype != np.int16 or not a.flags.c_contiguous:
                raise ValueError("frames must be C-contiguous int16")
        if cpu_us.dtype != np.float64 or not cpu_us.flags.c_contiguous:
            raise ValueError("cpu_us must be C-contiguous float64")
        request, drop, requests, far, near, frame = self.batch
        _, failed, reply = _echo_batch.cancel(
            request, drop, requests, far, near, frame, mic.ctypes.data, ref.ctypes.data,
            out.ctypes.data, frames, cpu_us.ctypes.data, len(cpu_us), index)
        if failed >= 0:
            self._raise(reply or b"", self._fields[failed])

    @staticmethod
    def _raise(reply: bytes, field: str) -> None:
        from livekit.rtc._proto import ffi_pb2

        parsed = ffi_pb2.FfiResponse()
        parsed.ParseFromString(reply)
        error = getattr(getattr(parsed, field), "error", "") or f"unexpected reply to {field}"
        raise RuntimeError(error)


def _address(function: Any) -> int:
    """A ctypes foreign function's address."""
    return int(ctypes.cast(function, ctypes.c_void_p).value or 0)


class _EchoStage:
    """What both ways of running the canceller share: one frame through the APM into the
    capture ring, and the figures ``stats`` reports. One thread runs ``_process``."""

    def __init__(self, capture: AudioRing, canceller: EchoCanceller) -> None:
        self.capture = capture
        self.canceller = canceller
        self.dropped_periods = 0
        self.frames = 0
        self.error: str | None = None
        self._cpu_us = np.zeros(_STATS_WINDOW, np.float64)
        self._mic_energy = 0.0  # decaying sums over frames where the speaker played
        self._out_energy = 0.0

    def stats(self) -> dict[str, Any]:
        """For ``status``: frames, drops, CPU per frame (µs) and the echo attenuation (dB).

        ``attenuation_db`` is microphone energy over cancelled energy in the
        last seconds in which the speaker played: ERLE while the caller is
        silent, less while they talk.
        """
        n = min(self.frames, _STATS_WINDOW)
        cpu = self._cpu_us[:n].copy()
        mic, out = self._mic_energy, self._out_energy
        return {
            "enabled": True,
            "frames": self.frames,
            "dropped_periods": self.dropped_periods,
            "stream_delay_ms": self.canceller.stream_delay_ms,
            "noise_suppression": self.canceller.noise_suppression,
            "cpu_us_median": round(float(np.median(cpu)), 1) if n else None,
            "cpu_us_p99": round(float(np.percentile(cpu, 99)), 1) if n else None,
            "attenuation_db": round(10 * np.log10(mic / max(out, 1e-9)), 1) if mic > 0 else None,
            "error": self.error,
        }

    def _process(self, mic: np.ndarray, ref: np.ndarray) -> None:
        """One frame: cancelled into the capture ring, and counted."""
        out = self._cancel(mic, ref)
        self.capture.write(out)
        if out is not mic:
            self._account(mic, out, ref)

    def _cancel(self, mic: np.ndarray, ref: np.ndarray) -> np.ndarray:
        """One frame through the APM; its time goes into the statistics. Returns the
        cancelled frame (valid until the next call), or ``mic`` itself once the APM
        has failed (the call goes on uncancelled, and ``stats`` says why)."""
        if self.error is not None:
            return mic
        t = time.perf_counter()
        try:
            out = self.canceller.process(mic, ref)
        except Exception as exc:
            self.error = f"echo cancellation stopped: {exc}"
            return mic
        self._cpu_us[self.frames % _STATS_WINDOW] = (time.perf_counter() - t) * 1e6
        self.frames += 1
        return out

    def _account(self, mic: np.ndarray, out: np.ndarray, ref: np.ndarray) -> None:
        """The attenuation figure's energies, over frames (any whole number of them)
        in which the speaker played (its peak above -60 dBFS): decaying sums with
        about a 1 s memory."""
        if int(ref.max(initial=0)) <= 33 and int(ref.min(initial=0)) >= -33:
            return
        m = mic.astype(np.float64)
        o = out.astype(np.float64)
        decay = 0.99 ** (len(mic) / FRAME)
        self._mic_energy = decay * self._mic_energy + float(m @ m)
        self._out_energy = decay * self._out_energy + float(o @ o)


class EchoThread(_EchoStage):
    """The canceller beside the device callback; see the module docstring.

    Threads: ``feed`` runs on the device's audio thread (the ring's only
    producer); the ``echo-canceller`` thread is the ring's only consumer and
    the capture ring's only producer while the engine runs with echo
    cancellation; ``reset``, ``stats`` and ``close`` are for the control thread.
    """

    def __init__(
        self,
        capture: AudioRing,
        canceller: EchoCanceller,
        max_period_frames: int,
        poll_s: float = 0.010,
        idle_poll_s: float = 0.02,
        ring_name: str | None = None,
    ) -> None:
        super().__init__(capture, canceller)
        self.poll_s = poll_s
        self.idle_poll_s = idle_poll_s
        self._ring = AudioRing.create(PAIR_RING_CAPACITY, ring_name)
        self._pairs = np.zeros(2 * max(max_period_frames, FRAME), np.int16)
        # Requests from the control thread: counters the canceller thread catches up with.
        self._reset_requests = 0
        self._reset_seen = 0
        self._stop = threading.Event()
        self._wake = threading.Event()  # the control thread cuts the canceller's poll short
        self._thread = threading.Thread(target=self._run, name="echo-canceller", daemon=True)
        self._thread.start()

    # -- audio thread -------------------------------------------------------------

    def feed(self, mic: np.ndarray, ref: np.ndarray) -> None:
        """One device period (int16 ``mic`` and the ``ref`` sent to the speaker, same length).

        Audio thread only: no lock, no blocking, no allocation. A period that
        does not fit whole is dropped and counted, so the pairs stay aligned.
        """
        step = len(self._pairs) // 2
        for start in range(0, len(mic), step):
            m = mic[start : start + step]
            n = len(m)
            buf = self._pairs[: 2 * n]
            if self._ring.free() < 2 * n:
                self.dropped_periods += 1
                return
            buf[0::2] = m
            buf[1::2] = ref[start : start + n]
            self._ring.write(buf)

    # -- control thread -------------------------------------------------------------

    def reset(self, timeout: float = 0.5) -> bool:
        """Before a call, stream stopped: drop frames still queued from the last one.

        The canceller thread does it (it is the ring's reader) and keeps the
        APM's converged state: the echo path of the device has not changed.
        Returns whether it was done within ``timeout`` seconds.
        """
        self._reset_requests += 1
        wanted = self._reset_requests
        self._wake.set()
        deadline = time.monotonic() + timeout
        while self._reset_seen < wanted and time.monotonic() < deadline:
            time.sleep(0.0002)
        return self._reset_seen >= wanted

    def close(self) -> None:
        """Stop the thread (bounded wait) and free the ring. The stream must be stopped."""
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout=2)
        self._ring.close()
        self._ring.unlink()

    # -- canceller thread -------------------------------------------------------------

    def _run(self) -> None:
        name_os_thread()
        pairs = np.zeros(2 * FRAME, np.int16)
        ring = self._ring
        last_frame = time.monotonic()
        while not self._stop.is_set():
            self._wake.clear()  # before the checks: a request after them sets it again
            if self._reset_seen != self._reset_requests:
                wanted = self._reset_requests
                ring.flush()
                self._reset_seen = wanted
            if ring.available() < len(pairs):
                idle = time.monotonic() - last_frame > IDLE_AFTER_S
                self._wake.wait(self.idle_poll_s if idle else self.poll_s)
                continue
            last_frame = time.monotonic()
            ring.read_into(pairs)
            self._process(pairs[0::2], pairs[1::2])



class InlineEcho(_EchoStage):
    """The canceller run on the device's own thread, in ``feed``: for a device whose
    handler runs on a thread of ours with time to spare (the native PulseAudio backend
    keeps 15 ms or more queued at the server), not in a real-time callback.

    It gathers ``batch`` 10 ms frames (default ``INLINE_BATCH``), then cancels them
    back to back (``EchoCanceller.cancel_frames``: in C) and writes them to the capture
    ring in one write. The APM costs less per frame the more frames run in a row: its
    state falls out of the CPU's caches in between. In a call on the test rig at 20 ms
    periods it took 118 µs a frame in batches of 4 frames, 86 µs in batches of 8 and
    80 µs in batches of 10 (the audio thread's CPU time in ``cancel_frames``, one
    ``python -m bench.audio_threads`` run each). The default batch is the agent's input
    chunk (``engine.ring_audio``: 100 ms): the agent takes the ring's audio only in
    whole chunks, and a chunk ends where a batch ends (the agent's start flushes the
    ring between two batches, which are single writes), so the batch never makes the
    agent wait longer than its own chunking does. No canceller thread either: no
    wake-ups, no GIL hand-offs. Same contract as ``EchoThread`` otherwise: ``feed``
    on the audio thread; ``reset``, ``stats`` and ``close`` on the control thread,
    stream stopped.
    """

    def __init__(self, capture: AudioRing, canceller: EchoCanceller,
                 batch: int = 0) -> None:
        super().__init__(capture, canceller)
        self.batch = batch or INLINE_BATCH
        self._mic = np.zeros(FRAME * self.batch, np.int16)
        self._ref = np.zeros(FRAME * self.batch, np.int16)
        self._out = np.zeros(FRAME * self.batch, np.int16)
        self._fill = 0

    def feed(self, mic: np.ndarray, ref: np.ndarray) -> None:
        """One device period: buffered, then cancelled ``batch`` frames at a time."""
        size = len(self._mic)
        done = 0
        while done < len(mic):
            n = min(size - self._fill, len(mic) - done)
            self._mic[self._fill : self._fill + n] = mic[done : done + n]
            self._ref[self._fill : self._fill + n] = ref[done : done + n]
            self._fill += n
            done += n
            if self._fill == size:
                self._fill = 0
                self._cancel_batch()

    def _cancel_batch(self) -> None:
        """The gathered frames through the APM (``EchoCanceller.cancel_frames``), into the
        capture ring in one write; uncancelled once the APM has failed (the call goes on,
        and ``stats`` says why)."""
        if self.error is None:
            try:
                self.canceller.cancel_frames(self._mic, self._ref, self._out, self._cpu_us,
                                             self.frames)
                self.frames += self.batch
            except Exception as exc:
                self.error = f"echo cancellation stopped: {exc}"
        if self.error is not None:
            self.capture.write(self._mic)
            return
        self.capture.write(self._out)
        self._account(self._mic, self._out, self._ref)

    def reset(self, timeout: float = 0.5) -> bool:
        """Before a call, stream stopped: forget a partial batch (the APM keeps its state)."""
        self._fill = 0
        return True

    def close(self) -> None:
        """Nothing runs on its own: nothing to stop."""
