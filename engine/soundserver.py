"""A private PulseAudio server and an external playback observer, for tests and benchmarks.

The machines have no sound card, yet the engine must be tested against a real
sound server reached through PortAudio, and the *hangup → silence* figure must
be measured by an audio client outside the engine (see DESIGN.md,
"Measurements"). This module provides both.

``PulseServer``
    Starts a private ``pulseaudio`` daemon (also as root), in a unique
    temporary directory, with two clocked null sinks:

    * the **speaker**, ``callctl_speaker`` (default sink): what is played to it
      can be recorded from ``callctl_speaker.monitor``;
    * the **microphone**, ``callctl_mic``: its monitor ``callctl_mic.monitor``
      is the default *source*, so a PortAudio input stream records whatever a
      test plays into ``callctl_mic`` (``PulseServer.feed_mic``) -- simulated
      caller speech -- and silence otherwise.

    Both run at 16000 Hz, mono, s16le (the agent's format), so PortAudio
    streams opened at 16000 Hz mono int16 are not resampled by the server.

    ``PulseServer.env`` holds the environment variables a *child process*
    needs so that PortAudio (ALSA host API, through the ALSA ``pulse`` plugin
    of libasound2-plugins) reaches this server. Under that environment PortAudio
    lists two devices, ``pulse`` and ``default``, both full duplex and both
    routed to this server (``default`` because of the pulseaudio package's
    ``/etc/alsa/conf.d/99-pulse.conf`` hook, which redirects it only when a
    server is reachable). The environment must be in place before ALSA reads
    its configuration, i.e. before the first ``pyaudio.PyAudio()`` in that
    process: start a subprocess with ``env={**os.environ, **server.env}``
    rather than patching ``os.environ`` of a process that already used ALSA.
    The variables: ``PULSE_SERVER`` (``unix:<tmp>/native``),
    ``PULSE_RUNTIME_PATH``, ``PULSE_STATE_PATH``, ``PULSE_CLIENTCONFIG``
    (autospawn off), ``PULSE_COOKIE`` (else libpulse creates
    ``~/.config/pulse/cookie``), ``PULSE_SINK`` / ``PULSE_SOURCE`` (the
    speaker and the microphone monitor) and ``JACK_NO_START_SERVER=1``.

``PlaybackObserver``
    Records a sink's monitor with ``parec`` (raw s16le, mono, 16 kHz, 5 ms
    fragments) in a reader thread, stamps every chunk with ``time.monotonic()``
    at its arrival, and answers "when was the first / last sound after t0".
    ``time.monotonic()`` is ``CLOCK_MONOTONIC`` on Linux, shared by all
    processes, so times from an engine subprocess compare directly.

The render block (why the server keeps "keeper" streams)
---------------------------------------------------------
PulseAudio's null sink renders ahead of its clock by its requested latency and
sleeps until that block has elapsed. With no client it requests its maximum,
2 s: a stream that connects to an idle null sink then waits up to 2 s for its
first period, and a monitor recorder up to 2 s for its first data. So right
after startup the server suspends and resumes each null sink around
connecting a ``parec`` "keeper" stream (output to ``/dev/null``) that requests
``block_ms`` (default 5 ms) of latency. From then on each null sink behaves
like a device with a 5 ms period: new streams start at once and the monitor
delivers one 80-sample chunk every 5 ms. (A client asking for less latency
shrinks the block further while it plays; the observer copes, see there.)
The sinks are loaded with ``norewinds=1`` so that their monitors record
exactly what was rendered (``PlaybackObserver`` explains why).

When the daemon dies (``PulseServer.kill``) a PortAudio callback stream on it
simply stops being called back: ``is_active()`` turns False within a period,
no status flag is raised, and ``stop_stream()`` / ``close()`` return at once.

Units: rates in Hz (frames per second; mono, so a frame is one sample), times
in seconds of ``time.monotonic()`` unless a name ends in ``_ms``, levels in
dBFS relative to a full-scale int16 value of 32768.
"""

from __future__ import annotations

import contextlib
import itertools
import math
import os
import shutil
import subprocess
import tempfile
import threading
import time
import weakref
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import IO

import numpy as np
import numpy.typing as npt

__all__ = [
    "FULL_SCALE",
    "ObserverError",
    "PlaybackObserver",
    "PulseServer",
    "PulseServerError",
    "dbfs",
    "dbfs_to_amplitude",
    "find_portaudio_device",
    "peak_dbfs",
]

#: Full-scale magnitude of int16 PCM, the 0 dBFS reference.
FULL_SCALE = 32768.0

#: Seconds a single ``pactl`` call may take before it is abandoned.
_PACTL_TIMEOUT = 3.0

_server_counter = itertools.count(1)

_SPEAKER = "callctl_speaker"
_MIC = "callctl_mic"


class PulseServerError(RuntimeError):
    """The private PulseAudio server could not be started or queried."""


class ObserverError(RuntimeError):
    """The playback observer could not start recording."""


# --------------------------------------------------------------------------- levels


def dbfs_to_amplitude(level_dbfs: float) -> float:
    """Return the int16 sample magnitude corresponding to ``level_dbfs`` (dBFS re 32768)."""
    return FULL_SCALE * 10.0 ** (level_dbfs / 20.0)


def dbfs(samples: npt.ArrayLike) -> float:
    """RMS level of int16 ``samples`` in dBFS (re 32768); ``-inf`` for silence or no samples.

    A full-scale square wave is 0 dBFS and a full-scale sine about -3 dBFS.
    """
    x = np.asarray(samples, dtype=np.float64)
    if x.size == 0:
        return -math.inf
    rms = float(np.sqrt(np.mean(x * x)))
    return 20.0 * math.log10(rms / FULL_SCALE) if rms > 0.0 else -math.inf


def peak_dbfs(samples: npt.ArrayLike) -> float:
    """Peak level of int16 ``samples`` in dBFS (re 32768); ``-inf`` for silence or no samples."""
    x = np.asarray(samples, dtype=np.float64)
    if x.size == 0:
        return -math.inf
    peak = float(np.max(np.abs(x)))
    return 20.0 * math.log10(peak / FULL_SCALE) if peak > 0.0 else -math.inf


# --------------------------------------------------------------------------- helpers


def _which(program: str) -> str:
    path = shutil.which(program)
    if path is None:
        raise PulseServerError(
            f"{program!r} not found on PATH (Debian packages: pulseaudio, pulseaudio-utils)"
        )
    return path


def _child_argv(argv: Sequence[str], die_with_parent: bool) -> list[str]:
    """Prefix ``argv`` with ``setpriv --pdeathsig KILL`` when asked and available.

    The parent-death signal is delivered when the *thread* that spawned the
    child exits, so only spawn from a thread that outlives the child (the main
    thread, a pytest fixture) when ``die_with_parent`` is true.
    """
    setpriv = shutil.which("setpriv")
    if die_with_parent and setpriv is not None:
        return [setpriv, "--pdeathsig", "KILL", "--", *argv]
    return list(argv)


def _reap(proc: subprocess.Popen[bytes], term_timeout: float, kill_timeout: float) -> None:
    """Stop ``proc`` with SIGTERM, then SIGKILL; each wait bounded (seconds)."""
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        proc.terminate()
    try:
        proc.wait(timeout=term_timeout)
        return
    except subprocess.TimeoutExpired:
        pass
    with contextlib.suppress(ProcessLookupError):
        proc.kill()
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=kill_timeout)


def _cleanup(procs: list[subprocess.Popen[bytes]], tmpdir: str) -> None:
    """Finaliser shared by ``PulseServer.stop`` and garbage collection / interpreter exit."""
    # Keepers first (they are clients, appended after the daemon), the daemon last.
    for proc in reversed(procs):
        _reap(proc, term_timeout=3.0, kill_timeout=3.0)
    procs.clear()
    shutil.rmtree(tmpdir, ignore_errors=True)


def _pcm_bytes(samples: npt.ArrayLike) -> bytes:
    x = np.asarray(samples)
    if x.dtype != np.int16:
        if np.issubdtype(x.dtype, np.floating):
            x = np.clip(np.round(x * 32767.0), -32768, 32767)
        x = x.astype(np.int16)
    return np.ascontiguousarray(x.reshape(-1)).astype("<i2", copy=False).tobytes()


def find_portaudio_device(pa: object, name: str = "pulse") -> int:
    """Index of the PortAudio device called ``name`` (``"pulse"`` or ``"default"``).

    ``pa`` is a ``pyaudio.PyAudio`` instance created under ``PulseServer.env``.
    Raises ``LookupError`` if no device has that exact name.
    """
    count = pa.get_device_count()  # type: ignore[attr-defined]
    for index in range(count):
        info = pa.get_device_info_by_index(index)  # type: ignore[attr-defined]
        if info.get("name") == name:
            return index
    raise LookupError(f"no PortAudio device named {name!r} among {count}")


# --------------------------------------------------------------------------- server


class PulseServer:
    """A private PulseAudio daemon with a speaker and a microphone null sink.

    Use as a context manager (or call ``start()`` / ``stop()``)::

        with PulseServer() as server, PlaybackObserver(server) as observer:
            subprocess.run([...], env={**os.environ, **server.env}, timeout=30)
            t_last = observer.last_sound_after(t0)

    Daemon command line (``--daemonize=no`` keeps it our child; running as
    root only earns a warning in user mode)::

        pulseaudio --daemonize=no --system=false -n --file=<tmp>/server.pa
            --exit-idle-time=-1 --use-pid-file=no --disable-shm=yes
            --high-priority=yes --realtime=yes --log-target=stderr

    As root the null sinks' threads get ``SCHED_RR`` (priority 5) and the
    main thread nice -11, so the virtual devices keep time under CPU load
    as a sound card's clock would (without it, a loaded 2-core machine
    delayed their wake-ups by 4 ms every other block); elsewhere PulseAudio
    just runs without. The daemon runs with ``HOME``, ``XDG_CONFIG_HOME``,
    ``PULSE_RUNTIME_PATH`` and ``PULSE_STATE_PATH`` pointing into the
    temporary directory (nothing is read from or written to the real home),
    and ``server.pa`` loading
    ``module-native-protocol-unix`` on ``<tmp>/native`` (anonymous auth), the
    two null sinks (``rate=16000 channels=1 format=s16le channel_map=mono
    norewinds=1``) and setting the defaults. ``-n`` skips ``default.pa``,
    so no hardware, D-Bus, X11 or suspend-on-idle module is loaded (the
    daemon still logs that it cannot reach D-Bus; harmless). The daemon keeps
    running when a line of that script fails (``.fail`` and ``--fail``
    notwithstanding), so ``start()`` checks the defaults and fails fast with
    the log. Client autospawn is off (``PULSE_CLIENTCONFIG``), so a dead
    server stays dead. A server is single use: ``start()`` once, ``stop()``.

    Attributes:
        name: unique name of this server (also the temp directory's prefix).
        rate: sample rate of both null sinks, Hz.
        block_ms: render block the keepers impose on the null sinks, ms.
        sink / monitor: the speaker null sink and the source recording it.
        mic_sink / source: the microphone null sink and its monitor, the
            default source.
        env: environment variables for child processes (see module doc).
        tmpdir: the private directory, removed by ``stop()``.
    """

    def __init__(
        self,
        *,
        rate: int = 16000,
        block_ms: float = 5.0,
        name: str | None = None,
        start_timeout: float = 10.0,
        die_with_parent: bool = True,
    ) -> None:
        """Configure (not start) a server.

        Args:
            rate: sample rate of both null sinks in Hz.
            block_ms: latency requested by the keeper streams in ms, which
                becomes the null sinks' render block (device period).
            name: unique name; default ``callctl-<pid>-<n>``.
            start_timeout: bound on the whole startup in seconds.
            die_with_parent: have the kernel SIGKILL the daemon and keepers
                when the spawning thread dies (``setpriv --pdeathsig``).
        """
        if rate <= 0:
            raise ValueError(f"rate must be positive, got {rate}")
        if block_ms <= 0:
            raise ValueError(f"block_ms must be positive, got {block_ms}")
        self.rate = int(rate)
        self.block_ms = float(block_ms)
        self.name = name or f"callctl-{os.getpid()}-{next(_server_counter)}"
        self.start_timeout = float(start_timeout)
        self.die_with_parent = die_with_parent
        self.sink = _SPEAKER
        self.monitor = f"{_SPEAKER}.monitor"
        self.mic_sink = _MIC
        self.source = f"{_MIC}.monitor"
        self.env: dict[str, str] = {}
        self.tmpdir: Path | None = None
        self.socket_path: Path | None = None
        self.log_path: Path | None = None
        self._daemon: subprocess.Popen[bytes] | None = None
        self._procs: list[subprocess.Popen[bytes]] = []
        self._finalizer: weakref.finalize | None = None
        self._log_file: IO[bytes] | None = None

    # -- lifecycle ---------------------------------------------------------

    def __enter__(self) -> PulseServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def pid(self) -> int | None:
        """Process id of the daemon, or None before ``start()``."""
        return self._daemon.pid if self._daemon is not None else None

    @property
    def alive(self) -> bool:
        """True while the daemon process runs (it may still be starting)."""
        return self._daemon is not None and self._daemon.poll() is None

    def start(self) -> PulseServer:
        """Start the daemon and its keepers; return self once it answers.

        Bounded by ``start_timeout`` seconds overall. On any failure everything
        started so far is stopped, the temp directory removed, and
        ``PulseServerError`` (with the daemon log) raised.
        """
        if self._daemon is not None:
            raise PulseServerError(f"server {self.name} already started")
        pulseaudio = _which("pulseaudio")
        _which("pactl")
        parec = _which("parec")
        deadline = time.monotonic() + self.start_timeout

        tmpdir = tempfile.mkdtemp(prefix=f"{self.name}-")
        self.tmpdir = Path(tmpdir)
        self._finalizer = weakref.finalize(self, _cleanup, self._procs, tmpdir)
        try:
            self._write_config()
            self._daemon = self._spawn_daemon(pulseaudio)
            self._wait_ready(deadline)
            for sink in (self.sink, self.mic_sink):
                self._attach_keeper(parec, sink, deadline)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Stop keepers and daemon (SIGTERM, then SIGKILL) and remove the temp dir.

        Idempotent; every wait is bounded (at most about 6 s per process).
        """
        if self._finalizer is not None:
            self._finalizer()  # runs _cleanup once
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None

    def kill(self) -> None:
        """Kill the daemon abruptly (SIGKILL), as a crashing sound server would die.

        Clients lose their connection; the keepers exit by themselves. The
        temp directory stays until ``stop()`` so the log can be read.
        """
        if self._daemon is None:
            raise PulseServerError("server not started")
        with contextlib.suppress(ProcessLookupError):
            self._daemon.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self._daemon.wait(timeout=5.0)

    def restart(self) -> None:
        """Kill the daemon (SIGKILL) and start a new one on the same socket, with the same
        sinks and fresh keepers: a sound server that crashed and came back.

        Bounded by ``start_timeout`` seconds; raises ``PulseServerError`` on failure.
        """
        self.kill()
        for proc in list(self._procs):  # the old keepers lost their server
            _reap(proc, term_timeout=1.0, kill_timeout=1.0)
            self._procs.remove(proc)
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None
        deadline = time.monotonic() + self.start_timeout
        self._daemon = self._spawn_daemon(_which("pulseaudio"))
        self._wait_ready(deadline)
        for sink in (self.sink, self.mic_sink):
            self._attach_keeper(_which("parec"), sink, deadline)

    def kill_sink_input(self, index: int | str, timeout: float = _PACTL_TIMEOUT) -> None:
        """Kill playback stream ``index`` (``pactl list short sink-inputs``), as a mixer can.

        ``pactl`` has no such command; the daemon's CLI protocol has, so this loads
        ``module-cli-protocol-unix`` once and sends ``kill-sink-input`` on its socket.
        """
        import socket

        if self.tmpdir is None:
            raise PulseServerError("server not started")
        path = self.tmpdir / "runtime" / "cli"
        if not path.exists():
            self.pactl("load-module", "module-cli-protocol-unix", f"socket={path}")
        with socket.socket(socket.AF_UNIX) as sock:
            sock.settimeout(timeout)
            sock.connect(str(path))
            sock.sendall(f"kill-sink-input {index}\n".encode())
            time.sleep(0.05)  # the CLI answers only on error; let it read before we hang up

    # -- queries and helpers ---------------------------------------------------

    def log(self) -> str:
        """The daemon's log so far (stderr, notice level), or '' if none."""
        if self.log_path is None or not self.log_path.exists():
            return ""
        return self.log_path.read_text(errors="replace")

    def child_env(self, base: Mapping[str, str] | None = None) -> dict[str, str]:
        """``base`` (default ``os.environ``) updated with ``env``: pass to ``subprocess``."""
        merged = dict(os.environ if base is None else base)
        merged.update(self.env)
        return merged

    def pactl(self, *args: str, timeout: float = _PACTL_TIMEOUT) -> str:
        """Run ``pactl ARGS`` against this server; return stdout.

        Raises ``PulseServerError`` on a non-zero exit or after ``timeout`` s.
        """
        try:
            result = subprocess.run(
                [_which("pactl"), *args],
                env=self.child_env(),
                stdin=subprocess.DEVNULL,
                capture_output=True,
                timeout=timeout,
                check=False,
            )
        except subprocess.TimeoutExpired as exc:
            raise PulseServerError(f"pactl {' '.join(args)} timed out after {timeout} s") from exc
        if result.returncode != 0:
            raise PulseServerError(
                f"pactl {' '.join(args)} failed ({result.returncode}): "
                f"{result.stderr.decode(errors='replace').strip()}"
            )
        return result.stdout.decode(errors="replace")

    def info(self, timeout: float = _PACTL_TIMEOUT) -> dict[str, str]:
        """``pactl info`` as a dict (keys like ``'Default Sink'``); bounded by ``timeout`` s."""
        out = self.pactl("info", timeout=timeout)
        pairs = (line.split(":", 1) for line in out.splitlines() if ":" in line)
        return {k.strip(): v.strip() for k, v in pairs}

    def play(
        self,
        samples: npt.ArrayLike,
        *,
        device: str | None = None,
        rate: int | None = None,
        latency_ms: float = 10.0,
        wait: bool = True,
        timeout: float | None = None,
    ) -> subprocess.Popen[bytes]:
        """Play mono PCM into a sink with ``pacat`` (a separate client).

        Args:
            samples: int16 samples, or floats in [-1, 1] (scaled by 32767).
            device: sink name, default the speaker ``sink``.
            rate: sample rate of ``samples`` in Hz, default ``self.rate``.
            latency_ms: pacat's buffer in ms.
            wait: wait until pacat has drained and exited.
            timeout: bound on that wait in seconds; default duration + 5 s.

        Returns the ``pacat`` process (already finished when ``wait``). Its
        temporary PCM file is removed after the wait, or by ``stop()``.
        """
        if self.tmpdir is None or not self.alive:
            raise PulseServerError("server not running")
        rate = self.rate if rate is None else int(rate)
        data = _pcm_bytes(samples)
        fd, raw_path = tempfile.mkstemp(suffix=".raw", dir=self.tmpdir)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        argv = [
            _which("pacat"),
            "--playback",
            f"--device={device or self.sink}",
            "--raw",
            "--format=s16le",
            f"--rate={rate}",
            "--channels=1",
            f"--latency-msec={latency_ms:g}",
            "--client-name=callctl-test-player",
            raw_path,
        ]
        proc = subprocess.Popen(
            _child_argv(argv, self.die_with_parent),
            env=self.child_env(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        if wait:
            limit = timeout if timeout is not None else len(data) / 2 / rate + 5.0
            try:
                _, err = proc.communicate(timeout=limit)
            except subprocess.TimeoutExpired as exc:
                _reap(proc, 1.0, 1.0)
                raise PulseServerError(f"pacat did not finish within {limit:.1f} s") from exc
            finally:
                with contextlib.suppress(OSError):
                    os.unlink(raw_path)
            if proc.returncode != 0:
                raise PulseServerError(
                    f"pacat failed ({proc.returncode}): {err.decode(errors='replace').strip()}"
                )
        return proc

    def feed_mic(
        self, samples: npt.ArrayLike, *, wait: bool = False, timeout: float | None = None
    ) -> subprocess.Popen[bytes]:
        """Play ``samples`` (at the server's rate) into the microphone sink.

        Whatever records the default source (``callctl_mic.monitor``) hears
        it: this simulates the caller speaking. Non-blocking by default; the
        caller should ``wait(timeout=...)`` on the returned process.
        """
        return self.play(samples, device=self.mic_sink, wait=wait, timeout=timeout)

    # -- internals -------------------------------------------------------------

    def _write_config(self) -> None:
        assert self.tmpdir is not None
        tmp = self.tmpdir
        self.socket_path = tmp / "native"
        if len(str(self.socket_path)) >= 100:
            raise PulseServerError(
                f"socket path too long for AF_UNIX: {self.socket_path} (set TMPDIR shorter)"
            )
        for sub in ("runtime", "state", "home", "config"):
            (tmp / sub).mkdir(mode=0o700)
        self.log_path = tmp / "pulseaudio.log"
        spec = f"rate={self.rate} channels=1 format=s16le channel_map=mono norewinds=1"
        script = "\n".join(
            [
                "load-module module-native-protocol-unix "
                f'socket="{self.socket_path}" auth-anonymous=1',
                f"load-module module-null-sink sink_name={self.sink} {spec} "
                "sink_properties=device.description=callctl-speaker",
                f"load-module module-null-sink sink_name={self.mic_sink} {spec} "
                "sink_properties=device.description=callctl-mic",
                f"set-default-sink {self.sink}",
                f"set-default-source {self.source}",
                "",
            ]
        )
        (tmp / "server.pa").write_text(script)
        server = f"unix:{self.socket_path}"
        (tmp / "client.conf").write_text(
            f"autospawn = no\ndefault-server = {server}\nenable-shm = no\n"
        )
        self.env = {
            "PULSE_SERVER": server,
            "PULSE_RUNTIME_PATH": str(tmp / "runtime"),
            "PULSE_STATE_PATH": str(tmp / "state"),
            "PULSE_CLIENTCONFIG": str(tmp / "client.conf"),
            "PULSE_COOKIE": str(tmp / "cookie"),
            "PULSE_SINK": self.sink,
            "PULSE_SOURCE": self.source,
            # PortAudio's JACK host API probes for a JACK server at init; never
            # let libjack autostart one as a side effect.
            "JACK_NO_START_SERVER": "1",
        }

    def _spawn_daemon(self, pulseaudio: str) -> subprocess.Popen[bytes]:
        assert self.tmpdir is not None and self.log_path is not None
        tmp = self.tmpdir
        daemon_env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(tmp / "home"),
            "XDG_CONFIG_HOME": str(tmp / "config"),
            "XDG_RUNTIME_DIR": str(tmp / "runtime"),
            "PULSE_RUNTIME_PATH": str(tmp / "runtime"),
            "PULSE_STATE_PATH": str(tmp / "state"),
            "LANG": "C",
        }
        argv = [
            pulseaudio,
            "--daemonize=no",
            "--system=false",
            "-n",
            f"--file={tmp / 'server.pa'}",
            "--exit-idle-time=-1",
            "--use-pid-file=no",
            "--disable-shm=yes",
            "--high-priority=yes",
            "--realtime=yes",
            "--log-target=stderr",
        ]
        self._log_file = open(self.log_path, "wb")  # closed in stop()
        proc = subprocess.Popen(
            _child_argv(argv, self.die_with_parent),
            env=daemon_env,
            cwd=tmp,
            stdin=subprocess.DEVNULL,
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self._procs.append(proc)
        return proc

    def _wait_ready(self, deadline: float) -> None:
        """Poll ``pactl info`` until the server answers with our defaults (bounded)."""
        last_error = "no attempt"
        while True:
            assert self._daemon is not None
            if self._daemon.poll() is not None:
                raise PulseServerError(
                    f"pulseaudio exited with {self._daemon.returncode} during startup:\n"
                    + self.log()
                )
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise PulseServerError(
                    f"pulseaudio not ready within {self.start_timeout} s ({last_error}):\n"
                    + self.log()
                )
            try:
                info = self.info(timeout=min(_PACTL_TIMEOUT, max(remaining, 0.1)))
            except PulseServerError as exc:
                last_error = str(exc)
                time.sleep(0.05)
                continue
            # The daemon accepts clients only after its startup script ran, and it
            # keeps running when a line of it failed (even with .fail / --fail):
            # so the first answer is final.
            if info.get("Default Sink") != self.sink or info.get("Default Source") != self.source:
                raise PulseServerError(
                    "pulseaudio startup script failed (defaults are "
                    f"{info.get('Default Sink')}/{info.get('Default Source')}):\n" + self.log()
                )
            return

    def _attach_keeper(self, parec: str, sink: str, deadline: float) -> None:
        """Hold ``sink``'s render block at ``block_ms`` with a monitor recorder.

        Suspending the null sink first and resuming it once the keeper is
        attached restarts its clock at "now" with the small block, instead
        of waiting out the 2 s the idle sink had already rendered.
        """
        self.pactl("suspend-sink", sink, "1")
        argv = [
            parec,
            f"--device={sink}.monitor",
            "--raw",
            "--format=s16le",
            f"--rate={self.rate}",
            "--channels=1",
            f"--latency-msec={self.block_ms:g}",
            f"--client-name=callctl-keeper-{sink}",
        ]
        proc = subprocess.Popen(
            _child_argv(argv, self.die_with_parent),
            env=self.child_env(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self._procs.append(proc)
        # Wait until the keeper's record stream exists, then resume the sink.
        while True:
            if proc.poll() is not None:
                raise PulseServerError(f"keeper parec for {sink} exited with {proc.returncode}")
            outputs = self.pactl("list", "short", "source-outputs")
            if f"{sink}.monitor" in self._source_names_of(outputs):
                break
            if time.monotonic() > deadline:
                raise PulseServerError(f"keeper for {sink} did not connect in time")
            time.sleep(0.02)
        self.pactl("suspend-sink", sink, "0")

    def _source_names_of(self, short_outputs: str) -> set[str]:
        """Names of the sources that the ``list short source-outputs`` rows record from."""
        index_to_name: dict[str, str] = {}
        for line in self.pactl("list", "short", "sources").splitlines():
            cols = line.split("\t")
            if len(cols) >= 2:
                index_to_name[cols[0]] = cols[1]
        names = set()
        for line in short_outputs.splitlines():
            cols = line.split("\t")
            if len(cols) >= 2 and cols[1] in index_to_name:
                names.add(index_to_name[cols[1]])
        return names


# --------------------------------------------------------------------------- observer


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


class PlaybackObserver:
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
        server: PulseServer | None = None,
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

    # -- lifecycle ---------------------------------------------------------

    def __enter__(self) -> PlaybackObserver:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def alive(self) -> bool:
        """True while parec runs and its stdout is open."""
        return self._proc is not None and self._proc.poll() is None and not self._eof.is_set()

    def start(self) -> PlaybackObserver:
        """Start parec and the reader; return once the first chunk arrived.

        Raises ``ObserverError`` (with parec's stderr) if no data arrives
        within ``start_timeout`` seconds.
        """
        if self._proc is not None:
            raise ObserverError("observer already started")
        argv = [
            _which("parec"),
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
            _child_argv(argv, self.die_with_parent),
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
            _reap(self._proc, term_timeout=2.0, kill_timeout=2.0)
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

    def wait_until(self, t: float, timeout: float) -> bool:
        """Block until samples up to time ``t`` (s) are recorded; at most ``timeout`` s.

        Returns False on timeout or if the recorder stopped first.
        """
        deadline = time.monotonic() + timeout
        while True:
            until = self.recorded_until()
            if until is not None and until >= t:
                return True
            if self._eof.is_set() or time.monotonic() >= deadline:
                return False
            time.sleep(0.005)

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

    def segment(self, t_start: float, t_end: float) -> npt.NDArray[np.int16]:
        """The samples whose estimated times lie in ``[t_start, t_end)`` (s)."""
        base, data = self._span(t_start, t_end)
        times = self.times_of(np.arange(base, base + data.size))
        return data[(times >= t_start) & (times < t_end)]

    def _loud_times(
        self, t0: float, threshold_dbfs: float, until: float | None
    ) -> npt.NDArray[np.float64]:
        base, data = self._span(t0, until)
        amplitude = dbfs_to_amplitude(threshold_dbfs)
        loud = np.flatnonzero(np.abs(data.astype(np.int32)) > amplitude)
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
