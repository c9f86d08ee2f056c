"""The call folder's files: the folder itself, its claim, the failure note, private writes.

Who works on a call holds its claim (an exclusive ``flock`` on the failure
note): the controller from the call's start, then the post-call process,
which inherits the descriptor. Every file is written 0600 and, where a
reader could see half of it, atomically. ``wait_for_recording`` is how the
post-call process knows the audio process has finalised the recording.
"""

from __future__ import annotations

import fcntl
import json
import os
import stat
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

import numpy as np

from callctl.controller.postcall.trimming import RATE

JOB_FILE = ".postcall-job.json"
"""The controller's hand-over to the post-call process, in the call folder; removed when done."""
RECORDING = "recording.wav"
CALLER = "caller.wav"
TRANSCRIPT = "transcript.jsonl"
SUMMARY = "summary.json"
FAILED_NOTE = "postcall-failed.txt"
"""Why the post-call work could not run or did not finish, one line; `callctl calls`
shows it. Its space is reserved when the call starts (``reserve_failure_note``:
``NOTE_BYTES`` allocated), so the note can be written on a disk that filled up
during the call; the post-call work removes it when it has finished."""
NOTE_BYTES = 512
SUMMARY_VERSION = 1
RECORDING_WAIT_S = 10.0
"""Longest wait for the audio process to finalise the recording, in seconds."""


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
    """At the call's start: ``FAILED_NOTE``'s ``NOTE_BYTES`` of blocks taken now (they read
    as NULs), and the folder claimed (``claim_call_folder``) before anything is written.
    Returns the claim's descriptor (the caller owns it), None if another process holds
    it. Raises ``OSError`` (a full disk, a folder not ours): the call cannot start.

    ``posix_fallocate`` takes the blocks without writing them out: this runs on the
    controller's loop at every call start, before the call's audio and agent start, where
    the ``fsync`` it replaces (a written file takes its blocks only when written out)
    waited for the disk."""
    fd = claim_call_folder(folder)
    if fd is None:
        return None
    try:
        os.ftruncate(fd, 0)
        os.posix_fallocate(fd, 0, NOTE_BYTES)
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
