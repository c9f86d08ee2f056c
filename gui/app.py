"""`callctl gui`: the window. Parses the options, makes the QApplication, wires the parts.

    callctl gui                                   # its own controller, default sound device
    callctl gui --device virtual --mic caller.wav --speaker out.wav
    callctl gui --attach                          # a controller already running (`callctl serve`)

By default the window starts its own `callctl serve` on a private ``ipc://``
endpoint (``--endpoint`` chooses it), passing the controller options through;
``--attach`` uses a controller that is already running at ``--endpoint`` /
``$CALLCTL_ENDPOINT`` / the default endpoint instead. Closing the window ends
any call and stops a controller it started (SIGTERM, SIGKILL at a deadline).

``build`` makes everything but the QApplication and the event loop; the
tests and ``gui.screenshot`` use it, so they run the window exactly as
``main`` does.
"""

from __future__ import annotations

import argparse
import gc
import shutil
import signal
import sys
import tempfile
import traceback
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from PyQt6.QtCore import QTimer
from PyQt6.QtWidgets import QApplication

from callctl.controller import endpoints
from callctl.controller.options import add_controller_options
from callctl.gui import settings as gui_settings
from callctl.gui.controller_process import ServeConfig
from callctl.gui.session import Session
from callctl.gui.window import MainWindow

EXIT_OK, EXIT_USAGE = 0, 2


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="callctl gui",
        description="The callctl window: call a voice agent, hang up on a button press, watch "
        "the levels and the transcript, and see how fast each hangup was.",
        epilog="Keys: Ctrl+Return calls, Esc or Ctrl+H hangs up. The window starts its own "
        "controller with the options above unless --attach is given.")
    add_controller_options(parser)
    parser.add_argument("--attach", action="store_true",
                        help="use a controller that is already running (`callctl serve`) at "
                        "--endpoint, $CALLCTL_ENDPOINT or the default endpoint, instead of "
                        "starting one; the device options then do not apply")
    return parser


@dataclass
class Gui:
    """The window and what it drives. ``shutdown`` after the event loop."""

    window: MainWindow
    session: Session
    private_dir: Path | None = None

    def shutdown(self) -> None:
        """Stop a spawned controller (bounded: SIGKILL after its kill deadline + 3 s)."""
        if self.window.isVisible():
            self.window.close()
        self.session.stop_blocking()
        if self.private_dir is not None:
            shutil.rmtree(self.private_dir, ignore_errors=True)


def check_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Refuse what `serve` would refuse, here, with the usual usage error (exit 2)."""
    virtual_only = [flag for flag, value in (("--mic", args.mic), ("--speaker", args.speaker),
                                             ("--echo", args.echo)) if value]
    if virtual_only and args.device != "virtual":
        parser.error(f"{', '.join(virtual_only)} need --device virtual")
    if args.endpoint:
        try:
            endpoints.check(args.endpoint, insecure=args.insecure)
        except endpoints.EndpointError as exc:
            parser.error(str(exc))


def build(argv: list[str]) -> Gui:
    """Parse ``argv`` (exits 2 on bad usage), make the window and start the session.

    Needs a QApplication. Returns at once: the controller starts in the
    background and the window shows its progress.
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    check_args(parser, args)
    settings_file = gui_settings.settings_path()
    remembered = gui_settings.load(settings_file)
    if any(a == "--agent" or a.startswith("--agent=") for a in argv):
        remembered.agent = args.agent  # said on the command line: it wins over the memory
    private_dir: Path | None = None
    try:
        if args.attach:
            session = Session.attached(endpoints.control_endpoint(args.endpoint,
                                                                  insecure=args.insecure))
        else:
            endpoint = args.endpoint
            if not endpoint:
                private_dir = Path(tempfile.mkdtemp(prefix="gui-", dir=endpoints.runtime_dir()))
                endpoint = f"ipc://{private_dir}/control"
            config = ServeConfig.from_args(parser, args, endpoint, skip={"attach"})
            session = Session.spawned(config, kill_after_s=args.kill_after)
    except endpoints.EndpointError as exc:
        parser.error(str(exc))
    window = MainWindow(session, remembered, settings_file)
    session.setParent(window)
    session.start()
    # Everything built so far lives as long as the window: keep the cyclic garbage
    # collector from walking it (a full collection of a Qt+numpy process takes tens of ms,
    # and it would run on the GUI thread in the middle of a call).
    gc.collect()
    gc.freeze()
    return Gui(window, session, private_dir)


def prepare_application(app: QApplication) -> None:
    """Names and style: Fusion looks the same on every desktop (and under Xvfb)."""
    app.setApplicationName("callctl")
    app.setApplicationDisplayName("callctl")
    app.setDesktopFileName("callctl")
    app.setStyle("Fusion")


def _excepthook(kind: type[BaseException], value: BaseException,
                tb: TracebackType | None) -> None:
    """A bug in a slot is printed, not fatal (PyQt6 would abort the process)."""
    traceback.print_exception(kind, value, tb)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    build_parser().parse_args(argv)  # --help and usage errors before any window
    app = QApplication.instance() or QApplication(["callctl"])
    assert isinstance(app, QApplication)
    prepare_application(app)
    sys.excepthook = _excepthook
    gui = build(argv)
    # Ctrl-C / SIGTERM in the terminal close the window like its close button. Python runs
    # signal handlers only when it gets control, so a timer hands it control now and then.
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: gui.window.close())
    wake = QTimer()
    wake.timeout.connect(lambda: None)
    wake.start(200)
    gui.window.show()
    code = app.exec()
    wake.stop()
    gui.shutdown()
    return code if code else EXIT_OK
