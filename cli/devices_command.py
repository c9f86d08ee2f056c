"""`callctl devices`: the audio devices both backends see, for ``--device``."""

from __future__ import annotations

import argparse
import json

from callctl.engine.audio_process import default_backend, list_all_devices


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="callctl devices",
        description="List audio devices: the sound server's (pulse) and PortAudio's. Pass "
        "the DEVICE column to --device; 'virtual' is always available.")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--verbose", action="store_true", help="show PortAudio's own messages")
    args = p.parse_args(argv)
    devices = list_all_devices()
    if args.json:
        print(json.dumps(devices))
        return 0
    print(f"{'in':>3} {'out':>3}  {'rate':>6}  {'DEVICE':<32} name")
    for d in devices:
        note = f"  [refused: {d['refused']}]" if d.get("refused") else ""
        print(f"{d['inputs']:>3} {d['outputs']:>3}  {d['default_rate']:>6.0f}  "
              f"{d['device'] or '-':<32} {d.get('description', d['name'])}{note}")
    print(f"{1:>3} {1:>3}  {16000:>6}  {'virtual':<32} WAV files (--mic and --speaker)")
    print(f"default: {default_backend()}")
    return 0
