"""The audio process on a private sound server, as the device tests drive it.

``start_audio_process`` spawns ``python -m callctl.engine.audio_process`` on a
device with a server's environment and returns it ready; ``hear_caller``
plays the caller into the server's microphone and reads what reached the
capture ring; ``click_db`` is the click figure read straight off an observer.
Every wait is bounded; times in seconds, samples int16 mono at 16 kHz.
"""

from __future__ import annotations

import subprocess
import time
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Protocol

import numpy as np
import numpy.typing as npt

from callctl.engine.audio_child import AudioProcess, AudioProcessError
from callctl.engine.ring import AudioRing
from testing.measure import BEFORE_S, TAIL_S, db, peak
from testing.observer import TimedObserver
from testing.sounds import RATE

__all__ = ["MicrophoneFeeder", "click_db", "hear_caller", "start_audio_process"]


def start_audio_process(tmp: Path, device_args: list[str], env: Mapping[str, str], tag: str,
                        ready_timeout: float = 15.0) -> AudioProcess:
    """The audio process with ``device_args`` (``["--device", "pulse", …]``), under ``env``
    (a server's ``child_env()``), answering ``status``.

    Its control socket and stderr log go to ``tmp`` (a file, not a pipe: nobody has to
    drain it); ``tag`` names its rings (``callctl-TAG-…``). When it does not get ready
    within ``ready_timeout`` s it is stopped and ``AudioProcessError`` raised with the
    end of its log.
    """
    prefix = f"callctl-{tag}-{uuid.uuid4().hex[:8]}"
    log = tmp / f"audio-{prefix}.stderr"
    with open(log, "wb") as err:  # the child keeps its own descriptor
        proc = AudioProcess(f"ipc://{tmp}/audio-{uuid.uuid4().hex[:6]}", prefix, device_args,
                            env=dict(env), stderr=err.fileno())
    try:
        proc.wait_ready(timeout=ready_timeout)
    except AudioProcessError as exc:
        proc.stop()
        raise AudioProcessError(f"{exc}: {log.read_text(errors='replace').strip()[-500:]}"
                                ) from None
    return proc


class MicrophoneFeeder(Protocol):
    """A server that can play the caller into its microphone sink (``testing.pulse_protocol``)."""

    def feed_mic(self, samples: npt.ArrayLike, *, wait: bool = False,
                 timeout: float | None = None) -> subprocess.Popen[bytes]: ...


def hear_caller(proc: AudioProcess, server: MicrophoneFeeder, speech: npt.NDArray[np.int16],
                seconds: float = 3.0, within: float = 4.0) -> npt.NDArray[np.int16]:
    """Play ``speech`` into ``server``'s microphone and return what the running ``proc``
    put in its capture ring: up to ``seconds`` of it, read for at most ``within`` s.
    The capture ring is flushed first, so only what follows counts."""
    capture = AudioRing.attach(proc.ring_prefix + "-cap")
    try:
        capture.flush()
        feeder = server.feed_mic(speech)
        got = np.zeros(int(RATE * seconds), np.int16)
        n = 0
        deadline = time.monotonic() + within
        while time.monotonic() < deadline and n < len(got):
            n += capture.read_available_into(got[n:])
            time.sleep(0.02)
        try:
            feeder.wait(5)
        except subprocess.TimeoutExpired:
            feeder.kill()
            feeder.wait(5)
    finally:
        capture.close()
    return got[:n]


def click_db(observer: TimedObserver, sent: float, last: float) -> float:
    """Peak of the ``TAIL_S`` (1 ms) up to ``last`` (the last sound) over the peak of the
    ``BEFORE_S`` (10 ms) before ``sent`` (the hangup), in dB; 1 LSB at least in the tail."""
    tail = observer.segment(last - TAIL_S, last + 1 / RATE)
    before = observer.segment(sent - BEFORE_S, sent)
    return db(max(peak(tail), 1.0) / peak(before))
