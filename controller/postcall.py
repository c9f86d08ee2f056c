"""After the call: the call folder, the caller's voice and the voice clone, in a process of its own.

Nothing here runs in the controller's loop thread except ``PostcallRunner``'s
bookkeeping: at the end of a call the controller writes a small job file and
spawns ``python -m callctl.controller.postcall --job FILE`` (a fork and an exec, a
few milliseconds), republishes the process's progress events, and sends it
SIGTERM to cancel a clone. The process lowers its priority, so it never
competes with the audio of the next call.

The call folder, ``<record_dir>/<call_id>/``:

``recording.wav``
    Both sides, stereo 16-bit 16 kHz, as recorded by the audio process (left:
    the microphone, right: what the speaker played). The audio process
    finalises it in the background after the hangup; the post-call process
    waits (at most ``RECORDING_WAIT_S``) until no descriptor of the audio
    process holds it open.
``caller.wav``
    The caller's channel alone, mono: silence and anything said while the
    agent was speaking (and its echo tail) left out, the pieces joined by
    short gaps, the peak normalised to ``PEAK_DBFS``. What a voice clone gets.
``transcript.jsonl``
    One JSON object a line: ``offset_s`` (seconds since the call was
    requested), ``at`` (wall time, ISO 8601), ``role`` (``agent`` or
    ``caller``), ``text``.
``summary.json``
    The call: agent, start and end times, duration, end reason, hangup
    timings, xruns, errors, the recording's and the caller's seconds, and
    the voice clone (``voice``: name, status, voice id, message; ``voice_id``
    at the top level). Rewritten atomically as the work goes on.

Progress goes to the controller as single JSON frames
``{"event": "postcall", "pid", "t", "call_id", "stage", "progress", "message",
"voice_id"}`` on its agent-events PULL socket; the controller republishes
them as the public ``postcall`` event. Stages: ``saving`` → ``trimming`` →
(``cloning``) → ``done``, or ``failed`` / ``cancelled``; exactly one of the
last three ends every run.

The voice clone (Instant Voice Cloning through the elevenlabs SDK) is made
only when a name was asked for, an API key is configured (read here from the
environment or the config file, never from the controller) and the caller
spoke for at least ``CALLCTL_CLONE_MIN_SPEECH_S`` seconds (default 10);
otherwise nothing is sent and the message says why. SIGTERM cancels a clone
(the upload is abandoned at once) but lets the files be finished; SIGINT is
ignored (the controller owns Ctrl-C).
"""

from __future__ import annotations

import argparse
import fcntl
import json
import math
import os
import signal
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import numpy as np

from callctl.engine import lifeline, protocol

if TYPE_CHECKING:
    from callctl.controller.call import Call

JOB_FILE = ".postcall-job.json"
"""The controller's hand-over to the post-call process, in the call folder; removed when done."""
RECORDING = "recording.wav"
CALLER = "caller.wav"
TRANSCRIPT = "transcript.jsonl"
SUMMARY = "summary.json"
FAILED_NOTE = "postcall-failed.txt"
"""Why the post-call work could not run or did not finish, one line; `callctl calls`
shows it. Its space is reserved when the call starts (``reserve_failure_note``:
``NOTE_BYTES`` of NULs), so the note can be written on a disk that filled up
during the call; the post-call work removes it when it has finished."""
NOTE_BYTES = 512
LOCAL_SERVICE_KEY = "callctl-local-agent-server"
"""What the local agent server is sent as the API key (it checks none)."""
SUMMARY_VERSION = 1

MIN_SPEECH_ENV = "CALLCTL_CLONE_MIN_SPEECH_S"
DEFAULT_MIN_SPEECH_S = 10.0
"""Seconds of the caller's trimmed speech a clone needs, unless ``$CALLCTL_CLONE_MIN_SPEECH_S``."""
RECORDING_WAIT_S = 10.0
"""Longest wait for the audio process to finalise the recording, in seconds."""
CLONE_TIMEOUT_S = 120.0
"""The SDK's HTTP timeout for the upload, in seconds."""
MAX_CLONE_AUDIO_S = 300.0
"""At most this much of ``caller.wav`` (from its start) is uploaded, in seconds: Instant
Voice Cloning gains nothing from more than a few minutes."""
HEARTBEAT_S = 0.25
"""Progress events while uploading, at most this far apart, in seconds."""

RATE = 16_000
FRAME_S = 0.02
"""Analysis frame of the trimming, in seconds."""
SPEECH_FLOOR_DBFS = -50.0
"""A frame of the caller's channel (RMS) is speech above the threshold: the noise floor (the
20th percentile of the frames) + ``ABOVE_NOISE_DB``, kept within [this, ``SPEECH_CEILING_DBFS``]."""
ABOVE_NOISE_DB = 12.0
SPEECH_CEILING_DBFS = -30.0
"""The threshold never goes above this (a recording that is mostly speech has no floor)."""
AGENT_DBFS = -50.0
"""A frame of the speaker channel above this (RMS, dBFS) is the agent speaking."""
ECHO_TAIL_S = 0.3
"""After the agent's audio, this long of the microphone is left out (room echo)."""
GAP_FILL_S = 0.3
"""Pauses this short inside speech are kept as speech."""
MIN_SPEECH_RUN_S = 0.1
"""Voiced runs shorter than this are clicks, not speech."""
PAD_S = 0.1
"""Kept around each piece of speech, in seconds (not into the agent's turns)."""
JOIN_SILENCE_S = 0.25
"""Silence put between the pieces in ``caller.wav``, in seconds."""
PEAK_DBFS = -3.0
"""Peak of the normalised ``caller.wav``."""
MAX_GAIN_DB = 30.0
FADE_S = 0.005
"""Fade in and out of each piece, so the joins do not click."""

STAGES = protocol.POSTCALL_STAGES
FINAL_STAGES = protocol.POSTCALL_FINAL_STAGES


# =============================================================================
# The controller's side (runs in the controller's loop thread: nothing blocks)
# =============================================================================


def _child_env() -> dict[str, str]:
    return dict(os.environ)


@dataclass
class _Running:
    popen: subprocess.Popen[bytes]
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
        popen = lifeline.spawn(
            [sys.executable, "-m", "callctl.controller.postcall", "--job", str(job_path)],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=self.stderr,
            env=_child_env(), start_new_session=True,
            pass_fds=() if claim is None else (claim,))
        self._running[popen.pid] = _Running(popen, call_id, clone, folder=job_path.parent)
        return popen.pid

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
        for pid, run in sorted(self._running.items(), reverse=True):
            if run.clone and run.stage not in FINAL_STAGES and run.popen.poll() is None:
                try:
                    os.kill(pid, signal.SIGTERM)
                except ProcessLookupError:
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
            code = run.popen.poll()
            if code is not None:
                del self._running[pid]
                if run.stage not in FINAL_STAGES:
                    self._failed(run.folder, run.call_id, "post-call work stopped before "
                                 f"finishing (exit {code}) at stage {run.stage!r}")

    @property
    def running(self) -> list[int]:
        """Process ids of post-call processes not yet reaped."""
        return list(self._running)


# =============================================================================
# The caller's voice: pure functions
# =============================================================================


@dataclass(frozen=True)
class Trimmed:
    """The caller's speech cut out of a recording."""

    audio: np.ndarray
    """int16 mono: the pieces of speech, joined by ``JOIN_SILENCE_S`` of silence, normalised."""
    speech_s: float
    """Seconds of speech found (without the padding and the joins)."""
    pieces: list[tuple[float, float]]
    """(start, end) of each piece in the recording, seconds."""
    gain_db: float


def _runs(mask: np.ndarray) -> list[tuple[int, int]]:
    """[start, end) of each run of True in a 1-D boolean array."""
    edges = np.diff(np.concatenate([[0], mask.astype(np.int8), [0]]))
    return list(zip(np.flatnonzero(edges == 1).tolist(), np.flatnonzero(edges == -1).tolist(),
                    strict=True))


def _frame_dbfs(samples: np.ndarray, hop: int, block_frames: int = 3000) -> np.ndarray:
    """RMS of each ``hop``-sample frame in dBFS (-inf for digital silence), in blocks so a
    long call needs little memory."""
    n = len(samples) // hop
    out = np.empty(n)
    for first in range(0, n, block_frames):
        last = min(n, first + block_frames)
        frames = samples[first * hop : last * hop].astype(np.float64).reshape(-1, hop)
        out[first:last] = np.sqrt(np.mean(frames * frames, axis=1))
    with np.errstate(divide="ignore"):
        return np.asarray(20 * np.log10(out / 32768.0))


def trim_caller(recording: np.ndarray, rate: int = RATE) -> Trimmed:
    """The caller's speech from a call recording: int16 frames ``(n, 2)`` (left: microphone,
    right: speaker) or ``(n, 1)``/``(n,)`` (microphone only).

    A frame (``FRAME_S``) is speech when the microphone is above the threshold
    (see ``SPEECH_FLOOR_DBFS``) and the agent has not been playing within
    ``ECHO_TAIL_S``; pauses up to ``GAP_FILL_S``
    are bridged and runs under ``MIN_SPEECH_RUN_S`` dropped. Each piece keeps
    ``PAD_S`` either side, fades in and out, and the whole is normalised to a
    ``PEAK_DBFS`` peak (at most ``MAX_GAIN_DB`` of gain).
    """
    frames = recording.reshape(len(recording), -1)
    mic = frames[:, 0]
    hop = max(1, round(FRAME_S * rate))
    mic_db = _frame_dbfs(mic, hop)
    n = len(mic_db)
    if n == 0:
        return Trimmed(np.zeros(0, np.int16), 0.0, [], 0.0)
    if frames.shape[1] > 1:
        agent = _frame_dbfs(frames[:, 1], hop) > AGENT_DBFS
        tail = round(ECHO_TAIL_S / FRAME_S)
        # Frame i is the agent's if it played in frames i-tail-1 .. i+1.
        window = np.convolve(agent.astype(np.int32), np.ones(tail + 3, np.int32))
        agent_zone = window[1 : n + 1] > 0
    else:
        agent_zone = np.zeros(n, bool)
    free = mic_db[~agent_zone]
    finite = free[np.isfinite(free)]
    floor = float(np.percentile(finite, 20)) if len(finite) else -math.inf
    threshold = max(SPEECH_FLOOR_DBFS, min(floor + ABOVE_NOISE_DB, SPEECH_CEILING_DBFS))
    voiced = (mic_db > threshold) & ~agent_zone
    runs = _runs(voiced)
    gap = round(GAP_FILL_S / FRAME_S)
    for (_, end), (start, _) in zip(runs, runs[1:], strict=False):
        if start - end <= gap and not agent_zone[end:start].any():
            voiced[end:start] = True
    shortest = max(1, round(MIN_SPEECH_RUN_S / FRAME_S))
    for start, end in _runs(voiced):
        if end - start < shortest:
            voiced[start:end] = False
    speech_s = float(voiced.sum()) * hop / rate
    pad = round(PAD_S / FRAME_S)
    padded = voiced.copy()
    for start, end in _runs(voiced):
        padded[max(0, start - pad) : min(n, end + pad)] = True
    padded &= ~agent_zone
    pieces_idx = _runs(padded)
    fade = max(1, round(FADE_S * rate))
    ramp = np.linspace(0.0, 1.0, fade, endpoint=False, dtype=np.float32)
    join = np.zeros(round(JOIN_SILENCE_S * rate), np.float32)
    parts: list[np.ndarray] = []
    for start, end in pieces_idx:
        piece = mic[start * hop : end * hop].astype(np.float32)
        piece = piece - piece.mean()
        k = min(fade, len(piece) // 2)
        piece[:k] *= ramp[:k]
        piece[len(piece) - k :] *= ramp[:k][::-1]
        if parts:
            parts.append(join)
        parts.append(piece)
    if not parts:
        return Trimmed(np.zeros(0, np.int16), 0.0, [], 0.0)
    audio = np.concatenate(parts)
    peak = float(np.abs(audio).max())
    gain = min(10 ** (PEAK_DBFS / 20) * 32767 / peak, 10 ** (MAX_GAIN_DB / 20)) if peak else 1.0
    out = np.clip(np.rint(audio * gain), -32768, 32767).astype(np.int16)
    seconds = [(s * hop / rate, e * hop / rate) for s, e in pieces_idx]
    return Trimmed(out, round(speech_s, 3), seconds, round(20 * math.log10(gain), 2))


def min_speech_s() -> float:
    """Seconds of trimmed speech a clone needs: ``$CALLCTL_CLONE_MIN_SPEECH_S``, else 10."""
    try:
        value = float(os.environ.get(MIN_SPEECH_ENV, DEFAULT_MIN_SPEECH_S))
    except ValueError:
        return DEFAULT_MIN_SPEECH_S
    return value if value >= 0 and math.isfinite(value) else DEFAULT_MIN_SPEECH_S


# =============================================================================
# The files
# =============================================================================


def iso(unix: float | None) -> str | None:
    """Local wall time, ISO 8601 with the UTC offset, to the millisecond."""
    if unix is None:
        return None
    return datetime.fromtimestamp(unix, tz=UTC).astimezone().isoformat(
        timespec="milliseconds")


def make_call_folder(folder: Path) -> None:
    """Create a call folder 0700, and its record directory 0700 when this creates it;
    tighten either to 0700 if it exists wider (they hold people's voices and words).
    Raises ``OSError`` if it cannot be created."""
    parent = folder.parent
    if not parent.exists():
        parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    for path in (parent, folder):
        try:
            path.mkdir(mode=0o700)
        except FileExistsError:
            pass
        info = path.stat()
        if stat.S_IMODE(info.st_mode) != 0o700 and info.st_uid == os.getuid():
            os.chmod(path, 0o700)


def reserve_failure_note(folder: Path) -> int | None:
    """At the call's start: ``FAILED_NOTE`` filled with NULs, its blocks taken now, and
    the folder claimed (``claim_call_folder``) before anything is written. Returns the
    claim's descriptor (the caller owns it), None if another process holds it. Raises
    ``OSError`` (a full disk, a folder not ours): the call cannot start."""
    fd = claim_call_folder(folder)
    if fd is None:
        return None
    try:
        os.ftruncate(fd, 0)
        os.write(fd, b"\0" * NOTE_BYTES)
        os.fsync(fd)
    except OSError:
        os.close(fd)
        raise
    return fd


def claim_call_folder(folder: Path) -> int | None:
    """An exclusive ``flock`` on the call folder's ``FAILED_NOTE``: whoever holds it is
    working on the call (the controller during the call, then its post-call process,
    which inherits the descriptor). Returns the descriptor (the caller owns it: closing
    it, or dying, releases the claim), or None when a live process holds the claim.
    Raises ``OSError`` when the note cannot be opened."""
    fd = os.open(folder / FAILED_NOTE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    except OSError:
        os.close(fd)
        raise
    return fd


def release_claim(fd: int | None) -> None:
    """Close a descriptor from ``claim_call_folder`` (None: nothing to do)."""
    if fd is not None:
        try:
            os.close(fd)
        except OSError:
            pass


def write_failure_note(folder: Path, message: str) -> bool:
    """Write ``message`` over the reserved note, in place (no new block); False if even that
    failed."""
    data = (message.replace("\n", " ")[: NOTE_BYTES - 1] + "\n").encode(errors="replace")
    data = data[:NOTE_BYTES].ljust(NOTE_BYTES, b"\0")
    try:
        fd = os.open(folder / FAILED_NOTE, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            os.write(fd, data)
        finally:
            os.close(fd)
        return True
    except OSError:
        return False


def read_failure_note(folder: Path) -> str | None:
    """The note's text; None when there is none (or only the reservation)."""
    try:
        text = (folder / FAILED_NOTE).read_bytes().rstrip(b"\0").decode(errors="replace")
    except OSError:
        return None
    return text.strip() or None


def open_private(path: Path, binary: bool = False) -> IO[Any]:
    """Open ``path`` for writing (truncated), created 0600: never readable by others,
    not even for a moment (a leftover file is narrowed to 0600 before it is written)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        os.fchmod(fd, 0o600)
        return os.fdopen(fd, "wb" if binary else "w", encoding=None if binary else "utf-8")
    except BaseException:
        os.close(fd)
        raise


def write_json_atomic(path: Path, value: Any) -> None:
    """Write ``value`` as JSON so a reader sees the old file or the new one, never half.
    The file is 0600."""
    tmp = path.with_name(f".{path.name}.tmp")
    with open_private(tmp) as out:
        out.write(json.dumps(value, indent=2) + "\n")
    os.replace(tmp, path)


def write_wav(path: Path, samples: np.ndarray, rate: int = RATE) -> None:
    """int16 mono samples to a 16-bit PCM WAV (atomically, 0600)."""
    import wave

    tmp = path.with_name(f".{path.name}.tmp")
    with open_private(tmp, binary=True) as f, wave.open(f, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(np.ascontiguousarray(samples, dtype="<i2").tobytes())
    os.replace(tmp, path)


def held_open_by(path: Path, pid: int) -> bool | None:
    """Whether process ``pid`` has ``path`` open (Linux ``/proc``); None if that cannot be told.

    A process that has exited holds nothing.
    """
    fd_dir = Path(f"/proc/{pid}/fd")
    try:
        entries = os.listdir(fd_dir)
    except FileNotFoundError:
        return False
    except OSError:
        return None
    target = os.path.realpath(path)
    for entry in entries:
        try:
            if os.readlink(fd_dir / entry) == target:
                return True
        except OSError:
            continue
    return False


def wait_for_recording(path: Path, writer_pid: int | None, timeout: float = RECORDING_WAIT_S,
                       poll_s: float = 0.05, stable_s: float = 0.75) -> bool:
    """Wait (at most ``timeout`` s) until the recording is finalised: the audio process
    ``writer_pid`` no longer holds it open, or — when that cannot be told — its size has
    not changed for ``stable_s``. Returns False on timeout (the file is still a valid,
    possibly shorter WAV: its header is kept true after every write)."""
    deadline = time.monotonic() + timeout
    last_size, since = -1, time.monotonic()
    while True:
        if path.exists():
            held = held_open_by(path, writer_pid) if writer_pid else None
            if held is False:
                return True
            if held is None:
                size = path.stat().st_size
                if size != last_size:
                    last_size, since = size, time.monotonic()
                elif time.monotonic() - since >= stable_s:
                    return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(poll_s)


# =============================================================================
# The voice clone
# =============================================================================


class _CountingReader:
    """A binary file that reports how much of it has been read (the upload's progress)."""

    def __init__(self, handle: IO[bytes], total: int,
                 on_read: Callable[[int, int], None]) -> None:
        self._handle = handle
        self._on_read = on_read
        self.total = total
        self.done = 0

    def read(self, size: int = -1) -> bytes:
        data = self._handle.read(size)
        self.done += len(data)
        self._on_read(self.done, self.total)
        return data

    def seek(self, offset: int, whence: int = 0) -> int:
        position = self._handle.seek(offset, whence)
        self.done = position
        return position

    def tell(self) -> int:
        return self._handle.tell()


def clone_sample(wav: Path, max_s: float = MAX_CLONE_AUDIO_S) -> tuple[IO[bytes], int]:
    """What is uploaded: ``wav`` itself, or its first ``max_s`` seconds (a WAV in memory).
    Returns an open binary file and its size in bytes."""
    import io
    import wave

    with wave.open(str(wav), "rb") as w:
        rate, frames = w.getframerate(), w.getnframes()
        if frames <= max_s * rate:
            handle = open(wav, "rb")  # noqa: SIM115 - the caller closes it
            return handle, os.fstat(handle.fileno()).st_size
        params, data = w.getparams(), w.readframes(round(max_s * rate))
    buf = io.BytesIO()
    with wave.open(buf, "wb") as out:
        out.setparams(params)
        out.writeframes(data)
    return io.BytesIO(buf.getvalue()), len(buf.getvalue())


def api_error_message(status: int | None, body: Any) -> str:
    """One line from an ElevenLabs error answer (``{"detail": {...}|[...]|str}``)."""
    detail = body.get("detail", body) if isinstance(body, dict) else body
    if isinstance(detail, dict):
        text = str(detail.get("message") or detail.get("status") or detail)
    elif isinstance(detail, list):
        parts = []
        for item in detail:
            if isinstance(item, dict):
                loc = ".".join(str(x) for x in item.get("loc", [])[1:])
                parts.append(f"{loc}: {item.get('msg')}" if loc else str(item.get("msg")))
            else:
                parts.append(str(item))
        text = "; ".join(parts)
    else:
        text = str(detail)
    if status in (401, 403):
        what = "refused the API key"
    elif status is not None and status >= 500:
        what = "failed to clone the voice"
    else:
        what = "refused the voice clone"
    return " ".join(f"ElevenLabs {what} (HTTP {status}): {text}".split())[:300]


def clone_voice(name: str, wav: Path, api_key: str, base_url: str, description: str,
                on_read: Callable[[int, int], None]) -> str:
    """Instant Voice Cloning of ``wav`` as ``name``; returns the new voice id.

    Blocking (up to ``CLONE_TIMEOUT_S`` per attempt; the SDK retries 5xx and
    429 twice). Raises ``CloneError`` with a one-line message.
    """
    import httpx
    from elevenlabs import ElevenLabs
    from elevenlabs.core.api_error import ApiError

    client = ElevenLabs(api_key=api_key, base_url=base_url, timeout=CLONE_TIMEOUT_S)
    handle, size = clone_sample(wav)
    try:
        with handle:
            reader = _CountingReader(handle, size, on_read)
            result = client.voices.ivc.create(
                name=name, files=[(wav.name, reader, "audio/wav")],  # type: ignore[list-item]
                description=description)
    except ApiError as exc:
        raise CloneError(api_error_message(exc.status_code, exc.body)) from None
    except httpx.TimeoutException:
        raise CloneError(f"no answer from {base_url} within {CLONE_TIMEOUT_S:.0f} s") from None
    except httpx.HTTPError as exc:
        raise CloneError(f"could not reach {base_url} ({type(exc).__name__}: {exc})") from None
    voice_id = getattr(result, "voice_id", None)
    if not isinstance(voice_id, str) or not voice_id:
        raise CloneError("ElevenLabs answered without a voice id")
    return voice_id


class CloneError(RuntimeError):
    """A voice clone that did not happen; ``str()`` is one line."""


# =============================================================================
# The post-call process
# =============================================================================


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


if __name__ == "__main__":
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)  # an abandoned upload thread must not hold the exit
