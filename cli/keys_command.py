"""`callctl keys DIR`: CurveZMQ keys for a controller reachable beyond loopback.

The key logic (what the files are, how they are checked) is the controller's:
``callctl.controller.curve``. Exit codes: 0 written, 2 refused (keys already
there, or a directory others may access).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from callctl.controller.curve import CurveError, generate


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="callctl keys",
        description="Make CurveZMQ keys so a controller can listen beyond loopback: "
        "`callctl serve --endpoint tcp://0.0.0.0:5555 --curve-dir DIR`; clients use "
        "`--curve-dir DIR` (or $CALLCTL_CURVE_DIR) with client.key_secret and server.key.")
    p.add_argument("directory", type=Path)
    args = p.parse_args(argv)
    if (args.directory / "server.key_secret").exists():
        print(f"callctl keys: {args.directory} already holds keys", file=sys.stderr)
        return 2
    try:
        generate(args.directory)
    except (CurveError, OSError) as exc:
        print(f"callctl keys: {exc}", file=sys.stderr)
        return 2
    print(f"keys written to {args.directory} (authorized: {args.directory / 'authorized'})")
    return 0
