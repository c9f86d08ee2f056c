"""The baseline: the elevenlabs SDK's own ``DefaultAudioInterface``, driven as the SDK drives it.

A child process on the benchmark's PulseAudio server (run under its env),
one conversation at a time against the local agent server, steered by the
parent over a line protocol shared with ``bench.pipecat_baseline``::

    python -m bench.sdk_baseline --base-url http://127.0.0.1:PORT

stdin, one command a line: ``call``, ``hangup``, ``quit``. stdout, one JSON
object a line, every time a ``time.monotonic()`` float (CLOCK_MONOTONIC,
shared with the parent):

* ``{"event": "ready", "pid": P}`` once, imports done;
* ``call`` → ``{"event": "started", "t": T}``, T just before ``start_session()``;
* ``{"event": "interrupted", "t": T}`` whenever the SDK calls
  ``DefaultAudioInterface.interrupt()`` (the service's ``interruption``,
  after the parent played caller speech into the microphone);
* ``hangup`` → ``{"event": "hungup", "hangup": T0, "stop_returned": T1,
  "session_ended": T2}``: T0 when the line was read, T1 when
  ``end_session()`` returned (it calls ``audio_interface.stop()``
  synchronously), T2 when ``wait_for_session_end()`` returned (null if not
  within ``--session-timeout``);
* ``{"event": "error", "message": M}`` then exit 1.

Nothing in the SDK is changed: the subclass only notes when ``interrupt()``
is called before calling the SDK's own.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from typing import Any

from elevenlabs.client import ElevenLabs
from elevenlabs.conversational_ai.conversation import Conversation
from elevenlabs.conversational_ai.default_audio_interface import DefaultAudioInterface

_print_lock = threading.Lock()


def say(**fields: Any) -> None:
    """One JSON line on stdout; any thread may call."""
    with _print_lock:
        sys.stdout.write(json.dumps(fields) + "\n")
        sys.stdout.flush()


class TimedDefaultAudioInterface(DefaultAudioInterface):
    """The SDK's interface, unchanged, with the moment of ``interrupt()`` reported."""

    def interrupt(self) -> None:
        say(event="interrupted", t=time.monotonic())
        super().interrupt()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.sdk_baseline")
    p.add_argument("--base-url", required=True)
    p.add_argument("--session-timeout", type=float, default=15.0,
                   help="bound on wait_for_session_end(), seconds")
    args = p.parse_args(argv)
    client = ElevenLabs(base_url=args.base_url, timeout=10)
    say(event="ready", pid=os.getpid())
    conv: Conversation | None = None
    for line in sys.stdin:
        cmd = line.strip()
        if cmd == "call":
            conv = Conversation(client, "local", requires_auth=False,
                                audio_interface=TimedDefaultAudioInterface())
            started = time.monotonic()
            conv.start_session()
            say(event="started", t=started)
        elif cmd == "hangup" and conv is not None:
            hangup = time.monotonic()
            conv.end_session()
            stop_returned = time.monotonic()
            ender = threading.Thread(target=conv.wait_for_session_end, daemon=True)
            ender.start()
            ender.join(args.session_timeout)
            ended = None if ender.is_alive() else time.monotonic()
            say(event="hungup", hangup=hangup, stop_returned=stop_returned, session_ended=ended)
            conv = None
        elif cmd == "quit":
            break
        else:
            say(event="error", message=f"unexpected command {cmd!r}")
            sys.stdout.flush()
            os._exit(1)
    # A session stuck in its close handshake holds a non-daemon SDK thread.
    sys.stdout.flush()
    os._exit(0)


if __name__ == "__main__":
    raise SystemExit(main())
