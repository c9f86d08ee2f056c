"""How long a full garbage collection holds the GIL in each long-lived process, ms.

``python -m bench.gc_pause [--repeat N]`` starts, per process kind, a fresh
interpreter that imports what that process imports (its entry-point module),
then times ``gc.collect()`` (a full, generation-2 collection: what Python runs
by itself every so often while the process works) ``--repeat`` times (default
7), before and after ``engine.threads.freeze_heap``. Prints the first collection's
time (its caches cold, like the rare one in a working process) and the medians.

A collection scans every tracked object and holds the GIL meanwhile, so in the
audio process it is time the audio thread may wait, and in the agent process
and the controller time a call's start or its hangup may wait. The objects the
imports made live as long as the process: after ``freeze_heap`` a collection
scans only what was made since.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys

PROCESSES = {
    "agent process": "callctl.engine.agent_process",
    "audio process": "callctl.engine.audio_process",
    "controller": "callctl.controller.controller",
    "local agent server": "callctl.engine.agent_server.command",
}
"""Process kind -> the module its entry point imports."""

PROBE = r"""
import gc, importlib, json, sys, time
importlib.import_module(sys.argv[1])
from callctl.engine.threads import freeze_heap

def full_ms(n):
    out = []
    for _ in range(n):
        t = time.perf_counter()
        gc.collect()
        out.append((time.perf_counter() - t) * 1000)
    return out

n = int(sys.argv[2])
objects = len(gc.get_objects())
before = full_ms(n)
freeze_heap()
after = full_ms(n)
print(json.dumps({"objects": objects, "before": before, "after": after}))
"""


def measure(module: str, repeat: int) -> dict[str, float]:
    """Full-collection times (ms) in a fresh interpreter that imported ``module``: the
    first (its caches cold, as for the rare collection in a working process), the median
    before ``freeze_heap`` and the median after; and how many objects were tracked."""
    out = subprocess.run([sys.executable, "-c", PROBE, module, str(repeat)],
                         capture_output=True, text=True, timeout=120, check=True)
    found = json.loads(out.stdout.strip().splitlines()[-1])
    return {"objects": found["objects"], "first_ms": found["before"][0],
            "before_ms": statistics.median(found["before"]),
            "after_ms": statistics.median(found["after"])}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.gc_pause", description=__doc__.split("\n")[0])
    p.add_argument("--repeat", type=int, default=7, help="collections timed each way (default 7)")
    args = p.parse_args(argv)
    if args.repeat < 1:
        p.error("--repeat must be at least 1")
    for kind, module in PROCESSES.items():
        m = measure(module, args.repeat)
        print(f"{kind:20} {m['objects']:6d} objects: a full collection {m['first_ms']:5.1f} ms "
              f"the first time, {m['before_ms']:5.1f} ms the median; after freeze_heap "
              f"{m['after_ms']:4.2f} ms (median of {args.repeat})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
