"""`callctl demo`: a whole offline call, and a hangup over ZeroMQ while the agent talks.

A controller (`callctl serve`, its own process) runs the local agent server
and the virtual device, whose microphone is a scripted caller (espeak-ng).
The demo speaks to it only over the public ZeroMQ protocol, through
``callctl.serve`` and ``callctl.Client`` as any Python program would: it
starts the call, waits until the agent is mid-sentence in its answer to the
caller, and sends ``{"cmd": "hangup"}``. Then it prints the
figure measured on the speaker file — what the device played, not what the
engine says about itself — ``hangup→silence``, the engine's own timings and
the recording's path.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import platformdirs

from callctl.client import CallctlError, Client
from callctl.engine import protocol
from callctl.engine.agent_server.voice import Voice
from callctl.engine.ring import SAMPLE_RATE
from callctl.engine.wavfile import GrowingWav, read_wav
from callctl.served import serve

CALLER = "Hi! I would like to know what you can do for me today."
SILENCE_PEAK = 33  # int16 magnitude of -60 dBFS


def last_sound_time(speaker_wav: Path) -> float | None:
    """Monotonic time of the end of the last speaker sample above −60 dBFS."""
    samples, rate = read_wav(speaker_wav)
    meta = json.loads(speaker_wav.with_suffix(".wav.json").read_text())
    loud = np.nonzero(np.abs(samples[:, 0].astype(np.int32)) > SILENCE_PEAK)[0]
    if not len(loud):
        return None
    return float(meta["start_monotonic"]) + (int(loud[-1]) + 1) / rate


def write_caller(path: Path, speak_at: float = 6.5) -> None:
    speech = Voice().render(CALLER)
    mic = np.zeros(int((speak_at + 30) * SAMPLE_RATE), np.int16)
    start = int(speak_at * SAMPLE_RATE)
    mic[start : start + len(speech)] = speech
    wav = GrowingWav(path, SAMPLE_RATE, 1)
    wav.append(mic)
    wav.close()


def run(out_dir: Path, mid_sentence: float) -> int:
    out_dir.mkdir(parents=True, exist_ok=True)
    print("1. voicing a scripted caller with espeak-ng")
    write_caller(out_dir / "caller.wav")
    speaker = out_dir / "speaker.wav"
    print("2. starting a controller: audio process (virtual device), local agent server")
    try:
        with serve(endpoint=f"ipc://{out_dir}/control", device="virtual",
                   mic=out_dir / "caller.wav", speaker=speaker,
                   record_dir=out_dir / "calls") as client:
            hung_up = _call_and_hang_up(client, mid_sentence)
    except CallctlError as exc:
        print(f"callctl demo: {exc}", file=sys.stderr)
        return 1
    if hung_up is None:
        return 1
    sent, ended = hung_up
    last = last_sound_time(speaker)
    silence_ms = max(0.0, (last - sent) * 1000) if last else 0.0
    t = ended["timings"]
    how = "killed" if t["agent_killed"] else "exited"
    print()
    print(f"hangup→silence: {silence_ms:.1f} ms   (on the speaker file: what the device played)")
    print(f"engine:  audio silent {t['audio_silent_ms']:.1f} ms, stream stopped "
          f"{t['stream_stopped_ms']:.1f} ms, agent {how} {t['agent_exited_ms']:.0f} ms, "
          f"total {t['total_ms']:.0f} ms after the hangup arrived")
    print(f"recording: {ended['recording']}")
    return 0


def _call_and_hang_up(client: Client, mid_sentence: float
                      ) -> tuple[float, dict[str, Any]] | None:
    """Call, hang up ``mid_sentence`` seconds into the agent's answer to the caller.
    Returns (when the hangup was sent, monotonic s; the ``call.ended`` event), or None
    (the reason printed) if the call went wrong."""
    with client.events() as events:
        print(f"3. calling over ZeroMQ: {client.call()['call_id']}")
        agent_lines = 0
        deadline = time.monotonic() + 40
        while agent_lines < 2:
            event = events.next(deadline - time.monotonic())
            if event is None:
                print("the agent never answered the caller", file=sys.stderr)
                return None
            if event["event"] == protocol.EVENT_TRANSCRIPT:
                agent_lines += event["role"] == "agent"
                print(f"   {event['role']:>6}: {event['text']}")
            elif event["event"] == protocol.EVENT_STATE and event["state"] == "failed":
                print(f"the call failed: {event['reason']}", file=sys.stderr)
                return None
        time.sleep(mid_sentence)
        print('4. the agent is mid-sentence: sending {"cmd": "hangup"} over ZeroMQ')
        sent = time.monotonic()
        client.hangup()
        deadline = time.monotonic() + 10
        while (event := events.next(deadline - time.monotonic())) is not None:
            if event["event"] == protocol.EVENT_CALL_ENDED:
                return sent, event
    print("no call.ended event", file=sys.stderr)
    return None


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="callctl demo", description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path,
                   default=Path(platformdirs.user_data_dir("callctl")) / "demo",
                   help="where the caller, speaker and call folders go")
    p.add_argument("--mid-sentence", type=float, default=1.2, metavar="SECONDS",
                   help="how far into the agent's answer to hang up (default 1.2)")
    args = p.parse_args(argv)
    return run(args.out, args.mid_sentence)
