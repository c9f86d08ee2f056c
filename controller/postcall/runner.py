"""The controller's side of the post-call work: one post-call process per ended call.

Runs in the controller's loop thread, and nothing here blocks: at the end of
a call ``PostcallRunner.spawn`` writes a small job file and spawns the
post-call process (``engine.child``: a fork and an exec, a few milliseconds),
passing it the call folder's claim; ``on_event`` republishes its progress;
``cancel`` sends it SIGTERM to cancel a clone; ``resume`` takes up what a
dead controller left.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from callctl.controller.postcall.files import (
    FAILED_NOTE,
    JOB_FILE,
    SUMMARY,
    SUMMARY_VERSION,
    claim_call_folder,
    make_call_folder,
    open_private,
    read_failure_note,
    release_claim,
    write_failure_note,
)
from callctl.engine import child, protocol

if TYPE_CHECKING:
    from callctl.controller.call import Call

STAGES = protocol.POSTCALL_STAGES
FINAL_STAGES = protocol.POSTCALL_FINAL_STAGES


@dataclass
class _Running:
    process: child.Child
    call_id: str
    clone: bool
    stage: str = "saving"
    folder: Path | None = None


class PostcallRunner:
    """The controller's side: one post-call process per ended call.

    ``spawn`` hands a call over; ``on_event`` turns the process's progress
    frames into public ``postcall`` events; ``cancel`` stops a voice clone.
    Loop thread only; every method returns in microseconds to milliseconds.
    """

    def __init__(self, events_endpoint: str, stderr: IO[Any] | None = None,
                 config_path: str | None = None) -> None:
        """``events_endpoint``: the controller's PULL socket, where the process pushes progress."""
        self.events_endpoint = events_endpoint
        self.stderr = stderr
        self.config_path = config_path
        self._running: dict[int, _Running] = {}
        self._xruns_base: tuple[int, dict[str, int]] | None = None
        self._failures: list[dict[str, Any]] = []

    def spawn(self, call: Call, *, failed: bool, base_url: str | None, audio_pid: int | None,
              audio_status: dict[str, Any] | None) -> int | None:
        """Start the post-call work of ``call`` (ended); returns the process id, None if it
        could not be started (the reason is in ``call.errors``).

        ``base_url``: where a voice clone goes (None: the configured service);
        ``audio_pid``: the audio process, which finalises the recording;
        ``audio_status``: its ``status`` reply after the call (for the xruns).
        """
        self.reap()
        xruns = self._call_xruns(audio_pid, audio_status) if call.audio_started else None
        job = {
            "version": SUMMARY_VERSION,
            "events": self.events_endpoint,
            "config_path": self.config_path,
            "call_id": call.call_id,
            "agent": call.agent,
            "conversation_id": call.conversation_id,
            "clone_voice": call.clone_voice,
            "base_url": base_url,
            "local_service": call.agent == "local",
            "started_unix": call.started_wall,
            "requested_at": call.requested_at,
            "connected_at": call.connected_at,
            "hangup_at": call.hangup_at,
            "end_reason": call.end_reason,
            "failed": failed,
            "timings": call.timings(),
            "errors": list(call.errors),
            "transcript": list(call.transcript),
            "recording": str(call.recording) if call.audio_started else None,
            "audio_pid": audio_pid,
            "xruns": xruns,
        }
        try:
            make_call_folder(call.record_dir)
            path = call.record_dir / JOB_FILE
            with open_private(path) as out:
                out.write(json.dumps(job))
            return self._start(path, call.call_id, bool(call.clone_voice), call.claim)
        except Exception as exc:  # never take the controller's loop down with it
            message = f"post-call work not started: {type(exc).__name__}: {exc}"
            call.errors.append(message)
            self._failed(call.record_dir, call.call_id, message)
            return None

    def _start(self, job_path: Path, call_id: str, clone: bool, claim: int | None) -> int:
        """Start the post-call process on ``job_path``; it inherits ``claim`` (the call
        folder's lock, ``claim_call_folder``), which the caller then releases."""
        process = child.spawn(
            [sys.executable, "-m", "callctl.controller.postcall", "--job", str(job_path)],
            stdout=subprocess.DEVNULL, stderr=self.stderr, env=dict(os.environ),
            start_new_session=True, pass_fds=() if claim is None else (claim,))
        self._running[process.pid] = _Running(process, call_id, clone, folder=job_path.parent)
        return process.pid

    def resume(self, record_dir: Path) -> list[str]:
        """At start: the calls a controller that died left unfinished (a job file and no
        summary) get their post-call work again, or, when their job cannot be read, are
        marked failed (``FAILED_NOTE``). Returns their call ids."""
        resumed: list[str] = []
        if not record_dir.is_dir():
            return resumed
        for folder in sorted(record_dir.iterdir()):
            job_path = folder / JOB_FILE
            in_call = (folder / FAILED_NOTE).is_file() and not job_path.exists()
            if not (job_path.is_file() or in_call) or (folder / SUMMARY).exists() \
                    or read_failure_note(folder):
                continue
            try:
                claim = claim_call_folder(folder)
            except OSError:
                continue  # not ours to touch (another user's, a read-only disk)
            if claim is None:
                continue  # a live controller or post-call process is working on it
            resumed.append(folder.name)
            try:
                if in_call:
                    self._failed(folder, folder.name, "the controller stopped during the "
                                 "call; the call was not saved (its recording, if any, is "
                                 "left as it was)")
                    continue
                job = json.loads(job_path.read_text())
                if not isinstance(job, dict):
                    raise ValueError("not an object")
                job["audio_pid"] = None  # that audio process is gone: its file is final
                job["events"] = self.events_endpoint
                job["clone_voice"] = None  # nobody waits for it now; cloning is asked anew
                with open_private(job_path) as out:
                    out.write(json.dumps(job))
                self._start(job_path, folder.name, False, claim)
            except Exception as exc:
                self._failed(folder, folder.name, "post-call work did not finish before the "
                             f"controller stopped, and cannot be resumed: {exc}")
            finally:
                release_claim(claim)
        return resumed

    def _failed(self, folder: Path | None, call_id: str, message: str) -> None:
        """Post-call work that failed outside its process: an event to publish
        (``take_failures``) and, if the disk lets us, the note in the call folder."""
        self._failures.append({"call_id": call_id, "stage": "failed", "progress": None,
                               "message": message, "voice_id": None})
        if folder is not None:
            write_failure_note(folder, message)  # a full disk: its space was reserved

    def take_failures(self) -> list[dict[str, Any]]:
        """``postcall`` event fields of failures since the last call (loop thread)."""
        self.reap()
        failures, self._failures = self._failures, []
        return failures

    def _call_xruns(self, pid: int | None,
                    status: dict[str, Any] | None) -> dict[str, int] | None:
        """This call's xruns: the audio process's counters now, less those at the end of the
        previous call of the same audio process (its stream is stopped in between)."""
        counters = status.get("xruns") if status and status.get("ok") else None
        if pid is None or not isinstance(counters, dict):
            return None
        now = {k: int(v) for k, v in counters.items() if isinstance(v, (int, float))}
        base = self._xruns_base[1] if self._xruns_base and self._xruns_base[0] == pid else {}
        self._xruns_base = (pid, now)
        return {k: v - base.get(k, 0) for k, v in now.items()}

    def on_event(self, event: dict[str, Any]) -> dict[str, Any] | None:
        """The public ``postcall`` event's fields for a frame from one of our processes,
        else None (a stale or foreign frame)."""
        pid = event.get("pid")
        run = self._running.get(pid) if isinstance(pid, int) else None
        stage = event.get("stage")
        if run is None or stage not in STAGES:
            return None
        run.stage = str(stage)
        progress = event.get("progress")
        voice_id = event.get("voice_id")
        public = {
            "call_id": run.call_id,
            "stage": run.stage,
            "progress": min(1.0, max(0.0, float(progress)))
            if isinstance(progress, (int, float)) else None,
            "message": str(event.get("message") or ""),
            "voice_id": voice_id if isinstance(voice_id, str) else None,
        }
        if run.stage in FINAL_STAGES:
            self.reap()
        return public

    def cancel(self, call: Call | None) -> dict[str, Any]:
        """``cancel_clone``: SIGTERM to the newest post-call process still cloning; else drop
        the clone asked for by ``call`` (still in progress); else an error reply."""
        for _pid, run in sorted(self._running.items(), reverse=True):
            if run.clone and run.stage not in FINAL_STAGES and run.process.poll() is None:
                if not run.process.send_signal(signal.SIGTERM):
                    continue
                return protocol.ok(call_id=run.call_id)
        if call is not None and call.hangup_at is None and call.clone_voice:
            call.clone_voice = None
            return protocol.ok(call_id=call.call_id, before_upload=True)
        return protocol.error(protocol.NO_CLONE, "no voice clone in progress")

    def reap(self) -> None:
        """Forget the processes that have exited (never waits); one that exited before its
        final stage (a full disk, a crash, a job it could not read) is a failure."""
        for pid, run in list(self._running.items()):
            code = run.process.poll()
            if code is not None:
                run.process.close()
                del self._running[pid]
                if run.stage not in FINAL_STAGES:
                    self._failed(run.folder, run.call_id, "post-call work stopped before "
                                 f"finishing (exit {code}) at stage {run.stage!r}")

    @property
    def running(self) -> list[int]:
        """Process ids of post-call processes not yet reaped."""
        return list(self._running)
