"""Pipecat 1.14's ``LocalAudioTransport`` (``bench.pipecat_baseline`` in its own venv).

Pipecat has no ElevenLabs Conversational AI client, so the agent's speech
is the local agent server's greeting rendered by the same espeak-ng voice
and pushed as output audio frames; hangup is the pipeline's own cancel and
barge-in its interruption frame. The venv (``bench/.venv-pipecat``) is made
by ``bench/pipecat_venv.sh`` (``make bench`` runs it).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import IO, Any

import numpy as np

from bench.systems.child import ChildSystem
from testing.sounds import write_wav

BENCH = Path(__file__).resolve().parents[1]
VENV_PYTHON = BENCH / ".venv-pipecat" / "bin" / "python"


class PipecatSystem(ChildSystem):
    key = "pipecat"
    label = "Pipecat LocalAudioTransport"

    def __init__(self, log: IO[Any], speech: np.ndarray, workdir: Path) -> None:
        super().__init__()
        try:
            if not VENV_PYTHON.exists():
                raise RuntimeError(f"{VENV_PYTHON} missing: run bench/pipecat_venv.sh")
            wav = write_wav(workdir / "agent-speech.wav", speech)
            self.spawn([str(VENV_PYTHON), str(BENCH / "pipecat_baseline.py"),
                        "--speech", str(wav)], log)
        except BaseException:
            self.close()
            raise

    def interrupt(self, at: float) -> float:
        child = self._child()
        time.sleep(max(0.0, at - time.monotonic()))
        child.send("interrupt")
        return float(child.expect("interrupted", 5)["t"])
