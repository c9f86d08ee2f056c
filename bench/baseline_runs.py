"""The SDK's ``DefaultAudioInterface`` side of the benchmark, on the same kind of rig.

The same local agent server program, a private PulseAudio server of the
same configuration and the same external observer; the SDK runs in a child
process (``bench.sdk_baseline``) exactly as an SDK user's program would.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from typing import Any

from bench.callctl_runs import LISTEN_AFTER, caller_speech
from bench.harness import last_sound_before_quiet
from engine.agent_client import AgentServerProcess
from engine.soundserver import PlaybackObserver, PulseServer


class BaselineRig:
    def __init__(self, *server_args: str) -> None:
        self.pulse = PulseServer().start()
        self.observer = PlaybackObserver(self.pulse).start()
        self.server = AgentServerProcess(list(server_args), stderr=subprocess.DEVNULL)
        self.base_url = self.server.wait_ready()

    def run(self, calls: int, *args: str) -> subprocess.Popen[str]:
        return subprocess.Popen(
            [sys.executable, "-m", "bench.sdk_baseline", "--base-url", self.base_url,
             "--calls", str(calls), *args],
            env=self.pulse.child_env(), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL, text=True)

    def close(self) -> None:
        self.server.stop()
        self.observer.stop()
        self.pulse.stop()


def _lines(proc: subprocess.Popen[str]) -> Any:
    assert proc.stdout is not None
    for line in proc.stdout:
        yield json.loads(line)


def hangups(calls: int) -> dict[str, list[float]]:
    """``end_session()`` mid-greeting: silence at the device, stop() and session end."""
    rig = BaselineRig()
    out: dict[str, list[float]] = {"silence": [], "stop_returned": [], "session_ended": [],
                                   "start": []}
    try:
        proc = rig.run(calls)
        for stamps in _lines(proc):
            sent = stamps["hangup"]
            last = last_sound_before_quiet(rig.observer, sent - 0.2)
            out["silence"].append(max(0.0, (last - sent) * 1000) if last else 0.0)
            out["stop_returned"].append((stamps["stop_returned"] - sent) * 1000)
            if stamps["session_ended"] is not None:
                out["session_ended"].append((stamps["session_ended"] - sent) * 1000)
            first = rig.observer.first_sound_after(stamps["started"], until=sent)
            if first is not None:
                out["start"].append((first - stamps["started"]) * 1000)
        proc.wait(30)
    finally:
        rig.close()
    return out


def bargeins(calls: int) -> dict[str, list[float]]:
    """The caller talks over the greeting: ``interrupt()`` → silence at the device."""
    rig = BaselineRig()
    speech = caller_speech()
    out: dict[str, list[float]] = {"silence": []}
    try:
        proc = rig.run(calls, "--barge-in-after", "0.8")
        assert proc.stdin is not None
        lines = _lines(proc)
        for _ in range(calls):
            next(lines)  # ready_for_caller
            rig.pulse.feed_mic(speech).wait(10)
            time.sleep(0.5)
            proc.stdin.write("\n")
            proc.stdin.flush()
            stamps = next(lines)
            t_int = stamps["interrupt"]
            if t_int is None:
                raise RuntimeError("the SDK never called interrupt()")
            rig.observer.wait_until(t_int + LISTEN_AFTER, timeout=10)
            nxt = rig.observer.first_sound_after(t_int + 0.3, until=stamps["hangup"])
            last = rig.observer.last_sound_after(t_int - 0.2, until=nxt or stamps["hangup"])
            out["silence"].append(max(0.0, (last - t_int) * 1000) if last else 0.0)
        proc.wait(30)
    finally:
        rig.close()
    return out


def stalled_session_end(calls: int, bound: float = 15.0) -> dict[str, list[float]]:
    """``--fault stall``: ``end_session()`` + ``wait_for_session_end()`` against a frozen peer."""
    rig = BaselineRig("--fault", "stall", "--fault-after", "0.5")
    out: dict[str, list[float]] = {"session_ended": [], "unfinished": []}
    try:
        proc = rig.run(calls, "--hangup-after-min", "1.0", "--hangup-after-max", "1.0",
                       "--session-timeout", str(bound))
        for stamps in _lines(proc):
            if stamps["session_ended"] is None:
                out["unfinished"].append(bound * 1000)
            else:
                out["session_ended"].append((stamps["session_ended"] - stamps["hangup"]) * 1000)
        proc.wait(bound * calls + 30)
    finally:
        rig.close()
    return out
