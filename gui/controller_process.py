"""The window's own controller: a `callctl serve` child process, spawned and stopped.

``ServeConfig`` is the command line: the GUI's controller options passed
through as given (``controller.options.add_controller_options``), except the
devices, which the window's pickers may change (``with_devices``), and the
virtual device's ``--mic``/``--speaker``/``--echo``, passed only while the
device is ``virtual`` (``serve`` refuses them otherwise).

``ServeProcess`` runs one child. GUI thread only, and it never waits:
``Popen`` returns at once; the child's stderr (where ``serve`` says why it
could not start, e.g. no audio device) is read through a ``QSocketNotifier``
on the non-blocking pipe, keeping the last lines; its exit is noticed through
its pidfd (Linux) or, failing that, a 100 ms poll, and announced by ``exited``.
``terminate`` is SIGTERM (``serve`` ends any call first, then exits), then
SIGKILL at a deadline, on Qt timers. ``stop_blocking`` is ``engine.child``'s
bounded stop, for when the event loop has ended. The child is spawned by
``engine.child`` (``PR_SET_PDEATHSIG``), so it does not outlive a GUI that crashes.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import signal
import subprocess
import sys
from collections import deque
from dataclasses import dataclass, field
from typing import Any, cast

from PyQt6.QtCore import QObject, QSocketNotifier, QTimer, pyqtSignal

from callctl.engine import child

VIRTUAL = "virtual"
DEVICE_DESTS = {"device", "input_device", "output_device"}
VIRTUAL_DESTS = {"mic", "speaker", "echo"}
STDERR_KEEP_LINES = 40


@dataclass(frozen=True)
class ServeConfig:
    """The command line of one `callctl serve`."""

    endpoint: str
    device: str | None = None
    """``--device``: ``virtual``, a PortAudio name or index, or None (the system's default)."""
    input_device: str | None = None
    output_device: str | None = None
    virtual_args: tuple[str, ...] = ()
    """``--mic``/``--speaker``/``--echo`` as given; passed only with ``device == "virtual"``."""
    extra_args: tuple[str, ...] = field(default=())
    """Every other controller option, as given."""

    def argv(self) -> list[str]:
        cmd = [sys.executable, "-m", "callctl.cli", "serve", "--endpoint", self.endpoint]
        if self.device is not None:
            cmd.append(f"--device={self.device}")
        if self.device == VIRTUAL:
            cmd += self.virtual_args
        else:
            if self.input_device is not None:
                cmd.append(f"--input-device={self.input_device}")
            if self.output_device is not None:
                cmd.append(f"--output-device={self.output_device}")
        return cmd + list(self.extra_args)

    def with_devices(self, device: str | None, input_device: str | None,
                     output_device: str | None) -> ServeConfig:
        return dataclasses.replace(self, device=device, input_device=input_device,
                                   output_device=output_device)

    @classmethod
    def from_args(cls, parser: argparse.ArgumentParser, args: argparse.Namespace,
                  endpoint: str, skip: set[str] | frozenset[str] = frozenset()) -> ServeConfig:
        """Rebuild the controller options of ``args`` (parsed by ``parser``) for `serve`.

        Generic over the parser's actions, so options added to
        ``add_controller_options`` later pass through unchanged. ``skip``:
        destinations that are the GUI's own (``--attach``) or handled here.
        """
        extra: list[str] = []
        virtual: list[str] = []
        for action in parser._actions:  # noqa: SLF001 - the documented way to walk a parser
            dest = action.dest
            if (dest in skip or dest in DEVICE_DESTS or dest == "endpoint" or dest == "help"
                    or not action.option_strings or not hasattr(args, dest)):
                continue
            value = getattr(args, dest)
            if value is None or value == action.default:
                continue
            flag = action.option_strings[-1] if action.option_strings[-1].startswith("--") \
                else action.option_strings[0]
            target = virtual if dest in VIRTUAL_DESTS else extra
            if isinstance(action, argparse._StoreTrueAction):  # noqa: SLF001
                target.append(flag)
            elif isinstance(value, list):
                target += [f"{flag}={v}" for v in value]
            else:
                target.append(f"{flag}={value}")
        return cls(endpoint=endpoint, device=args.device, input_device=args.input_device,
                   output_device=args.output_device, virtual_args=tuple(virtual),
                   extra_args=tuple(extra))


class ServeProcess(QObject):
    """One `callctl serve` child. GUI thread only; no method waits (but ``stop_blocking``)."""

    exited = pyqtSignal(int, str)
    """``(returncode, stderr_tail)``: negative returncode = killed by that signal."""

    def __init__(self, config: ServeConfig, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.config = config
        self.child: child.Child | None = None
        self._lines: deque[str] = deque(maxlen=STDERR_KEEP_LINES)
        self._partial = b""
        self._stderr_fd: int | None = None
        self._stderr_notifier: QSocketNotifier | None = None
        self._exit_notifier: QSocketNotifier | None = None
        self._poll_timer: QTimer | None = None
        self._kill_timer = QTimer(self)
        self._kill_timer.setSingleShot(True)
        self._kill_timer.timeout.connect(self._kill)
        self._reported = False

    # -- starting --------------------------------------------------------------

    def start(self) -> None:
        """Spawn the child (``Popen``: a fork and an exec, no waiting)."""
        self.child = child.spawn(self.config.argv(), stdout=subprocess.DEVNULL,
                                 stderr=subprocess.PIPE, env=dict(os.environ))
        stderr = self.child.popen.stderr
        assert stderr is not None
        self._stderr_fd = stderr.fileno()
        os.set_blocking(self._stderr_fd, False)
        self._stderr_notifier = QSocketNotifier(cast(Any, self._stderr_fd),
                                               QSocketNotifier.Type.Read, self)
        self._stderr_notifier.activated.connect(lambda *_: self._read_stderr())
        if self.child.pidfd is not None:
            self._exit_notifier = QSocketNotifier(cast(Any, self.child.pidfd),
                                                 QSocketNotifier.Type.Read, self)
            self._exit_notifier.activated.connect(lambda *_: self._check_exit())
        else:
            self._poll_timer = QTimer(self)
            self._poll_timer.setInterval(100)
            self._poll_timer.timeout.connect(self._check_exit)
            self._poll_timer.start()

    @property
    def pid(self) -> int | None:
        return self.child.pid if self.child is not None else None

    @property
    def running(self) -> bool:
        return self.child is not None and self.child.alive()

    @property
    def returncode(self) -> int | None:
        return self.child.returncode if self.child is not None else None

    def stderr_tail(self, lines: int = 8) -> str:
        """The child's last ``lines`` lines of stderr (its own and its children's)."""
        tail = list(self._lines)
        if self._partial:
            tail.append(self._partial.decode(errors="replace"))
        return "\n".join(line for line in tail[-lines:] if line.strip())

    # -- watching ----------------------------------------------------------------

    def _read_stderr(self) -> None:
        fd = self._stderr_fd
        if fd is None:
            return
        while True:
            try:
                chunk = os.read(fd, 65536)
            except BlockingIOError:
                return
            except OSError:
                chunk = b""
            if not chunk:  # EOF: every writer (the child and its children) is gone
                self._close_stderr()
                return
            data = self._partial + chunk
            *whole, self._partial = data.split(b"\n")
            for line in whole:
                text = line.decode(errors="replace").rstrip()
                self._lines.append(text)
                print(text, file=sys.stderr)  # the terminal still sees what serve says
            if len(self._partial) > 8192:
                self._lines.append(self._partial.decode(errors="replace"))
                self._partial = b""

    def _close_stderr(self) -> None:
        if self._stderr_notifier is not None:
            self._stderr_notifier.setEnabled(False)
            self._stderr_notifier.deleteLater()
            self._stderr_notifier = None
        if self.child is not None and self.child.popen.stderr is not None:
            self.child.popen.stderr.close()
        self._stderr_fd = None

    def _stop_watching(self) -> None:
        """Timers and the exit notifier off, then the pidfd released (in that order: a
        notifier must never watch a closed descriptor)."""
        self._kill_timer.stop()
        if self._poll_timer is not None:
            self._poll_timer.stop()
        if self._exit_notifier is not None:
            self._exit_notifier.setEnabled(False)
            self._exit_notifier.deleteLater()
            self._exit_notifier = None
        if self.child is not None:
            self.child.close()

    def _check_exit(self) -> None:
        if self.child is None or self.child.poll() is None or self._reported:
            return
        self._reported = True
        self._stop_watching()
        self._read_stderr()  # what it said last is in the pipe already
        self.exited.emit(self.child.returncode, self.stderr_tail())

    # -- stopping --------------------------------------------------------------

    def terminate(self, grace_s: float) -> None:
        """SIGTERM now (``serve`` ends any call, then exits); SIGKILL after ``grace_s``."""
        if not self.running:
            self._check_exit()
            return
        assert self.child is not None
        self.child.send_signal(signal.SIGTERM)
        self._kill_timer.start(round(grace_s * 1000))

    def _kill(self) -> None:
        if self.child is not None:
            self.child.kill()

    def stop_blocking(self, grace_s: float) -> int | None:
        """Waiting version of ``terminate``: for after the event loop (the window is gone).
        SIGTERM, SIGKILL after ``grace_s``, reaped (``child.Child.stop``: bounded)."""
        if self.child is None:
            return None
        self._stop_watching()
        stopped = self.child.stop(grace=grace_s)
        self._reported = True
        self._close_stderr()
        return stopped.returncode
