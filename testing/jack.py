"""A private JACK server and an external JACK observer, for tests and benchmarks.

PortAudio is callctl's backend on JACK, so it is tested against a real JACK
server that a fixture starts, with an observer *outside* the engine recording
what was played (the figures as ``testing/measure.py`` defines them).

``JackServer``
    ``jackd -n NAME -R|-r -d dummy -r 16000 -p 160``: JACK 2 (Debian ``jackd2``)
    with the dummy driver, which runs the graph once per period, clocked in
    real time, with no sound card. ``NAME`` is unique per server, so parallel
    runs and other engineers' servers never meet. ``child_env()`` gives a
    child process ``JACK_DEFAULT_SERVER=NAME`` (libjack, and so PortAudio's
    JACK host API, connects to that server) and ``JACK_NO_START_SERVER=1``
    (nobody auto-starts a stray ``default`` server). Under it, PortAudio 19.6
    lists one JACK device, ``system`` (2 in, 2 out, 16000 Hz), and a stream
    opened on it registers a JACK client ``PortAudio`` (``PortAudio-01``, ...
    when the name is taken) with ports ``in_0``, ``out_0``, ... that it connects
    to ``system:capture_N`` / ``system:playback_N`` while the stream runs.
    Realtime scheduling (``-R``) is used when the process may have it (root,
    or an ``RLIMIT_RTPRIO`` of at least 10), else ``-r``; ``realtime=`` forces
    either. It matters on a busy machine: here (2 cores, load 2-3), over 6 s
    idle, the observer's callback ran after its cycle's nominal start by
    p50 0.2 / p99 0.3 / max 0.8 ms with ``-R``, and by p99 18-26 / max
    32-36 ms with ``-r``, which also skipped 5-8 cycles (the dummy driver
    jumps ahead after a late wake-up: ``JackObserver.skipped_frames``,
    ``cycle_lateness()``). With ``-R`` libjack gives the clients' process
    threads (the engine's PortAudio callback included) SCHED_FIFO too, as on
    a real JACK machine.

``JackObserver``
    A JACK client with one input port, connected to the output port of the
    process under test (``connect_to_client()`` finds PortAudio's).
    Its process callback copies each period into a preallocated buffer and
    stamps it with the cycle's times from ``jack_get_cycle_times`` (frame
    count, start and next start in µs of JACK's clock): nothing else runs in
    the callback. Queries take the same arguments and give the same answers
    as ``testing.observer.PlaybackObserver`` (both are a
    ``testing.observer.TimedObserver``): ``samples()``, ``times_of(indices)``,
    ``segment(t0, t1)``, ``first_sound_after``, ``last_sound_after``,
    ``wait_until``, ``recorded_until`` and ``window(t0, t1)`` (the
    ``testing.measure.Recording`` protocol).
    Samples are int16 (JACK's float × 32768, which PortAudio's int16 → float
    conversion makes exact), indices count samples since the observer
    started, times are seconds of ``time.monotonic()``.

JACK's clock and ``time.monotonic()`` (measured here, jackd2 1.9.21, Debian 12)
--------------------------------------------------------------------------------
JACK 2 on Linux stamps cycles with ``CLOCK_MONOTONIC_RAW``, not with
``CLOCK_MONOTONIC`` (the clock of ``time.monotonic()``): ``jack_get_time()``
equals ``time.clock_gettime(CLOCK_MONOTONIC_RAW)`` to the microsecond, and it
was 240.68 ms *behind* ``time.monotonic()`` on this machine four minutes after
boot (CLOCK_MONOTONIC is rate-adjusted, the raw clock is not; the offset drifted by < 1 ppm
while measured). So JACK µs are never compared with ``time.monotonic()``
directly: the observer calibrates ``time.monotonic() - jack_get_time()``
(the best of several tight brackets) at start, every ``CALIBRATE_S`` while
it runs, and at stop, and converts each cycle time with the offset
interpolated between calibrations.

When a sample "played"
----------------------
Sample *i* of the cycle that starts at frame *F* is stamped at JACK's time
of frame *F + i + L*, interpolated between the cycle's start and the next
cycle's start as JACK's delay-locked loop reports them, where *L* is
``latency_frames``. By default *L* is the playback latency JACK reports for
the observed port (the engine's output port, connected to
``system:playback_1``): 320 frames (20 ms, two periods) for the dummy driver
in JACK 2's default asynchronous mode, where the driver writes a cycle's
output to the "device" during the next cycle and counts one period of device
buffer. That is the analogue of the PulseAudio null sink's render time that
``PlaybackObserver`` reports: the moment the device would play the sample.
Pass ``latency_frames=0`` for the time *at the port*. Either way the cycle
times are JACK's delay-locked-loop view of the driver's clock: a cycle that
ran late (``cycle_lateness()``) is still stamped at its nominal time.

PortAudio 19.6 on JACK adds one period of its own: what its callback writes
in cycle *k* is on its port in cycle *k + 1* (its buffer processor runs with
an "unknown host buffer size"). Measured: the engine's ``first_silent_at``
(stamped in the callback that faded) came 2.7-12.5 ms *before* the start of
the cycle in which the observer heard the fade's end, while a plain JACK
client's output is heard in the same cycle it was written.

The observer runs after the engine's client in every cycle (JACK orders the
graph by connections), so it sees each period in the cycle it was written.
When PortAudio stops a stream it disconnects its ports, the observer's
connection included: after the engine stops and restarts the stream, call
``connect...`` again. An unconnected input records silence.

Units: rates in Hz (mono: a frame is a sample), times in seconds of
``time.monotonic()`` unless a name says ``_us`` (µs of JACK's clock) or
``_frames``; levels in dBFS re 32768.
"""

from __future__ import annotations

import contextlib
import itertools
import math
import os
import re
import shutil
import signal
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import IO, Any

import numpy as np
import numpy.typing as npt

from testing.measure import FULL_SCALE
from testing.observer import TimedObserver
from testing.processes import StartStop, reap, which

__all__ = [
    "JackError",
    "JackObserver",
    "JackServer",
    "jack_clock_offset",
]

_counter = itertools.count(1)
_PR_SET_PDEATHSIG = 1


class JackError(RuntimeError):
    """The JACK server or the observer could not be started or used."""


# --------------------------------------------------------------------------- libjack


class _LibJack:
    """The libjack calls JACK-Client does not wrap, through cffi on the same library."""

    def __init__(self) -> None:
        import cffi
        import jack  # noqa: F401  (loads libjack first, so both share one copy)

        ffi = cffi.FFI()
        ffi.cdef(
            """
            typedef uint64_t jack_time_t;
            typedef uint32_t jack_nframes_t;
            typedef struct { jack_nframes_t min; jack_nframes_t max; } jack_latency_range_t;
            jack_time_t jack_get_time(void);
            int jack_get_cycle_times(const void *client, jack_nframes_t *current_frames,
                                     jack_time_t *current_usecs, jack_time_t *next_usecs,
                                     float *period_usecs);
            void *jack_port_by_name(void *client, const char *port_name);
            void jack_port_get_latency_range(void *port, int mode, jack_latency_range_t *range);
            """
        )
        self.ffi = ffi
        self.lib: Any = ffi.dlopen("libjack.so.0")

    def client_ptr(self, client: Any) -> Any:
        """``client`` (a ``jack.Client``) as a pointer of this FFI."""
        import jack

        return self.ffi.cast("void *", int(jack._ffi.cast("uintptr_t", client._ptr)))

    def playback_latency(self, client: Any, port_name: str) -> int | None:
        """The maximum playback latency (frames) JACK reports for ``port_name``."""
        port = self.lib.jack_port_by_name(self.client_ptr(client), port_name.encode())
        if port == self.ffi.NULL:
            return None
        rng = self.ffi.new("jack_latency_range_t *")
        self.lib.jack_port_get_latency_range(port, 1, rng)  # 1 = JackPlaybackLatency
        return int(rng.max)


_libjack: _LibJack | None = None


def _lib() -> _LibJack:
    global _libjack
    if _libjack is None:
        _libjack = _LibJack()
    return _libjack


def jack_clock_offset(tries: int = 7) -> tuple[float, float]:
    """``time.monotonic()`` minus JACK's clock, in seconds, and the bracket's width (s).

    The narrowest of ``tries`` brackets ``monotonic, jack_get_time, monotonic``.
    """
    lib = _lib().lib
    best = (math.inf, 0.0)
    for _ in range(tries):
        a = time.monotonic_ns()
        j = lib.jack_get_time()
        b = time.monotonic_ns()
        width = (b - a) / 1e9
        if width < best[0]:
            best = (width, (a + b) / 2e9 - j / 1e6)
    return best[1], best[0]


def _quiet_jack() -> None:
    """Route libjack's error and info chatter (e.g. while probing a starting server) nowhere."""
    import jack

    jack.set_error_function(lambda _msg: None)
    jack.set_info_function(lambda _msg: None)


def _realtime_allowed() -> bool:
    """Whether this process may ask for SCHED_FIFO at JACK's default priority (10)."""
    import resource

    if os.geteuid() == 0:
        return True
    soft, _hard = resource.getrlimit(resource.RLIMIT_RTPRIO)
    return soft == resource.RLIM_INFINITY or soft >= 10


def _pdeathsig() -> None:  # pragma: no cover - runs in the child between fork and exec
    import ctypes

    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


# --------------------------------------------------------------------------- server


class JackServer(StartStop):
    """A private ``jackd`` with the dummy driver, under a unique server name.

    Use as a context manager (or ``start()`` / ``stop()``)::

        with JackServer() as jack_server:
            env = jack_server.child_env()      # for the process under test
            ...
    """

    def __init__(
        self,
        rate: int = 16000,
        period: int = 160,
        *,
        name: str | None = None,
        realtime: bool | None = None,
        start_timeout: float = 10.0,
        stop_timeout: float = 3.0,
        die_with_parent: bool = True,
    ) -> None:
        """Configure (not start) a server.

        Args:
            rate: the dummy driver's sample rate, Hz.
            period: frames per period (``-p``); 160 at 16 kHz is 10 ms.
            name: the server name; default ``callctl-<pid>-<n>-<random>``.
            realtime: ``-R`` (True) or ``-r`` (False); None: ``-R`` when allowed.
            start_timeout: bound (s) on waiting for the server to answer.
            stop_timeout: bound (s) on each of SIGTERM and SIGKILL.
            die_with_parent: jackd gets SIGKILL when the spawning thread dies.
        """
        self.rate = int(rate)
        self.period = int(period)
        self.name = name or f"callctl-{os.getpid()}-{next(_counter)}-{uuid.uuid4().hex[:6]}"
        if not re.fullmatch(r"[A-Za-z0-9_.-]+", self.name):
            raise ValueError(f"unsafe JACK server name {self.name!r}")
        self.realtime = _realtime_allowed() if realtime is None else realtime
        self.start_timeout = float(start_timeout)
        self.stop_timeout = float(stop_timeout)
        self.die_with_parent = die_with_parent
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None
        self._log_text = ""

    # -- lifecycle ---------------------------------------------------------

    @property
    def env(self) -> dict[str, str]:
        """The variables a child needs to reach this server (and only it)."""
        return {"JACK_DEFAULT_SERVER": self.name, "JACK_NO_START_SERVER": "1"}

    def child_env(self, base: Mapping[str, str] | None = None) -> dict[str, str]:
        """``base`` (default ``os.environ``) plus ``env``."""
        out = dict(os.environ if base is None else base)
        out.update(self.env)
        return out

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def alive(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def argv(self) -> list[str]:
        jackd = which("jackd", "jackd2", JackError)
        return [jackd, "-n", self.name, "-R" if self.realtime else "-r",
                "-d", "dummy", "-r", str(self.rate), "-p", str(self.period)]

    def start(self) -> JackServer:
        """Start jackd; return once a client can connect (bounded by ``start_timeout``)."""
        if self._proc is not None:
            raise JackError("server already started")
        argv = self.argv()
        self._log = tempfile.TemporaryFile()
        self._proc = subprocess.Popen(
            argv, env=self.child_env(), stdin=subprocess.DEVNULL, stdout=self._log,
            stderr=subprocess.STDOUT, preexec_fn=_pdeathsig if self.die_with_parent else None,
        )
        try:
            self._wait_ready(time.monotonic() + self.start_timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_ready(self, deadline: float) -> None:
        import jack

        _quiet_jack()
        while True:
            if self._proc is not None and self._proc.poll() is not None:
                raise JackError(f"jackd exited with {self._proc.returncode}: {self.log()}")
            try:
                client = jack.Client("callctl-probe", no_start_server=True, servername=self.name)
            except jack.JackError:
                if time.monotonic() > deadline:
                    raise JackError(f"jackd {self.name!r} did not answer within "
                                    f"{self.start_timeout:g} s: {self.log()}") from None
                time.sleep(0.05)
                continue
            try:
                if client.samplerate != self.rate or client.blocksize != self.period:
                    raise JackError(f"jackd runs at {client.samplerate} Hz, {client.blocksize} "
                                    f"frames, not {self.rate} Hz, {self.period}")
            finally:
                client.close()
            return

    def stop(self) -> None:
        """SIGTERM, then SIGKILL (each bounded by ``stop_timeout``); reap; tidy /dev/shm."""
        proc, self._proc = self._proc, None
        if proc is not None:
            reap(proc, self.stop_timeout, self.stop_timeout)
        if self._log is not None:
            self._log_text = self._read_log()
            self._log.close()
            self._log = None
        # A killed jackd leaves its semaphores and its server directory behind;
        # the name is ours alone, so everything carrying it can go.
        for leftover in Path("/dev/shm").glob(f"*{self.name}*"):
            with contextlib.suppress(OSError):
                if leftover.is_dir():
                    shutil.rmtree(leftover, ignore_errors=True)
                else:
                    leftover.unlink()

    def _read_log(self) -> str:
        if self._log is None:
            return self._log_text
        self._log.seek(0)
        return self._log.read().decode(errors="replace")

    def log(self) -> str:
        """What jackd printed so far."""
        return self._read_log()

    def ports(self) -> list[str]:
        """Names of all ports on the server (opens and closes a client)."""
        import jack

        client = jack.Client("callctl-lsp", no_start_server=True, servername=self.name)
        try:
            return [p.name for p in client.get_ports()]
        finally:
            client.close()


# --------------------------------------------------------------------------- observer


class JackObserver(TimedObserver):
    """An external JACK client that records what a port played, with time stamps.

    See the module docstring for the time base. Up to ``max_seconds`` of audio
    are kept (preallocated); further periods are counted in ``lost_frames``.
    """

    #: Seconds between clock calibrations (``time.monotonic()`` vs JACK's clock).
    CALIBRATE_S = 0.5

    def __init__(
        self,
        server: JackServer | None = None,
        *,
        servername: str | None = None,
        client_name: str = "callctl-observer",
        max_seconds: float = 120.0,
        latency_frames: int | None = None,
    ) -> None:
        """Configure (not start) an observer.

        Args:
            server: the server to join (else ``servername``, else JACK's default).
            client_name: the observer's JACK client name.
            max_seconds: recording capacity in seconds.
            latency_frames: frames added to each sample's JACK frame time; None:
                the playback latency JACK reports for the observed port.
        """
        self.servername = server.name if server is not None else servername
        self.client_name = client_name
        self.max_seconds = float(max_seconds)
        self._latency_override = latency_frames
        self.latency_frames = 0 if latency_frames is None else int(latency_frames)
        self.rate = 0
        self.blocksize = 0
        self.connected_to: str | None = None
        self._client: Any = None
        self._port: Any = None
        # Filled at start(): audio and per-cycle arrays, written only by the callback.
        self._audio = np.zeros(0, np.float32)
        self._cyc_frame = np.zeros(0, np.int64)
        self._cyc_start_us = np.zeros(0, np.float64)
        self._cyc_next_us = np.zeros(0, np.float64)
        self._cyc_pos = np.zeros(0, np.int64)
        self._cyc_len = np.zeros(0, np.int64)
        self._cyc_latency = np.zeros(0, np.int64)
        self._cyc_run_us = np.zeros(0, np.float64)
        self._ncycles = 0  # published last by the callback
        self._pos = 0
        self.lost_frames = 0
        self._c_frames: Any = None
        self._c_start: Any = None
        self._c_next: Any = None
        self._c_period: Any = None
        self._c_client: Any = None
        self._cal_lock = threading.Lock()
        self._cal_jack_us: list[float] = []
        self._cal_offset: list[float] = []
        self._cal_stop = threading.Event()
        self._cal_thread: threading.Thread | None = None

    # -- lifecycle ---------------------------------------------------------

    def start(self) -> JackObserver:
        """Open the client, register ``in``, activate. Records silence until connected."""
        import jack

        if self._client is not None:
            raise JackError("observer already started")
        lj = _lib()
        _quiet_jack()
        try:
            client = jack.Client(self.client_name, no_start_server=True,
                                 servername=self.servername)
        except jack.JackError as exc:
            raise JackError(f"cannot join JACK server {self.servername!r}: {exc}") from None
        self._client = client
        self.rate = int(client.samplerate)
        self.blocksize = int(client.blocksize)
        capacity = int(self.max_seconds * self.rate)
        cycles = capacity // max(1, self.blocksize) + 2
        self._audio = np.zeros(capacity, np.float32)
        self._cyc_frame = np.zeros(cycles, np.int64)
        self._cyc_start_us = np.zeros(cycles, np.float64)
        self._cyc_next_us = np.zeros(cycles, np.float64)
        self._cyc_pos = np.zeros(cycles, np.int64)
        self._cyc_len = np.zeros(cycles, np.int64)
        self._cyc_latency = np.zeros(cycles, np.int64)
        self._cyc_run_us = np.zeros(cycles, np.float64)
        ffi = lj.ffi
        self._c_frames = ffi.new("jack_nframes_t *")
        self._c_start = ffi.new("jack_time_t *")
        self._c_next = ffi.new("jack_time_t *")
        self._c_period = ffi.new("float *")
        self._c_client = lj.client_ptr(client)
        self._port = client.inports.register("in")
        client.set_process_callback(self._process)
        self.calibrate()
        client.activate()
        self._cal_stop.clear()
        self._cal_thread = threading.Thread(target=self._calibrator, name="jack-observer-clock",
                                            daemon=True)
        self._cal_thread.start()
        return self

    def stop(self) -> None:
        """Deactivate and close the client (keeps the recording)."""
        self._cal_stop.set()
        if self._cal_thread is not None:
            self._cal_thread.join(timeout=2.0)
            self._cal_thread = None
        client, self._client = self._client, None
        if client is not None:
            with contextlib.suppress(Exception):
                self.calibrate()
            with contextlib.suppress(Exception):
                client.deactivate()
            with contextlib.suppress(Exception):
                client.close()

    @property
    def alive(self) -> bool:
        return self._client is not None

    def _finished(self) -> bool:
        return self._client is None

    # -- the process callback (JACK's thread) -----------------------------------

    def _process(self, frames: int) -> None:
        i = self._ncycles
        pos = self._pos
        if i >= self._cyc_frame.size or pos + frames > self._audio.size:
            self.lost_frames += frames
            return
        self._audio[pos:pos + frames] = self._port.get_array()
        lib = _libjack.lib  # type: ignore[union-attr]
        lib.jack_get_cycle_times(self._c_client, self._c_frames, self._c_start, self._c_next,
                                 self._c_period)
        self._cyc_run_us[i] = lib.jack_get_time()
        self._cyc_frame[i] = self._c_frames[0]
        self._cyc_start_us[i] = self._c_start[0]
        self._cyc_next_us[i] = self._c_next[0]
        self._cyc_pos[i] = pos
        self._cyc_len[i] = frames
        self._cyc_latency[i] = self.latency_frames
        self._pos = pos + frames
        self._ncycles = i + 1  # last: readers only look at cycles below it

    # -- connections -----------------------------------------------------------

    def connect(self, port: str, timeout: float = 5.0) -> str:
        """Connect ``port`` (a full name, or a regular expression over output audio
        port names) to the observer's input, waiting up to ``timeout`` s for it to
        appear. Connecting again to the same port is fine. Returns its name."""
        client = self._require_client()
        deadline = time.monotonic() + timeout
        while True:
            names = [p.name for p in client.get_ports(is_audio=True, is_output=True)]
            match = [n for n in names if n == port] or [
                n for n in names if re.search(port, n)]
            if match:
                return self._connect_name(match[0])
            if time.monotonic() > deadline:
                raise JackError(f"no JACK output port matching {port!r} within {timeout:g} s "
                                f"(there are {names})")
            time.sleep(0.02)

    def connect_to_client(self, client: str = r"PortAudio(-\d+)?", channel: int = 0,
                          timeout: float = 5.0) -> str:
        """Connect the ``channel``-th output audio port of the JACK client whose name
        fully matches the regular expression ``client`` (default: PortAudio's, as in
        the audio process), once that port is connected to something (its stream
        runs); wait up to ``timeout`` s. Returns the port's name.

        (libjack's ``jack_get_client_pid`` answers 0 outside the server, so a
        client cannot be found by its process id; on a private server the
        PortAudio client is the process under test.)
        """
        jack_client = self._require_client()
        deadline = time.monotonic() + timeout
        while True:
            outs = [p.name for p in jack_client.get_ports(is_audio=True, is_output=True)]
            by_client: dict[str, list[str]] = {}
            for name in outs:
                by_client.setdefault(name.split(":", 1)[0], []).append(name)
            for name in sorted(by_client):
                ports = sorted(by_client[name], key=_natural)
                if (re.fullmatch(client, name) and channel < len(ports)
                        and jack_client.get_all_connections(ports[channel])):
                    return self._connect_name(ports[channel])
            if time.monotonic() > deadline:
                raise JackError(f"no running JACK client matching {client!r} within "
                                f"{timeout:g} s (output ports: {outs})")
            time.sleep(0.02)

    def _connect_name(self, name: str) -> str:
        import jack

        client = self._require_client()
        try:
            client.connect(name, self._port.name)
        except jack.JackErrorCode as exc:
            if "already exists" not in str(exc):
                raise
        self.connected_to = name
        if self._latency_override is None:
            reported = _lib().playback_latency(client, name)
            self.latency_frames = int(reported) if reported is not None else 0
        return name

    def disconnect(self) -> None:
        """Drop every connection of the observer's input."""
        if self._port is not None and self._client is not None:
            with contextlib.suppress(Exception):
                self._port.disconnect()
        self.connected_to = None

    def is_connected(self) -> bool:
        return self._port is not None and self._client is not None and bool(
            self._port.connections)

    def _require_client(self) -> Any:
        if self._client is None:
            raise JackError("observer not started")
        return self._client

    # -- clock ---------------------------------------------------------------

    def calibrate(self) -> float:
        """Measure ``time.monotonic()`` minus JACK's clock now; returns it (s)."""
        offset, _width = jack_clock_offset()
        jack_now_us = float(_lib().lib.jack_get_time())
        with self._cal_lock:
            self._cal_jack_us.append(jack_now_us)
            self._cal_offset.append(offset)
        return offset

    def _calibrator(self) -> None:
        while not self._cal_stop.wait(self.CALIBRATE_S):
            self.calibrate()

    def clock_offset(self) -> float:
        """The latest ``time.monotonic()`` minus JACK's clock (s)."""
        with self._cal_lock:
            if not self._cal_offset:
                raise JackError("observer not started")
            return self._cal_offset[-1]

    def _to_monotonic(self, jack_us: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
        with self._cal_lock:
            xs = np.array(self._cal_jack_us, np.float64)
            ys = np.array(self._cal_offset, np.float64)
        if xs.size == 0:
            return np.full(jack_us.shape, np.nan)
        return jack_us / 1e6 + np.interp(jack_us, xs, ys)

    # -- data ----------------------------------------------------------------

    def _snapshot(self) -> tuple[int, int]:
        """(cycles, samples) recorded so far, consistent with each other."""
        n = self._ncycles
        if n == 0:
            return 0, 0
        return n, int(self._cyc_pos[n - 1] + self._cyc_len[n - 1])

    def samples(self) -> npt.NDArray[np.int16]:
        """Everything recorded so far, int16 mono at ``rate`` Hz (a copy)."""
        _, total = self._snapshot()
        return _to_int16(self._audio[:total])

    @property
    def skipped_frames(self) -> int:
        """Frames of JACK's timeline the observer was not called for (skipped cycles)."""
        return int(self._skips()[1].sum())

    def skipped_between(self, t_start: float, t_end: float) -> int:
        """Frames skipped just before the recorded cycles that start in ``[t_start,
        t_end]`` (s, monotonic): a splice in the recording of that span, where the
        dummy driver jumped ahead after a late wake-up. A measurement over the span
        is redone when this is not 0; a skip elsewhere does not touch it."""
        starts, skipped = self._skips()
        return int(skipped[(starts >= t_start) & (starts <= t_end)].sum())

    def _skips(self) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.int64]]:
        """For each recorded cycle after the first: its start (s, monotonic) and the
        frames skipped just before it (0 for none)."""
        n, _ = self._snapshot()
        if n < 2:
            return np.zeros(0, np.float64), np.zeros(0, np.int64)
        steps = (np.diff(self._cyc_frame[:n]) % (1 << 32)) - self._cyc_len[: n - 1]
        return self._to_monotonic(self._cyc_start_us[1:n]), np.maximum(steps, 0)

    def latest_between(self, t_start: float, t_end: float) -> float:
        """The most (s) the observer's callback ran after its cycle's start, over the
        recorded cycles that start in ``[t_start, t_end]`` (s, monotonic); 0 if none."""
        n, _ = self._snapshot()
        starts = self._to_monotonic(self._cyc_start_us[:n])
        inside = (starts >= t_start) & (starts <= t_end)
        late = (self._cyc_run_us[:n] - self._cyc_start_us[:n]) / 1e6
        return float(late[inside].max()) if inside.any() else 0.0

    def cycle_lateness(self) -> npt.NDArray[np.float64]:
        """Per recorded cycle, when the observer's callback ran minus the cycle's start (s).

        The cycle times are JACK's delay-locked-loop estimates of the driver's
        clock; on a busy machine without realtime scheduling a cycle can run
        well after its nominal start, and then so did the engine's callback in
        it. Large values tell that the machine, not the engine, was late.
        """
        n, _ = self._snapshot()
        return (self._cyc_run_us[:n] - self._cyc_start_us[:n]) / 1e6

    def times_of(self, indices: npt.ArrayLike) -> npt.NDArray[np.float64]:
        """Estimated play times (s, monotonic) of the samples at ``indices``."""
        idx = np.asarray(indices, dtype=np.int64)
        n, total = self._snapshot()
        if n == 0:
            return np.full(idx.shape, np.nan)
        cyc = np.clip(np.searchsorted(self._cyc_pos[:n], idx, side="right") - 1, 0, n - 1)
        start = self._cyc_start_us[cyc]
        per_frame = (self._cyc_next_us[cyc] - start) / self._cyc_len[cyc]
        offset = idx - self._cyc_pos[cyc] + self._cyc_latency[cyc]
        return self._to_monotonic(start + offset * per_frame)

    def sample_times(self) -> npt.NDArray[np.float64]:
        """Estimated play time (s, monotonic) of every recorded sample."""
        _, total = self._snapshot()
        return self.times_of(np.arange(total))

    def recorded_until(self) -> float | None:
        """Estimated time (s) just after the last recorded sample, or None if none yet."""
        _, total = self._snapshot()
        if total == 0:
            return None
        return float(self.times_of([total])[0])

    def _span(self, t_start: float, t_end: float | None) -> tuple[int, npt.NDArray[np.int16]]:
        """(index of the first sample, samples) of a superset of the samples timed in
        ``[t_start, t_end)``, cut at cycle boundaries."""
        n, total = self._snapshot()
        if n == 0:
            return 0, np.zeros(0, np.int16)
        starts = self._to_monotonic(self._cyc_start_us[:n])
        margin = 1.0  # s: more than any latency, skipped cycles are stamped by their own
        lo_c = int(np.searchsorted(starts, t_start - margin, side="left"))
        lo = int(self._cyc_pos[min(lo_c, n - 1)]) if lo_c < n else total
        hi = total
        if t_end is not None:
            hi_c = int(np.searchsorted(starts, t_end + margin, side="right"))
            hi = int(self._cyc_pos[hi_c]) if hi_c < n else total
        return lo, _to_int16(self._audio[lo:hi])


def _to_int16(x: npt.NDArray[np.float32]) -> npt.NDArray[np.int16]:
    return np.clip(np.rint(x * FULL_SCALE), -32768, 32767).astype(np.int16)


def _natural(name: str) -> tuple[str, int]:
    m = re.search(r"(\d+)$", name)
    return (name[: m.start()] if m else name, int(m.group(1)) if m else -1)
