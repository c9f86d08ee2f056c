"""``python -m callctl.gui.screenshot docs/gui.png``: the window in the middle of a call, as a PNG.

Starts its own Xvfb (``-displayfd``: the server picks a free display and
says which), runs the window exactly as ``callctl gui`` does — its own
controller on the virtual device, a caller's voice (espeak-ng) in the
microphone, the offline local agent — makes one short call so the "Last
hangup" panel has real figures, then a second one, and grabs the window
once the transcript has a few lines and the agent is speaking. Everything
it starts is stopped again; the user's remembered settings are not touched
(a temporary config directory). ``--scale 2`` renders at 200 %.
"""

from __future__ import annotations

import argparse
import os
import select
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

CALLER_LINES = (
    "Hi, I would like to move my appointment to Friday afternoon, if that is possible.",
    "It is for two people, and we would prefer a table by the window.",
)
RATE = 16_000


def start_xvfb(size: str) -> tuple[subprocess.Popen[bytes], str]:
    """A private X server on a display it picked itself; returns it and ``:N``."""
    if shutil.which("Xvfb") is None:
        raise SystemExit("callctl.gui.screenshot: Xvfb is not installed (apt-get install xvfb)")
    read, write = os.pipe()
    proc = subprocess.Popen(["Xvfb", "-displayfd", str(write), "-screen", "0", f"{size}x24",
                             "-nolisten", "tcp"], pass_fds=(write,),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    os.close(write)
    number = b""
    deadline = time.monotonic() + 15
    while not number.endswith(b"\n"):
        left = deadline - time.monotonic()
        if left <= 0 or proc.poll() is not None:
            proc.kill()
            raise SystemExit("callctl.gui.screenshot: Xvfb did not start")
        if select.select([read], [], [], left)[0]:
            chunk = os.read(read, 16)
            if not chunk:
                proc.kill()
                raise SystemExit("callctl.gui.screenshot: Xvfb did not say its display")
            number += chunk
    os.close(read)
    return proc, f":{number.decode().strip()}"


def caller_wav(path: Path, total_s: float, at: tuple[float, ...]) -> Path:
    """The microphone: silence with the caller's lines at ``at`` seconds (espeak-ng)."""
    from callctl.engine.agent_server.voice import Voice
    from callctl.engine.wavfile import GrowingWav

    voice = Voice()
    mic = np.zeros(int(total_s * RATE), np.int16)
    for i, t in enumerate(at):
        speech = voice.render(CALLER_LINES[i % len(CALLER_LINES)])
        start = int(t * RATE)
        part = speech[: max(0, len(mic) - start)]
        mic[start:start + len(part)] = part
    wav = GrowingWav(path, RATE, 1)
    wav.append(mic)
    wav.close()
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m callctl.gui.screenshot",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("out", type=Path, help="where the PNG goes, e.g. docs/gui.png")
    parser.add_argument("--scale", type=float, default=1.0, help="QT_SCALE_FACTOR (default 1)")
    args = parser.parse_args(argv)
    out: Path = args.out.resolve()
    work = Path(tempfile.mkdtemp(prefix="callctl-shot-"))
    xvfb, display = start_xvfb("2200x1700" if args.scale > 1 else "1400x1000")
    os.environ.update(DISPLAY=display, QT_QPA_PLATFORM="xcb",
                      XDG_CONFIG_HOME=str(work / "config"), QT_SCALE_FACTOR=f"{args.scale:g}")
    os.environ.pop("WAYLAND_DISPLAY", None)
    try:
        return _shoot(out, work)
    finally:
        xvfb.terminate()
        try:
            xvfb.wait(5)
        except subprocess.TimeoutExpired:
            xvfb.kill()
        shutil.rmtree(work, ignore_errors=True)


def _shoot(out: Path, work: Path) -> int:
    from PyQt6.QtCore import QEventLoop, QTimer
    from PyQt6.QtWidgets import QApplication

    from callctl.gui.app import build, prepare_application

    app = QApplication(["callctl"])
    prepare_application(app)
    mic = caller_wav(work / "mic.wav", 60.0, (7.5, 20.0))
    gui = build(["--device", "virtual", "--mic", str(mic), "--speaker", str(work / "spk.wav"),
                 "--record-dir", str(work / "calls"), "--endpoint", f"ipc://{work}/control",
                 "--agent", "local"])
    w = gui.window

    def wait(what: str, cond: Callable[[], bool], seconds: float, required: bool = True) -> None:
        deadline = time.monotonic() + seconds
        while not cond():
            if time.monotonic() > deadline:
                if required:
                    raise SystemExit(f"callctl.gui.screenshot: timed out waiting for {what} "
                                     f"(state {w.state_text()!r}: {w.banner_message()})")
                return
            loop = QEventLoop()
            QTimer.singleShot(20, loop.quit)
            loop.exec()

    def lines(who: str) -> int:
        return sum(line.startswith(who) for line in w.transcript.toPlainText().splitlines())

    try:
        w.show()
        wait("the controller", w.call_button.isEnabled, 30)
        # A short first call, so that the "Last hangup" panel has measured figures.
        w.start_call()
        wait("the first call", lambda: w.state_text() == "In call", 20)
        wait("a moment", lambda: False, 1.5, required=False)
        w.hang_up()
        wait("the first hangup", lambda: w.state_text() == "Ready", 10)
        wait("the post-call work", lambda: not w.postcall_box.isHidden()
             and "Failed" not in w.postcall_label.text()
             and w.postcall_progress.value() >= 1000, 10, required=False)
        # The call in the picture.
        w.start_call()
        wait("the call", lambda: w.state_text() == "In call", 20)
        wait("a conversation", lambda: lines("You") >= 1 and lines("Agent") >= 2, 30)
        wait("the agent speaking", lambda: w.speaker_meter.level_db > -30, 10, required=False)
        wait("the timer", lambda: w.timer_label.text() >= "00:12", 10, required=False)
        out.parent.mkdir(parents=True, exist_ok=True)
        if not w.grab().save(str(out), "PNG"):
            raise SystemExit(f"callctl.gui.screenshot: could not write {out}")
        print(f"callctl.gui.screenshot: wrote {out} ({w.width()}x{w.height()} at "
              f"{os.environ['QT_SCALE_FACTOR']}x)")
        w.hang_up()
        wait("the hangup", lambda: w.state_text() == "Ready", 10, required=False)
    finally:
        w.close()
        gui.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
