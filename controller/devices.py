"""`callctl devices`: the audio devices PortAudio sees, for ``--device``."""

from __future__ import annotations

import argparse
import json

from engine.devices.portaudio import list_devices


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="callctl devices",
        description="List audio devices. Pass an index or a name to --device; "
        "a device must both record and play. 'virtual' is always available.")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--verbose", action="store_true", help="show PortAudio's own messages")
    args = p.parse_args(argv)
    devices = list_devices(verbose=args.verbose)
    if args.json:
        print(json.dumps(devices))
        return 0
    print(f"{'index':>5}  {'in':>3} {'out':>3}  {'rate':>6}  name")
    for d in devices:
        print(f"{d['index']:>5}  {d['inputs']:>3} {d['outputs']:>3}  "
              f"{d['default_rate']:>6.0f}  {d['name']}")
    print("    -  1   1   16000  virtual (WAV files; --mic and --speaker)")
    return 0
