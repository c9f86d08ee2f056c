"""Command-line options shared by the commands that run a controller (`serve`, `call`)."""

from __future__ import annotations

import argparse
from pathlib import Path

import platformdirs

from callctl.controller import endpoints
from callctl.controller.config import ControllerConfig
from callctl.controller.curve import curve_dir
from callctl.engine.wavfile import read_wav


def default_record_dir() -> Path:
    return Path(platformdirs.user_data_dir("callctl")) / "calls"


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be more than 0 seconds: {text!r}")
    return value


PERIOD_MS_RANGE = (5.0, 50.0)
"""Audio periods ``--period-ms`` accepts, ms."""


def _period_ms(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of milliseconds: {text!r}") from None
    low, high = PERIOD_MS_RANGE
    if not low <= value <= high:
        raise argparse.ArgumentTypeError(f"must be {low:g} to {high:g} ms: {text!r}")
    return value


def _echo(text: str) -> str:
    from callctl.engine.audio_process import parse_echo

    parse_echo(text)
    return text


def add_endpoint(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--endpoint", metavar="E",
                        help="control endpoint (default: $CALLCTL_ENDPOINT, else an ipc socket "
                        "in your private runtime directory)")
    parser.add_argument("--curve-dir", metavar="DIR",
                        help="CurveZMQ keys from `callctl keys` (default $CALLCTL_CURVE_DIR); "
                        "needed for tcp:// unless --insecure")
    parser.add_argument("--insecure", action="store_true",
                        help="allow tcp:// on loopback without CurveZMQ keys: every local user "
                        "can then connect, start and end calls and read the transcript; a "
                        "warning is printed at start. The default ipc endpoint needs no keys")


def add_controller_options(parser: argparse.ArgumentParser) -> None:
    add_endpoint(parser)
    parser.add_argument("--agent", default="local", metavar="local|AGENT_ID",
                        help="'local' (the offline agent, default) or an ElevenLabs agent id")
    parser.add_argument("--base-url", metavar="URL",
                        help="the agent service (default: $ELEVENLABS_BASE_URL, the config file, "
                        "else https://api.elevenlabs.io); regional endpoints go here")
    parser.add_argument("--device", metavar="DEVICE",
                        help="audio device (see `callctl devices`): 'pulse' (the sound "
                        "server's default sink and source, natively: PulseAudio or PipeWire; "
                        "honours $PULSE_SERVER, $PULSE_SINK, $PULSE_SOURCE), "
                        "'pulse:SINK[,SOURCE]', 'portaudio:NAME|INDEX' (JACK, ALSA hardware, "
                        "macOS, Windows), or 'virtual' (WAV files); default: 'pulse' on Linux "
                        "when a sound server answers, else PortAudio's default")
    parser.add_argument("--input-device", metavar="NAME|INDEX",
                        help="microphone, if not the --device one (a PulseAudio source name "
                        "with pulse)")
    parser.add_argument("--output-device", metavar="NAME|INDEX",
                        help="speaker, if not the --device one (a PulseAudio sink name with "
                        "pulse)")
    parser.add_argument("--period-ms", type=_period_ms, metavar="MS",
                        help="the audio period: how often the audio process wakes to move "
                        "microphone and speaker audio (default 10). "
                        "Longer costs less CPU and hears the caller later (python -m "
                        "bench.audio_threads --period-ms MS measures the CPU)")
    parser.add_argument("--no-aec", action="store_true",
                        help="turn off echo cancellation (on by default; off for headsets)")
    parser.add_argument("--clone-voice", metavar="NAME",
                        help="after the call, clone the caller's voice on ElevenLabs as NAME")
    parser.add_argument("--mic", metavar="WAV", help="virtual device: the caller's microphone")
    parser.add_argument("--speaker", metavar="WAV",
                        help="virtual device: write what the speaker plays here")
    parser.add_argument("--echo", type=_echo, metavar="DELAY_MS:GAIN_DB[:LOWPASS_HZ]",
                        help="virtual device: feed the speaker back into the mic, e.g. 60:-12 "
                        "or 60:-6:3400 (filtered)")
    parser.add_argument("--record-dir", type=Path, metavar="DIR", default=None,
                        help=f"where call folders go (default {default_record_dir()})")
    parser.add_argument("--kill-after", type=_seconds, default=2.0, metavar="SECONDS",
                        help="kill an agent that has not exited this long after a hangup "
                        "(default 2.0)")
    parser.add_argument("--config", metavar="FILE", help="config file with api_key, agent_id, "
                        "base_url (default ~/.config/callctl/config.toml)")
    parser.add_argument("--agent-server-arg", action="append", default=[], metavar="ARG",
                        help=argparse.SUPPRESS)  # e.g. --agent-server-arg=--fault=stall (tests)
    parser.add_argument("--no-standby", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--verbose", action="store_true",
                        help="show the children's own messages (PortAudio, the agent server)")


def controller_config(args: argparse.Namespace) -> ControllerConfig:
    """Build the config; raises ``endpoints.EndpointError`` for a bad endpoint."""
    virtual_only = [flag for flag, value in (("--mic", args.mic), ("--speaker", args.speaker),
                                             ("--echo", args.echo)) if value]
    if virtual_only and args.device != "virtual":
        raise ValueError(f"{', '.join(virtual_only)} need --device virtual")
    if args.mic:
        read_wav(args.mic)  # WavFormatError: names the file and what is wrong with it
    keys = curve_dir(args.curve_dir)
    return ControllerConfig(
        endpoint=endpoints.control_endpoint(args.endpoint, curve=keys is not None,
                                            insecure=args.insecure),
        curve_dir=keys,
        record_dir=args.record_dir or default_record_dir(),
        device=args.device, input_device=args.input_device, output_device=args.output_device,
        aec=not args.no_aec, clone_voice=args.clone_voice, period_ms=args.period_ms,
        mic=args.mic, speaker=args.speaker, echo=args.echo,
        agent=args.agent, base_url=args.base_url, kill_after=args.kill_after,
        agent_server_args=args.agent_server_arg, config_path=args.config, verbose=args.verbose,
        standby=not args.no_standby,
    )
