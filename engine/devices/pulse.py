"""The native PulseAudio-protocol backend (PulseAudio, PipeWire's pulse server).

Why: PortAudio 19.6 reaches a sound server only through ALSA's ``pulse``
plugin, where a full-duplex stream spins a core (DESIGN.md, "The device path
on Linux"), and stopping it throws away what the server holds, fade included.
This backend speaks the protocol through libpulse's simple API
(``libpulse-simple.so.0``, bound here with ctypes: the binding is a dozen
functions, and reading straight into a preallocated numpy buffer keeps the
audio thread allocation-free).

Streams: one record and one playback stream, 16 kHz mono s16le, opened on
the control thread, then used only by the device's audio thread. Each period
the thread reads one period from the record stream (a blocking read: the
source is the clock), calls ``handler(mic, out, status)``, and writes ``out``
to the playback stream, which is kept ``prime_frames`` ahead (a few periods:
``tlength`` is that plus one period, so a write never blocks).

Hangup (``fade_stop``): the control thread, at once (between two of the audio
thread's periods: they share a lock), reads the server's write index,
flushes the playback stream, reads it again, and writes the fade
(``engine.fade``) of the samples that were about to play (the two indices
tell which), ending at exact zero, then silence, and stops. The fade
therefore reaches the speaker, continuous with what played, without waiting
for the next period.

Stream loss: a failed read or write (server restarted, stream killed) makes
the audio thread free the streams and reopen them, retrying every
``RETRY_INTERVAL`` s. When they are back, the handler is called for the
missed time with silent microphone periods flagged ``DEVICE_GAP`` (see
``engine.bridge``), so the recording stays aligned with wall time. A reopen
*fails* when a whole ``REOPEN_WINDOW`` passes without success; after
``MAX_FAILED_REOPENS`` failures within ``FAILED_REOPENS_SPAN`` s the device
gives up (``lost``; ``running`` turns False).

Units: frames (= samples, mono), seconds of ``time.monotonic()``.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import shutil
import subprocess
import threading
import time
from collections import deque
from typing import Any

import numpy as np

from engine.bridge import DEVICE_GAP, PeriodHandler
from engine.devices import DeviceError
from engine.fade import fade_curve
from engine.ring import SAMPLE_RATE

PA_SAMPLE_S16LE = 3
PA_STREAM_PLAYBACK = 1
PA_STREAM_RECORD = 2
PA_ERR_CONNECTIONREFUSED = 6
PA_ERR_NOENTITY = 5
PA_CONTEXT_NOAUTOSPAWN = 1
PA_CONTEXT_READY = 4
PA_CONTEXT_FAILED = 5
PA_CONTEXT_TERMINATED = 6

RETRY_INTERVAL = 0.05
"""Seconds between attempts to reopen lost streams."""
REOPEN_WINDOW = 1.0
"""Seconds of unsuccessful attempts that count as one failed reopen."""
MAX_FAILED_REOPENS = 3
FAILED_REOPENS_SPAN = 5.0
"""``MAX_FAILED_REOPENS`` failed reopens within this many seconds: the device is lost."""
RENDER_MARGIN = 0.0015
"""Seconds: the hangup's write must reach the server at least this long before the sink
takes its next block (see ``PulseDevice._fade_out``)."""
HISTORY_FRAMES = 1 << 14
"""Written samples kept for the hangup fade, frames (1 s at 16 kHz); a power of two."""


class _SampleSpec(ctypes.Structure):
    _fields_ = [("format", ctypes.c_int), ("rate", ctypes.c_uint32),
                ("channels", ctypes.c_uint8)]


class _BufferAttr(ctypes.Structure):
    _fields_ = [("maxlength", ctypes.c_uint32), ("tlength", ctypes.c_uint32),
                ("prebuf", ctypes.c_uint32), ("minreq", ctypes.c_uint32),
                ("fragsize", ctypes.c_uint32)]


class _Timeval(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_usec", ctypes.c_long)]


class _TimingInfo(ctypes.Structure):
    """libpulse's ``pa_timing_info`` (stable since PulseAudio 0.9)."""

    _fields_ = [("timestamp", _Timeval), ("synchronized_clocks", ctypes.c_int),
                ("sink_usec", ctypes.c_uint64), ("source_usec", ctypes.c_uint64),
                ("transport_usec", ctypes.c_uint64), ("playing", ctypes.c_int),
                ("write_index_corrupt", ctypes.c_int), ("write_index", ctypes.c_int64),
                ("read_index_corrupt", ctypes.c_int), ("read_index", ctypes.c_int64),
                ("configured_sink_usec", ctypes.c_uint64),
                ("configured_source_usec", ctypes.c_uint64), ("since_underrun", ctypes.c_int64)]


class _SimpleHead(ctypes.Structure):
    """The first fields of libpulse-simple's private ``struct pa_simple`` (unchanged since
    2006): the simple API has no call for the stream's write index, which the hangup
    fade needs to the sample; this reaches the ``pa_stream`` beneath it."""

    _fields_ = [("mainloop", ctypes.c_void_p), ("context", ctypes.c_void_p),
                ("stream", ctypes.c_void_p)]


PA_OPERATION_RUNNING = 0
PA_SEEK_RELATIVE = 0
OUTPUT_UNDERFLOW = 4
"""Status flag handed to the handler after a refill (PortAudio's ``paOutputUnderflow``)."""

_lib: Any = None
_pulse: Any = None


def _libs() -> tuple[Any, Any]:
    """(libpulse-simple, libpulse), loaded once; DeviceError when not installed."""
    global _lib, _pulse
    if _lib is None:
        try:
            simple = ctypes.CDLL("libpulse-simple.so.0")
            pulse = ctypes.CDLL("libpulse.so.0")
        except OSError as exc:
            raise DeviceError(f"libpulse is not installed ({exc}); on Debian: "
                              "apt-get install libpulse0") from None
        simple.pa_simple_new.restype = ctypes.c_void_p
        simple.pa_simple_new.argtypes = [
            ctypes.c_char_p, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_char_p,
            ctypes.POINTER(_SampleSpec), ctypes.c_void_p, ctypes.POINTER(_BufferAttr),
            ctypes.POINTER(ctypes.c_int)]
        for name in ("pa_simple_read", "pa_simple_write"):
            fn = getattr(simple, name)
            fn.restype = ctypes.c_int
            fn.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t,
                           ctypes.POINTER(ctypes.c_int)]
        for name in ("pa_simple_flush", "pa_simple_drain"):
            fn = getattr(simple, name)
            fn.restype = ctypes.c_int
            fn.argtypes = [ctypes.c_void_p, ctypes.POINTER(ctypes.c_int)]
        simple.pa_simple_get_latency.restype = ctypes.c_uint64
        simple.pa_simple_get_latency.argtypes = [ctypes.c_void_p, ctypes.POINTER(ctypes.c_int)]
        simple.pa_simple_free.restype = None
        simple.pa_simple_free.argtypes = [ctypes.c_void_p]
        pulse.pa_strerror.restype = ctypes.c_char_p
        pulse.pa_strerror.argtypes = [ctypes.c_int]
        pulse.pa_mainloop_new.restype = ctypes.c_void_p
        pulse.pa_mainloop_get_api.restype = ctypes.c_void_p
        pulse.pa_mainloop_get_api.argtypes = [ctypes.c_void_p]
        pulse.pa_mainloop_iterate.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_void_p]
        pulse.pa_mainloop_free.argtypes = [ctypes.c_void_p]
        pulse.pa_context_new.restype = ctypes.c_void_p
        pulse.pa_context_new.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
        pulse.pa_context_connect.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_int,
                                             ctypes.c_void_p]
        pulse.pa_context_get_state.argtypes = [ctypes.c_void_p]
        pulse.pa_context_disconnect.argtypes = [ctypes.c_void_p]
        pulse.pa_context_unref.argtypes = [ctypes.c_void_p]
        for name in ("pa_threaded_mainloop_lock", "pa_threaded_mainloop_unlock"):
            getattr(pulse, name).argtypes = [ctypes.c_void_p]
            getattr(pulse, name).restype = None
        pulse.pa_stream_get_timing_info.restype = ctypes.POINTER(_TimingInfo)
        pulse.pa_stream_get_timing_info.argtypes = [ctypes.c_void_p]
        pulse.pa_stream_update_timing_info.restype = ctypes.c_void_p
        pulse.pa_stream_update_timing_info.argtypes = [ctypes.c_void_p, ctypes.c_void_p,
                                                       ctypes.c_void_p]
        pulse.pa_operation_get_state.argtypes = [ctypes.c_void_p]
        pulse.pa_stream_flush.restype = ctypes.c_void_p
        pulse.pa_stream_flush.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p]
        pulse.pa_stream_write.restype = ctypes.c_int
        pulse.pa_stream_write.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t,
                                          ctypes.c_void_p, ctypes.c_int64, ctypes.c_int]
        pulse.pa_operation_unref.argtypes = [ctypes.c_void_p]
        _lib, _pulse = simple, pulse
    return _lib, _pulse


class PulseError(OSError):
    """A libpulse call failed; ``code`` is libpulse's error number."""

    def __init__(self, what: str, code: int) -> None:
        _, pulse = _libs()
        text = pulse.pa_strerror(code)
        super().__init__(f"{what}: {text.decode() if text else f'error {code}'}")
        self.code = code


class _Stream:
    """One pa_simple stream. Not thread-safe: one thread at a time (see module docstring)."""

    def __init__(self, direction: int, device: str | None, rate: int, attr: _BufferAttr,
                 name: str) -> None:
        lib, _ = _libs()
        self._lib = lib
        spec = _SampleSpec(PA_SAMPLE_S16LE, rate, 1)
        err = ctypes.c_int(0)
        self._err = ctypes.c_int(0)
        # server None: libpulse picks it ($PULSE_SERVER, client.conf, the session's
        # default); device None: $PULSE_SINK / $PULSE_SOURCE, else the server default.
        handle = lib.pa_simple_new(None, b"callctl", direction,
                                   device.encode() if device else None, name.encode(),
                                   ctypes.byref(spec), None, ctypes.byref(attr), ctypes.byref(err))
        if not handle:
            raise PulseError(f"cannot open the {name} stream", err.value)
        self._handle: int | None = handle

    def read_into(self, buf: np.ndarray) -> None:
        """Blocking: fill ``buf`` (int16, C-contiguous)."""
        if self._lib.pa_simple_read(self._handle, buf.ctypes.data, buf.nbytes,
                                    ctypes.byref(self._err)) < 0:
            raise PulseError("read", self._err.value)

    def write(self, buf: np.ndarray) -> None:
        if self._lib.pa_simple_write(self._handle, buf.ctypes.data, buf.nbytes,
                                     ctypes.byref(self._err)) < 0:
            raise PulseError("write", self._err.value)

    def flush(self) -> None:
        if self._lib.pa_simple_flush(self._handle, ctypes.byref(self._err)) < 0:
            raise PulseError("flush", self._err.value)

    def latency(self) -> float:
        """Seconds: playback, until a sample written now plays; record, of the data queued."""
        usec = self._lib.pa_simple_get_latency(self._handle, ctypes.byref(self._err))
        if usec == 2**64 - 1:
            raise PulseError("latency", self._err.value)
        return float(usec) / 1e6

    def timing(self, timeout: float = 0.01) -> tuple[int, int, float, float] | None:
        """Playback: fresh from the server (a round trip, at most ``timeout`` s):
        ``(read_index, write_index, sink_s, at)``: byte indices (the next sample the
        sink will take, and where the next write lands), the time the sink still needs
        to play what it has already taken (s), and when that was true
        (``time.monotonic()``). None if the server did not answer or an index is unknown.
        """
        _, pulse = _libs()
        if self._handle is None:
            return None
        head = _SimpleHead.from_address(self._handle)
        loop, stream = head.mainloop, head.stream
        pulse.pa_threaded_mainloop_lock(loop)
        op = pulse.pa_stream_update_timing_info(stream, None, None)
        pulse.pa_threaded_mainloop_unlock(loop)
        if not op:
            return None
        deadline = time.monotonic() + timeout
        try:
            while True:
                pulse.pa_threaded_mainloop_lock(loop)
                try:
                    value = None
                    if pulse.pa_operation_get_state(op) != PA_OPERATION_RUNNING:
                        info = pulse.pa_stream_get_timing_info(stream)
                        if info and not (info.contents.write_index_corrupt
                                         or info.contents.read_index_corrupt):
                            t = info.contents
                            # The stamp is wall-clock time (pa_gettimeofday).
                            age = time.time() - (t.timestamp.tv_sec + t.timestamp.tv_usec / 1e6)
                            value = (int(t.read_index), int(t.write_index),
                                     t.sink_usec / 1e6, time.monotonic() - age)
                finally:
                    pulse.pa_threaded_mainloop_unlock(loop)
                if value is not None or time.monotonic() > deadline:
                    return value
                time.sleep(0.0001)
        finally:
            pulse.pa_operation_unref(op)

    def replace_queue(self, buf: np.ndarray, timeout: float = 0.01) -> None:
        """Playback: drop what is queued and write ``buf`` in its place, in one go.

        The flush and the write leave together (one lock of the stream's mainloop, no
        wait between), so the server handles them back to back: the sink gets no
        chance to find the stream empty between them and play a gap. ``buf`` lands at
        the read index the flush found. Waits at most ``timeout`` s for the flush.
        """
        _, pulse = _libs()
        if self._handle is None:
            raise PulseError("write", PA_ERR_NOENTITY)
        head = _SimpleHead.from_address(self._handle)
        pulse.pa_threaded_mainloop_lock(head.mainloop)
        try:
            op = pulse.pa_stream_flush(head.stream, None, None)
            r = pulse.pa_stream_write(head.stream, buf.ctypes.data, buf.nbytes, None, 0,
                                      PA_SEEK_RELATIVE)
        finally:
            pulse.pa_threaded_mainloop_unlock(head.mainloop)
        if op:
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                pulse.pa_threaded_mainloop_lock(head.mainloop)
                running = pulse.pa_operation_get_state(op) == PA_OPERATION_RUNNING
                pulse.pa_threaded_mainloop_unlock(head.mainloop)
                if not running:
                    break
                time.sleep(0.0001)
            pulse.pa_operation_unref(op)
        if r < 0 or not op:
            raise PulseError("flush and write", PA_ERR_NOENTITY if not op else -r)

    def close(self) -> None:
        if self._handle is not None:
            self._lib.pa_simple_free(self._handle)
            self._handle = None


def server_answers(timeout: float = 1.0) -> bool:
    """Whether a PulseAudio-protocol server answers (libpulse's own choice of server,
    so ``$PULSE_SERVER`` counts). Never autospawns one. Bounded by ``timeout`` s."""
    try:
        _, pulse = _libs()
    except DeviceError:
        return False
    loop = pulse.pa_mainloop_new()
    if not loop:
        return False
    ctx = pulse.pa_context_new(pulse.pa_mainloop_get_api(loop), b"callctl-probe")
    try:
        if not ctx or pulse.pa_context_connect(ctx, None, PA_CONTEXT_NOAUTOSPAWN, None) < 0:
            return False
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            pulse.pa_mainloop_iterate(loop, 0, None)
            state = pulse.pa_context_get_state(ctx)
            if state == PA_CONTEXT_READY:
                return True
            if state in (PA_CONTEXT_FAILED, PA_CONTEXT_TERMINATED):
                return False
            time.sleep(0.002)
        return False
    finally:
        if ctx:
            pulse.pa_context_disconnect(ctx)
            pulse.pa_context_unref(ctx)
        pulse.pa_mainloop_free(loop)


def list_devices() -> list[dict[str, Any]]:
    """The server's sinks and sources as ``--device pulse:...`` entries (empty if none answers).

    Names come from ``pactl`` when it is installed; else only the default entry.
    """
    if not server_answers():
        return []
    # ``name`` is the --device value itself: front ends (the GUI) pass ``name`` back.
    devices: list[dict[str, Any]] = [{"backend": "pulse", "device": "pulse", "name": "pulse",
                                      "description": "the sound server's default sink and source",
                                      "inputs": 1, "outputs": 1, "default_rate": SAMPLE_RATE}]
    pactl = shutil.which("pactl")
    if pactl is None:
        return devices
    for kind, key in (("sinks", "outputs"), ("sources", "inputs")):
        try:
            out = subprocess.run([pactl, "list", "short", kind], capture_output=True,
                                 text=True, timeout=3, check=False).stdout
        except (OSError, subprocess.TimeoutExpired):
            continue
        for line in out.splitlines():
            cols = line.split("\t")
            if len(cols) < 2:
                continue
            name = cols[1]
            spec = f"pulse:{name}" if kind == "sinks" else f"pulse:,{name}"
            devices.append({"backend": "pulse", "device": spec, "name": spec, "description": name,
                            "inputs": int(key == "inputs"), "outputs": int(key == "outputs"),
                            "default_rate": SAMPLE_RATE})
    return devices


def parse_spec(spec: str) -> tuple[str | None, str | None]:
    """``pulse`` / ``pulse:SINK`` / ``pulse:SINK,SOURCE`` / ``pulse:,SOURCE`` → (sink, source).

    None means the default (``$PULSE_SINK`` / ``$PULSE_SOURCE``, else the server's).
    """
    if spec == "pulse":
        return None, None
    if not spec.startswith("pulse:"):
        raise DeviceError(f"not a pulse device: {spec!r} (want pulse or pulse:SINK[,SOURCE])")
    rest = spec[len("pulse:"):]
    parts = rest.split(",")
    if len(parts) > 2:
        raise DeviceError(f"--device {spec!r}: want pulse:SINK[,SOURCE]")
    sink = parts[0].strip() or None
    source = parts[1].strip() or None if len(parts) == 2 else None
    return sink, source


class PulseDevice:
    """See the module docstring. Created, started, stopped and closed by the control thread.

    ``sink``/``source``: PulseAudio names, None for the defaults.
    ``period_seconds``: the read size, the clock of the handler (5 ms: 80 frames).
    ``prime_periods``: periods of playback kept queued beyond the one being written.
    ``fade_seconds``: the hangup fade at the device.
    """

    backend = "pulse"
    cuts_at_device = True
    handler_may_wait = True

    def __init__(
        self,
        sink: str | None = None,
        source: str | None = None,
        period_seconds: float = 0.005,
        prime_periods: int = 3,
        fade_seconds: float = 0.006,
    ) -> None:
        self.rate = SAMPLE_RATE
        self.period_frames = max(16, round(period_seconds * self.rate))
        self.sink, self.source = sink, source
        shown_sink = sink or os.environ.get("PULSE_SINK")
        shown_source = source or os.environ.get("PULSE_SOURCE")
        self.name = "pulse" if not (shown_sink or shown_source) else \
            f"pulse:{shown_sink or ''}" + (f",{shown_source}" if shown_source else "")
        self.prime_frames = max(1, prime_periods) * self.period_frames
        self.fade_frames = max(1, round(fade_seconds * self.rate))
        self.underflow_below = self.period_frames / self.rate
        """Playback latency (s) after a write below which the queue counts as run dry."""
        self._handler: PeriodHandler | None = None
        self._mic = np.zeros(self.period_frames, np.int16)
        self._out = np.zeros(self.period_frames, np.int16)
        self._zeros = np.zeros(max(self.prime_frames, self.period_frames), np.int16)
        self._history = np.zeros(HISTORY_FRAMES, np.int16)
        self._written = 0  # frames written to the playback stream since it was opened
        self._fade_buf = np.zeros(self.fade_frames + self.period_frames, np.int16)
        self._fade_gain = fade_curve(self.fade_frames).astype(np.float64)  # ends at 0.0
        self._play: _Stream | None = None
        self._rec: _Stream | None = None
        # Control-thread requests, read by the audio thread (plain stores under the GIL).
        self._active = False
        self._session = 0
        self._closed = False
        self._wake = threading.Event()
        self._io = threading.Lock()
        """Held around each period's handler call and playback write (audio thread) and
        around the hangup's flush and fade (control thread): one never lands inside the
        other, and nothing is written after the fade."""
        # Published by the audio thread.
        self.cut_at: float | None = None
        """When the last fade sample plays (``time.monotonic()``), from the server's latency."""
        self.lost = False
        self.last_error: str | None = None
        self.reopens: list[dict[str, Any]] = []
        """One entry per loss: ``at``, ``error``, ``gap_ms``, ``reopened`` (bool)."""
        self._failed: deque[float] = deque(maxlen=MAX_FAILED_REOPENS)
        try:
            self._open()
        except PulseError as exc:
            raise DeviceError(f"cannot open PulseAudio device {self.name!r}: {exc}") from None
        self.output_latency, self.input_latency = self._calibrate()
        self._thread = threading.Thread(target=self._run, name="pulse-device", daemon=True)
        self._thread.start()

    # -- streams (audio thread once running; control thread before) --------------

    def _open(self) -> None:
        frame_bytes = 2
        period = self.period_frames * frame_bytes
        play_attr = _BufferAttr(
            maxlength=0xFFFFFFFF,
            # Room for three periods more than we keep queued: a write never waits for
            # the server (it happens under the lock a hangup takes).
            tlength=self.prime_frames * frame_bytes + 8 * period,
            prebuf=period,  # after start, an underrun or a flush: play from one period on
            minreq=period,
            fragsize=0xFFFFFFFF)
        rec_attr = _BufferAttr(
            maxlength=self.rate * frame_bytes,  # 1 s: what piles up while no call runs
            tlength=0xFFFFFFFF, prebuf=0xFFFFFFFF, minreq=0xFFFFFFFF,
            fragsize=period)
        self._rec = _Stream(PA_STREAM_RECORD, self.source, self.rate, rec_attr, "microphone")
        try:
            self._play = _Stream(PA_STREAM_PLAYBACK, self.sink, self.rate, play_attr, "speaker")
        except PulseError:
            self._rec.close()
            self._rec = None
            raise
        self._written = 0

    def _close_streams(self) -> None:
        for stream in (self._play, self._rec):
            if stream is not None:
                stream.close()
        self._play = self._rec = None

    def _calibrate(self) -> tuple[float, float]:
        """Run silence for a few periods; the server's latencies right after a write/read.

        Output: seconds from a write to its first sample playing (the stream's queue,
        ``prime_frames`` plus the period, and the sink's own latency). Input: the
        record stream's latency right after a read.
        """
        assert self._play is not None and self._rec is not None
        try:
            self._drain_capture()
            self._play.write(self._zeros[: self.prime_frames])
            outs, ins = [], []
            for _ in range(12):
                self._rec.read_into(self._mic)
                ins.append(self._rec.latency())
                self._play.write(self._zeros[: self.period_frames])
                outs.append(self._play.latency())
        except PulseError as exc:
            self._close_streams()
            raise DeviceError(f"PulseAudio device {self.name!r} does not run: {exc}") from None
        self._written = 0
        return float(np.median(outs[4:])), float(np.median(ins[4:]))

    # -- control thread ---------------------------------------------------------

    @property
    def running(self) -> bool:
        return self._active and not self.lost

    def set_handler(self, handler: PeriodHandler) -> None:
        self._handler = handler

    def start(self) -> None:
        """Start calling the handler, from a freshly primed playback stream."""
        if self._closed:
            raise DeviceError("the PulseAudio device is closed")
        self.lost = False
        self._failed.clear()
        self._session += 1
        self._active = True
        self._wake.set()

    def stop(self) -> None:
        """Stop: when this returns the handler is not running and will not run again."""
        self._active = False
        with self._io:
            pass

    def fade_stop(self, timeout: float) -> float | None:
        """Hangup at the device (see module docstring), done here at once, between two of
        the audio thread's periods. Returns the time the output goes silent
        (``time.monotonic()``, the last fade sample's play time as the server reports
        it), or None if the device was not running or the fade failed (it is then
        stopped plainly). Waits at most ``timeout`` s for the period in progress.
        Control thread only."""
        if not self.running:
            self.stop()
            return None
        if not self._io.acquire(timeout=timeout):
            self.stop()
            return None
        try:
            if not self._active or self._play is None:
                return None
            self._fade_out()
            return self.cut_at
        except PulseError as exc:
            self.last_error = str(exc)
            return None
        finally:
            self._active = False
            self._io.release()

    def close(self) -> None:
        """Stop, end the audio thread (bounded wait), free the streams."""
        self.stop()
        self._closed = True
        self._wake.set()
        self._thread.join(timeout=2.0)
        if not self._thread.is_alive():
            self._close_streams()

    def status(self) -> dict[str, Any]:
        """For the audio process's ``status``: losses and reopens so far."""
        return {"reopens": list(self.reopens), "last_device_error": self.last_error,
                "lost": self.lost}

    # -- audio thread -----------------------------------------------------------

    def _run(self) -> None:
        session = -1
        status = 0
        while not self._closed:
            if not self._active or self.lost:
                session = -1
                self._wake.wait(0.5)
                self._wake.clear()
                continue
            if self._play is None or self._rec is None:
                self._recover(time.monotonic(), "the streams are closed")
                continue
            try:
                if session != self._session:
                    session = self._session
                    self._prime()
                self._rec.read_into(self._mic)
                with self._io:
                    if not self._active or session != self._session:
                        continue
                    handler = self._handler
                    if handler is None:
                        self._out[:] = 0
                    else:
                        handler(self._mic, self._out, status)
                    self._write(self._out)
                self._last_ok = time.monotonic()
                status = 0
                # Outside the lock: the query is a round trip to the server, and a hangup
                # must not wait for it.
                if self._play.latency() < self.underflow_below:
                    # The queue ran (nearly) dry: the clock stalled or this thread was
                    # late. Refill it, or playback would go on starving period by period.
                    with self._io:
                        if self._active and session == self._session:
                            self._write(self._zeros[: self.prime_frames - self.period_frames])
                    status = OUTPUT_UNDERFLOW
            except PulseError as exc:
                self._recover(getattr(self, "_last_ok", time.monotonic()), str(exc))

    def _drain_capture(self) -> None:
        """Drop what the record stream piled up, but for the period in progress.

        The simple API cannot flush a record stream (``pa_simple_flush`` is for
        playback only), and while no call runs the server keeps recording into
        the stream's buffer, up to its ``maxlength`` (1 s): without this the
        microphone would reach the agent and the echo canceller that late, and
        every read would return at once, leaving the playback write to pace
        the thread (it would block, under the lock a hangup needs).
        """
        assert self._rec is not None
        backlog = int(self._rec.latency() * self.rate) - self.period_frames
        while backlog >= self.period_frames:
            self._rec.read_into(self._mic)
            backlog -= self.period_frames

    def _prime(self) -> None:
        """Start of a call: drop the microphone that piled up, queue ``prime_frames`` of silence."""
        assert self._play is not None and self._rec is not None
        self._drain_capture()
        self._play.flush()
        self._write(self._zeros[: self.prime_frames])
        self._last_ok = time.monotonic()

    def _write(self, samples: np.ndarray) -> None:
        assert self._play is not None
        self._play.write(samples)
        n = len(samples)
        pos = self._written % HISTORY_FRAMES
        first = min(n, HISTORY_FRAMES - pos)
        self._history[pos : pos + first] = samples[:first]
        self._history[: n - first] = samples[first:]
        self._written += n

    def _fade_out(self) -> None:
        """Replace what the server holds by a fade of it, to exact zero, then silence.

        What the sink has already taken plays out (a block at most); the rest of the
        queue is dropped and replaced by the fade of the samples that were there, then
        silence, flush and write sent together (``replace_queue``): a flush on its own
        leaves the stream empty until the next write arrives, and a sink that renders
        in between plays a gap, a hard step to zero. Which samples those are comes
        from the server's indices, read just before; so that the sink takes no block
        between that reading and the flush, when its next block is due within
        ``RENDER_MARGIN`` s this waits for it and reads them again.
        """
        assert self._play is not None
        timing = self._play.timing()
        if timing is not None and timing[2] - (time.monotonic() - timing[3]) < RENDER_MARGIN:
            time.sleep(max(0.0, timing[2] - (time.monotonic() - timing[3])) + 0.0003)
            timing = self._play.timing()
        if timing is None:
            raise PulseError("the server gave no playback position", PA_ERR_NOENTITY)
        read_index, write_index, sink_s, at = timing
        queued = max(0, (write_index - read_index) // 2)
        start = self._written - min(queued, HISTORY_FRAMES - 1)
        n = min(self.fade_frames, self._written - start)
        total = n + self.period_frames
        if len(self._fade_buf) < total:
            self._fade_buf = np.zeros(total, np.int16)
        buf = self._fade_buf[:total]
        idx = (start + np.arange(n)) % HISTORY_FRAMES
        # The gain curve is fixed at fade_frames; a shorter fade (the server held
        # less than that) takes its steeper tail, which still ends at exact zero.
        gains = self._fade_gain[len(self._fade_gain) - n:]
        buf[:n] = np.rint(self._history[idx] * gains).astype(np.int16)
        buf[n:] = 0
        self._play.replace_queue(buf)
        self.cut_at = at + sink_s + n / self.rate
        self.fade_info = {"sink_ms": round(sink_s * 1000, 2), "queued_frames": queued,
                          "fade_frames": n}

    def _recover(self, last_ok: float, error: str) -> None:
        """The streams failed: reopen them (retrying), then account for the gap."""
        self.last_error = error
        entry: dict[str, Any] = {"at": time.monotonic(), "error": error, "gap_ms": None,
                                 "reopened": False}
        self.reopens.append(entry)
        self._close_streams()
        window_start = time.monotonic()
        while not self._closed and self._active:
            try:
                self._open()
                break
            except PulseError as exc:
                self.last_error = str(exc)
            now = time.monotonic()
            if now - window_start >= REOPEN_WINDOW:
                self._failed.append(now)
                window_start = now
                if (len(self._failed) == MAX_FAILED_REOPENS
                        and now - self._failed[0] <= FAILED_REOPENS_SPAN):
                    self.lost = True
                    return
            time.sleep(RETRY_INTERVAL)
        if self._play is None:
            return
        entry["reopened"] = True
        try:
            self._write(self._zeros[: self.prime_frames])
            self._rec_gap(last_ok, entry)
        except PulseError as exc:
            self.last_error = str(exc)
            self._close_streams()

    def _rec_gap(self, last_ok: float, entry: dict[str, Any]) -> None:
        """Hand the handler the missed time as silent, flagged periods (recorder alignment)."""
        gap = time.monotonic() - last_ok
        periods = max(0, round(gap * self.rate / self.period_frames) - 1)
        entry["gap_ms"] = round(gap * 1000, 1)
        self._mic[:] = 0
        with self._io:
            handler = self._handler
            if handler is None or not self._active:
                return
            for _ in range(periods):
                handler(self._mic, self._out, DEVICE_GAP)
        self._last_ok = time.monotonic()
