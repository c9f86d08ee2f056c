"""Soak (`make soak`, not `make test`): 1,000 short calls leak nothing; the fuzzes at 10,000."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import pytest

pytestmark = [pytest.mark.soak, pytest.mark.timeout(3600)]

CALLS = int(os.environ.get("CALLCTL_SOAK_CALLS", "1000"))


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def segments() -> set[str]:
    return {p.name for p in Path("/dev/shm").glob("callctl-*")}


def test_a_thousand_short_calls_leak_no_process_fd_or_segment(serve: Any) -> None:
    served = serve(speech_at=[60.0], total=70)
    pid = served.proc.pid
    baseline: dict[str, Any] = {}
    for n in range(1, CALLS + 1):
        assert served.request({"cmd": "call"})["ok"]
        served.wait_state("in_call", timeout=30)
        time.sleep(0.2)
        assert served.request({"cmd": "hangup"})["ok"]
        served.wait_state("idle", timeout=10)
        if n == min(50, CALLS):  # after warm-up: caches, imports, the agent server
            time.sleep(0.5)
            baseline = {"rss": rss_kb(pid), "fds": fds(pid), "children": len(served.children()),
                        "segments": segments()}
        if n % 100 == 0:
            print(f"{n} calls: rss {rss_kb(pid)} kB, fds {fds(pid)}, "
                  f"children {len(served.children())}", flush=True)
    time.sleep(1.0)
    final = {"rss": rss_kb(pid), "fds": fds(pid), "children": len(served.children()),
             "segments": segments()}
    print(f"after call {min(50, CALLS)} → after call {CALLS}: controller RSS "
          f"{baseline['rss'] / 1024:.1f} → {final['rss'] / 1024:.1f} MB, fds {baseline['fds']} → "
          f"{final['fds']}, children {baseline['children']} → {final['children']}, /dev/shm "
          f"segments {len(baseline['segments'])} → {len(final['segments'])}", flush=True)
    assert fds(pid) <= baseline["fds"] + 2, "file descriptors leak"
    assert len(served.children()) <= baseline["children"], "processes leak"
    assert segments() <= baseline["segments"], "shared memory leaks"
    growth_mb = (rss_kb(pid) - baseline["rss"]) / 1024
    assert growth_mb < 10, f"controller memory grew {growth_mb:.1f} MB"
