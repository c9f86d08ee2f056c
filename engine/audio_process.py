"""The audio process: one full-duplex device stream, the two rings, the recorder.

``AudioEngine`` holds the parts and answers the control commands of
``engine.protocol.AUDIO_COMMANDS``; ``serve`` runs its request/reply loop on a
ZeroMQ REP socket; ``main`` wires them from the command line::

    python -m callctl.engine.audio_process --control ipc:///run/.../audio --rings callctl-123

The process creates and owns the rings ``<prefix>-play`` (agent → speaker)
and ``<prefix>-cap`` (microphone → agent) and unlinks them when it ends, on
errors and on SIGTERM too. Its parent may also unlink them by name after a
SIGKILL. It dies with its parent (``engine.lifeline``).

Threads: the control thread (main) owns the device, the rings' lifecycles and
the recorder; the device's audio thread runs ``DuplexCallback.process``; with
echo cancellation (the default; ``--no-aec`` turns it off) the
``echo-canceller`` thread (``engine.echo.EchoThread``) cancels the agent's
voice out of the microphone and is the capture ring's producer.
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
from pathlib import Path
from typing import Any, cast

import zmq

from callctl.engine import lifeline, protocol
from callctl.engine.bridge import RateBridge
from callctl.engine.callback import DEFAULT_FADE_SECONDS, DuplexCallback, dbfs
from callctl.engine.devices import AudioDevice, DeviceError, FadingDevice
from callctl.engine.echo import EchoCanceller, EchoThread, EchoUnavailable, InlineEcho
from callctl.engine.recorder import CallRecorder
from callctl.engine.ring import SAMPLE_RATE, AudioRing
from callctl.engine.serving import Commands, CommandServer, Reply, Request
from callctl.engine.threads import ask_realtime, freeze_heap

PLAYBACK_CAPACITY = 1 << 17
"""Playback ring, frames: 8.2 s at 16 kHz. The agent streams faster than real
time; what does not fit waits in the agent process."""
CAPTURE_CAPACITY = 1 << 15
"""Capture ring, frames: 2 s at 16 kHz of slack for the agent's input thread."""
SERVE_TURN = 1.0
"""Seconds the control loop waits for a request before looking at ``stop`` again. A request
wakes it at once; each idle turn is a wake-up that costs CPU during a call (about 100 µs
on the test rig, ``python -m bench.audio_floor``), so it is long."""

CONTROL_RT_PRIORITY = 5
"""``SCHED_RR`` priority of the audio process's threads but the audio thread (which asks
for more, ``engine.devices.pulse.RT_PRIORITY``), when the system allows it."""
GIL_SWITCH_S = 0.001
"""``sys.setswitchinterval`` in the audio process (Python's default is 5 ms): the longest
a running thread keeps the GIL from the audio thread."""

PULSE_FADE_MS = 6.0
"""The native PulseAudio backend's hangup fade: it fades what the server is playing, so
silence is this fade plus at most a render block (tests/engine/test_device_pulse.py)."""


def ring_names(prefix: str) -> tuple[str, str]:
    """Shared-memory names of the (playback, capture) rings for ``prefix``."""
    return f"{prefix}-play", f"{prefix}-cap"


def stream_delay_ms(device: AudioDevice, bridge: RateBridge) -> int:
    """The APM's stream delay for ``device``, in ms: output plus input latency as the
    device reports them, plus the period the rate bridge's FIFO adds when it resamples."""
    seconds = device.output_latency + float(getattr(device, "input_latency", 0.0) or 0.0)
    if not bridge.passthrough:
        seconds += device.period_frames / device.rate
    return max(0, round(seconds * 1000))


class AudioEngine(Commands, spec=protocol.AUDIO_COMMANDS):
    """The audio process's state and commands (``cmd_*``). Control thread only.

    Owns nothing it is given: the caller closes the device and the rings. With
    ``aec`` it starts the echo canceller thread (closed by ``close``); when
    the canceller cannot load, the engine runs without it and says so in
    ``status`` (``aec.error``).
    """

    def __init__(
        self,
        device: AudioDevice,
        playback: AudioRing,
        capture: AudioRing,
        fade_seconds: float = DEFAULT_FADE_SECONDS,
        aec: bool = True,
        noise_suppression: bool = True,
    ) -> None:
        self.device = device
        self.playback = playback
        self.capture = capture
        core_period = max(1, device.period_frames * SAMPLE_RATE // device.rate)
        fade = round(fade_seconds * SAMPLE_RATE)
        max_core = core_period + 64
        self.callback = DuplexCallback(playback, capture, max_core, fade_frames=fade)
        bridge = RateBridge(self.callback.process, device.rate, device.period_frames)
        self.segment_prefix = playback.name.removesuffix("-play")
        """Every shared-memory segment of this process is named ``<prefix>-…``."""
        self._recordings = 0
        self.echo: EchoThread | InlineEcho | None = None
        self.aec_error: str | None = None
        if aec:
            try:
                canceller = EchoCanceller(stream_delay_ms(device, bridge),
                                          noise_suppression=noise_suppression)
                self.echo = (InlineEcho(capture, canceller) if device.handler_may_wait
                             else EchoThread(capture, canceller, max_core,
                                             ring_name=f"{self.segment_prefix}-echo"))
            except (EchoUnavailable, RuntimeError, OSError) as exc:
                self.aec_error = str(exc)
                print(f"audio process: no echo cancellation: {exc}", file=sys.stderr)
        self.callback.echo = self.echo
        if device.cuts_at_device:
            self.callback.on_agent_flush = cast(FadingDevice, device).fade_flush_soon
        device.set_handler(bridge)
        self.recording: Path | None = None
        self._recorder: CallRecorder | None = None
        self._finalising: list[threading.Thread] = []
        self.started_at: float | None = None
        self.last_hangup: dict[str, Any] | None = None
        self.scheduling = "normal"
        """The control thread's scheduling (``engine.threads.ask_realtime``), for status."""
        self.shutdown_requested = False

    failures = {DeviceError: protocol.AUDIO, OSError: protocol.AUDIO}

    def cmd_ping(self, request: Request) -> Reply:
        return protocol.ok(protocol=protocol.PROTOCOL_VERSION)

    def cmd_shutdown(self, request: Request) -> Reply:
        """Answered at once; ``serve`` then returns, and ``main`` closes everything."""
        self.shutdown_requested = True
        return protocol.ok()

    def cmd_watch(self, request: Request) -> Reply:
        """What the controller reads about ten times a second during a call: the part of
        ``status`` a call's clients see (meters, xruns, stream losses, a recording error).
        ``status`` is the whole picture and costs several times more to build."""
        device = self.device.status()
        return protocol.ok(
            state="running" if self.device.running else "stopped",
            reopens=device.get("reopens", []),
            last_device_error=device.get("last_device_error"),
            levels=self._levels(), xruns=self._xruns(),
            recording_error=self._recorder.error if self._recorder else None)

    def _levels(self) -> dict[str, float | None]:
        peak_in, peak_out = self.callback.levels()
        return {"in_dbfs": _round(dbfs(peak_in)), "out_dbfs": _round(dbfs(peak_out))}

    def _xruns(self) -> dict[str, int]:
        cb = self.callback
        return {"device": cb.device_xruns, "gap_periods": cb.gap_periods,
                "playback_underruns": self.playback.underruns,
                "capture_overruns": self.capture.overruns}

    def cmd_status(self, request: Request) -> Reply:
        return protocol.ok(
            state="running" if self.device.running else "stopped",
            device=self.device.name,
            backend=self.device.backend,
            **self.device.status(),
            device_rate=self.device.rate,
            period_frames=self.device.period_frames,
            output_latency_ms=round(self.device.output_latency * 1000, 2),
            input_latency_ms=round(self.device.input_latency * 1000, 2),
            rings={"playback": self.playback.name, "capture": self.capture.name},
            playback_queued=self.playback.available(),
            levels=self._levels(), xruns=self._xruns(),
            recording=str(self.recording) if self.recording else None,
            recording_error=self._recorder.error if self._recorder else None,
            last_hangup=self.last_hangup, scheduling=self.scheduling,
            agent_flushes=self.callback.agent_flushes,
            last_fade=getattr(self.device, "fade_info", None),
            aec=self.echo.stats() if self.echo else {"enabled": False, "error": self.aec_error},
        )

    def cmd_start(self, request: Request) -> Reply:
        """Start the stream for a call, recording to ``request["record"]`` (a WAV path) if
        given; ``busy`` while it runs."""
        record: str | None = request.get("record")
        if self.device.running:
            return protocol.error(protocol.BUSY, "start: the stream is already running")
        self.callback.rearm()
        self.playback.flush()  # stream stopped: the control thread is the ring's reader
        if self.echo is not None:
            self.echo.reset()  # the last call's frames never reach this call's capture
        self.capture.flush()
        if record:
            self._recordings += 1
            self._recorder = CallRecorder(
                record, self.callback.max_period_frames,
                ring_name=f"{self.segment_prefix}-rec{self._recordings}")
            self.recording = self._recorder.path
        else:
            self._recorder, self.recording = None, None
        self.callback.recorder = self._recorder
        self.device.start()
        self.started_at = time.monotonic()
        return protocol.ok(started_at=self.started_at, recording=record)

    def cmd_flush(self, request: Request) -> Reply:
        """Barge-in: the callback drops queued playback at its next period; the stream runs on.

        On a device that cuts at the device (``cuts_at_device``: the native PulseAudio
        backend) the device also fades out, at once, what the sound server already
        holds (``fade_flush``), so the agent falls silent within a render block
        instead of playing the server's queue out. The device makes the callback's
        request itself, between two periods, with its fade, and serves the fade
        before the next period: no ring audio from before the flush is written
        after the fade, and a fade put off to the next write finds the flush still
        pending in the callback (which then writes that period faded).
        Replies with ``dropped_frames`` (from the ring), ``done`` (the callback took
        the request) and, when the device faded, ``silent_at`` (``time.monotonic()``
        when its fade's last sample plays, as the server reports it), ``fade`` (the
        device's account of it, as in the hangup's reply) and ``cut_by`` ("device" or
        "callback").
        """
        if not self.device.running:
            return protocol.ok(dropped_frames=self.playback.flush())
        tickets: list[int] = []

        def ask_callback() -> None:
            tickets.append(self.callback.request_flush())

        silent_at: float | None = None
        if self.device.cuts_at_device:
            # The device asks the callback itself, between two periods, so that the
            # fade it serves first and the callback's flush are one step.
            device = cast(FadingDevice, self.device)
            silent_at = device.fade_flush(max(0.1, 10 * device.period_frames / device.rate),
                                          ask_callback)
        if not tickets:
            ask_callback()
        ticket = tickets[0]
        deadline = time.monotonic() + 0.5
        while not self.callback.flush_done(ticket) and time.monotonic() < deadline:
            time.sleep(0.0005)
        return protocol.ok(dropped_frames=self.callback.last_flush_dropped,
                           done=self.callback.flush_done(ticket), silent_at=silent_at,
                           cut_by="device" if silent_at is not None else "callback",
                           fade=getattr(self.device, "fade_info", None)
                           if silent_at is not None else None)

    def cmd_hangup(self, request: Request) -> Reply:
        """Silence from the next period (after the fade), ring zeroed, stream stopped.

        Replies with its own times (``time.monotonic()`` seconds, comparable
        across processes on Linux): ``received_at``, ``first_silent_at``,
        ``stopped_at``. ``first_silent_at`` is, on a device that cuts at the
        device (``cuts_at_device``: the native PulseAudio backend), the moment
        its fade's last sample plays as the server reports it; otherwise the
        start of the period the callback faded to zero. ``cut_by`` says which
        ("device" or "callback").
        """
        received = time.monotonic()
        cb = self.callback
        was_running = self.device.running
        device_cut: float | None = None
        # Bounded: a stalled device must not stall the hangup.
        timeout = max(0.25, 20 * self.device.period_frames / self.device.rate)
        if was_running and self.device.cuts_at_device:
            # The device's audio thread fades what is playing now and stops; the
            # callback never runs again, so its ring flush below is the control
            # thread's (the stream is stopped: it is the reader now).
            cb.request_hangup()
            device_cut = self.device.fade_stop(timeout)
        elif was_running:
            cb.request_hangup()
            deadline = received + timeout
            while cb.first_silent_at is None and time.monotonic() < deadline:
                time.sleep(0.0005)
            self.device.stop()
        stopped = time.monotonic()
        if device_cut is not None:
            silent, cut_by = device_cut, "device"
        elif cb.first_silent_at is not None:
            silent, cut_by = cb.first_silent_at, "callback"
        else:
            silent, cut_by = stopped, "stop"
        cb.recorder = None
        self.playback.flush()
        recorder, self._recorder = self._recorder, None
        if recorder is not None:
            thread = threading.Thread(target=recorder.close, name="finalise-recording")
            thread.start()
            self._finalising.append(thread)
        self.last_hangup = {
            "received_at": received,
            "first_silent_at": silent,
            "stopped_at": stopped,
            "silent_ms": round((silent - received) * 1000, 2),
            "stopped_ms": round((stopped - received) * 1000, 2),
            "was_running": was_running,
            "cut_by": cut_by,
            "fade": getattr(self.device, "fade_info", None) if cut_by == "device" else None,
            "recording": str(self.recording) if self.recording else None,
        }
        return protocol.ok(**self.last_hangup)

    def close(self) -> None:
        """Stop the stream and finalise any recording (bounded waits)."""
        try:
            self.device.stop()
        finally:
            if self.echo is not None:
                self.callback.echo = None
                self.echo.close()
                self.echo = None
            self.callback.recorder = None
            if self._recorder is not None:
                self._recorder.close()
                self._recorder = None
            for thread in self._finalising:
                thread.join(timeout=10)


def _round(value: float) -> float | None:
    return None if value == float("-inf") else round(value, 1)


def serve(engine: AudioEngine, socket: zmq.Socket, endpoint: str,
          stop: threading.Event | None = None) -> None:
    """Bind the REP ``socket`` to ``endpoint`` and answer requests on it until ``shutdown``
    (or ``stop`` is set). The socket stays the caller's to close."""
    server = CommandServer(socket, engine)  # its options, before the bind
    socket.bind(endpoint)
    while not engine.shutdown_requested and (stop is None or not stop.is_set()):
        server.turn(SERVE_TURN)


def list_all_devices() -> list[dict[str, Any]]:
    """Both kinds, for the ``devices`` command: the sound server's, then PortAudio's.

    Each entry has ``backend``, ``device`` (the ``--device`` value) and ``name``.
    """
    from callctl.engine.devices.pulse import list_devices as pulse_devices

    devices = pulse_devices()
    try:
        from callctl.engine.devices.portaudio import list_devices as portaudio_devices

        devices += portaudio_devices()
    except (ImportError, OSError) as exc:
        devices.append({"backend": "portaudio", "device": None, "name": f"unavailable: {exc}",
                        "inputs": 0, "outputs": 0, "default_rate": 0})
    return devices


def default_backend() -> str:
    """``pulse`` on Linux when a PulseAudio-protocol server answers, else ``portaudio``."""
    if sys.platform.startswith("linux"):
        from callctl.engine.devices.pulse import server_answers

        if server_answers():
            return "pulse"
    return "portaudio"


def open_device(args: argparse.Namespace) -> AudioDevice:
    """The device the command line names (see ``engine.devices``); DeviceError if it can't."""
    spec: str | None = args.device
    if spec == "virtual":
        from callctl.engine.devices.virtual import VirtualDevice

        rate = args.virtual_rate
        return VirtualDevice(
            mic=args.mic, speaker=args.speaker, rate=rate,
            period_frames=round((args.period_ms or 10.0) / 1000 * rate), echo=args.echo,
        )
    if spec is None:
        spec = default_backend()
    if spec == "pulse" or spec.startswith("pulse:"):
        from callctl.engine.devices.pulse import DEFAULT_PERIOD_SECONDS, PulseDevice, parse_spec

        sink, source = parse_spec(spec)
        fade_ms = PULSE_FADE_MS if args.fade_ms is None else args.fade_ms
        period_s = args.period_ms / 1000 if args.period_ms else DEFAULT_PERIOD_SECONDS
        return PulseDevice(sink=args.output_device or sink, source=args.input_device or source,
                           period_seconds=period_s, fade_seconds=fade_ms / 1000)
    if spec == "portaudio":
        name: str | None = None
    elif spec.startswith("portaudio:"):
        name = spec[len("portaudio:"):] or None
    else:
        name = spec  # a bare PortAudio name or index, as before the pulse backend
    from callctl.engine.devices.portaudio import PortAudioDevice

    return PortAudioDevice(name, period_seconds=(args.period_ms or 10.0) / 1000,
                           verbose=args.verbose, input_device=args.input_device,
                           output_device=args.output_device)


def parse_echo(text: str) -> tuple[float, float, float | None]:
    """``DELAY_MS:GAIN_DB[:LOWPASS_HZ]`` → (seconds, dB, Hz or None), e.g. ``60:-12:3400``.

    The virtual device's echo path: what it plays comes back into its
    microphone ``DELAY_MS`` later, ``GAIN_DB`` louder (negative: quieter) and,
    with ``LOWPASS_HZ``, low-pass filtered like a small loudspeaker.
    """
    try:
        parts = text.split(":")
        if len(parts) not in (2, 3):
            raise ValueError
        delay, gain = float(parts[0]) / 1000, float(parts[1])
        lowpass = float(parts[2]) if len(parts) == 3 else None
        if not (0 <= delay <= 2 and -120 <= gain <= 20):
            raise ValueError
        if lowpass is not None and not 0 < lowpass < SAMPLE_RATE / 2:
            raise ValueError
        return delay, gain, lowpass
    except ValueError:
        raise argparse.ArgumentTypeError(
            "--echo wants DELAY_MS:GAIN_DB[:LOWPASS_HZ] such as 60:-12 or 60:-6:3400 "
            f"(delay 0-2000 ms, gain -120..20 dB, low-pass below 8000 Hz), got {text!r}"
        ) from None


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m callctl.engine.audio_process",
        description="callctl's audio process: one full-duplex stream between the device "
        "and two shared-memory rings, controlled over ZeroMQ.",
    )
    p.add_argument("--control", required=True, help="ZeroMQ endpoint to bind (REP)")
    p.add_argument("--rings", default=None, help="shared-memory name prefix for the rings")
    p.add_argument("--device", default=None,
                   help="'pulse' or 'pulse:SINK[,SOURCE]' (native PulseAudio/PipeWire), "
                   "'portaudio' or 'portaudio:NAME|INDEX', or 'virtual'; default: pulse on "
                   "Linux when a sound server answers, else PortAudio's default")
    p.add_argument("--input-device", default=None,
                   help="microphone: a PulseAudio source, or a PortAudio index or name")
    p.add_argument("--output-device", default=None,
                   help="speaker: a PulseAudio sink, or a PortAudio index or name")
    p.add_argument("--no-aec", action="store_true",
                   help="no echo cancellation on the microphone (it is on by default)")
    p.add_argument("--no-noise-suppression", action="store_true",
                   help="echo cancellation without WebRTC's noise suppression (a steady tone "
                   "counts as noise for it)")
    p.add_argument("--mic", type=Path, help="virtual device: microphone WAV")
    p.add_argument("--speaker", type=Path, help="virtual device: speaker WAV to write")
    p.add_argument("--virtual-rate", type=int, default=SAMPLE_RATE,
                   help="virtual device: its rate in Hz (default 16000)")
    p.add_argument("--echo", type=parse_echo, default=None,
                   help="virtual device: echo path DELAY_MS:GAIN_DB[:LOWPASS_HZ] (the speaker "
                   "back into the mic, delayed at least one period, attenuated, low-passed)")
    p.add_argument("--period-ms", type=float, default=None,
                   help="device period, ms (default 10: 160 frames at 16 kHz)")
    p.add_argument("--fade-ms", type=float, default=None,
                   help="hangup fade, 0-50 ms (default 6 on pulse, where the device fades "
                   "what it was playing; 10 elsewhere, where the callback fades the ring)")
    p.add_argument("--verbose", action="store_true", help="show PortAudio's own messages")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.fade_ms is not None and not 0 <= args.fade_ms <= 50:
        print("audio process: --fade-ms must be between 0 and 50", file=sys.stderr)
        return 2
    lifeline.die_with_parent()
    # Every thread of this process that may hold the GIL runs at real-time priority
    # (threads started from here on inherit it; the device's own audio thread asks for
    # more): the audio thread needs the GIL each period, and a normal thread preempted
    # by the machine's load while holding it would make the audio thread wait that long.
    # The switch interval bounds how long a running holder keeps it.
    scheduling = ask_realtime(CONTROL_RT_PRIORITY)
    sys.setswitchinterval(GIL_SWITCH_S)
    prefix = args.rings or f"callctl-audio-{lifeline.os.getpid()}"
    play_name, cap_name = ring_names(prefix)
    ctx = zmq.Context()
    socket = ctx.socket(zmq.REP)
    try:
        with AudioRing.create(PLAYBACK_CAPACITY, play_name) as playback, \
                AudioRing.create(CAPTURE_CAPACITY, cap_name) as capture:
            try:
                device = open_device(args)
            except (DeviceError, ValueError) as exc:
                print(f"audio process: {exc}", file=sys.stderr)
                return 1
            fade_s = DEFAULT_FADE_SECONDS if args.fade_ms is None else args.fade_ms / 1000
            engine = AudioEngine(device, playback, capture, fade_seconds=fade_s,
                                 aec=not args.no_aec,
                                 noise_suppression=not args.no_noise_suppression)
            engine.scheduling = scheduling
            freeze_heap()
            try:
                serve(engine, socket, args.control)
            finally:
                engine.close()
                device.close()
    except KeyboardInterrupt:
        pass
    finally:
        socket.close(0)
        ctx.term()
    return 0


if __name__ == "__main__":
    sys.exit(main())
