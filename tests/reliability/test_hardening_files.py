"""Issue 14, low items: private keys, private call folders, and no terminal escapes on output.

* CurveZMQ secret files are created 0600 (never widened, then narrowed: the
  kernel's inotify reports any later chmod as ``IN_ATTRIB``), and a key
  directory or secret that others may read is refused, as ssh does.
* A call's folder is 0700 and its recording, transcript, summary and the
  caller's WAV are 0600: a real post-call process writes them.
* ``callctl calls`` / ``calls show`` print names and transcripts with control
  characters escaped.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import json
import os
import select
import stat
import struct
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import zmq

from callctl.controller.curve import ClientKeys, CurveError, ServerKeys, generate
from testing.cli import callctl

ROOT = Path(__file__).resolve().parents[2]
IN_ATTRIB, IN_CREATE = 0x00000004, 0x00000100


class Inotify:
    """Linux inotify on one directory (ctypes: the kernel's own record of what happened)."""

    def __init__(self, directory: Path, mask: int) -> None:
        libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
        self.fd = libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
        assert self.fd >= 0, os.strerror(ctypes.get_errno())
        assert libc.inotify_add_watch(self.fd, str(directory).encode(), mask) >= 0

    def events(self, wait: float = 0.2) -> list[tuple[int, str]]:
        """(mask, name) of every event so far (waits at most ``wait`` s for the first)."""
        out: list[tuple[int, str]] = []
        deadline = time.monotonic() + wait
        while True:
            ready, _, _ = select.select([self.fd], [], [], max(0.0, deadline - time.monotonic()))
            if not ready:
                return out
            data = os.read(self.fd, 65536)
            at = 0
            while at < len(data):
                _, mask, _, size = struct.unpack_from("iIII", data, at)
                name = data[at + 16: at + 16 + size].rstrip(b"\0").decode()
                out.append((mask, name))
                at += 16 + size

    def close(self) -> None:
        os.close(self.fd)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


# -- CurveZMQ keys ------------------------------------------------------------------


def test_secret_key_files_are_0600_from_creation_even_with_umask_0(tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    keys.mkdir(mode=0o700)
    watch = Inotify(keys, IN_CREATE | IN_ATTRIB)
    old = os.umask(0)
    try:
        generate(keys)
    finally:
        os.umask(old)
    events = watch.events()
    watch.close()
    secrets = sorted(p.name for p in keys.glob("*.key_secret"))
    assert secrets == ["client.key_secret", "server.key_secret"]
    created = {name for m, name in events if m & IN_CREATE}
    assert set(secrets) <= created, events
    changed = [name for m, name in events if m & IN_ATTRIB and name.endswith(".key_secret")]
    assert not changed, f"mode changed after creation (chmod): {changed}"
    for name in secrets:
        assert mode(keys / name) == 0o600
    assert mode(keys) == 0o700 and mode(keys / "authorized") == 0o700
    # The keys work: a server and a client load them.
    ServerKeys.load(keys)
    ClientKeys.load(keys)


@pytest.mark.parametrize("target, bad_mode", [
    ("server.key_secret", 0o640), ("server.key_secret", 0o604), (".", 0o750), (".", 0o705),
    ("client.key_secret", 0o644)])
def test_keys_that_others_may_read_are_refused_in_one_line(
        tmp_path: Path, target: str, bad_mode: int) -> None:
    keys = tmp_path / "keys"
    generate(keys)
    path = keys / target
    path.chmod(bad_mode)
    loader = ClientKeys if target.startswith("client") else ServerKeys
    with pytest.raises(CurveError) as refused:
        loader.load(keys)
    message = str(refused.value)
    assert "\n" not in message and oct(bad_mode)[2:] in message and "chmod" in message
    path.chmod(0o700 if target == "." else 0o600)
    loader.load(keys)


def test_serve_refuses_an_unprotected_server_key(tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    generate(keys)
    (keys / "server.key_secret").chmod(0o644)
    out = callctl("serve", "--endpoint", "tcp://127.0.0.1:45999", "--curve-dir", str(keys),
                  "--device", "virtual", "--record-dir", str(tmp_path / "calls"))
    lines = out.stderr.strip().splitlines()
    assert out.returncode == 2 and len(lines) == 1, out.stderr
    assert "server.key_secret" in lines[0] and "644" in lines[0]


def test_keys_command_refuses_a_directory_others_can_enter(tmp_path: Path) -> None:
    open_dir = tmp_path / "shared"
    open_dir.mkdir(mode=0o755)
    open_dir.chmod(0o755)
    out = callctl("keys", str(open_dir))
    assert out.returncode == 2 and len(out.stderr.strip().splitlines()) == 1, out.stderr
    assert not list(open_dir.iterdir())
    made = callctl("keys", str(tmp_path / "fresh"))
    assert made.returncode == 0, made.stderr
    assert mode(tmp_path / "fresh") == 0o700


# -- call folders -------------------------------------------------------------------


@pytest.fixture
def events(tmp_path: Path) -> Iterator[tuple[str, zmq.Socket]]:
    ctx = zmq.Context()
    pull = ctx.socket(zmq.PULL)
    pull.setsockopt(zmq.LINGER, 0)
    endpoint = f"ipc://{tmp_path}/ev"
    pull.bind(endpoint)
    yield endpoint, pull
    pull.close(0)
    ctx.term()


def test_a_call_folder_and_its_files_are_private(
        tmp_path: Path, events: tuple[str, zmq.Socket]) -> None:
    from callctl.controller.call import Call
    from callctl.controller.postcall import CALLER, RECORDING, SUMMARY, TRANSCRIPT, PostcallRunner
    from callctl.engine.wavfile import GrowingWav

    endpoint, pull = events
    old = os.umask(0o022)  # the usual umask: files 0644 and folders 0755 unless asked
    try:
        record_dir = tmp_path / "calls"
        call = Call("20260101-000000-abcd", "local", None, record_dir / "20260101-000000-abcd")
        call.record_dir.parent.mkdir()
        # The controller makes the folder (controller.py), the audio process the recording.
        from callctl.controller.postcall import make_call_folder
        make_call_folder(call.record_dir)
        wav = GrowingWav(call.recording, 16000, channels=2)
        wav.append(np.zeros(2 * 16000, np.int16))
        wav.close()
        call.audio_started = True
        call.requested_at = time.monotonic() - 2
        call.hangup_at = time.monotonic()
        call.end_reason = "hangup"
        call.transcript.append({"t": time.monotonic() - 1, "role": "agent", "text": "Hello"})
        runner = PostcallRunner(endpoint)
        pid = runner.spawn(call, failed=False, base_url=None, audio_pid=None, audio_status=None)
        assert pid is not None, call.errors
        job = call.record_dir / ".postcall-job.json"
        stages = []
        deadline = time.monotonic() + 30
        while "done" not in stages and "failed" not in stages:
            assert time.monotonic() < deadline, f"post-call work did not finish: {stages}"
            if pull.poll(200):
                stages.append(json.loads(pull.recv())["stage"])
        assert "done" in stages, stages
        deadline = time.monotonic() + 10
        while runner.reap() or runner.running:
            assert time.monotonic() < deadline, "the post-call process did not exit"
            time.sleep(0.05)
    finally:
        os.umask(old)
    folder = call.record_dir
    assert mode(folder) == 0o700
    for name in (RECORDING, CALLER, TRANSCRIPT, SUMMARY):
        assert (folder / name).exists(), name
        assert mode(folder / name) == 0o600, (name, oct(mode(folder / name)))
    assert not job.exists()
    leaks = [p.name for p in folder.iterdir() if mode(p) & 0o077]
    assert not leaks, leaks


def test_make_call_folder_tightens_an_existing_folder_and_the_record_dir(tmp_path: Path) -> None:
    from callctl.controller.postcall import make_call_folder

    record_dir = tmp_path / "calls"
    folder = record_dir / "x"
    folder.mkdir(parents=True, mode=0o755)
    folder.chmod(0o755)
    record_dir.chmod(0o755)
    make_call_folder(folder)
    assert mode(folder) == 0o700 and mode(record_dir) == 0o700
    fresh = tmp_path / "new" / "calls" / "y"
    make_call_folder(fresh)
    assert mode(fresh) == 0o700 and mode(fresh.parent) == 0o700


# -- terminal escapes ---------------------------------------------------------------

NASTY = "Bob\x1b]0;pwned\x07\x1b[2J\r\x08\u202eevil\x9b31m"


def test_calls_and_calls_show_escape_control_characters(tmp_path: Path) -> None:
    folder = tmp_path / "calls" / "20260101-000000-abcd"
    folder.mkdir(parents=True)
    (folder / "summary.json").write_text(json.dumps({
        "call_id": folder.name, "agent": NASTY, "end_reason": NASTY, "errors": [NASTY],
        "conversation_id": NASTY,
        "voice": {"name": NASTY, "status": "failed", "message": NASTY, "voice_id": None}}))
    (folder / "transcript.jsonl").write_text(
        json.dumps({"offset_s": 1.0, "role": NASTY, "text": NASTY}) + "\n")
    for args in (("calls", "--record-dir", str(tmp_path / "calls")),
                 ("calls", "show", "last", "--record-dir", str(tmp_path / "calls"))):
        out = callctl(*args)
        assert out.returncode == 0, out.stderr
        bad = sorted({hex(ord(ch)) for ch in out.stdout
                      if (ord(ch) < 0x20 and ch != "\n") or 0x7F <= ord(ch) <= 0x9F
                      or ch == "\u202e"})
        assert not bad, (args, bad)
        assert "Bob" in out.stdout and "\\x1b" in out.stdout


def test_printable_escapes_only_what_a_terminal_would_act_on() -> None:
    from callctl.cli.terminal import printable

    assert printable("Zoë said: “hello” 👋\ttab") == "Zoë said: “hello” 👋\\ttab"
    assert printable("a\x1b[31mb\nc\x00\u2066d\u200f") == "a\\x1b[31mb\\nc\\x00\\u2066d\\u200f"
    assert printable(None) == "None" and printable(3) == "3"
