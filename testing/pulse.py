"""A private PulseAudio server with a speaker and a microphone sink, for tests and benchmarks.

The machines have no sound card, yet the engine must be tested against a real
sound server reached through PortAudio, and the *hangup → silence* figure must
be measured by an audio client outside the engine (the project's
"Measurements"; ``testing.observer.PlaybackObserver`` is that client). This
module provides the server; ``PulseProtocolServer`` is what the tests do on any
server that speaks PulseAudio's protocol (PipeWire's too, ``testing.pipewire``).

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
exactly what was rendered (``testing.observer.PlaybackObserver`` explains why).

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
import os
import subprocess
import time
from pathlib import Path
from typing import IO

from testing.processes import child_argv, reap
from testing.pulse_protocol import PACTL_TIMEOUT, PulseProtocolServer, PulseServerError

__all__ = ["PulseServer", "PulseServerError", "find_portaudio_device"]

_server_counter = itertools.count(1)


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


class PulseServer(PulseProtocolServer):
    """A private PulseAudio daemon with a speaker and a microphone null sink.

    Use as a context manager (or call ``start()`` / ``stop()``)::

        with PulseServer() as server, PlaybackObserver(server) as observer:
            subprocess.run([...], env={**os.environ, **server.env}, timeout=30)
            t_last = observer.last_sound_after(t0)

    Daemon command line (``--daemonize=no`` keeps it our child; running as
    root only earns a warning in user mode)::

        pulseaudio --daemonize=no --system=false -n --file=<tmp>/server.pa
            --exit-idle-time=-1 --use-pid-file=no --disable-shm=no
            --high-priority=yes --realtime=yes --log-target=stderr

    Clients and server share memory for the samples (``--disable-shm=no``, and
    ``enable-shm = yes`` in the clients' ``client.conf``), as PulseAudio and
    PipeWire's pulse server do by default on a desktop: the samples and most
    messages then go through a shared ring, not the socket. (With shared
    memory off, the audio process's CPU in a call, ``python -m
    bench.audio_threads``, was 4.8 % of a core against 4.25 % with it, the
    medians of three runs each, at 10 ms periods.)

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
        super().__init__(rate, name or f"callctl-{os.getpid()}-{next(_server_counter)}",
                         start_timeout, die_with_parent)
        self.block_ms = float(block_ms)
        self.log_path: Path | None = None
        self._daemon: subprocess.Popen[bytes] | None = None
        self._log_file: IO[bytes] | None = None

    # -- lifecycle ---------------------------------------------------------

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
        pulseaudio = self._which("pulseaudio")
        self._which("pactl")
        parec = self._which("parec")
        deadline = time.monotonic() + self.start_timeout

        def bring_up() -> None:
            self._write_config()
            self._daemon = self._spawn_daemon(pulseaudio)
            self._wait_ready(deadline)
            for sink in (self.sink, self.mic_sink):
                self._attach_keeper(parec, sink, deadline)

        self._start_in_tmpdir(bring_up)
        return self

    def stop(self) -> None:
        """Stop keepers and daemon (SIGTERM, then SIGKILL) and remove the temp dir.

        Idempotent; every wait is bounded (at most about 6 s per process).
        """
        self._stop_processes()
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
            reap(proc, term_timeout=1.0, kill_timeout=1.0)
            self._procs.remove(proc)
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None
        deadline = time.monotonic() + self.start_timeout
        self._daemon = self._spawn_daemon(self._which("pulseaudio"))
        self._wait_ready(deadline)
        for sink in (self.sink, self.mic_sink):
            self._attach_keeper(self._which("parec"), sink, deadline)

    def kill_sink_input(self, index: int | str, timeout: float = PACTL_TIMEOUT) -> None:
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
            f"autospawn = no\ndefault-server = {server}\nenable-shm = yes\n"
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
            "--disable-shm=no",
            "--high-priority=yes",
            "--realtime=yes",
            "--log-target=stderr",
        ]
        self._log_file = open(self.log_path, "wb")  # closed in stop()
        proc = subprocess.Popen(
            child_argv(argv, self.die_with_parent),
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
                info = self.info(timeout=min(PACTL_TIMEOUT, max(remaining, 0.1)))
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
        proc = self._spawn_client(argv, stderr=subprocess.DEVNULL)
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

