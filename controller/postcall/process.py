"""The post-call process: one call's files and voice clone, then exit.

Spawned by ``PostcallRunner`` as ``python -m callctl.controller.postcall
--job FILE`` (``__main__``). ``main`` reads the job, lowers its priority,
reads the API key itself (never from the controller), and runs ``Postcall``;
``Reporter`` pushes its progress frames to the controller. SIGTERM cancels a
clone (the upload thread is abandoned) but lets the files be finished;
SIGINT is ignored (the controller owns Ctrl-C).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from callctl.controller.postcall.cloning import CloneError, clone_voice
from callctl.controller.postcall.files import (
    CALLER,
    FAILED_NOTE,
    JOB_FILE,
    RECORDING,
    RECORDING_WAIT_S,
    SUMMARY,
    SUMMARY_VERSION,
    TRANSCRIPT,
    iso,
    open_private,
    wait_for_recording,
    write_failure_note,
    write_json_atomic,
    write_wav,
)
from callctl.controller.postcall.trimming import Trimmed, min_speech_s, trim_caller
from callctl.engine import protocol

LOCAL_SERVICE_KEY = "callctl-local-agent-server"
"""What the local agent server is sent as the API key (it checks none)."""
HEARTBEAT_S = 0.25
"""Progress events while uploading, at most this far apart, in seconds."""


class Reporter:
    """Progress frames to the controller (PUSH; never blocks, drops if nobody listens)."""

    def __init__(self, endpoint: str | None, call_id: str, scrub: Callable[[str], str]) -> None:
        import zmq

        self._zmq = zmq
        self.call_id = call_id
        self.scrub = scrub
        self.progress = 0.0
        self._ctx = zmq.Context()
        self._sock = self._ctx.socket(zmq.PUSH)
        self._sock.setsockopt(zmq.LINGER, 1000)  # the last event still goes out at exit
        self._sock.setsockopt(zmq.SNDHWM, 100)
        if endpoint:
            self._sock.connect(endpoint)

    def __call__(self, stage: str, progress: float | None = None, message: str = "",
                 voice_id: str | None = None) -> None:
        if progress is not None:
            self.progress = max(0.0, min(1.0, progress))
        event = {"event": protocol.EVENT_POSTCALL, "t": time.monotonic(), "pid": os.getpid(),
                 "call_id": self.call_id, "stage": stage, "progress": round(self.progress, 3),
                 "message": self.scrub(message), "voice_id": voice_id}
        try:
            self._sock.send(protocol.encode(event), self._zmq.NOBLOCK)
        except self._zmq.ZMQError:
            pass

    def close(self) -> None:
        self._sock.close()
        self._ctx.term()


@dataclass
class Postcall:
    """One call's post-call work (see module docstring). ``run`` returns the exit status:
    0 done, 1 failed, 3 cancelled."""

    job: dict[str, Any]
    folder: Path
    report: Callable[..., None]
    cancelled: Callable[[], bool] = lambda: False
    api_key: str | None = field(default=None, repr=False)
    base_url: str | None = None
    summary: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def scrub(self, text: str) -> str:
        """``text`` with the API key masked (belt and braces: it should never be there)."""
        return text.replace(self.api_key, "***") if self.api_key else text

    def run(self) -> int:
        job = self.job
        name = job.get("clone_voice")
        self.report("saving", 0.0, "saving the call")
        self._write_transcript()
        self.summary = self._summary()
        self._save_summary()
        recording_path = Path(job["recording"]) if job.get("recording") else None
        if recording_path is not None:
            self.report("saving", 0.1, "waiting for the recording to be finalised")
            if not wait_for_recording(recording_path, job.get("audio_pid")):
                self.notes.append(f"the recording was still being written after "
                                  f"{RECORDING_WAIT_S:.0f} s; used what was there")
        self.report("trimming", 0.2, "finding the caller's speech")
        caller = self._make_caller_wav(recording_path)
        self._save_summary()
        if not name:
            return self._finish("done", f"call saved in {self.folder}")
        voice: dict[str, Any] = self.summary["voice"]
        if self.cancelled():
            return self._finish("cancelled", "voice clone cancelled before the upload")
        if not self.api_key:
            return self._finish("failed", "no ElevenLabs API key (set ELEVENLABS_API_KEY or "
                                "api_key in the config file): the voice was not cloned and "
                                "nothing was sent")
        if caller is None:
            return self._finish("failed", "no recording of the caller: the voice was not "
                                "cloned and nothing was sent")
        need = min_speech_s()
        if caller.speech_s < need:
            return self._finish("failed", f"only {caller.speech_s:.1f} s of the caller's speech "
                                f"(a voice clone needs {need:g} s): the voice was not cloned "
                                "and nothing was sent")
        voice["status"] = "cloning"
        voice["sent"] = True
        self._save_summary()
        return self._clone(name, self.folder / CALLER)

    def _clone(self, name: str, wav: Path) -> int:
        assert self.api_key is not None and self.base_url is not None
        self.report("cloning", 0.3, f"uploading {wav.stat().st_size // 1024} KiB to "
                    f"{self.base_url}")
        uploaded = [0.0]

        def on_read(done: int, total: int) -> None:
            uploaded[0] = done / total if total else 1.0

        outcome: dict[str, Any] = {}

        def work() -> None:
            try:
                outcome["voice_id"] = clone_voice(
                    name, wav, self.api_key or "", self.base_url or "",
                    f"Cloned by callctl from call {self.job['call_id']}", on_read)
            except CloneError as exc:
                outcome["error"] = str(exc)
            except Exception as exc:  # the SDK's own surprises, reported in one line
                outcome["error"] = f"voice clone failed: {type(exc).__name__}: {exc}"

        thread = threading.Thread(target=work, name="clone-upload", daemon=True)
        began = time.monotonic()
        thread.start()
        while thread.is_alive():
            thread.join(HEARTBEAT_S)
            if self.cancelled():
                # The upload thread is abandoned: the process exits without waiting for it.
                return self._finish("cancelled", "voice clone cancelled; if the upload had "
                                    "already reached ElevenLabs the voice may still appear "
                                    "in your voice library")
            if not thread.is_alive():
                break
            if uploaded[0] < 1.0:
                self.report("cloning", 0.3 + 0.5 * uploaded[0],
                            f"uploading the caller's voice ({uploaded[0]:.0%})")
            else:
                waited = time.monotonic() - began
                self.report("cloning", 0.8 + 0.15 * (1 - math.exp(-waited / 10)),
                            "waiting for ElevenLabs to make the voice")
        if "voice_id" in outcome:
            voice_id = str(outcome["voice_id"])
            self.summary["voice"].update(voice_id=voice_id)
            self.summary["voice_id"] = voice_id
            return self._finish("done", f"voice {name!r} cloned: {voice_id}", voice_id)
        return self._finish("failed", str(outcome.get("error", "voice clone failed")))

    def _finish(self, stage: str, message: str, voice_id: str | None = None) -> int:
        message = self.scrub(message)
        voice = self.summary.get("voice")
        if isinstance(voice, dict):
            voice.update(status=stage, message=message)
        self.summary["postcall"].update(finished_at=iso(time.time()), stage=stage,
                                        notes=self.notes)
        self._save_summary()
        (self.folder / JOB_FILE).unlink(missing_ok=True)
        if stage == "failed":
            write_failure_note(self.folder, message)
        else:
            (self.folder / FAILED_NOTE).unlink(missing_ok=True)
        self.report(stage, 1.0 if stage == "done" else None, message, voice_id)
        return {"done": 0, "failed": 1, "cancelled": 3}[stage]

    # -- the files ----------------------------------------------------------------

    def _wall(self, monotonic: float | None) -> float | None:
        job = self.job
        if monotonic is None or job.get("requested_at") is None:
            return None
        return float(job["started_unix"]) + (float(monotonic) - float(job["requested_at"]))

    def _write_transcript(self) -> None:
        requested = self.job.get("requested_at")
        tmp = self.folder / f".{TRANSCRIPT}.tmp"
        with open_private(tmp) as out:
            for line in self.job.get("transcript") or []:
                t = line.get("t")
                record = {
                    "offset_s": round(t - requested, 3) if isinstance(t, (int, float))
                    and isinstance(requested, (int, float)) else None,
                    "at": iso(self._wall(t)) if isinstance(t, (int, float)) else None,
                    "role": line.get("role"),
                    "text": line.get("text", ""),
                }
                out.write(json.dumps(record, ensure_ascii=False) + "\n")
        os.replace(tmp, self.folder / TRANSCRIPT)

    def _summary(self) -> dict[str, Any]:
        job = self.job
        requested, hangup = job.get("requested_at"), job.get("hangup_at")
        connected = job.get("connected_at")
        transcript = job.get("transcript") or []
        name = job.get("clone_voice")
        return {
            "version": SUMMARY_VERSION,
            "call_id": job["call_id"],
            "agent": job.get("agent"),
            "conversation_id": job.get("conversation_id"),
            "started_at": iso(job.get("started_unix")),
            "ended_at": iso(self._wall(hangup)),
            "duration_s": round(hangup - requested, 3) if hangup and requested else None,
            "connect_ms": round((connected - requested) * 1000, 1)
            if connected and requested else None,
            "end_reason": job.get("end_reason"),
            "failed": bool(job.get("failed")),
            "timings": job.get("timings"),
            "xruns": job.get("xruns"),
            "errors": [self.scrub(str(e)) for e in job.get("errors") or []],
            "files": {"recording": RECORDING if job.get("recording") else None,
                      "caller": None, "transcript": TRANSCRIPT},
            "recording": None,
            "caller": None,
            "transcript": {"lines": len(transcript),
                           "agent": sum(1 for x in transcript if x.get("role") == "agent"),
                           "caller": sum(1 for x in transcript if x.get("role") == "caller")},
            "voice": {"name": name, "status": "pending", "voice_id": None, "message": None,
                      "sent": False} if name else None,
            "voice_id": None,
            "postcall": {"pid": os.getpid(), "started_at": iso(time.time()),
                         "finished_at": None, "stage": None, "notes": self.notes},
        }

    def _save_summary(self) -> None:
        write_json_atomic(self.folder / SUMMARY, self.summary)

    def _make_caller_wav(self, recording: Path | None) -> Trimmed | None:
        from callctl.engine.wavfile import WavFormatError, read_wav

        if recording is None:
            return None
        try:
            frames, rate = read_wav(recording)
        except WavFormatError as exc:
            self.notes.append(str(exc))
            return None
        self.summary["recording"] = {"duration_s": round(len(frames) / rate, 3),
                                     "channels": int(frames.shape[1]), "rate": rate}
        trimmed = trim_caller(frames, rate)
        write_wav(self.folder / CALLER, trimmed.audio, rate)
        self.summary["files"]["caller"] = CALLER
        self.summary["caller"] = {"speech_s": trimmed.speech_s,
                                  "duration_s": round(len(trimmed.audio) / rate, 3),
                                  "pieces": len(trimmed.pieces), "gain_db": trimmed.gain_db}
        self.report("trimming", 0.3, f"{trimmed.speech_s:.1f} s of the caller's speech")
        return trimmed


def main(argv: list[str] | None = None) -> int:
    """``python -m callctl.controller.postcall --job FILE``: 0 done, 1 failed, 2 bad job,
    3 cancelled."""
    parser = argparse.ArgumentParser(prog="python -m callctl.controller.postcall",
                                     description="callctl's post-call work (spawned by the "
                                     "controller at the end of each call).")
    parser.add_argument("--job", required=True, type=Path, help="the controller's job file")
    args = parser.parse_args(argv)
    state = {"cancelled": False}

    def on_sigterm(signum: int, frame: object) -> None:
        state["cancelled"] = True

    signal.signal(signal.SIGTERM, on_sigterm)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        os.nice(10)  # after the call, never ahead of the next one
    except OSError:
        pass
    try:
        job = json.loads(args.job.read_text())
        call_id = str(job["call_id"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        print(f"postcall: cannot read {args.job}: {exc}", file=sys.stderr)
        return 2
    from callctl.engine.credentials import ConfigError, load_credentials

    api_key, base_url, notes = None, job.get("base_url"), []
    try:
        credentials = load_credentials(Path(job["config_path"]) if job.get("config_path")
                                       else None, base_url=base_url)
        api_key, base_url = credentials.api_key, credentials.base_url
    except ConfigError as exc:
        notes.append(str(exc))
    if api_key and job.get("local_service"):
        # The offline agent server stands in for ElevenLabs: it gets a stand-in key,
        # never the user's.
        api_key = LOCAL_SERVICE_KEY
    work = Postcall(job, args.job.parent, lambda *a, **k: None,
                    cancelled=lambda: state["cancelled"], api_key=api_key, base_url=base_url,
                    notes=notes)
    reporter = Reporter(job.get("events"), call_id, work.scrub)
    work.report = reporter
    try:
        return work.run()
    except Exception as exc:  # a bug or a full disk: say so once, in one line
        message = work.scrub(f"post-call work failed: {type(exc).__name__}: {exc}")
        try:
            work._finish("failed", message)
        except Exception:
            write_failure_note(args.job.parent, message)
            reporter("failed", None, message)
        raise
    finally:
        reporter.close()
