"""Shared fixtures: a caller's voice, and a running controller (`callctl serve`) as a subprocess.

The rig itself lives in ``testing/`` (``testing.served``, ``testing.sounds``):
tests import from there, never from this file.
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest

from testing import sounds
from testing.served import ServedController
from testing.sounds import write_caller_wav


@pytest.fixture(scope="session")
def caller_speech() -> np.ndarray:
    """A caller's sentence (``testing.sounds.CALLER_LINE``), int16 at 16 kHz, by espeak-ng."""
    return sounds.caller_speech()


@pytest.fixture
def serve(tmp_path: Path, caller_speech: np.ndarray
          ) -> Iterator[Callable[..., ServedController]]:
    """Factory ``serve(*args, speech_at=[6.0], total=40.0, env=None)``: a controller on the
    virtual device in ``tmp_path``, the caller speaking at each time in ``speech_at`` (s);
    its stdout is a pipe (``proc.communicate()``). Each is closed at teardown."""
    started: list[ServedController] = []

    def start(*extra: str, speech_at: list[float] | None = None, total: float = 40.0,
              env: dict[str, str] | None = None) -> ServedController:
        mic = write_caller_wav(tmp_path / "mic.wav", caller_speech,
                               speech_at if speech_at is not None else [6.0], total)
        served = ServedController.on_virtual(tmp_path, mic, *extra, env=env,
                                             stdout=subprocess.PIPE)
        started.append(served)
        return served

    yield start
    for served in started:
        served.close()
