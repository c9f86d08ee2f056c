"""Benchmark harness: figures' summaries and CPU load.

The controller on a real sound server is ``testing.served.ServedController.on_pulse``
(``callctl serve --device pulse`` against a private PulseAudio daemon,
``testing.pulse``, with a ``testing.observer.PlaybackObserver`` recording the
speaker's monitor): hangup → silence is read off that recording, never taken
from the engine's own report.
"""

from __future__ import annotations

import multiprocessing as mp
import multiprocessing.connection
import os
import statistics
import time


def summarise(values: list[float]) -> dict[str, float | int | None]:
    """Median, p90, p99, max, mean and count (None when empty); units as given."""
    if not values:
        return {"n": 0, "median": None, "p90": None, "p99": None, "max": None, "mean": None}
    ordered = sorted(values)

    def pct(p: float) -> float:
        return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]

    return {"n": len(values), "median": round(statistics.median(ordered), 2),
            "p90": round(pct(90), 2), "p99": round(pct(99), 2), "max": round(ordered[-1], 2),
            "mean": round(statistics.fmean(ordered), 2)}


def _spin(stop_at: float) -> None:
    while time.monotonic() < stop_at:
        pass


class CpuLoad:
    """``n`` processes that keep a core busy each, for at most ``seconds``."""

    def __init__(self, n: int = os.cpu_count() or 2, seconds: float = 900) -> None:
        stop_at = time.monotonic() + seconds
        ctx = mp.get_context("spawn")
        self.procs = [ctx.Process(target=_spin, args=(stop_at,), daemon=True) for _ in range(n)]
        for p in self.procs:
            p.start()

    def stop(self) -> None:
        for p in self.procs:
            p.kill()
            p.join(5)
