"""The baseline: the elevenlabs SDK's own ``DefaultAudioInterface``, driven as the SDK drives it.

Run as a child process on the benchmark's PulseAudio server (its env), one
conversation after another against the local agent server::

    python -m bench.sdk_baseline --base-url http://127.0.0.1:PORT --calls N \
        [--barge-in-after S] [--hangup-after-min S --hangup-after-max S]

For each call it prints one JSON line with ``time.monotonic()`` stamps:
``started`` (session start requested), ``first_response`` (the greeting's
``agent_response``), ``interrupt`` (when the SDK called
``DefaultAudioInterface.interrupt()``, if it did), ``hangup`` (just before
``end_session()``), ``stop_returned`` (``end_session()`` returned: the SDK
called ``audio_interface.stop()`` synchronously), ``session_ended``
(``wait_for_session_end()`` returned, bounded here by a watchdog). Nothing is
changed in the SDK: the subclass only notes the time of ``interrupt()``
before calling the SDK's own.

With ``--barge-in-after`` the line it prints first says ``{"ready_for_caller":
t}`` so the parent knows when to speak into the microphone.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import threading
import time

from elevenlabs.client import ElevenLabs
from elevenlabs.conversational_ai.conversation import Conversation
from elevenlabs.conversational_ai.default_audio_interface import DefaultAudioInterface


class TimedDefaultAudioInterface(DefaultAudioInterface):
    """The SDK's interface, unchanged, with the moment of ``interrupt()`` noted."""

    interrupted_at: float | None = None

    def interrupt(self) -> None:
        if self.interrupted_at is None:
            self.interrupted_at = time.monotonic()
        super().interrupt()


def one_call(client: ElevenLabs, hangup_after: float, barge_in: float | None,
             session_timeout: float) -> dict[str, float | None]:
    audio = TimedDefaultAudioInterface()
    first = threading.Event()
    stamps: dict[str, float | None] = {"first_response": None}

    def on_response(text: str) -> None:
        if stamps["first_response"] is None:
            stamps["first_response"] = time.monotonic()
            first.set()

    conv = Conversation(client, "local", requires_auth=False, audio_interface=audio,
                        callback_agent_response=on_response)
    stamps["started"] = time.monotonic()
    conv.start_session()
    if not first.wait(15):
        raise SystemExit("the agent never greeted")
    if barge_in is not None:
        time.sleep(barge_in)
        print(json.dumps({"ready_for_caller": time.monotonic()}), flush=True)
        sys.stdin.readline()  # the parent has played the caller's speech
    else:
        time.sleep(hangup_after)
    stamps["interrupt"] = audio.interrupted_at
    stamps["hangup"] = time.monotonic()
    conv.end_session()
    stamps["stop_returned"] = time.monotonic()
    ender = threading.Thread(target=conv.wait_for_session_end, daemon=True)
    ender.start()
    ender.join(session_timeout)
    stamps["session_ended"] = None if ender.is_alive() else time.monotonic()
    return stamps


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.sdk_baseline")
    p.add_argument("--base-url", required=True)
    p.add_argument("--calls", type=int, default=1)
    p.add_argument("--hangup-after-min", type=float, default=0.3)
    p.add_argument("--hangup-after-max", type=float, default=1.5)
    p.add_argument("--barge-in-after", type=float, default=None)
    p.add_argument("--session-timeout", type=float, default=15.0)
    args = p.parse_args(argv)
    client = ElevenLabs(base_url=args.base_url, timeout=10)
    for _ in range(args.calls):
        stamps = one_call(client, random.uniform(args.hangup_after_min, args.hangup_after_max),
                          args.barge_in_after, args.session_timeout)
        print(json.dumps(stamps), flush=True)
        time.sleep(0.3)
    # A session stuck in its close handshake holds a non-daemon SDK thread.
    sys.stdout.flush()
    import os

    os._exit(0)


if __name__ == "__main__":
    raise SystemExit(main())
