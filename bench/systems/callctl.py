"""callctl itself: ``callctl serve --device pulse`` on a private PulseAudio server."""

from __future__ import annotations

import subprocess
import time
from typing import Any

import numpy as np

from bench.systems import HangupStamps
from testing.pulse import PulseServer
from testing.served import ServedController

BARGE_IN_LEAD_S = 0.25
"""Caller speech starts this long before the wanted interruption: the local agent
server interrupts after 0.2 s of caller speech (its script's ``barge_in_s``)."""


def play_caller(pulse: PulseServer, speech: np.ndarray, at: float) -> subprocess.Popen[bytes]:
    """Start the caller's speech into the microphone sink so that the service hears
    ``BARGE_IN_LEAD_S`` of it by ``at``; returns the player (wait on it)."""
    time.sleep(max(0.0, at - BARGE_IN_LEAD_S - time.monotonic()))
    return pulse.feed_mic(speech)


class CallctlSystem:
    key = "callctl"
    label = "callctl"

    def __init__(self, caller_speech: np.ndarray, *serve_args: str) -> None:
        self.rig = ServedController.on_pulse(*serve_args)
        self.pulse = self.rig.pulse
        self.observer = self.rig.observer
        self.caller_speech = caller_speech

    def start_call(self) -> float:
        asked = time.monotonic()
        reply = self.rig.request({"cmd": "call"})
        if not reply.get("ok"):
            raise RuntimeError(f"call refused: {reply.get('error')}")
        return asked

    def hangup(self) -> HangupStamps:
        sent = time.monotonic()
        reply = self.rig.request({"cmd": "hangup"})
        ended = self.rig.wait_event("call.ended", 6)
        if ended is None:
            raise RuntimeError("no call.ended within 6 s of the hangup")
        t = ended["timings"]
        self.rig.wait_state("idle")
        done = t.get("agent_exited_ms")
        offset = (float(t["hangup_received"]) - sent) * 1000 if t.get("hangup_received") else 0.0
        return HangupStamps(sent, None if done is None else round(done + offset, 2),
                            killed=bool(t.get("agent_killed")),
                            device_fade=(reply.get("audio") or {}).get("fade"))

    def interrupt(self, at: float) -> float:
        self.rig.drain_events()
        player = play_caller(self.pulse, self.caller_speech, at)
        try:
            event = self.rig.wait_event("agent", 8, kind="interruption")
            if event is None:
                raise RuntimeError("no interruption: the service did not hear the caller")
            return float(event["t"])
        finally:
            player.wait(10)

    def audio_pid(self) -> int:
        status: dict[str, Any] = self.rig.request({"cmd": "status"})
        return int(status["pids"]["audio"])

    def close(self) -> None:
        self.rig.close()
