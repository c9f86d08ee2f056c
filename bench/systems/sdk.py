"""The elevenlabs SDK's ``DefaultAudioInterface`` (``bench.sdk_baseline`` in a child process).

The same local agent server program as callctl's, on its own private
PulseAudio server; barge-in is real: caller speech played into the
microphone sink, the service's VAD sends ``interruption``, the SDK calls
``interrupt()``.
"""

from __future__ import annotations

import subprocess
import sys
from typing import IO, Any

from bench.systems.child import ChildSystem
from callctl.engine.agent_child import AgentServerProcess


class SdkSystem(ChildSystem):
    key = "sdk"
    label = "SDK DefaultAudioInterface"

    def __init__(self, log: IO[Any], caller_speech: Any, *server_args: str,
                 session_bound_s: float = ChildSystem.SESSION_BOUND_S) -> None:
        super().__init__()
        self.SESSION_BOUND_S = session_bound_s
        try:
            self.server = AgentServerProcess(list(server_args), stderr=subprocess.DEVNULL)
            self.base_url = self.server.wait_ready()
            self.caller_speech = caller_speech
            self.spawn([sys.executable, "-m", "bench.sdk_baseline", "--base-url", self.base_url,
                        "--session-timeout", str(self.SESSION_BOUND_S)], log)
        except BaseException:
            self.close()
            raise

    def interrupt(self, at: float) -> float:
        from bench.systems.callctl import play_caller

        child = self._child()
        child.drain()
        player = play_caller(self.pulse, self.caller_speech, at)
        try:
            return float(child.expect("interrupted", 8)["t"])
        finally:
            player.wait(10)

    def close(self) -> None:
        super().close()
        server = getattr(self, "server", None)
        if server is not None:
            server.stop()
