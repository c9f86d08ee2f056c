"""`callctl serve`: run a controller with no call, for scripts and the GUI to drive.

    callctl serve --device virtual --mic caller.wav &
    callctl status
    python -c 'import callctl; callctl.Client().call()'

Stops on `{"cmd": "shutdown"}`, SIGTERM or Ctrl-C, ending any call first.
Exit status: 0 when stopped, 2 for bad options, and
``protocol.SERVE_EXIT_STATUS`` (3: another controller serves the endpoint, 4: the
audio process did not start) so a parent can tell why by code.
"""

from __future__ import annotations

import argparse
import signal
import sys
from types import FrameType

import zmq

from callctl.controller import endpoints
from callctl.controller.controller import Controller
from callctl.controller.endpoint_lock import EndpointTaken
from callctl.controller.options import add_controller_options, controller_config
from callctl.engine import protocol


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="callctl serve", description=__doc__.split("\n")[0].split(": ", 1)[1],
        epilog="The control endpoint speaks the JSON protocol of docs/protocol.md.")
    add_controller_options(parser)
    args = parser.parse_args(argv)
    try:
        config = controller_config(args)
        warning = endpoints.insecure_warning(config.endpoint, curve=config.curve_dir is not None)
        if warning:
            print(warning, file=sys.stderr, flush=True)
        controller = Controller(config)
    except EndpointTaken as exc:
        print(f"callctl serve: {exc}", file=sys.stderr)
        return protocol.SERVE_EXIT_STATUS[protocol.ENDPOINT_TAKEN]
    except (endpoints.EndpointError, ValueError, RuntimeError, OSError, zmq.ZMQError) as exc:
        # zmq.ZMQError: the endpoint is taken ("Address already in use") or unusable.
        print(f"callctl serve: cannot serve {args.endpoint or 'the default endpoint'}: {exc}"
              if isinstance(exc, zmq.ZMQError) else f"callctl serve: {exc}", file=sys.stderr)
        return 2
    install_stop_signals(controller)

    def ready() -> None:
        print(f"callctl: serving {config.endpoint} (events {controller.events_endpoint})",
              flush=True)

    try:
        controller.run(on_ready=ready)
    except RuntimeError as exc:  # the audio process did not start
        print(f"callctl serve: {exc}", file=sys.stderr)
        return protocol.SERVE_EXIT_STATUS[protocol.AUDIO]
    return 0


def install_stop_signals(controller: Controller) -> None:
    """SIGTERM and SIGINT end any call, then stop the controller (main thread only)."""
    def stop(signum: int, frame: FrameType | None) -> None:
        controller.request_stop()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
