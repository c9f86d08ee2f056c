"""``callctl.serve(...)``: a controller of this program's own, as a child process.

    with callctl.serve(device="virtual") as client:
        client.call()
        ...

starts ``callctl serve`` (``python -m callctl.cli serve``, this interpreter) on a
private ``ipc://`` endpoint (a fresh 0700 directory in the per-user runtime
directory, removed afterwards) unless ``endpoint`` is given, waits until it
answers, and hands back a :class:`~callctl.client.Client` for it. Leaving the
block asks the controller to shut down (any call is ended first), then sends
SIGTERM, then SIGKILL, each step bounded; the controller's own children die with
it (they are tied to its life).

The caller's thread owns the ``ServedController``; ``stop`` is idempotent.
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import TracebackType

from callctl.client import CallctlError, Client, NotRunning

READY_TIMEOUT_S = 30.0
"""Longest wait for a new controller to answer, seconds (its audio process and the
local agent server start first)."""
SHUTDOWN_WAIT_S = 10.0
"""How long ``stop`` waits for the controller to exit after ``shutdown`` (a call is
ended first), then after SIGTERM, seconds."""


class ServedController:
    """One ``callctl serve`` child and a :class:`Client` for it. ``with`` gives the
    client; ``stop()`` ends the child (bounded, idempotent)."""

    def __init__(self, argv: list[str], endpoint: str, private_dir: Path | None,
                 ready_timeout: float) -> None:
        self.endpoint = endpoint
        self._private_dir = private_dir
        # stderr to a file, not a pipe: a pipe nobody reads would fill and block the child.
        self._stderr = tempfile.TemporaryFile()
        self.process = subprocess.Popen(argv, stdin=subprocess.DEVNULL,
                                        stdout=subprocess.DEVNULL, stderr=self._stderr)
        self.client = Client(endpoint)
        try:
            self._wait_ready(ready_timeout)
        except BaseException:
            self.stop()
            raise

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            if self.process.poll() is not None:
                raise CallctlError(f"callctl serve exited with {self.process.returncode}: "
                                   f"{self._stderr_tail()}", "serve_failed")
            try:
                self.client.request({"cmd": "ping"}, timeout=0.5)
                return
            except NotRunning:
                if time.monotonic() >= deadline:
                    raise NotRunning(f"callctl serve did not answer at {self.endpoint} "
                                     f"within {timeout:g} s") from None
                time.sleep(0.05)

    def _stderr_tail(self) -> str:
        """The last line the exited child wrote to stderr (why it could not serve)."""
        self._stderr.seek(0)
        lines = self._stderr.read().decode(errors="replace").strip().splitlines()
        return lines[-1] if lines else "(no message)"

    def stop(self) -> int:
        """Shut the controller down: ``shutdown``, then SIGTERM, then SIGKILL, each
        bounded by ``SHUTDOWN_WAIT_S``. Returns its exit status."""
        if self.process.poll() is None:
            with contextlib.suppress(CallctlError):
                self.client.shutdown()
        self.client.close()
        for step in (None, self.process.terminate, self.process.kill):
            if step is not None and self.process.poll() is None:
                step()
            try:
                self.process.wait(SHUTDOWN_WAIT_S)
                break
            except subprocess.TimeoutExpired:
                continue
        self._stderr.close()
        if self._private_dir is not None:
            shutil.rmtree(self._private_dir, ignore_errors=True)
            self._private_dir = None
        return self.process.wait()

    def __enter__(self) -> Client:
        return self.client

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()


def serve(*args: str, endpoint: str | None = None, device: str | None = None,
          agent: str | None = None, mic: str | Path | None = None,
          speaker: str | Path | None = None, record_dir: str | Path | None = None,
          ready_timeout: float = READY_TIMEOUT_S) -> ServedController:
    """Start a controller (``callctl serve``) and wait until it answers.

    The keywords are ``callctl serve``'s options (``device="virtual"``, ``mic``
    and ``speaker`` WAV paths for the virtual device, ``agent``: ``"local"`` or an
    ElevenLabs agent id, ``record_dir``); ``args`` are more of its options as
    written on a command line (``"--no-aec"``). Raises :class:`CallctlError` if
    the controller exits at once (its last stderr line says why),
    :class:`NotRunning` if it does not answer within ``ready_timeout`` seconds.
    """
    from callctl.controller import endpoints

    private_dir = None
    if endpoint is None:
        private_dir = Path(tempfile.mkdtemp(prefix="serve-", dir=endpoints.runtime_dir()))
        endpoint = f"ipc://{private_dir}/control"
    argv = [sys.executable, "-m", "callctl.cli", "serve", "--endpoint", endpoint]
    for flag, value in (("--device", device), ("--agent", agent), ("--mic", mic),
                        ("--speaker", speaker), ("--record-dir", record_dir)):
        if value is not None:
            argv.append(f"{flag}={value}")
    return ServedController(argv + list(args), endpoint, private_dir, ready_timeout)
