"""`callctl demo`: a whole offline call, and a hangup over ZeroMQ while the agent talks.

A controller (`callctl serve`, its own process) runs the local agent server
and the virtual device, whose microphone is a scripted caller (espeak-ng).
The demo speaks to it only over the public ZeroMQ protocol, as any script
would: it starts the call, waits until the agent is mid-sentence in its
answer to the caller, and sends ``{"cmd": "hangup"}``. Then it prints the
figure measured on the speaker file — what the device played, not what the
engine says about itself — ``hangup→silence``, the engine's own timings and
the recording's path.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import platformdirs
import zmq

from callctl.engine.agent_server.voice import Voice
from callctl.engine.control_client import ControlClient
from callctl.engine.ring import SAMPLE_RATE
from callctl.engine.wavfile import GrowingWav, read_wav

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


def _next_event(sub: zmq.Socket, deadline: float) -> dict[str, Any] | None:
    while time.monotonic() < deadline:
        if sub.poll(50):
            return json.loads(sub.recv_multipart()[1])
    return None


def run(out_dir: Path, mid_sentence: float) -> int:
    out_dir.mkdir(parents=True, exist_ok=True)
    print("1. voicing a scripted caller with espeak-ng")
    write_caller(out_dir / "caller.wav")
    endpoint = f"ipc://{out_dir}/control"
    speaker = out_dir / "speaker.wav"
    print("2. starting a controller: audio process (virtual device), local agent server")
    serve = subprocess.Popen(
        [sys.executable, "-m", "callctl.controller.cli", "serve", "--endpoint", endpoint,
         "--device", "virtual", "--mic", str(out_dir / "caller.wav"), "--speaker", str(speaker),
         "--record-dir", str(out_dir / "calls")], stdout=subprocess.DEVNULL)
    control = ControlClient(endpoint)
    try:
        status = _wait_for_controller(control, serve)
        sub: zmq.Socket = zmq.Context.instance().socket(zmq.SUB)
        sub.setsockopt(zmq.SUBSCRIBE, b"")
        sub.connect(status["events"])
        time.sleep(0.2)
        print(f"3. calling over ZeroMQ: {control.request({'cmd': 'call'})['call_id']}")
        agent_lines = 0
        deadline = time.monotonic() + 40
        while agent_lines < 2:
            event = _next_event(sub, deadline)
            if event is None:
                print("the agent never answered the caller", file=sys.stderr)
                return 1
            if event["event"] == "transcript":
                agent_lines += event["role"] == "agent"
                print(f"   {event['role']:>6}: {event['text']}")
            elif event["event"] == "state" and event["state"] == "failed":
                print(f"the call failed: {event['reason']}", file=sys.stderr)
                return 1
        time.sleep(mid_sentence)
        print('4. the agent is mid-sentence: sending {"cmd": "hangup"} over ZeroMQ')
        sent = time.monotonic()
        control.request({"cmd": "hangup"})
        ended = None
        while ended is None:
            event = _next_event(sub, time.monotonic() + 10)
            if event is None:
                print("no call.ended event", file=sys.stderr)
                return 1
            if event["event"] == "call.ended":
                ended = event
        control.request({"cmd": "shutdown"})
        serve.wait(15)
        sub.close(0)
    finally:
        control.close()
        if serve.poll() is None:
            serve.terminate()
            serve.wait(10)
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


def _wait_for_controller(control: ControlClient, serve: subprocess.Popen[bytes]
                         ) -> dict[str, Any]:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if serve.poll() is not None:
            raise SystemExit("the controller did not start")
        try:
            return control.request({"cmd": "status"}, timeout=1.0)
        except TimeoutError:
            continue
    raise SystemExit("the controller did not answer in 30 s")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="callctl demo", description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path,
                   default=Path(platformdirs.user_data_dir("callctl")) / "demo",
                   help="where the caller, speaker and call folders go")
    p.add_argument("--mid-sentence", type=float, default=1.2, metavar="SECONDS",
                   help="how far into the agent's answer to hang up (default 1.2)")
    args = p.parse_args(argv)
    return run(args.out, args.mid_sentence)
