"""The GUI's longest event-loop stall during a call and its hangup (for `make bench`).

Runs the real window offscreen with its own controller on the virtual device
and the local agent, a 1 ms timer watching the loop (``gui.loopwatch``):
Call, a caller turn, Hang up pressed, back to Ready. Reports the longest gap
between ticks in the hangup window (press → Ready) and over the whole call,
in milliseconds, both as measured (wall) and less the time the kernel kept
the GUI thread waiting for a CPU and the host's steal (own; ``gui.loopwatch``).
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path
from typing import Any


def measure() -> dict[str, Any]:
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    from PyQt6.QtWidgets import QApplication

    from callctl.cli.demo import write_caller
    from callctl.gui.app import build, prepare_application
    from callctl.gui.loopwatch import LoopWatch

    tmp = Path(tempfile.mkdtemp(prefix="callctl-gui-bench-"))
    os.environ["XDG_CONFIG_HOME"] = str(tmp / "config")
    write_caller(tmp / "mic.wav", speak_at=1.0)
    app = QApplication.instance() or QApplication(["callctl-bench"])
    assert isinstance(app, QApplication)
    prepare_application(app)
    gui = build(["--endpoint", f"ipc://{tmp}/c", "--record-dir", str(tmp / "calls"),
                 "--device", "virtual", "--mic", str(tmp / "mic.wav"),
                 "--speaker", str(tmp / "speaker.wav")])
    w = gui.window
    w.show()

    def spin(seconds: float) -> None:
        wait(lambda: False, seconds, fail=False)

    def wait(condition: Any, seconds: float, fail: bool = True) -> None:
        deadline = time.monotonic() + seconds
        while not condition():
            if time.monotonic() > deadline:
                if not fail:
                    return
                raise RuntimeError("the window did not get there in time")
            app.processEvents()
            time.sleep(0.001)

    watch = LoopWatch()
    try:
        wait(lambda: w.call_button.isEnabled(), 30)
        watch.start()
        w.call_button.click()
        wait(lambda: w.state_text() == "In call", 20)
        spin(6.0)  # the greeting and a caller turn
        pressed = watch.elapsed()
        w.hangup_button.pressed.emit()  # what a mouse press on the button sends
        wait(lambda: w.state_text() == "Ready", 10)
        ready = watch.elapsed()
        spin(1.5)  # post-call work
    finally:
        watch.stop()
        gui.shutdown()
    during = [g for g in watch.gaps if pressed <= g.at <= ready + 0.05]
    return {
        "hangup_max_gap_ms": round(max(g.wall_ms for g in during), 2),
        "hangup_max_own_ms": round(max(g.own_ms for g in during), 2),
        "call_max_gap_ms": round(max(g.wall_ms for g in watch.gaps), 2),
        "call_max_own_ms": round(max(g.own_ms for g in watch.gaps), 2),
        "ticks": len(watch.gaps),
    }


if __name__ == "__main__":
    print(measure())
