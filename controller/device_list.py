"""The audio devices, listed off the controller's loop: the ``devices`` command's answer.

Listing PortAudio's devices initialises PortAudio, which probes ALSA and JACK and
can take seconds; done in the controller's loop (or in the audio process, whose
loop answers hangups too) it would hold a hangup queued behind it. So a child
process lists them (``python -m callctl.controller.device_list``: the listing as
JSON on stdout), a thread waits for it, and the loop only ever reads the last
answer. Loop thread: ``current``, ``refresh``; the waiting thread sets the result.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from typing import Any

LIST_TIMEOUT_S = 20.0
"""Bound on one listing, seconds."""
FRESH_S = 30.0
"""A listing younger than this is answered as it is; an older one is refreshed."""


class DeviceList:
    """The last listing of audio devices, refreshed in the background."""

    def __init__(self, env: dict[str, str] | None = None) -> None:
        self._env = env
        self._devices: list[dict[str, Any]] | None = None
        self._error: str | None = None
        self._at = 0.0
        self._worker: threading.Thread | None = None

    def refresh(self) -> None:
        """Start a listing unless one is running. Returns at once."""
        if self._worker is not None and self._worker.is_alive():
            return
        self._worker = threading.Thread(target=self._list, name="device-list", daemon=True)
        self._worker.start()

    def current(self) -> dict[str, Any]:
        """What to answer now: ``devices`` (possibly empty), ``pending`` while a listing
        runs and none is fresh, ``error`` if the last listing failed. Never waits."""
        if time.monotonic() - self._at > FRESH_S:
            self.refresh()
        running = self._worker is not None and self._worker.is_alive()
        answer: dict[str, Any] = {"devices": self._devices or [],
                                  "pending": running and self._devices is None}
        if self._error and not running:
            answer["listing_error"] = self._error
        return answer

    def _list(self) -> None:
        try:
            done = subprocess.run([sys.executable, "-m", "callctl.controller.device_list"],
                                  capture_output=True, text=True, timeout=LIST_TIMEOUT_S,
                                  env=self._env, stdin=subprocess.DEVNULL)
            if done.returncode != 0:
                raise RuntimeError(done.stderr.strip().splitlines()[-1] if done.stderr.strip()
                                   else f"exit {done.returncode}")
            devices = json.loads(done.stdout)
            if not isinstance(devices, list):
                raise RuntimeError("the listing is not a list")
            self._devices, self._error = devices, None
        except (OSError, RuntimeError, ValueError, subprocess.TimeoutExpired) as exc:
            self._error = f"cannot list audio devices: {exc}"
        self._at = time.monotonic()


def main() -> int:
    """The child's side: print every backend's devices as one JSON list."""
    from callctl.engine.audio_process import list_all_devices

    print(json.dumps(list_all_devices()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
