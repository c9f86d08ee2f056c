"""The native PulseAudio-protocol backend (PulseAudio, PipeWire's pulse server).

Why: PortAudio 19.6 reaches a sound server only through ALSA's ``pulse``
plugin, where a full-duplex stream spins a core (README.md, "The sound
device"), and stopping it throws away what the server holds, fade included.
This backend speaks the protocol through libpulse's asynchronous API
(``libpulse.so.0``, bound here with ctypes) on one plain ``pa_mainloop`` that
the device's own audio thread iterates: one connection (context), one record
and one playback stream on it, no other thread. (libpulse-simple, used
before, runs a threaded mainloop per stream: two more threads, each woken by
every packet and every read or write.)

Streams: 16 kHz mono s16le. The record stream is the clock. Each period the
audio thread sleeps until the period's microphone is due (a timed sleep, not
``poll``: the server's packets, two or more a period, do not wake it one by
one), takes in everything the server sent without waiting, and when a whole
period is there calls ``handler(mic, out, status)`` and writes ``out`` to the
playback stream, which is kept ``prime_frames`` deep right after each write as
a call starts, and grows by ``RIDE_THROUGH_SECONDS`` of silence in the call's
pauses once it has sounded.
When the period is not complete yet it waits for the rest in ``poll``, and
that arrival re-locks the schedule to the server's clock (``WAKE_CREEP``).
Between calls the record stream is corked (the server records nothing for
us, the thread sleeps), and a call starts by flushing both streams, so no
microphone from before the call reaches it.

Requests from the control thread (start, stop, the hangup ``fade_stop``, the
barge-in ``fade_flush``, close) are plain stores followed by ``_kick``: the
audio thread is woken at once and serves them right away, or right after the
handler call in progress (a few hundred µs at most), never a period later.
Only the audio thread touches libpulse objects once it runs (libpulse is not
thread-safe); the constructor opens and calibrates them before it starts.

Hangup (``fade_stop``) and barge-in (``fade_flush``): the audio thread reads
fresh timing from the server (read and write index, what the sink holds),
then overwrites the queue in place, in one write at the read index, with a
fade (``engine.fade``) of the samples that were about to play, ending at
exact zero, then silence: the fade reaches the speaker continuous with what
played, within a render block of the request (``_fade``). ``fade_stop`` then
stops calling the handler; after ``fade_flush`` the queue is as deep as
before and the call goes on. A fade the server may have applied too late (the
sink took what it was to change first) is counted and reported, not hidden
(``_after_write``).

Stream loss: a failed call, a failed stream or context (server restarted,
stream killed) or a record stream silent for ``STALL_SECONDS`` makes the
audio thread drop the connection and reopen it, retrying every
``RETRY_INTERVAL`` s. When it is back, the handler is called for the missed
time with silent microphone periods flagged ``DEVICE_GAP`` (see
``engine.bridge``), so the recording stays aligned with wall time. A reopen
*fails* when a whole ``REOPEN_WINDOW`` passes without success; after
``MAX_FAILED_REOPENS`` failures within ``FAILED_REOPENS_SPAN`` s the device
gives up (``lost``; ``running`` turns False).

CPU: on a virtual machine a wake-up, a system call and a Python line each
cost several times what they cost on bare metal, and libpulse spends about
six system calls on every packet it reads. Hence one wake-up a period, a
``minreq`` large enough that the server rarely asks for data, and a call's
ordinary periods run in C (``pulse_period.c``, the module ``_pulse_period``
built with the package; ``pulse_state`` holds what both sides share): the
wait, the dispatch, the microphone's copy and the write, with the interpreter
entered only for the handler. Other libpulse calls that never block go through
``ctypes.PyDLL`` (no GIL release and re-take around each).

Units: frames (= samples, mono), seconds of ``time.monotonic()``.
"""

from __future__ import annotations

import ctypes
import os
import select
import shutil
import subprocess
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any, NamedTuple

import numpy as np

from callctl.engine.bridge import DEVICE_GAP, FADE_FLUSH, PeriodHandler
from callctl.engine.devices import DeviceError
from callctl.engine.devices.pulse_state import PeriodState, StateField, period_module
from callctl.engine.fade import fade_for, fade_lengths
from callctl.engine.ring import SAMPLE_RATE
from callctl.engine.threads import ask_realtime, name_os_thread

PA_SAMPLE_S16LE = 3
PA_ERR_TIMEOUT = 8
PA_ERR_CONNECTIONTERMINATED = 11
PA_ERR_BADSTATE = 15
PA_ERR_NODATA = 16
PA_CONTEXT_NOAUTOSPAWN = 1
PA_CONTEXT_READY = 4
PA_CONTEXT_FAILED = 5
PA_CONTEXT_TERMINATED = 6
PA_STREAM_READY = 2
PA_STREAM_FAILED = 3
PA_STREAM_TERMINATED = 4
PA_STREAM_INTERPOLATE_TIMING = 0x0002
PA_STREAM_AUTO_TIMING_UPDATE = 0x0008
STREAM_FLAGS = PA_STREAM_INTERPOLATE_TIMING | PA_STREAM_AUTO_TIMING_UPDATE
"""Not ``PA_STREAM_ADJUST_LATENCY``: the buffer attributes then mean what they say (the
server asks the sink for ``tlength - 2 * minreq`` of latency, the source for ``fragsize``),
see ``PulseDevice._open``."""
PA_OPERATION_RUNNING = 0
PA_SEEK_RELATIVE = 0
PA_SEEK_ABSOLUTE = 1

OUTPUT_UNDERFLOW = 4
"""Status flag handed to the handler after the server reported an underrun
(PortAudio's ``paOutputUnderflow``)."""
INPUT_OVERFLOW = 2
"""Status flag: microphone was dropped because the thread fell a second behind
(PortAudio's ``paInputOverflow``)."""

DEFAULT_PERIOD_SECONDS = 0.020
"""The handler's period (the record stream's fragment), a trade between CPU and how soon
the caller is heard (see ``PulseDevice``)."""
QUEUE_SLACK_SECONDS = 0.010
"""Playback queued at the server right after each write, beyond the period just written
(what the sink holds counted): the slack a late wake-up (or a late server) has before
the speaker runs dry; it also always leaves a full hangup fade behind what the sink
holds (``PulseDevice._fade``)."""
RIDE_THROUGH_SECONDS = 0.060
"""Silence the playback queue grows by during a call, beyond ``QUEUE_SLACK_SECONDS``, so
that it rides through the test rig's machine stalls. ``python -m bench.long_call`` (10
minutes, both cores busy) found each device underrun (3, in two runs) right after one:
41 to 42 ms in which a real-time thread of the sound server (its sink's) waited for a
CPU, while the real-time thread of another process (``testing.stalls.StallWatch``) woke
41 to 45 ms late; no client could have written meanwhile, and the sink then takes the
stall's worth of audio at once. The call starts on the short queue, so its first sound
is not put off: the queue grows in the call's silent periods after that
(``pulse_period.c``, ``deepen``), by at most a period at a time, so a pause in the
agent's voice is drawn out, never cut. A hangup or barge-in fades at the read index,
whatever the depth (``PulseDevice._fade``): this costs the agent's voice latency, not
the hangup's."""
SINK_LATENCY = 0.005
"""Seconds of latency the playback stream asks of the sink (its own buffer, on top of the
stream's queue): what a hangup cannot take back."""
MINREQ_SECONDS = 0.05
"""The playback stream's ``minreq``. Nothing here waits for the server's requests for
more (the record stream is the clock), but each one costs the audio thread two mainloop
iterations: with a large ``minreq`` the server sends one every 50 ms, not one a period.
``tlength`` is then the sink latency plus twice this (see ``PulseDevice._open``)."""
RETRY_INTERVAL = 0.05
"""Seconds between attempts to reopen lost streams."""
UNDERRUN_LOG = 8
"""Underruns ``PulseDevice.underrun_log`` keeps (the last)."""
REOPEN_WINDOW = 1.0
"""Seconds of unsuccessful attempts that count as one failed reopen."""
MAX_FAILED_REOPENS = 3
FAILED_REOPENS_SPAN = 5.0
"""``MAX_FAILED_REOPENS`` failed reopens within this many seconds: the device is lost."""
CONNECT_TIMEOUT = 2.0
"""Seconds one attempt to connect and open both streams may take."""
OP_TIMEOUT = 0.05
"""Seconds the audio thread waits for one server round trip (timing, flush)."""
STALL_SECONDS = 1.0
"""A call's record stream that delivers nothing for this long counts as lost."""
IDLE_WAIT = 0.5
"""Seconds the idle audio thread sleeps in ``poll`` at most (requests wake it at once)."""
WAKE_SLACK = 0.0005
"""Seconds after a period's microphone is due that the audio thread wakes to take it."""
WAKE_CREEP = 0.00005
"""Seconds each period's wake-up moves earlier than the last, until one comes before the
data and waits for it in ``poll``: that arrival re-locks the schedule to the server's clock."""
MIN_FADE_FRAMES = 48
"""The shortest fade that still ends in ``engine.fade``'s quiet tail (two tails long)."""
DEFER_BELOW_FRAMES = 64
"""A hangup or barge-in whose fade could not be this long (the queue too short behind what
the sink may take first) waits for the next period's write (``PulseDevice._defer``): a
fade of ``MIN_FADE_FRAMES`` over an almost empty queue may end loud enough to click, and
an empty one (a CI run's barge-in found the server's queue run dry) cannot fade at all."""
RENDER_MARGIN = 0.0015
"""Seconds: the hangup's write must reach the server at least this long before the sink
takes its next block (see ``PulseDevice._fade``). A write that lands later splices the
block the sink took unfaded onto the middle of the fade: a step, or a click. With
1.5 ms, 3 of about 700 hangups and barge-ins did so in repeated runs of
``tests/engine/test_device_pulse.py`` at 20 ms periods (two of those writes had left
1.8 and 2.0 ms before the sink's next block); 3 ms let none of 224 do so, but in a
whole ``make bench`` run with it (commit 4ebfcda, 10 ms periods) hangup 29 of 30
ended at -16.6 dB (-21.0 dB with 1.5 ms in the two runs before, a9e35a0 and eac99e2)
and the barge-in p99 was 55.8 ms, behind Pipecat's: so 1.5 ms stays, and the splice
is an open problem."""
ORIGIN_AGREE_S = 0.001
"""Seconds two timing readings may disagree on when the stream's first frame played before
a third is taken to decide (``PulseDevice._after_write``)."""
HISTORY_FRAMES = 1 << 14
"""Written samples kept for the hangup fade, frames (1 s at 16 kHz); a power of two."""
CAPTURE_FRAMES = SAMPLE_RATE
"""Microphone received but not yet handed to the handler, at most (frames, 1 s)."""
RT_PRIORITY = 10
"""``SCHED_RR`` priority the audio thread asks for (kept at normal priority if refused)."""


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


_STREAM_NOTIFY = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_void_p)
"""``pa_stream_notify_cb_t``."""

_pulse: Any = None
_pulse_fast: Any = None


def _lib() -> Any:
    """libpulse, its prototypes declared, loaded once; DeviceError when not installed.
    Its calls release the GIL (ctypes.CDLL): for calls that may block."""
    global _pulse, _pulse_fast
    if _pulse is not None:
        return _pulse
    try:
        pulse = ctypes.CDLL("libpulse.so.0")
        fast = ctypes.PyDLL("libpulse.so.0")
    except OSError as exc:
        raise DeviceError(f"libpulse is not installed ({exc}); on Debian: "
                          "apt-get install libpulse0") from None
    vp, ci, cu = ctypes.c_void_p, ctypes.c_int, ctypes.c_uint
    protos: dict[str, tuple[Any, list[Any]]] = {
        "pa_strerror": (ctypes.c_char_p, [ci]),
        "pa_mainloop_new": (vp, []),
        "pa_mainloop_get_api": (vp, [vp]),
        "pa_mainloop_prepare": (ci, [vp, ci]),
        "pa_mainloop_poll": (ci, [vp]),
        "pa_mainloop_dispatch": (ci, [vp]),
        "pa_mainloop_iterate": (ci, [vp, ci, vp]),
        "pa_mainloop_wakeup": (None, [vp]),
        "pa_mainloop_free": (None, [vp]),
        "pa_context_new": (vp, [vp, ctypes.c_char_p]),
        "pa_context_connect": (ci, [vp, ctypes.c_char_p, cu, vp]),
        "pa_context_get_state": (ci, [vp]),
        "pa_context_errno": (ci, [vp]),
        "pa_context_disconnect": (None, [vp]),
        "pa_context_unref": (None, [vp]),
        "pa_stream_new": (vp, [vp, ctypes.c_char_p, ctypes.POINTER(_SampleSpec), vp]),
        "pa_stream_connect_playback": (ci, [vp, ctypes.c_char_p, ctypes.POINTER(_BufferAttr),
                                            cu, vp, vp]),
        "pa_stream_connect_record": (ci, [vp, ctypes.c_char_p, ctypes.POINTER(_BufferAttr), cu]),
        "pa_stream_get_state": (ci, [vp]),
        "pa_stream_disconnect": (ci, [vp]),
        "pa_stream_unref": (None, [vp]),
        "pa_stream_peek": (ci, [vp, ctypes.POINTER(vp), ctypes.POINTER(ctypes.c_size_t)]),
        "pa_stream_drop": (ci, [vp]),
        "pa_stream_write": (ci, [vp, vp, ctypes.c_size_t, vp, ctypes.c_int64, ci]),
        "pa_stream_flush": (vp, [vp, vp, vp]),
        "pa_stream_cork": (vp, [vp, ci, vp, vp]),
        "pa_stream_update_timing_info": (vp, [vp, vp, vp]),
        "pa_stream_get_timing_info": (ctypes.POINTER(_TimingInfo), [vp]),
        "pa_stream_get_latency": (ci, [vp, ctypes.POINTER(ctypes.c_uint64),
                                       ctypes.POINTER(ci)]),
        "pa_stream_get_buffer_attr": (ctypes.POINTER(_BufferAttr), [vp]),
        "pa_stream_set_underflow_callback": (None, [vp, _STREAM_NOTIFY, vp]),
        "pa_operation_get_state": (ci, [vp]),
        "pa_operation_unref": (None, [vp]),
    }
    for lib in (pulse, fast):
        for name, (restype, argtypes) in protos.items():
            fn = getattr(lib, name)
            fn.restype = restype
            fn.argtypes = argtypes
    _pulse, _pulse_fast = pulse, fast
    return pulse


def _fast_lib() -> Any:
    """The same, through ``ctypes.PyDLL``: the calls keep the GIL. For the audio thread's
    calls that never block (all but ``pa_mainloop_poll``): releasing and taking back the
    GIL around each one costs more than the call."""
    _lib()
    return _pulse_fast


class PulseError(OSError):
    """A libpulse call failed; ``code`` is libpulse's error number."""

    def __init__(self, what: str, code: int) -> None:
        text = _lib().pa_strerror(code)
        super().__init__(f"{what}: {text.decode() if text else f'error {code}'}")
        self.code = code


def server_answers(timeout: float = 1.0) -> bool:
    """Whether a PulseAudio-protocol server answers (libpulse's own choice of server,
    so ``$PULSE_SERVER`` counts). Never autospawns one. Bounded by ``timeout`` s."""
    try:
        pulse = _lib()
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


class _Timing(NamedTuple):
    """The playback stream's timing, as the server reported it."""

    read_index: int
    """Bytes: the next the sink takes from the stream."""
    write_index: int
    """Bytes: where the next relative write lands."""
    sink_s: float
    """Seconds the sink still needs to play what it has already taken."""
    at: float
    """When that was true (``time.monotonic()``)."""
    sink_config_s: float
    """The sink's configured latency (s): about the most it takes at once."""
    rtt: float
    """Seconds the question took to answer."""


class _Request:
    """One control-thread request served by the audio thread: ``kind`` is "stop" (the
    hangup fade) or "flush" (the barge-in fade); ``result`` the silence time or None."""

    __slots__ = ("kind", "done", "result", "deferred")

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.done = threading.Event()
        self.result: float | None = None
        self.deferred = False
        """Put off once, to after the next period's write (a hangup, the queue too short)."""


class PulseDevice:
    """See the module docstring. Created, started, stopped and closed by the control thread.

    ``sink``/``source``: PulseAudio names, None for the defaults (``$PULSE_SINK`` /
    ``$PULSE_SOURCE``, else the server's).
    ``period_seconds``: the record fragment, the clock of the handler (10 ms: 160 frames).
    ``queue_seconds``: playback queued at the server right after each write, the period
    just written included (default: the period plus ``QUEUE_SLACK_SECONDS``);
    ``prime_periods``, the older way to say it, means ``(prime_periods + 1) * period``.
    ``fade_seconds``: the hangup and barge-in fade at the device.

    The period is a trade measured on the test rig (2 cores, private PulseAudio,
    echo cancellation on). Each period costs a wake-up and about the same
    libpulse work whatever its length, so the audio process's CPU during a call
    falls as the period grows (``python -m bench.audio_threads --period-ms MS``;
    the figures are in the README): about 4 % of a core at 10 ms, 3 % at 20 ms.
    The hangup does not wait for a period (the fade is written at once); a
    barge-in the agent asks for waits for the handler's next period, so it lands
    later (the README has both ``make bench`` figures). 20 ms is the default, for the
    CPU; ``--period-ms 10`` trades CPU for barge-in time. The queue is the period
    plus ``QUEUE_SLACK_SECONDS`` at any period.
    ``status()["realtime"]`` says whether the audio thread got ``SCHED_RR``.
    """

    backend = "pulse"
    cuts_at_device = True
    handler_may_wait = True

    # Kept in ``_state``, where the C period loop reads and writes them too.
    _cap_fill = StateField("capture_fill")
    """Frames of microphone in ``_cap``, from its start (audio thread)."""
    _written = StateField("written")
    """Frames written to the playback stream since it was opened (audio thread)."""
    _active = StateField("active", bool)
    _session = StateField("session")
    _deepen = StateField("deepen")
    """Frames of silence still to add to the playback queue this call (``RIDE_THROUGH_SECONDS``)."""
    _sounded = StateField("sounded", bool)
    """A period with sound has been written this call: the queue may grow."""
    _need_prime = StateField("need_prime", bool)
    _await_write = StateField("await_write", bool)
    """A hangup was put off until after the next write (``_defer``; audio thread)."""
    _underflowed = StateField("underflowed", bool)
    _status = StateField("status")
    """``OUTPUT_UNDERFLOW`` and the other flags for the handler's next call."""
    _due = StateField("due", float, none_below_zero=True)
    """When the next period's microphone is due (``time.monotonic()``), None: not known."""
    _last_ok = StateField("last_ok", float)
    late_max = StateField("late_max", float)
    """Seconds: the latest a period's write left after its microphone was due, this
    call (wake-up, handler and write; what the queue's slack must cover)."""
    gap_max = StateField("gap_max", float)
    """Seconds: the longest time between two periods' wake-ups this call (the period
    when all is well; longer when the server's microphone data came late)."""

    def __init__(
        self,
        sink: str | None = None,
        source: str | None = None,
        period_seconds: float = DEFAULT_PERIOD_SECONDS,
        prime_periods: int | None = None,
        fade_seconds: float = 0.006,
        queue_seconds: float | None = None,
        ride_through_seconds: float = RIDE_THROUGH_SECONDS,
    ) -> None:
        self._pa = _lib()
        self._fa = _fast_lib()
        self._c = period_module()
        self.rate = SAMPLE_RATE
        self.period_frames = max(16, round(period_seconds * self.rate))
        self.sink, self.source = sink, source
        shown_sink = sink or os.environ.get("PULSE_SINK")
        shown_source = source or os.environ.get("PULSE_SOURCE")
        self.name = "pulse" if not (shown_sink or shown_source) else \
            f"pulse:{shown_sink or ''}" + (f",{shown_source}" if shown_source else "")
        if queue_seconds is None and prime_periods is not None:
            queue_seconds = (max(1, prime_periods) + 1) * self.period_frames / self.rate
        if queue_seconds is None:
            queue_seconds = self.period_frames / self.rate + QUEUE_SLACK_SECONDS
        self.prime_frames = max(self.period_frames + 16, round(queue_seconds * self.rate))
        """Frames queued at the server right after each write (the period written included),
        as a call starts; it grows by ``ride_frames`` of silence once the call has sounded."""
        self.ride_frames = max(0, round(ride_through_seconds * self.rate))
        """Frames of silence the queue grows by in a call (``RIDE_THROUGH_SECONDS``)."""
        self.fade_frames = max(1, round(fade_seconds * self.rate))
        self._handler: PeriodHandler | None = None
        self._mic = np.zeros(self.period_frames, np.int16)
        self._out = np.zeros(self.period_frames, np.int16)
        self._out_ptr = self._out.ctypes.data
        self._zeros = np.zeros(self.prime_frames + self.ride_frames + self.period_frames,
                               np.int16)
        self._zeros_ptr = self._zeros.ctypes.data
        self._cap = np.zeros(CAPTURE_FRAMES, np.int16)
        self._cap_head = self._cap[: self.period_frames]
        """The handler's ``mic``: the period at the head of ``_cap``."""
        self._history = np.zeros(HISTORY_FRAMES, np.int16)
        self._kick_fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        """Written by ``_kick``: it ends the audio thread's own sleeps, the C period wait
        (``PeriodState.kick_fd``) and ``_sleep``."""
        self._state = PeriodState.for_device(self._fa, self._cap, self._history,
                                             self.period_frames, self.rate, self._kick_fd,
                                             WAKE_SLACK, WAKE_CREEP)
        """What the C period loop reads and writes (``pulse_state``); the attributes
        declared as ``StateField`` live there."""
        self._st = ctypes.addressof(self._state)
        self._fade_buf = np.zeros(HISTORY_FRAMES, np.int16)
        self._lat_usec = ctypes.c_uint64()
        self._lat_neg = ctypes.c_int()
        self._lat_args = (ctypes.byref(self._lat_usec), ctypes.byref(self._lat_neg))
        self._on_underflow = _STREAM_NOTIFY(self._underflow)  # kept alive with the device
        # libpulse objects: the mainloop lives as long as the device; the context and
        # the streams are replaced on a reopen. Audio thread only once it runs.
        self._ml: int | None = self._pa.pa_mainloop_new()
        if not self._ml:
            raise DeviceError("cannot create a PulseAudio mainloop")
        self._api = self._pa.pa_mainloop_get_api(self._ml)
        self._ctx: int | None = None
        self._play: int | None = None
        self._rec: int | None = None
        self._rec_corked = False
        # Control-thread requests, read by the audio thread (plain stores under the GIL),
        # each followed by _kick(): ``_kicks`` counts them, so a wake-up that lands
        # between the audio thread's checks and its poll is never lost.
        self._active = False
        self._session = 0
        self._closed = False
        self._kicks = 0
        self._kicks_seen = 0
        self._pending_request: _Request | None = None
        self._await_write = False
        self._defer_until = 0.0
        self._req_lock = threading.Lock()
        self._io = threading.Lock()
        """Held by the audio thread around each period's handler call and write; ``stop``
        takes it to know the handler has returned."""
        # Published by the audio thread.
        self.cut_at: float | None = None
        """When the last fade sample plays (``time.monotonic()``), from the server's latency."""
        self.fade_info: dict[str, Any] | None = None
        self.lost = False
        self.last_error: str | None = None
        self.reopens: list[dict[str, Any]] = []
        """One entry per loss: ``at``, ``error``, ``gap_ms``, ``reopened`` (bool)."""
        self.underruns = 0
        """Times the server reported the playback stream ran dry (during calls)."""
        self.underrun_log: deque[dict[str, float | None]] = deque(maxlen=UNDERRUN_LOG)
        """The last underruns, what the audio thread knew then: ``at`` (when it heard,
        ``time.monotonic()``, the machine's clock); ``since_period_ms``, how
        long since it served a period; ``due_in_ms``, until the next period's microphone
        was due (negative: overdue); ``late_max_ms``, the latest write so far."""
        self.refills = 0
        """Periods after which the queue was found nearly dry and topped up with silence."""
        self.late_fades = 0
        """Hangup and barge-in fades whose write the server may have applied after the
        sink took the first sample it changes (``_after_write``): each may have played
        as a step."""
        self.late_max = 0.0
        self.gap_max = 0.0
        self.realtime: str | None = None
        """The audio thread's scheduling: "SCHED_RR/10", or why it stayed normal."""
        self._failed: deque[float] = deque(maxlen=MAX_FAILED_REOPENS)
        self._last_ok = time.monotonic()
        self._due = None
        self._need_prime = True
        self._underflowed = False
        self._status = 0
        self.output_latency = self.input_latency = self.write_latency = 0.0
        try:
            self._open()
        except PulseError as exc:
            self._pa.pa_mainloop_free(self._ml)
            self._ml = None
            os.close(self._kick_fd)
            self._kick_fd = -1
            raise DeviceError(f"cannot open PulseAudio device {self.name!r}: {exc}") from None
        # From here on only the audio thread touches the connection. It calibrates first
        # (at its own scheduling priority: on a busy machine the control thread's late
        # reads would skew the figures), then serves requests.
        self._calibrated = threading.Event()
        self._open_error: str | None = None
        self._thread = threading.Thread(target=self._run, name="pulse-device", daemon=True)
        self._thread.start()
        if not self._calibrated.wait(CONNECT_TIMEOUT + 3.0) or self._open_error:
            error = self._open_error or "the streams did not start"
            self.close()
            raise DeviceError(f"PulseAudio device {self.name!r} does not run: {error}")

    # -- control thread ---------------------------------------------------------

    @property
    def _pending(self) -> _Request | None:
        """The fade request the audio thread is to serve (under ``_req_lock``). While one
        is pending, and not put off to the next write, the handler is not called
        (``PeriodState.pending``): the request is served first."""
        return self._pending_request

    @_pending.setter
    def _pending(self, request: _Request | None) -> None:
        self._pending_request = request
        self._state.pending = request is not None

    @property
    def running(self) -> bool:
        return self._active and not self.lost

    def set_handler(self, handler: PeriodHandler) -> None:
        """Install the per-period handler; control thread, before ``start``."""
        self._handler = handler

    def start(self) -> None:
        """Start calling the handler, from freshly flushed streams (control thread)."""
        if self._closed:
            raise DeviceError("the PulseAudio device is closed")
        self.lost = False
        self._failed.clear()
        self.late_max = self.gap_max = 0.0
        self._session += 1
        self._active = True
        self._kick()

    def stop(self) -> None:
        """Stop: when this returns the handler is not running and will not run again.
        Control thread; waits at most for the handler call in progress."""
        self._active = False
        self._kick()
        with self._io:
            pass

    def fade_stop(self, timeout: float) -> float | None:
        """Hangup at the device: the audio thread, woken at once, fades what the server is
        playing to zero (``_fade``) and stops calling the handler. Returns the time the
        output goes silent (``time.monotonic()``, the last fade sample's play time as
        the server reports it), or None if the device was not running or the fade
        failed; either way the device is stopped when this returns. Waits at most
        ``timeout`` s. Control thread only."""
        if not self.running:
            self.stop()
            return None
        result = self._ask("stop", timeout)
        self.stop()
        return result

    def fade_flush(self, timeout: float,
                   ask_handler: Callable[[], object] | None = None) -> float | None:
        """Barge-in at the device: the audio thread, woken at once, fades what the server
        is playing to zero and refills the queue with silence to the depth it had; the
        stream runs on and the next period plays whatever the handler writes.
        ``ask_handler`` asks the handler to drop its own queued audio
        (``DuplexCallback.request_flush``): it runs between two handler calls, with the
        request registered, and the handler is not called again before the fade is
        served (``_ask``), so nothing older is written after the fade, and a fade put
        off to the next write (``_defer``) finds the flush still pending in the handler.
        Returns the time the fade's last sample plays (``time.monotonic()``), or None if
        not running or the fade failed (the stream runs on unfaded). Waits at most
        ``timeout`` s. Control thread only."""
        if not self.running:
            if ask_handler is not None:
                ask_handler()
            return None
        return self._ask("flush", timeout, ask_handler)

    def fade_flush_soon(self) -> None:
        """Barge-in at the device, asked from the handler itself (the agent flushed the
        ring, ``DuplexCallback.on_agent_flush``): right after this period's write, the
        audio thread fades what the server holds, as ``fade_flush`` does, and nobody
        waits for it. Audio thread only, inside the handler. A fade already asked for
        (a hangup's) is left as it is."""
        with self._req_lock:
            if self._pending is None:
                self._pending = _Request("flush")
        self._kick()

    def close(self) -> None:
        """Stop, end the audio thread (bounded wait), free the connection. Control thread."""
        self.stop()
        self._closed = True
        self._kick()
        self._thread.join(timeout=2.0)
        if not self._thread.is_alive() and self._ml is not None:
            self._close_link()
            ml, self._ml = self._ml, None
            self._pa.pa_mainloop_free(ml)
            fd, self._kick_fd = self._kick_fd, -1
            os.close(fd)

    def status(self) -> dict[str, Any]:
        """For the audio process's ``status``: losses and reopens so far, the server's
        reported underruns, the audio thread's scheduling. Any thread."""
        return {"reopens": list(self.reopens), "last_device_error": self.last_error,
                "lost": self.lost, "device_underruns": self.underruns,
                "underrun_log": list(self.underrun_log),
                "device_refills": self.refills, "late_fades": self.late_fades,
                "realtime": self.realtime,
                "queue_ms": round(self.prime_frames * 1000 / self.rate, 1),
                "queue_grown_ms": round((self.ride_frames - self._deepen) * 1000 / self.rate, 1),
                "write_latency_ms": round(self.write_latency * 1000, 2),
                "late_max_ms": round(self.late_max * 1000, 2),
                "wake_gap_max_ms": round(self.gap_max * 1000, 2)}

    def _kick(self) -> None:
        """Wake the audio thread (it re-reads every request)."""
        self._kicks += 1
        if self._kick_fd >= 0:
            os.eventfd_write(self._kick_fd, 1)
        ml = self._ml
        if ml is not None:
            self._pa.pa_mainloop_wakeup(ml)

    def _sleep(self, timeout: float) -> None:
        """Sleep at most ``timeout`` s with no connection to poll; a kick ends it, as it
        ends the C period wait (audio thread)."""
        if select.select([self._kick_fd], [], [], timeout)[0]:
            try:
                os.eventfd_read(self._kick_fd)
            except BlockingIOError:  # another reader took it: nothing to drain
                pass

    def _ask(self, kind: str, timeout: float,
             ask_handler: Callable[[], object] | None = None) -> float | None:
        """Register a fade request (``ask_handler`` with it, between two handler calls)
        and wait for the audio thread to serve it, at most ``timeout`` s."""
        request = _Request(kind)
        with self._io, self._req_lock:
            self._pending = request
            if ask_handler is not None:
                ask_handler()
        self._kick()
        if not request.done.wait(timeout):
            with self._req_lock:
                if self._pending is request:
                    self._pending = None
            return None
        return request.result

    # -- the connection (audio thread once running; control thread before) -------

    def _open(self) -> None:
        """Connect a context and both streams; PulseError (everything freed) if not ready
        within ``CONNECT_TIMEOUT``. The record stream starts uncorked."""
        pa = self._pa
        self._close_link()
        deadline = time.monotonic() + CONNECT_TIMEOUT
        ctx = pa.pa_context_new(self._api, b"callctl")
        if not ctx:
            raise PulseError("cannot create a context", PA_ERR_BADSTATE)
        self._ctx = ctx
        # server None: libpulse picks it ($PULSE_SERVER, client.conf, the session's).
        if pa.pa_context_connect(ctx, None, 0, None) < 0:
            raise self._fail("cannot connect to the sound server")
        while pa.pa_context_get_state(ctx) != PA_CONTEXT_READY:
            if pa.pa_context_get_state(ctx) in (PA_CONTEXT_FAILED, PA_CONTEXT_TERMINATED):
                raise self._fail("cannot connect to the sound server")
            if time.monotonic() > deadline:
                raise self._fail("the sound server did not answer", PA_ERR_TIMEOUT)
            self._iterate(0.05)
        frame_bytes = 2
        period = self.period_frames * frame_bytes
        spec = _SampleSpec(PA_SAMPLE_S16LE, self.rate, 1)
        rec_attr = _BufferAttr(maxlength=self.rate * frame_bytes,  # 1 s
                               tlength=0xFFFFFFFF, prebuf=0xFFFFFFFF, minreq=0xFFFFFFFF,
                               fragsize=period)
        # Without PA_STREAM_ADJUST_LATENCY, PulseAudio (and PipeWire's pulse server)
        # ask the sink for tlength - 2 * minreq of latency: SINK_LATENCY here. The
        # queue itself is whatever this thread keeps written (prime_frames).
        sink = round(SINK_LATENCY * self.rate)
        minreq = round(MINREQ_SECONDS * self.rate)
        play_attr = _BufferAttr(
            maxlength=0xFFFFFFFF,
            tlength=(sink + 2 * minreq) * frame_bytes,
            prebuf=period,  # after a flush or an underrun: play once data is there again
            minreq=minreq * frame_bytes,
            fragsize=0xFFFFFFFF)
        self._rec = pa.pa_stream_new(ctx, b"microphone", ctypes.byref(spec), None)
        if not self._rec:
            raise self._fail("cannot create the microphone stream")
        self._play = pa.pa_stream_new(ctx, b"speaker", ctypes.byref(spec), None)
        if not self._play:
            raise self._fail("cannot create the speaker stream")
        # device None: $PULSE_SINK / $PULSE_SOURCE, else the server's default.
        if pa.pa_stream_connect_record(self._rec, self.source.encode() if self.source else None,
                                       ctypes.byref(rec_attr), STREAM_FLAGS) < 0:
            raise self._fail("cannot open the microphone stream")
        if pa.pa_stream_connect_playback(self._play, self.sink.encode() if self.sink else None,
                                         ctypes.byref(play_attr), STREAM_FLAGS, None, None) < 0:
            raise self._fail("cannot open the speaker stream")
        pa.pa_stream_set_underflow_callback(self._play, self._on_underflow, None)
        for stream, what in ((self._rec, "microphone"), (self._play, "speaker")):
            while (state := pa.pa_stream_get_state(stream)) != PA_STREAM_READY:
                if state in (PA_STREAM_FAILED, PA_STREAM_TERMINATED):
                    raise self._fail(f"cannot open the {what} stream")
                if time.monotonic() > deadline:
                    raise self._fail(f"the {what} stream did not open", PA_ERR_TIMEOUT)
                self._iterate(0.05)
        self._state.link(self._ml, self._rec, self._play)
        self._rec_corked = False
        self._written = 0
        self._cap_fill = 0

    def _fail(self, what: str, code: int | None = None) -> PulseError:
        """The error for ``what`` (libpulse's own reason unless ``code``); frees the link."""
        if code is None:
            code = self._pa.pa_context_errno(self._ctx) if self._ctx else PA_ERR_BADSTATE
        self._close_link()
        return PulseError(what, code or PA_ERR_BADSTATE)

    def _close_link(self) -> None:
        pa = self._pa
        self._state.link(None, None, None)
        for stream in (self._play, self._rec):
            if stream:
                if pa.pa_stream_get_state(stream) == PA_STREAM_READY:
                    pa.pa_stream_disconnect(stream)
                pa.pa_stream_unref(stream)
        self._play = self._rec = None
        if self._ctx:
            pa.pa_context_disconnect(self._ctx)
            pa.pa_context_unref(self._ctx)
            self._ctx = None

    def _healthy(self) -> bool:
        pa = self._pa
        # A failed context fails its streams.
        return bool(self._play and self._rec
                    and pa.pa_stream_get_state(self._rec) == PA_STREAM_READY
                    and pa.pa_stream_get_state(self._play) == PA_STREAM_READY)

    def _error(self, what: str) -> PulseError:
        code = self._pa.pa_context_errno(self._ctx) if self._ctx else 0
        return PulseError(what, code or PA_ERR_CONNECTIONTERMINATED)

    def _iterate(self, timeout: float) -> None:
        """One mainloop iteration: sleep in ``poll`` at most ``timeout`` s (0: don't),
        then dispatch (send queued writes, take in what the server sent)."""
        pa, ml = self._pa, self._ml
        if pa.pa_mainloop_prepare(ml, int(timeout * 1e6)) < 0:
            raise PulseError("mainloop", PA_ERR_BADSTATE)
        if self._kicks != self._kicks_seen:
            # A request came after the checks: prepare() just cleared its wake-up.
            pa.pa_mainloop_wakeup(ml)
        if pa.pa_mainloop_poll(ml) < 0:
            raise PulseError("mainloop poll", PA_ERR_BADSTATE)
        if pa.pa_mainloop_dispatch(ml) < 0:
            raise PulseError("mainloop dispatch", PA_ERR_BADSTATE)

    def _wait_op(self, op: int | None, what: str, timeout: float = OP_TIMEOUT,
                 required: bool = True) -> None:
        """Iterate until the operation ``op`` completes (at most ``timeout`` s); frees it.
        PulseError if it could not be sent, or (when ``required``) did not complete."""
        if not op:
            raise self._error(what)
        pa = self._pa
        deadline = time.monotonic() + timeout
        try:
            while pa.pa_operation_get_state(op) == PA_OPERATION_RUNNING:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    if required:
                        raise PulseError(what, PA_ERR_TIMEOUT)
                    return
                self._iterate(remaining)
        finally:
            pa.pa_operation_unref(op)

    def _cork_rec(self, corked: bool) -> None:
        if self._rec_corked != corked and self._rec:
            op = self._pa.pa_stream_cork(self._rec, int(corked), None, None)
            if not op:
                raise self._error("cork")
            self._pa.pa_operation_unref(op)
            self._rec_corked = corked

    def _pull(self) -> None:
        """Move what the record stream received into ``_cap`` (no wait)."""
        if self._c.pull(self._st) < 0:
            raise self._error("read")
        self._take_overrun()

    def _take_overrun(self) -> None:
        """Microphone was dropped because ``_cap`` was full (the thread fell a second
        behind; the C side kept the newest): the handler is told (``INPUT_OVERFLOW``)."""
        if self._state.overrun:
            self._state.overrun = 0
            self._status |= INPUT_OVERFLOW

    def _write(self, samples: np.ndarray, ptr: int | None = None, offset: int = 0,
               seek: int = PA_SEEK_RELATIVE) -> None:
        """Queue ``samples`` (contiguous int16) on the playback stream (sent at the next
        iteration; by default after what was written before) and keep them in the
        history the fade reads, at ``_written``."""
        if self._c.write(self._st, samples.ctypes.data if ptr is None else ptr,
                         len(samples), offset, seek) < 0:
            raise self._error("write")

    def _latency(self, stream: int | None) -> float | None:
        """Seconds (interpolated, no round trip): playback, until a sample written now
        plays; record, of the data queued. None when the server has not said yet."""
        if not stream or self._pa.pa_stream_get_latency(stream, *self._lat_args) < 0:
            return None
        value = self._lat_usec.value / 1e6
        return -value if self._lat_neg.value else value

    def _underflow(self, stream: int, userdata: int) -> None:
        """libpulse's underflow callback (audio thread, in dispatch). Counted from a
        call's first write on (before it, the queue is the last call's, or calibration's,
        running out)."""
        if self._active and not self._need_prime:
            self.underruns += 1
            self._underflowed = True
            now = time.monotonic()
            due = self._due
            self.underrun_log.append({
                "at": round(now, 4),
                "since_period_ms": round((now - self._last_ok) * 1000, 2),
                "due_in_ms": None if due is None else round((due - now) * 1000, 2),
                "late_max_ms": round(self.late_max * 1000, 2)})

    def _calibrate(self) -> tuple[float, float]:
        """Run silence for a dozen periods; the server's latencies right after a write/read.

        Output: seconds from a period's write to its first sample playing, as the
        ``AudioDevice`` contract has it: the server's latency right after the write
        (that of the sample written last: the queue, ``prime_frames``, and what the
        sink holds) less the period. Input: the record stream's latency right after
        a read (0 when the server reports a negative one, as for a monitor source).
        Leaves the record stream corked (idle).
        """
        self._prime()
        outs: list[float] = []
        ins: list[float] = []
        deadline = time.monotonic() + 3.0
        while len(outs) < 12:
            if time.monotonic() > deadline:
                raise PulseError("the streams do not run", PA_ERR_TIMEOUT)
            self._pull()
            if self._cap_fill < self.period_frames:
                self._iterate(0.1)
                continue
            lat_in = self._latency(self._rec)
            self._cap_fill = 0
            if self._need_prime:
                self._prime_playback()
            self._write(self._zeros[: self.period_frames], self._zeros_ptr)
            self._iterate(0)
            lat_out = self._latency(self._play)
            if lat_in is not None and lat_out is not None:
                ins.append(max(0.0, lat_in))
                outs.append(lat_out)
        self._cork_rec(True)
        self._iterate(0)
        self._written = 0
        self.write_latency = float(np.median(outs[4:]))
        """Seconds from a write to its last sample playing (the server's own figure)."""
        return (max(0.0, self.write_latency - self.period_frames / self.rate),
                float(np.median(ins[4:])))

    # -- audio thread -----------------------------------------------------------

    def _run(self) -> None:
        name_os_thread()
        self._realtime()
        try:
            self.output_latency, self.input_latency = self._calibrate()
        except PulseError as exc:
            self._open_error = str(exc)
            self._close_link()
            return
        finally:
            self._calibrated.set()
        session = -1
        while not self._closed:
            self._kicks_seen = self._kicks
            try:
                if self._pending is not None and not (
                        self._await_write and time.monotonic() < self._defer_until):
                    self._serve()
                if not self._active or self.lost:
                    if session != -1:
                        session = -1
                        self._go_idle()
                    self._idle_wait()
                    continue
                if session != self._session:
                    session = self._session
                    self._last_ok = time.monotonic()  # a gap is counted from here
                    if not self._healthy():
                        raise self._error("the stream failed")
                    self._prime()
                self._call(session)
            except PulseError as exc:
                if self._active and not self._closed:
                    self._recover(self._last_ok, str(exc))
                else:
                    self.last_error = str(exc)
                    self._close_link()  # reopened at the next start
                    session = -1

    def _idle_wait(self) -> None:
        """Between calls: sleep until a request (or ``IDLE_WAIT``), taking in what the
        server sends meanwhile; a connection that fails now is reopened at the next start."""
        if self._ctx is not None:
            self._iterate(IDLE_WAIT)
            if not self._healthy():
                self._close_link()
        elif self._kicks == self._kicks_seen:
            self._sleep(IDLE_WAIT)

    def _call(self, session: int) -> None:
        """A call's periods, until a request needs the outer loop (audio thread).

        Each period the thread sleeps until the period's microphone is due (not in
        ``poll``: the server's packets do not wake it one by one), takes in what the
        server sent without waiting, and if a whole period is there calls the handler
        and writes; if not, it waits in ``poll`` for the rest, and that arrival sets the
        schedule (``WAKE_CREEP`` brings it back there every few periods, so the
        schedule follows the server's clock). Ordinary periods run in C
        (``run_periods``); a period that is not ordinary (see ``pulse_period.c``)
        comes back here and is served by ``_period``.
        """
        c = self._c
        run_periods, st, io = c.run_periods, self._st, self._io
        mic, out, out_ptr = self._cap_head, self._out, self._out_ptr
        kicked, short, stopped, refill = c.KICKED, c.SHORT, c.STOPPED, c.REFILL
        kicks = self._kicks_seen
        while True:
            rc = run_periods(st, session, self._handler, mic, out, out_ptr,
                             io.acquire, io.release)
            if rc == kicked:
                if self._kicks != kicks:
                    return
                continue
            if rc == stopped:
                return
            if rc == refill:
                self._refill()
                continue
            if rc < 0:
                raise self._error("read" if rc == c.READ_FAILED else "write")
            if self._state.overrun:
                self._take_overrun()
            if rc == short:  # not a whole period yet
                if self._state.woke - self._last_ok > STALL_SECONDS:
                    raise PulseError("no microphone data", PA_ERR_TIMEOUT)
                self._due = None  # the arrival it waits for is the new phase reference
                self._iterate(0.1)
                if self._kicks != kicks or (self._await_write
                                            and time.monotonic() >= self._defer_until):
                    return
                continue
            if not self._period(session):
                return

    def _period(self, session: int) -> bool:
        """Serve the whole periods in ``_cap`` that ``run_periods`` left to Python (the
        call's first, flags for the handler, a deferred hangup, an underrun); False
        when ``_call`` must return."""
        p = self.period_frames
        cap, mic, out = self._cap, self._cap_head, self._out
        due, now = float(self._state.due), float(self._state.woke)
        fill = self._cap_fill
        while fill >= p:
            status = self._status
            self._status = 0
            with self._io:
                if not self._active or session != self._session or (
                        self._pending is not None and not self._await_write):
                    return False
                if self._need_prime:
                    self._prime_playback()
                handler = self._handler
                if handler is None:
                    out[:] = 0
                else:
                    handler(mic, out, status)
                self._write(out, self._out_ptr)
            fill -= p
            if fill:
                cap[:fill] = cap[p : p + fill]
            self._cap_fill = fill
        self._fa.pa_mainloop_iterate(self._ml, 0, None)  # the writes leave now
        if self._await_write:  # a hangup waited for this write (``_defer``)
            self._await_write = False
            return False
        self._c.finish_period(self._st, due, now)  # as run_periods does after its own
        if self._underflowed:
            self._refill()
        return True

    def _realtime(self) -> None:
        """Ask for ``SCHED_RR`` for this thread: the period's work then preempts whatever
        else the machine runs. Refused (no privilege) means normal scheduling."""
        self.realtime = ask_realtime(RT_PRIORITY)

    def _refill(self) -> None:
        """The server said the playback queue ran dry (the thread or the server was
        late): top it up with silence to the depth it had (``prime_frames`` and what it
        has grown by, ``_deepen``; what the sink holds counted),
        or playback would go on starving period by period; the handler is told
        (``OUTPUT_UNDERFLOW``). The queue may have filled again meanwhile (late
        microphone comes in a burst, and so do the periods written for it): then
        nothing is added."""
        self._underflowed = False
        self._status |= OUTPUT_UNDERFLOW
        t = self._timing()
        held = max(0, (t.write_index - t.read_index) // 2) + round(t.sink_s * self.rate)
        depth = self.prime_frames + self.ride_frames - self._deepen  # grown so far
        missing = min(depth - held, depth - self.period_frames)
        if missing >= 16:
            self.refills += 1
            with self._io:
                if self._active:
                    self._write(self._zeros[:missing], self._zeros_ptr)
            self._pa.pa_mainloop_iterate(self._ml, 0, None)

    def _prime(self) -> None:
        """Start of a call (or a reopen, or calibration): uncork the record stream and drop
        what it holds; the playback stream is flushed and primed with the first period
        (``_prime_playback``), so that the queue is ``prime_frames`` deep right after
        every write, whatever the phase of the record clock."""
        self._cork_rec(False)
        op = self._pa.pa_stream_flush(self._rec, None, None)
        # Microphone that arrives before the flush's reply was recorded before it (a
        # server too slow to answer in time lets a little of it through, no more).
        self._wait_op(op, "flush", 0.1, required=False)
        self._pull()
        self._cap_fill = 0
        self._need_prime = True
        self._underflowed = False
        self._status = 0
        self._due = None
        self._last_ok = time.monotonic()

    def _prime_playback(self) -> None:
        pa = self._pa
        op = pa.pa_stream_flush(self._play, None, None)
        if not op:
            raise self._error("flush")
        pa.pa_operation_unref(op)
        self._write(self._zeros[: self.prime_frames - self.period_frames], self._zeros_ptr)
        self._deepen, self._sounded = self.ride_frames, False
        self._need_prime = False
        self._underflowed = False

    def _go_idle(self) -> None:
        """A call ended: cork the record stream (the server stops recording for us)."""
        if self._healthy():
            self._cork_rec(True)
            self._iterate(0)
        self._cap_fill = 0

    def _serve(self) -> None:
        """Answer the control thread's pending fade request (see ``fade_stop``)."""
        with self._req_lock:
            request, self._pending = self._pending, None
        if request is None:
            return
        answered = True
        try:
            if self._active and not self.lost and self._healthy():
                stop = request.kind == "stop"
                result = self._fade(stop, may_defer=not request.deferred)
                if result is None:
                    answered = False
                    self._defer(request)
                else:
                    request.result = result
                    if self.fade_info is not None:
                        self.fade_info["deferred"] = request.deferred
        except PulseError as exc:
            self.last_error = str(exc)
            if not self._healthy():
                raise  # the connection failed: reopen it (a call goes on)
        finally:
            if answered:
                if request.kind == "stop":
                    self._active = False
                request.done.set()

    def _defer(self, request: _Request) -> None:
        """Serve ``request`` again after the next period's write, or two periods from now
        at the latest (``_call`` returns then). The handler writes the voice that
        follows faded to zero: after a hangup because it was told to hang up, after a
        barge-in because the next call says ``FADE_FLUSH`` (else it would write
        silence, and the short queue would end in a step). The queue then holds voice
        enough for a whole fade."""
        request.deferred = True
        if request.kind == "flush":
            self._status |= FADE_FLUSH
        with self._req_lock:
            if self._pending is None:
                self._pending = request
        self._defer_until = time.monotonic() + 2 * self.period_frames / self.rate
        self._await_write = True

    def _timing(self) -> _Timing:
        """Playback timing fresh from the server (one round trip, ``OP_TIMEOUT`` at most)."""
        pa = self._pa
        asked = time.monotonic()
        self._wait_op(pa.pa_stream_update_timing_info(self._play, None, None), "timing")
        info = pa.pa_stream_get_timing_info(self._play)
        if not info or info.contents.write_index_corrupt or info.contents.read_index_corrupt:
            raise PulseError("the server gave no playback position", PA_ERR_NODATA)
        t = info.contents
        now = time.monotonic()
        # The stamp is wall-clock time (pa_gettimeofday).
        age = time.time() - (t.timestamp.tv_sec + t.timestamp.tv_usec / 1e6)
        return _Timing(int(t.read_index), int(t.write_index), t.sink_usec / 1e6, now - age,
                       t.configured_sink_usec / 1e6, now - asked)

    def _fade(self, stop: bool, may_defer: bool = False) -> float | None:
        """Replace what the server holds by a fade of it, to exact zero, then silence.
        Returns when the fade's last sample plays (``time.monotonic()``); None, having
        written nothing, when ``may_defer`` and the fade could not be
        ``DEFER_BELOW_FRAMES`` long (``_defer``).

        What the sink has already taken plays out (a block at most); the queue behind
        it is overwritten in place (one write at the read index, ``PA_SEEK_ABSOLUTE``)
        by the fade of the samples that were there, then silence: up to the end of
        the queue and a period more when ``stop``; when not, exactly to the end of
        the queue, so the write index does not move and the handler's next period
        lands where it would have, at the same latency. Nothing is flushed: the
        stream never runs empty, so the sink cannot play a gap (a hard step to zero)
        between a flush and the write.

        Which samples those are comes from the server's read index, read just
        before. If the sink takes its next block before the write reaches the
        server, the part of the write before the new read index is dropped (the
        server skips writes into the past); so when that block is due before the
        write surely lands (``RENDER_MARGIN`` s, or twice the round trip the reading
        took when the server is slow), the write starts with the blocks the sink may
        take by then as they were, unfaded, and the fade after them: played or
        skipped, the waveform stays continuous. Choosing the fade's length
        (``engine.fade.fade_for``: 3 to 8 ms, from the samples it fades) counts in
        that time.
        """
        t = self._timing()
        queued = max(0, (t.write_index - t.read_index) // 2)
        q = min(queued, HISTORY_FRAMES - 1, self._written)
        start = self._written - q
        due = t.sink_s - (time.monotonic() - t.at)  # until the sink takes its next block
        lands = max(RENDER_MARGIN, 2 * t.rtt)  # until the write surely reaches the server
        hold = self._hold(t, q, due, lands)
        if may_defer and q - hold < DEFER_BELOW_FRAMES:
            return None
        for _ in range(3):
            planned = time.monotonic()
            buf, n, tail_frames, tail_db, ending_db = self._faded_queue(t, q, start, hold,
                                                                         stop)
            # Choosing the fade took time too: when the write would now land after the
            # sink takes the first sample it fades, plan again (which takes as long),
            # holding what the sink may take by the time this write lands.
            left = t.sink_s + hold / self.rate - (time.monotonic() - t.at)
            if left >= lands or hold >= q - MIN_FADE_FRAMES:
                break
            spent = time.monotonic() - planned
            hold = max(hold + 1, self._hold(t, q, t.sink_s - (time.monotonic() - t.at),
                                            lands + spent))
            hold = min(hold, q - MIN_FADE_FRAMES)
        total = len(buf)
        if total:
            self._written = start
            self._write(buf, offset=t.read_index, seek=PA_SEEK_ABSOLUTE)
            self._pa.pa_mainloop_iterate(self._ml, 0, None)  # it leaves now
        sent = time.monotonic()
        faded_from = t.at + t.sink_s + hold / self.rate
        late, origin = False, self._origin(t)
        if total:
            late, origin = self._after_write(t, faded_from)
        if late:
            self.late_fades += 1
        # When the last faded sample plays: where it lies in the stream, on the clock.
        self.cut_at = origin + (t.read_index // 2 + hold + n) / self.rate
        self.fade_info = {"sink_ms": round(t.sink_s * 1000, 2), "queued_frames": queued,
                          "due_ms": round(due * 1000, 2),
                          "sent_after_ms": round((sent - t.at) * 1000, 2),
                          "hold_frames": hold, "fade_frames": n, "written_frames": total,
                          "tail_frames": tail_frames, "tail_db": round(tail_db, 1),
                          "ending_db": round(ending_db, 1) if np.isfinite(ending_db) else None,
                          "rtt_ms": round(t.rtt * 1000, 2),
                          "left_before_ms": round((faded_from - sent) * 1000, 2), "late": late,
                          "reading_off_ms": round((origin - self._origin(t)) * 1000, 2)}
        return self.cut_at

    def _origin(self, t: _Timing) -> float:
        """When the stream's first frame played, by the reading ``t``
        (``time.monotonic()``): any frame ``i`` plays at ``origin + i / rate``."""
        return t.at + t.sink_s - t.read_index / (2 * self.rate)

    def _after_write(self, before: _Timing, faded_from: float) -> tuple[bool, float]:
        """One more reading of the timing, after the fade's write (so the silence does
        not wait for it). Returns whether the write may have landed too late and the
        stream's clock origin (``_origin``) to place the fade's end by.

        Late: the server answers a timing request only after it has applied every
        write sent before it, so its answer's time stamp bounds when the fade landed.
        A stamp after ``faded_from`` (when the sink was due to take the first sample
        the fade changes, ``time.monotonic()``) means the sink may have taken that
        sample as it was: the step the fade was written to avoid. The thread or the
        server was held up (a stalled machine), or the server answered too slowly to
        tell: either way it is counted (``late_fades``) and reported
        (``fade_info["late"]``).

        Origin: two readings a millisecond apart should place the stream on the clock
        alike. A reading now and then does not: tests saw the one ``before`` the write
        place the fade's end 3.3 ms (in a CI run 10 ms) later than an observer heard
        it, and the reading after the write agree with the observer. When the two
        differ by more than ``ORIGIN_AGREE_S``, a third decides (the median)."""
        try:
            after = self._timing()
            origins = [self._origin(before), self._origin(after)]
            if abs(origins[1] - origins[0]) > ORIGIN_AGREE_S:
                origins.append(self._origin(self._timing()))
            return after.at > faded_from, float(np.median(origins))
        except PulseError:
            if not self._healthy():
                raise
            return True, self._origin(before)

    def _hold(self, t: _Timing, q: int, due: float, lands: float) -> int:
        """Frames at the read index to write back as they were, unfaded: the blocks the
        sink may take in the ``lands`` s before the write reaches the server, when its
        next block is ``due`` s away; 0 when it is due later than that."""
        if due >= lands:
            return 0
        block = max(16, round(max(t.sink_config_s, t.sink_s) * self.rate))
        blocks = 1 + int((lands - max(0.0, due)) * self.rate / block)
        return max(0, min(blocks * block, q - MIN_FADE_FRAMES))

    def _faded_queue(self, t: _Timing, q: int, start: int, hold: int,
                     stop: bool) -> tuple[np.ndarray, int, int, float, float]:
        """What to write at the read index: ``hold`` frames as they were, the fade
        (``engine.fade.fade_for``) of what follows, then silence (see ``_fade``).
        Returns the buffer (a view of ``_fade_buf``), the fade's length in frames, its
        tail (frames, dB) and its last audible millisecond re what was heard (dB,
        ``fade_for``'s ``ending_db``)."""
        lengths = [f for f in fade_lengths(self.fade_frames) if f <= q - hold] or [q - hold]
        idx = (start + np.arange(hold + max(lengths))) % HISTORY_FRAMES
        ahead = self._history[idx]  # what the queue holds, from the read index
        # What the listener heard just before the request: the samples the sink played
        # before what it holds now, 10 ms of them (the quieter of two windows 2 ms apart:
        # the request came a millisecond or more after the listener's moment).
        sink_frames = round(t.sink_s * self.rate)
        heard_peak = min(self._peak_before(start - sink_frames - shift) for shift in (0, 32))
        if hold >= MIN_FADE_FRAMES:
            before = ahead[hold - MIN_FADE_FRAMES : hold]
        else:
            before = self._history[(start - MIN_FADE_FRAMES + np.arange(MIN_FADE_FRAMES))
                                   % HISTORY_FRAMES]
        # A shorter fade (the server held less) is a whole curve of its own, not the
        # tail of the long one: that would start below 1, a step in the waveform.
        gains, tail_frames, tail_db, ending_db = fade_for(ahead[hold:], before, heard_peak,
                                                          lengths)
        n = len(gains)
        total = max(q, hold + n + self.period_frames) if stop else q
        if total > len(self._fade_buf):
            self._fade_buf = np.zeros(total, np.int16)
        buf = self._fade_buf[:total]
        buf[:hold] = ahead[:hold]
        buf[hold : hold + n] = np.rint(ahead[hold : hold + n] * gains).astype(np.int16)
        buf[hold + n :] = 0
        return buf, n, tail_frames, tail_db, ending_db

    def _peak_before(self, end: int) -> float:
        """Peak magnitude of the 10 ms written before frame ``end`` (a ``_written`` count)."""
        window = (end - self.rate // 100 + np.arange(self.rate // 100)) % HISTORY_FRAMES
        return float(np.abs(self._history[window].astype(np.int32)).max())

    def _recover(self, last_ok: float, error: str) -> None:
        """The connection failed: reopen it (retrying), then account for the gap."""
        self.last_error = error
        entry: dict[str, Any] = {"at": time.monotonic(), "error": error, "gap_ms": None,
                                 "reopened": False}
        self.reopens.append(entry)
        self._close_link()
        window_start = time.monotonic()
        while not self._closed and self._active:
            self._kicks_seen = self._kicks
            if self._pending is not None:
                self._serve()  # no stream: the fade fails at once (None)
                continue
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
            if self._kicks == self._kicks_seen:
                self._sleep(RETRY_INTERVAL)
        if self._play is None:
            return
        entry["reopened"] = True
        try:
            self._prime()
            self._rec_gap(last_ok, entry)
            self._last_ok = time.monotonic()
        except PulseError as exc:
            self.last_error = str(exc)
            self._close_link()

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
