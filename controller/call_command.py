"""`callctl call`: a controller in the foreground, one call, a live status line.

The controller runs on the main thread (its children's lives are tied to
it); a second thread is the front end: it subscribes to the events, starts
the call over the public control socket — the same protocol any script uses
— draws the status line, and hangs up on Enter, on Ctrl-C (through the
controller's signal handling) or after ``--hangup-after`` seconds. When
``call.ended`` arrives it prints the recording's path and the hangup timings;
with ``--clone-voice`` it then follows the ``postcall`` events of the call
with a progress bar and prints the new voice id (or why there is none); then
it stops the controller.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from typing import Any, TextIO

import zmq

from callctl.controller import endpoints
from callctl.controller.calls import printable
from callctl.controller.controller import Controller
from callctl.controller.options import add_controller_options, controller_config
from callctl.controller.serve import install_stop_signals
from callctl.engine import protocol
from callctl.engine.control_client import ControlClient

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
POSTCALL_WAIT_S = 600.0
"""Longest wait for the voice clone after the call, in seconds (the upload has its own
timeouts; this only bounds the front end)."""
BAR_CELLS = 24


def _seconds(text: str) -> float:
    value = float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError("must be more than 0")
    return value


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="callctl call",
        description="Call a voice agent through your microphone and speaker. Press Enter or "
        "Ctrl-C to hang up; the agent's voice stops within one audio period.",
        epilog="examples:\n"
        "  callctl call                                  # the offline local agent\n"
        "  callctl call --agent AGENT_ID                 # an ElevenLabs agent "
        "(ELEVENLABS_API_KEY)\n"
        "  callctl call --device virtual --mic caller.wav --hangup-after 10\n"
        "  callctl call --clone-voice 'My voice'         # then clone your voice "
        "(ELEVENLABS_API_KEY)\n"
        "exit codes: 0 the call ended, 1 it failed (or the voice clone asked for did not "
        "happen), 2 bad usage",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    add_controller_options(p)
    p.add_argument("--hangup-after", type=_seconds, metavar="SECONDS",
                   help="hang up by itself this long after the call was requested")
    p.add_argument("--json", action="store_true",
                   help="print the call.ended event as JSON at the end (no status line)")
    return p


class Frontend(threading.Thread):
    """The terminal side of `callctl call`; talks to the controller only over ZeroMQ."""

    def __init__(self, endpoint: str, events: str, hangup_after: float | None, as_json: bool,
                 out: TextIO = sys.stdout, clone_voice: str | None = None) -> None:
        super().__init__(name="frontend", daemon=True)
        self.endpoint, self.events = endpoint, events
        self.hangup_after, self.as_json, self.out = hangup_after, as_json, out
        self.tty = out.isatty() and not as_json
        self.exit_code = EXIT_FAILED
        self.ended: dict[str, Any] | None = None
        self._hangup = threading.Event()
        self._state = "starting"
        self._levels: tuple[float | None, float | None] = (None, None)
        self._last_line = ""
        self._began = time.monotonic()
        self.clone_voice = clone_voice
        self.postcall: dict[str, Any] | None = None
        """The last ``postcall`` event of the call (with ``clone_voice``)."""
        self._stopped = threading.Event()

    def stop(self) -> None:
        """The controller has stopped (Ctrl-C): stop waiting for its events."""
        self._stopped.set()

    def run(self) -> None:
        ctx: zmq.Context = zmq.Context.instance()
        sub = ctx.socket(zmq.SUB)
        sub.setsockopt(zmq.LINGER, 0)
        sub.setsockopt(zmq.SUBSCRIBE, b"")
        sub.connect(self.events)
        control = ControlClient(self.endpoint, ctx)
        try:
            reply = control.request({"cmd": "call"}, timeout=10)
            if not reply.get("ok"):
                self._print(f"callctl call: {reply.get('error')}", err=True)
                return
            self._say(f"calling ({reply['call_id']}) — press Enter to hang up")
            if sys.stdin and not self.as_json:
                threading.Thread(target=self._read_enter, name="enter", daemon=True).start()
            self._loop(sub, control)
        except TimeoutError as exc:
            self._print(f"callctl call: {exc}", err=True)
        finally:
            try:
                if not self._stopped.is_set():
                    control.request({"cmd": "shutdown"}, timeout=1)
            except TimeoutError:
                pass
            control.close()
            sub.close(0)

    def _read_enter(self) -> None:
        try:
            line = sys.stdin.readline()
        except (OSError, ValueError):
            return
        if line:  # EOF (no terminal, CI) is not a hangup
            self._hangup.set()

    def _loop(self, sub: zmq.Socket, control: ControlClient) -> None:
        asked = False
        while True:
            due = self.hangup_after and time.monotonic() - self._began >= self.hangup_after
            if (self._hangup.is_set() or due) and not asked:
                asked = True
                self._say("hanging up ...")
                control.request({"cmd": "hangup"}, timeout=3)
            if not sub.poll(100):
                self._draw()
                continue
            topic, body = sub.recv_multipart()
            event = json.loads(body)
            name = topic.decode()
            if name == "state":
                self._state = event["state"]
                if self._state == "failed":
                    self._say(f"call failed: {event.get('reason')}")
                elif not self.tty:
                    self._say(f"state: {self._state}")
            elif name == "levels":
                self._levels = (event.get("in_dbfs"), event.get("out_dbfs"))
            elif name == "transcript":
                self._last_line = printable(f"{event['role']}: {event['text']}")
                if not self.tty:
                    self._say(self._last_line)
            elif name == "error":
                self._say(f"error: {printable(event.get('message'))}")
            elif name == "call.ended":
                self.ended = event
                self._report(event)
                failed = bool(event.get("errors")) and event.get("reason") != "hangup"
                self.exit_code = EXIT_FAILED if failed and self._state == "failed" else EXIT_OK
                if self.clone_voice:
                    final = self._await_postcall(sub, str(event.get("call_id")))
                    if final is None or final.get("stage") != "done":
                        self.exit_code = EXIT_FAILED
                return
            self._draw()

    def _await_postcall(self, sub: zmq.Socket, call_id: str) -> dict[str, Any] | None:
        """Follow the call's ``postcall`` events to the last one (bounded); None if the
        controller stopped or nothing final came in ``POSTCALL_WAIT_S``."""
        deadline = time.monotonic() + POSTCALL_WAIT_S
        shown_stage = None
        self._say(f"cloning the caller's voice as {self.clone_voice!r} …")
        while time.monotonic() < deadline and not self._stopped.is_set():
            if not sub.poll(100):
                continue
            topic, body = sub.recv_multipart()
            if topic.decode() != protocol.EVENT_POSTCALL:
                continue
            event = json.loads(body)
            if event.get("call_id") != call_id:
                continue
            self.postcall = event
            stage = event.get("stage")
            if stage in protocol.POSTCALL_FINAL_STAGES:
                self._postcall_result(event)
                return event
            if self.tty:
                self._draw_bar(event)
            elif stage != shown_stage and not self.as_json:
                self._say(f"  {stage}: {event.get('message')}")
            shown_stage = stage
        if self._stopped.is_set():
            self._say("voice clone interrupted (callctl call stopped)")
        else:
            self._say(f"no word on the voice clone after {POSTCALL_WAIT_S:.0f} s")
        return None

    def _draw_bar(self, event: dict[str, Any]) -> None:
        progress = event.get("progress")
        fraction = min(1.0, max(0.0, float(progress))) if isinstance(progress, (int, float)) \
            else 0.0
        filled = round(fraction * BAR_CELLS)
        bar = "█" * filled + "░" * (BAR_CELLS - filled)
        line = f"{event.get('stage', ''):<9} [{bar}] {fraction:4.0%}  {event.get('message', '')}"
        self.out.write("\r\x1b[K" + line[:120])
        self.out.flush()

    def _postcall_result(self, event: dict[str, Any]) -> None:
        if self.as_json:
            self._print(json.dumps(event))
            return
        stage = event.get("stage")
        if stage == "done" and event.get("voice_id"):
            if self.tty:
                self._draw_bar(event)
            self._say(f"voice id: {event['voice_id']}")
        elif stage == "done":
            self._say(str(event.get("message")))
        else:
            self._say(f"voice clone {stage}: {event.get('message')}")

    def _draw(self) -> None:
        if not self.tty:
            return
        seconds = int(time.monotonic() - self._began)
        mic, spk = (f"{v:5.0f}" if v is not None else "  -∞ " for v in self._levels)
        line = (f"● {self._state:<8} {seconds // 60:02d}:{seconds % 60:02d}  mic {mic} dBFS  "
                f"spk {spk} dBFS  {self._last_line}")
        self.out.write("\r\x1b[K" + line[:120])
        self.out.flush()

    def _say(self, text: str) -> None:
        if self.as_json:
            return
        if self.tty:
            self.out.write("\r\x1b[K")
        self._print(text)

    def _print(self, text: str, err: bool = False) -> None:
        print(text, file=sys.stderr if err else self.out, flush=True)

    def _report(self, event: dict[str, Any]) -> None:
        if self.as_json:
            self._print(json.dumps(event))
            return
        t = event.get("timings") or {}

        def ms(key: str) -> str:
            value = t.get(key)
            return "—" if value is None else f"{value:8.1f} ms"

        self._say(f"call ended ({event.get('reason')})")
        if event.get("recording"):
            self._print(f"  recording:               {event['recording']}")
        self._print(f"  hangup → audio silent    {ms('audio_silent_ms')}")
        self._print(f"  hangup → stream stopped  {ms('stream_stopped_ms')}")
        how = "killed" if t.get("agent_killed") else "exited"
        self._print(f"  hangup → agent {how:<9} {ms('agent_exited_ms')}")
        self._print(f"  total                    {ms('total_ms')}")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        config = controller_config(args)
        warning = endpoints.insecure_warning(config.endpoint, curve=config.curve_dir is not None)
        if warning:
            print(warning, file=sys.stderr, flush=True)
        controller = Controller(config)
    except (endpoints.EndpointError, ValueError, RuntimeError, OSError, zmq.ZMQError) as exc:
        print(f"callctl call: {exc}", file=sys.stderr)
        return EXIT_USAGE
    install_stop_signals(controller)
    frontend = Frontend(config.endpoint, controller.events_endpoint, args.hangup_after, args.json,
                        clone_voice=config.clone_voice)
    frontend.start()
    try:
        controller.run()
    except RuntimeError as exc:
        print(f"callctl call: {exc}", file=sys.stderr)
        return EXIT_FAILED
    frontend.stop()
    frontend.join(timeout=5)
    return frontend.exit_code
