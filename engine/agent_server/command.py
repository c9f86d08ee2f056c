"""``callctl agent-server``: run the offline ElevenLabs-compatible agent server.

When it is ready the server prints exactly one line to stdout::

    agent-server listening on ws://127.0.0.1:PORT

(the actual port, also with ``--port 0``). A parent process reads that line
and passes ``http://127.0.0.1:PORT`` to ``ElevenLabs(base_url=...)``. Logs go to
stderr, one line per event. SIGTERM and SIGINT shut the server down cleanly
(exit status 0); bad arguments or a bad script exit with 2, a port that cannot
be bound with 1.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys

from ..threads import freeze_heap
from .conversation import SessionConfig
from .faults import Fault
from .script import ScriptError, load_script
from .server import AgentServer, ServerConfig
from .voice import Voice, VoiceError

READY_PREFIX = "agent-server listening on "


def _positive(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be positive: {text}")
    return value


def _non_negative(text: str) -> float:
    value = float(text)
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"must not be negative: {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``callctl agent-server``."""
    parser = argparse.ArgumentParser(
        prog="callctl agent-server",
        description="Offline ElevenLabs-compatible conversational agent (scripted, espeak-ng).",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=0, help="TCP port; 0 picks a free one")
    parser.add_argument("--script", default=None, help="dialogue script (TOML); default built in")
    parser.add_argument(
        "--fault",
        choices=[f.value for f in Fault],
        default=None,
        help="misbehave on purpose: stall, slow-close or drop",
    )
    parser.add_argument(
        "--fault-after",
        type=_non_negative,
        default=2.0,
        metavar="SECONDS",
        help="stall/drop this long after the greeting starts (default 2.0)",
    )
    parser.add_argument(
        "--ping-interval",
        type=_non_negative,
        default=2.0,
        metavar="SECONDS",
        help="seconds between ping events; 0 sends none (default 2.0)",
    )
    parser.add_argument(
        "--output-format",
        default="pcm_16000",
        help="audio format the metadata announces (testing clients that must refuse "
        "anything but pcm_16000; the audio sent is pcm_16000 regardless)",
    )
    parser.add_argument(
        "--chunk-ms",
        type=_positive,
        default=250.0,
        help="audio per 'audio' event, in milliseconds (default 250)",
    )
    parser.add_argument(
        "--rate",
        type=_positive,
        default=3.0,
        help="streaming speed as a multiple of real time (default 3)",
    )
    parser.add_argument(
        "--require-auth",
        action="store_true",
        help="refuse websockets that do not come from a signed URL",
    )
    parser.add_argument(
        "--voice-add-delay",
        type=_non_negative,
        default=0.0,
        metavar="SECONDS",
        help="answer every voice clone (POST /v1/voices/add) this much later (testing work "
        "that must not wait for an upload; default 0)",
    )
    parser.add_argument(
        "--log-level",
        default="info",
        choices=["debug", "info", "warning", "error"],
        help="log level of the stderr log (default info)",
    )
    return parser


def _configure_logging(level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s agent-server %(levelname)s %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # The websockets library logs request headers at debug level: keep it
    # quiet whatever --log-level says, so an API key never reaches the log.
    logging.getLogger("websockets").setLevel(logging.WARNING)


async def _serve(server: AgentServer) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    handled: list[signal.Signals] = []
    for sig in (signal.SIGTERM, signal.SIGINT):
        try:
            loop.add_signal_handler(sig, stop.set)
            handled.append(sig)
        except (ValueError, RuntimeError, NotImplementedError):
            pass  # not the main thread: the caller stops us some other way
    try:
        await server.start()
        print(f"{READY_PREFIX}{server.url}", flush=True)
        logging.getLogger("agent_server").info(
            "ready: base_url %s, fault %s", server.base_url, server.config.session.fault or "none"
        )
        await stop.wait()
        logging.getLogger("agent_server").info("shutting down")
    finally:
        for sig in handled:
            loop.remove_signal_handler(sig)
        await server.close()


def main(argv: list[str] | None = None) -> int:
    """Run the server until SIGTERM/SIGINT; returns the process exit status."""
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:  # --help, or bad arguments (already reported on stderr)
        return exc.code if isinstance(exc.code, int) else 2
    _configure_logging(args.log_level)
    log = logging.getLogger("agent_server")
    try:
        script = load_script(args.script)
    except ScriptError as exc:
        print(f"agent-server: {exc}", file=sys.stderr)
        return 2
    voice = Voice(script.voice, script.words_per_minute)
    try:
        voice.render(script.greeting)  # fail now, not in the first call; warms the cache
    except VoiceError as exc:
        print(f"agent-server: {exc}", file=sys.stderr)
        return 2
    session = SessionConfig(
        chunk_s=args.chunk_ms / 1000.0,
        rate=args.rate,
        ping_interval_s=args.ping_interval or None,
        fault=Fault(args.fault) if args.fault else None,
        fault_after_s=args.fault_after,
        announced_output_format=args.output_format,
    )
    config = ServerConfig(
        host=args.host, port=args.port, require_auth=args.require_auth, session=session,
        voice_add_delay_s=args.voice_add_delay,
    )
    server = AgentServer(script, config, voice)
    freeze_heap()  # the voice and the script live as long as the server
    try:
        asyncio.run(_serve(server))
    except OSError as exc:
        log.error("cannot listen on %s:%s: %s", args.host, args.port, exc.strerror or exc)
        return 1
    except KeyboardInterrupt:  # a second Ctrl-C during shutdown
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
