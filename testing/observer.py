"""An external audio client that records what a sink played, with time stamps.

The *hangup -> silence* figure must be measured by an audio client outside the
engine (the project's "Measurements"): ``PlaybackObserver`` is that client on a
PulseAudio-protocol server (``testing.pulse.PulseServer``, or PipeWire's pulse
server, ``testing.pipewire.PipeWireServer``).

``PlaybackObserver``
    Records a sink's monitor with ``parec`` (raw s16le, mono, 16 kHz, 5 ms
    fragments) in a reader thread, stamps every chunk with ``time.monotonic()``
    at its arrival, and answers "when was the first / last sound after t0".
    ``time.monotonic()`` is ``CLOCK_MONOTONIC`` on Linux, shared by all
    processes, so times from an engine subprocess compare directly.

``TimedObserver``
    The queries every observer answers the same way from its samples and their
    estimated play times (``testing.jack.JackObserver`` too): ``wait_until``,
    ``window`` (the ``testing.measure.Recording`` protocol), ``segment``,
    ``first_sound_after``, ``last_sound_after``.

Units: rates in Hz (frames per second; mono, so a frame is one sample), times
in seconds of ``time.monotonic()`` unless a name ends in ``_ms``, levels in
dBFS relative to a full-scale int16 value of 32768.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import tempfile
import threading
import time
from collections.abc import Mapping
from typing import IO, Protocol

import numpy as np
import numpy.typing as npt

from testing.measure import amplitude
from testing.processes import StartStop, child_argv, reap, which

__all__ = ["ObserverError", "PlaybackObserver", "TimedObserver"]


class ObserverError(RuntimeError):
    """The playback observer could not start recording."""


class NotWhole(Exception):
    """The observer's recording of a span lost (or repeated) samples: nothing about the
    player can be judged from it (``TimedObserver.whole``). A test redoes what it
    measured there, a bounded number of times."""


class PulseProtocolServer(Protocol):
    """What an observer needs of a server: the environment that reaches it, the speaker's
    monitor (``testing.pulse.PulseServer``, ``testing.pipewire.PipeWireServer``)."""

    env: dict[str, str]
    monitor: str


class TimedObserver(StartStop):
    """Queries over a recording whose samples carry estimated play times.

    A subclass provides ``_span`` (a superset of the samples in a time span, cut
    where it likes), ``times_of`` (play times of sample indices, s),
    ``recorded_until`` and ``_finished``; everything here follows from those.
    Sample indices count samples since the observer started. Thread-safe as far
    as those four are (the reader or callback thread appends while tests query).
    """

    rate: int
    """Samples per second of the recording."""

    def _span(self, t_start: float, t_end: float | None) -> tuple[int, npt.NDArray[np.int16]]:
        """(index of the first sample, samples) of a superset of the samples timed in
        ``[t_start, t_end)`` (``t_end`` None: to the end)."""
        raise NotImplementedError

    def times_of(self, indices: npt.ArrayLike) -> npt.NDArray[np.float64]:
        """Estimated play times (s, monotonic) of the samples at ``indices``."""
        raise NotImplementedError

    def recorded_until(self) -> float | None:
        """Estimated time (s) just after the last recorded sample, or None if none yet."""
        raise NotImplementedError

    def _finished(self) -> bool:
        """True once nothing more will be recorded (stopped, or the source went away)."""
        raise NotImplementedError

    def wait_until(self, t: float, timeout: float) -> bool:
        """Block until samples up to time ``t`` (s) are recorded; at most ``timeout`` s.

        Returns False on timeout or if the recorder stopped first.
        """
        deadline = time.monotonic() + timeout
        while True:
            until = self.recorded_until()
            if until is not None and until >= t:
                return True
            if self._finished() or time.monotonic() >= deadline:
                return False
            time.sleep(0.005)

    def window(self, t0: float, t1: float
               ) -> tuple[npt.NDArray[np.int16], npt.NDArray[np.float64]]:
        """(samples, their play times in s) for the samples timed in ``[t0, t1)``."""
        base, data = self._span(t0, t1)
        if data.size == 0:
            return data, np.zeros(0, np.float64)
        times = self.times_of(np.arange(base, base + data.size))
        keep = (times >= t0) & (times < t1)
        return data[keep], times[keep]

    def segment(self, t_start: float, t_end: float) -> npt.NDArray[np.int16]:
        """The samples whose estimated times lie in ``[t_start, t_end)`` (s)."""
        return self.window(t_start, t_end)[0]

    def whole(self, t_start: float, t_end: float) -> bool:
        """Whether the recording of ``[t_start, t_end)`` (s) is whole: as many samples are
        timed there as the span lasts, to two samples (the time estimates place a span's
        bounds to about a sample; a lost chunk is tens of samples). Fewer means it lost
        samples there (its timeline jumps by what was lost), more that it repeated some:
        either way the recording path did it (the sink's monitor, the server, the
        observer), not the player, which cannot change how many samples the sink
        renders in a span of time."""
        expected = (t_end - t_start) * self.rate
        return abs(self.segment(t_start, t_end).size - expected) <= 2

    def require_whole(self, t_start: float, t_end: float) -> None:
        """``NotWhole`` unless the recording of ``[t_start, t_end)`` (s) is whole."""
        if not self.whole(t_start, t_end):
            got = self.segment(t_start, t_end).size
            raise NotWhole(f"the observer recorded {got} samples in {t_start:.3f}..{t_end:.3f} s, "
                           f"{(t_end - t_start) * self.rate:.0f} played")

    def _loud_times(
        self, t0: float, threshold_dbfs: float, until: float | None
    ) -> npt.NDArray[np.float64]:
        base, data = self._span(t0, until)
        loud = np.flatnonzero(np.abs(data.astype(np.int32)) > amplitude(threshold_dbfs))
        times = self.times_of(loud + base)
        keep = times >= t0
        if until is not None:
            keep &= times < until
        return times[keep]

    def first_sound_after(
        self, t0: float, threshold_dbfs: float = -60.0, until: float | None = None
    ) -> float | None:
        """Time (s) of the first sample at or after ``t0`` whose magnitude exceeds the threshold.

        A sample counts as sound when ``|x| > 32768 * 10**(threshold_dbfs / 20)``
        (-60 dBFS: |x| >= 33). ``until`` (s) bounds the search. None if no sound.
        """
        times = self._loud_times(t0, threshold_dbfs, until)
        return float(times[0]) if times.size else None

    def last_sound_after(
        self, t0: float, threshold_dbfs: float = -60.0, until: float | None = None
    ) -> float | None:
        """Time (s) of the last sample at or after ``t0`` whose magnitude exceeds the threshold.

        Only final once the recording extends past the sound: call
        ``wait_until(t, timeout)`` for a ``t`` safely after it first.
        Same threshold rule as ``first_sound_after``. None if no sound.
        """
        times = self._loud_times(t0, threshold_dbfs, until)
        return float(times[-1]) if times.size else None


class _Timeline:
    """Per-chunk and per-batch arrays behind ``PlaybackObserver``'s time estimates."""

    __slots__ = (
        "n_chunks",
        "arrivals",
        "starts",
        "ends",
        "batch_of",
        "batch_starts",
        "offsets",
        "half",
        "anchors",
    )

    def __init__(
        self,
        n_chunks: int,
        arrivals: npt.NDArray[np.float64],
        starts: npt.NDArray[np.int64],
        ends: npt.NDArray[np.int64],
        batch_of: npt.NDArray[np.int64],
        batch_starts: npt.NDArray[np.int64],
        offsets: npt.NDArray[np.float64],
        half: int,
    ) -> None:
        self.n_chunks = n_chunks  # chunks received
        self.arrivals = arrivals  # per chunk: time.monotonic() at its read, s
        self.starts = starts  # per chunk: index of its first sample
        self.ends = ends  # per chunk: index after its last sample
        self.batch_of = batch_of  # per chunk: index of its render batch
        self.batch_starts = batch_starts  # per batch: index of its first sample
        self.offsets = offsets  # per batch: arrival minus first-sample index / rate, s
        self.half = half  # window half-width in batches
        self.anchors = np.full(offsets.size, np.nan)  # per batch, filled lazily, s


class PlaybackObserver(TimedObserver):
    """An external audio client that records what a sink played, with time stamps.

    ``parec --raw --format=s16le --channels=1 --rate=16000 --latency-msec=5``
    records ``<sink>.monitor`` (by default the speaker of a ``PulseServer``);
    a daemon thread ``os.read``-s its stdout as soon as data arrives and stores
    every chunk with the ``time.monotonic()`` of its arrival. All sample
    indices count samples (= frames, mono) since the observer started.

    How times are estimated
    -----------------------
    A ``PulseServer`` null sink is clocked by ``CLOCK_MONOTONIC`` (the clock
    of ``time.monotonic()``) and renders exactly ``rate`` samples per second.
    It sleeps until its clock reaches the first sample it has not rendered,
    then renders a batch of up to ``block_ms`` *ahead* and posts it to its
    monitor at once -- as one piece, or as several pieces when the playing
    client's memory blocks split it. So a batch arrives, at the earliest, at
    the sink-clock time of its *first* sample. Chunks read less than
    ``MERGE_GAP_S`` (0.3 ms) after the previous one are taken as pieces of
    the same batch. For batch *b* with arrival time ``a_b`` (s, of its first
    piece) whose first sample has index ``s_b``, sample 0 would have played
    at ``o_b = a_b - s_b / rate``, were the delivery instantaneous. Every
    delivery delay (socket, parec, pipe, the GIL) only makes ``o_b`` later,
    so the observer takes a low quantile (``ANCHOR_QUANTILE``, 10 %) of the
    ``o_b`` of the batches within ``window_s`` (0.5 s) of the sample's batch:
    nearly the minimum, but not fooled by a rare batch whose pieces were
    read apart and so look early. Being local, the estimate also follows a
    jump in the sink's timeline (suspend, restart)::

        t(n) = q10{ a_b - s_b / rate : b near n } + n / rate      (seconds)

    is the moment the null sink's clock says sample *n* was played -- the
    analogue of a DAC time. The sinks are loaded with ``norewinds=1``: with
    rewinds, a stream that starts or flushes makes the sink re-render what
    its monitor already delivered, and the monitor then silently loses or
    repeats up to a block of samples, which shifts every later time (a
    300 ms tone came out up to 47 samples short). Without rewinds what was
    rendered is what played, sample for sample, and a stream's new data
    starts at the next block boundary (<= 5 ms). A playback underrun shows
    up as inserted silence, not as lost samples.

    What the observer adds (measured on this project's 2-core machine,
    PulseAudio 16.1, PortAudio 19.6 ALSA ``pulse`` device, 16 kHz mono,
    5 ms blocks; "loaded" = load average 3-4 from other test suites and two
    CPU-bound processes)
    --------------------------------------------------------------------
    * Time base: ``pacat`` plays clicks every 100 ms for 3 s, their sample
      positions known exactly. The estimated click times differ from the
      sample clock by at most 0.05 ms idle and 0.06 ms loaded (p0..p100 of
      400 intervals): the observer adds no jitter worth the name.
    * Absolute offset: the anchor sits on the fastest tenth of the batch
      deliveries, which reach the reader 0.02-0.1 ms after the sink renders
      (the sink threads run SCHED_RR, see ``PulseServer``), so times are
      late by about 0.1 ms. Deliveries overall: median 0.05 ms, p95 0.2 ms
      idle and 3.5 ms loaded, p99 2-14 ms, max 135 ms loaded -- the error a
      naive "arrival minus samples after it" estimate would make.
    * Against PortAudio's own estimate (a PyAudio full-duplex callback
      stream writes a 1 ms click every 200 ms; callback ``time.monotonic()``
      + ``output_buffer_dac_time - current_time`` + offset / rate), over
      3-5 runs of 30 clicks: idle, -0.3 .. +0.5 ms at 160 and 320 frames
      per period. At 80 frames, or loaded, PortAudio's estimate drifts by
      up to 14-23 ms within a run while the clicks' spacing on the monitor
      stays sample-exact, so the DAC estimate is the less reliable clock.
    * For reference, the engine-side path, callback to played, idle:
      28-30 ms at 160 frames (PortAudio reports 30 ms), 16-17.5 ms at 80,
      51-55 ms at 320; within a run its spread is 0.02-0.1 ms idle and up
      to 6 ms loaded (late callbacks change the stream's buffer fill).
    * Visibility: a played sample reaches ``samples()`` about one block
      (<= 5 ms) plus the delivery delay after its time, which is why
      ``wait_until()`` exists. While recording goes on, the estimates for
      the last ``window_s`` are refined as the window fills (by
      microseconds typically): analyse after ``wait_until()`` or ``stop()``.
    """

    #: Seconds: chunks read closer together than this belong to one render batch.
    MERGE_GAP_S = 0.0003
    #: Quantile of the batch offsets in a window taken as the anchor (0 = minimum).
    ANCHOR_QUANTILE = 0.1

    def __init__(
        self,
        server: PulseProtocolServer | None = None,
        *,
        source: str | None = None,
        env: Mapping[str, str] | None = None,
        rate: int = 16000,
        latency_ms: float = 5.0,
        window_s: float = 0.5,
        start_timeout: float = 5.0,
        die_with_parent: bool = True,
    ) -> None:
        """Configure (not start) an observer.

        Args:
            server: the server whose speaker monitor to record; its ``env`` is used.
            source: PulseAudio source to record instead (e.g. ``server.source``
                to observe the microphone), default ``server.monitor``.
            env: extra environment for ``parec`` (e.g. another server's ``env``).
            rate: recording rate in Hz; should equal the sink's rate.
            latency_ms: parec fragment size in ms (``--latency-msec``).
            window_s: half-width in seconds of the window of render batches
                whose arrivals set a sample's time (see "How times are estimated").
            start_timeout: bound in seconds on waiting for the first chunk.
            die_with_parent: SIGKILL parec when the spawning thread dies.
        """
        if source is None:
            if server is None:
                raise ValueError("give a server or a source")
            source = server.monitor
        self.source = source
        self.rate = int(rate)
        self.latency_ms = float(latency_ms)
        self.window_s = float(window_s)
        self.start_timeout = float(start_timeout)
        self.die_with_parent = die_with_parent
        self._env = dict(os.environ)
        if server is not None:
            self._env.update(server.env)
        if env is not None:
            self._env.update(env)
        self._lock = threading.Lock()
        self._arrivals: list[float] = []
        self._ends: list[int] = []
        self._chunks: list[npt.NDArray[np.int16]] = []
        self._total = 0
        self._proc: subprocess.Popen[bytes] | None = None
        self._thread: threading.Thread | None = None
        self._stderr: IO[bytes] | None = None
        self._got_data = threading.Event()
        self._eof = threading.Event()
        self._timeline_cache: _Timeline | None = None
        self._samples_cache: tuple[int, npt.NDArray[np.int16]] | None = None

    @property
    def alive(self) -> bool:
        """True while parec runs and its stdout is open."""
        return self._proc is not None and self._proc.poll() is None and not self._eof.is_set()

    def _finished(self) -> bool:
        return self._eof.is_set()

    def start(self) -> PlaybackObserver:
        """Start parec and the reader; return once the first chunk arrived.

        Raises ``ObserverError`` (with parec's stderr) if no data arrives
        within ``start_timeout`` seconds.
        """
        if self._proc is not None:
            raise ObserverError("observer already started")
        argv = [
            which("parec", "pulseaudio-utils", ObserverError),
            f"--device={self.source}",
            "--raw",
            "--format=s16le",
            f"--rate={self.rate}",
            "--channels=1",
            f"--latency-msec={self.latency_ms:g}",
            "--client-name=callctl-observer",
        ]
        self._stderr = tempfile.TemporaryFile()
        self._proc = subprocess.Popen(
            child_argv(argv, self.die_with_parent),
            env=self._env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            bufsize=0,
        )
        self._thread = threading.Thread(target=self._reader, name="callctl-observer", daemon=True)
        self._thread.start()
        if not self._got_data.wait(self.start_timeout) or self._total == 0:
            err = self._stderr_text()
            self.stop()
            raise ObserverError(
                f"no audio from {self.source} within {self.start_timeout} s: {err.strip()}"
            )
        return self

    def stop(self) -> None:
        """Stop parec and the reader thread (bounded waits); keep the recording."""
        if self._proc is not None:
            reap(self._proc, term_timeout=2.0, kill_timeout=2.0)
        if self._thread is not None:
            self._thread.join(timeout=2.0)  # parec gone: the reader sees EOF
        if self._proc is not None and self._proc.stdout is not None:
            with contextlib.suppress(OSError):
                self._proc.stdout.close()
        if self._stderr is not None:
            self._stderr.close()
            self._stderr = None

    def _stderr_text(self) -> str:
        if self._stderr is None:
            return ""
        self._stderr.seek(0)
        return self._stderr.read().decode(errors="replace")

    def _reader(self) -> None:
        assert self._proc is not None and self._proc.stdout is not None
        fd = self._proc.stdout.fileno()
        carry = b""
        try:
            while True:
                try:
                    buf = os.read(fd, 65536)
                except OSError:
                    break
                now = time.monotonic()
                if not buf:
                    break
                if carry:
                    buf, carry = carry + buf, b""
                if len(buf) % 2:
                    buf, carry = buf[:-1], buf[-1:]
                if not buf:
                    continue
                chunk = np.frombuffer(buf, dtype="<i2").astype(np.int16)
                with self._lock:
                    self._total += chunk.size
                    self._chunks.append(chunk)
                    self._arrivals.append(now)
                    self._ends.append(self._total)
                self._got_data.set()
        finally:
            self._eof.set()
            self._got_data.set()

    # -- data ----------------------------------------------------------------

    def samples(self) -> npt.NDArray[np.int16]:
        """Everything recorded so far, int16 mono at ``rate`` Hz (a copy)."""
        with self._lock:
            n = len(self._chunks)
            if self._samples_cache is not None and self._samples_cache[0] == n:
                return self._samples_cache[1].copy()
            chunks = list(self._chunks)
        data = np.concatenate(chunks) if chunks else np.zeros(0, dtype=np.int16)
        self._samples_cache = (n, data)
        return data.copy()

    def _timeline(self) -> _Timeline:
        """The batch structure of the chunks received so far (cached per chunk count)."""
        with self._lock:
            n = len(self._arrivals)
            cached = self._timeline_cache
            if cached is not None and cached.n_chunks == n:
                return cached
            arrivals = np.array(self._arrivals, dtype=np.float64)
            ends = np.array(self._ends, dtype=np.int64)
        sizes = np.diff(ends, prepend=0)
        starts = ends - sizes
        # Pieces read within MERGE_GAP_S of the previous one were rendered in the
        # same wake-up of the sink: a batch is timed by its first piece only.
        new_batch = np.ones(n, dtype=bool)
        new_batch[1:] = np.diff(arrivals) > self.MERGE_GAP_S
        batch_of = np.cumsum(new_batch) - 1
        first = np.flatnonzero(new_batch)
        # A batch arrives, at the earliest, at the time of its first sample.
        offsets = arrivals[first] - starts[first] / self.rate
        period = float(np.median(np.diff(arrivals[first]))) if first.size > 1 else 0.0
        if period <= 0:
            period = self.latency_ms / 1000.0
        half = max(1, round(self.window_s / period))
        timeline = _Timeline(n, arrivals, starts, ends, batch_of, starts[first], offsets, half)
        self._timeline_cache = timeline
        return timeline

    def _anchors(self, tl: _Timeline, batches: npt.NDArray[np.int64]) -> npt.NDArray[np.float64]:
        """Time (s) of sample 0 as seen from each of ``batches``: a low quantile of the offsets
        of the batches within ``window_s`` of it."""
        todo = np.unique(batches)
        todo = todo[np.isnan(tl.anchors[todo])]
        nb = tl.offsets.size
        span = np.arange(-tl.half, tl.half + 1)
        for lo in range(0, todo.size, 4096):
            ids = todo[lo : lo + 4096]
            idx = ids[:, None] + span[None, :]
            valid = (idx >= 0) & (idx < nb)
            vals = np.where(valid, tl.offsets[np.clip(idx, 0, nb - 1)], np.inf)
            vals.sort(axis=1)
            rank = np.floor(self.ANCHOR_QUANTILE * (valid.sum(axis=1) - 1)).astype(np.int64)
            tl.anchors[ids] = vals[np.arange(ids.size), rank]
        return tl.anchors[batches]

    def times_of(self, indices: npt.ArrayLike) -> npt.NDArray[np.float64]:
        """Estimated play times (s, monotonic) of the samples at ``indices``."""
        idx = np.asarray(indices, dtype=np.int64)
        tl = self._timeline()
        if tl.n_chunks == 0:
            return np.full(idx.shape, np.nan)
        chunk = np.searchsorted(tl.starts, idx, side="right") - 1
        chunk = np.clip(chunk, 0, tl.n_chunks - 1)
        return self._anchors(tl, tl.batch_of[chunk]) + idx / self.rate

    def sample_times(self) -> npt.NDArray[np.float64]:
        """Estimated play time (s, monotonic) of every recorded sample."""
        with self._lock:
            total = self._total
        return self.times_of(np.arange(total))

    def recorded_until(self) -> float | None:
        """Estimated time (s) just after the last recorded sample, or None if none yet."""
        with self._lock:
            total = self._total
        if total == 0:
            return None
        return float(self.times_of([total - 1])[0]) + 1.0 / self.rate

    def _span(self, t_start: float, t_end: float | None) -> tuple[int, npt.NDArray[np.int16]]:
        """(index of the first sample, samples) of a superset of the chunks that can
        hold samples timed in ``[t_start, t_end)``.

        Only a neighbourhood is concatenated and timed, so queries on long
        recordings stay cheap. The margins assume render blocks under 50 ms and
        reader stalls under a second.
        """
        tl = self._timeline()
        if tl.n_chunks == 0:
            return 0, np.zeros(0, np.int16)
        # A chunk's raw time (from its own batch's arrival) is late by the delivery
        # delay and early by at most a render block (a batch read in pieces).
        raw_start = tl.offsets[tl.batch_of] + tl.starts / self.rate
        raw_end = raw_start + (tl.ends - tl.starts) / self.rate
        keep = raw_end >= t_start - 0.05
        if t_end is not None:
            keep &= raw_start <= t_end + 1.0 + self.window_s
        chunks = np.flatnonzero(keep)
        if chunks.size == 0:
            return 0, np.zeros(0, np.int16)
        lo, hi = int(chunks[0]), int(chunks[-1]) + 1
        with self._lock:
            pieces = self._chunks[lo:hi]  # chunks only ever get appended
        data = np.concatenate(pieces)
        return int(tl.starts[lo]), data

    def delivery_delays(self) -> npt.NDArray[np.float64]:
        """Per chunk, its arrival minus the estimated time of its render batch's first sample (s).

        This is the lateness a naive per-chunk estimate would add (>= 0 but
        for the few batches below the anchor quantile, by microseconds); its
        spread shows how busy the observing process and the server are.
        """
        tl = self._timeline()
        if tl.n_chunks == 0:
            return np.zeros(0, np.float64)
        firsts = tl.batch_starts[tl.batch_of]
        return tl.arrivals - self.times_of(firsts)

