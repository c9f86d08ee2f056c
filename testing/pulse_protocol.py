"""What tests do on a private server that speaks PulseAudio's protocol.

``testing.pulse.PulseServer`` (a PulseAudio daemon) and
``testing.pipewire.PipeWireServer`` (PipeWire's pulse server) both offer two
16 kHz mono null sinks by the same names, ``callctl_speaker`` (the default
sink) and ``callctl_mic`` (its monitor is the default source), and the same
client-side tools: ``pactl``, ``pacat`` into a sink, the caller's voice into
the microphone, the environment for a child process. Those live here, once.

Units: rates in Hz (mono: a frame is a sample), times in seconds.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import tempfile
import weakref
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy.typing as npt

from testing.processes import StartStop, child_argv, pcm_bytes, reap, stop_all, which

__all__ = ["MIC_SINK", "PACTL_TIMEOUT", "SPEAKER_SINK", "PulseProtocolServer",
           "PulseServerError"]

#: Seconds a single ``pactl`` call may take before it is abandoned.
PACTL_TIMEOUT = 3.0

#: The null sinks every private server of the rig offers, by the same names.
SPEAKER_SINK = "callctl_speaker"
MIC_SINK = "callctl_mic"

class PulseServerError(RuntimeError):
    """The private PulseAudio server could not be started or queried."""


class PulseProtocolServer(StartStop):
    """What tests do on a private server that speaks PulseAudio's protocol: run ``pactl``,
    play into a sink with ``pacat``, feed the microphone, build a child's environment.

    A subclass starts the server and sets ``env`` (``PULSE_SERVER`` and the rest, see
    the module doc), ``tmpdir`` and ``alive``; ``sink`` / ``mic_sink`` / ``monitor`` /
    ``source`` are the rig's two null sinks and their monitors on every server. Main
    thread (or the thread that started it) only; every call is bounded.
    """

    #: Raised on failure; a subclass names its own.
    error: type[PulseServerError] = PulseServerError
    #: The Debian packages that provide the server's programs, for "not found" errors.
    packages = "pulseaudio, pulseaudio-utils"

    def __init__(self, rate: int, name: str, start_timeout: float,
                 die_with_parent: bool) -> None:
        """Set what every such server has: ``rate`` (Hz), a unique ``name``, a bound on
        its startup (``start_timeout``, s), whether its processes die with the spawning
        thread; the sinks' names; no environment yet."""
        self.rate = int(rate)
        self.name = name
        self.start_timeout = float(start_timeout)
        self.die_with_parent = die_with_parent
        self.sink = SPEAKER_SINK
        self.monitor = f"{SPEAKER_SINK}.monitor"
        self.mic_sink = MIC_SINK
        self.source = f"{MIC_SINK}.monitor"
        self.env: dict[str, str] = {}
        self.tmpdir: Path | None = None
        self.socket_path: Path | None = None
        self._procs: list[subprocess.Popen[bytes]] = []  # daemons and clients, start order
        self._finalizer: weakref.finalize | None = None

    @property
    def alive(self) -> bool:
        raise NotImplementedError

    def _which(self, program: str) -> str:
        return which(program, self.packages, self.error)

    def _start_in_tmpdir(self, bring_up: Callable[[], None]) -> None:
        """Make the private directory ``tmpdir`` and run ``bring_up`` (which spawns into
        ``_procs``); on any failure ``stop()`` and re-raise. From then on ``stop()``,
        garbage collection or interpreter exit reap ``_procs`` and remove ``tmpdir``."""
        tmpdir = tempfile.mkdtemp(prefix=f"{self.name}-")
        self.tmpdir = Path(tmpdir)
        self._finalizer = weakref.finalize(self, stop_all, self._procs, tmpdir)
        try:
            bring_up()
        except BaseException:
            self.stop()
            raise

    def _stop_processes(self) -> None:
        """Reap ``_procs`` (last started first) and remove ``tmpdir``; once, bounded."""
        if self._finalizer is not None:
            self._finalizer()

    def _spawn_client(self, argv: list[str], stderr: int) -> subprocess.Popen[bytes]:
        """Start a client of this server (``pacat``, ``parec``) under ``child_env()``, no
        stdin or stdout; the caller owns and reaps it."""
        return subprocess.Popen(child_argv(argv, self.die_with_parent), env=self.child_env(),
                                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=stderr)

    def child_env(self, base: Mapping[str, str] | None = None) -> dict[str, str]:
        """``base`` (default ``os.environ``) updated with ``env``: pass to ``subprocess``."""
        merged = dict(os.environ if base is None else base)
        merged.update(self.env)
        return merged

    def pactl(self, *args: str, timeout: float = PACTL_TIMEOUT) -> str:
        """Run ``pactl ARGS`` against this server; return stdout.

        Raises ``error`` on a non-zero exit or after ``timeout`` s.
        """
        try:
            result = subprocess.run(
                [self._which("pactl"), *args],
                env=self.child_env(),
                stdin=subprocess.DEVNULL,
                capture_output=True,
                timeout=timeout,
                check=False,
            )
        except subprocess.TimeoutExpired as exc:
            raise self.error(f"pactl {' '.join(args)} timed out after {timeout} s") from exc
        if result.returncode != 0:
            raise self.error(
                f"pactl {' '.join(args)} failed ({result.returncode}): "
                f"{result.stderr.decode(errors='replace').strip()}"
            )
        return result.stdout.decode(errors="replace")

    def info(self, timeout: float = PACTL_TIMEOUT) -> dict[str, str]:
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
            raise self.error("server not running")
        rate = self.rate if rate is None else int(rate)
        data = pcm_bytes(samples)
        fd, raw_path = tempfile.mkstemp(suffix=".raw", dir=self.tmpdir)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        argv = [
            self._which("pacat"),
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
        proc = self._spawn_client(argv, stderr=subprocess.PIPE)
        if wait:
            limit = timeout if timeout is not None else len(data) / 2 / rate + 5.0
            try:
                _, err = proc.communicate(timeout=limit)
            except subprocess.TimeoutExpired as exc:
                reap(proc, 1.0, 1.0)
                raise self.error(f"pacat did not finish within {limit:.1f} s") from exc
            finally:
                with contextlib.suppress(OSError):
                    os.unlink(raw_path)
            if proc.returncode != 0:
                raise self.error(
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
