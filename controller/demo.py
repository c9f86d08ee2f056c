"""`callctl demo`: the audio process on the virtual device, voice through the ring, a hangup.

What it shows, end to end and offline: a real audio process (its own OS
process) on the virtual device; espeak-ng speech written into the shared
playback ring the way an agent writes it (ahead of real time); a ``hangup``
request over ZeroMQ while the voice is mid-sentence; and the figure that
matters, measured from the *speaker file* (what the device played), not
from the engine's own report: ``hangup→silence``.
"""

from __future__ import annotations

import argparse
import json
import time
import uuid
from pathlib import Path

import numpy as np
import platformdirs

from engine.agent_server.voice import Voice
from engine.audio_client import AudioProcess, ControlClient
from engine.ring import SAMPLE_RATE, AudioRing
from engine.wavfile import read_wav

SENTENCE = ("Hello, this is the callctl demo. I will keep talking until you hang up, "
            "and when you do, my voice stops within one audio period.")
SILENCE_PEAK = 33  # int16 magnitude of -60 dBFS


def last_sound_time(speaker_wav: Path) -> float | None:
    """Monotonic time of the end of the last speaker sample above −60 dBFS."""
    samples, rate = read_wav(speaker_wav)
    meta = json.loads(speaker_wav.with_suffix(".wav.json").read_text())
    loud = np.nonzero(np.abs(samples[:, 0].astype(np.int32)) > SILENCE_PEAK)[0]
    if not len(loud):
        return None
    return float(meta["start_monotonic"]) + (int(loud[-1]) + 1) / rate


def run(out_dir: Path, hangup_after: float) -> int:
    out_dir.mkdir(parents=True, exist_ok=True)
    print("voicing the agent's line with espeak-ng ...")
    voice = Voice().render(SENTENCE)
    prefix = f"callctl-demo-{uuid.uuid4().hex[:8]}"
    speaker = out_dir / "speaker.wav"
    audio = AudioProcess(f"ipc://{out_dir}/audio.sock", prefix,
                         ["--device", "virtual", "--speaker", str(speaker)])
    try:
        audio.wait_ready()
        recording = out_dir / "recording.wav"
        audio.request({"cmd": "start", "record": str(recording)})
        ring = AudioRing.attach(prefix + "-play")
        # Feed like an agent: 250 ms chunks, as fast as the ring takes them.
        chunk = SAMPLE_RATE // 4
        fed = 0
        deadline = time.monotonic() + hangup_after
        while time.monotonic() < deadline:
            if fed < len(voice) and ring.free() >= chunk:
                fed += ring.write(voice[fed : fed + chunk])
            time.sleep(0.01)
        print(f"sending hangup over ZeroMQ at {hangup_after:.1f} s, mid-sentence ...")
        hangup = ControlClient(audio.control)
        sent = time.monotonic()
        reply = hangup.request({"cmd": "hangup"})
        hangup.close()
        ring.write(voice[fed:])  # the agent keeps talking: none of this may play
        ring.close()
        time.sleep(0.3)  # let the virtual speaker write its file out
    finally:
        audio.stop()
    last = last_sound_time(speaker)
    silence_ms = max(0.0, (last - sent) * 1000) if last else 0.0
    print(f"hangup→silence: {silence_ms:.1f} ms   (measured on the speaker file)")
    print(f"engine: first silent period {reply['silent_ms']:.1f} ms, "
          f"stream stopped {reply['stopped_ms']:.1f} ms after the request arrived")
    print(f"recording: {recording}")
    print(f"speaker:   {speaker}")
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="callctl demo", description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path,
                   default=Path(platformdirs.user_data_dir("callctl")) / "demo",
                   help="where the recording and speaker file go")
    p.add_argument("--hangup-after", type=float, default=2.5, metavar="SECONDS")
    args = p.parse_args(argv)
    return run(args.out, args.hangup_after)
