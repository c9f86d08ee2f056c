"""Issue 14 in the controller: a call that cannot get its folder fails alone, and tcp
without keys needs --insecure (and says so at start)."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest


@pytest.fixture
def few_inodes(tmp_path: Path) -> Iterator[Path]:
    """A tmpfs with few inodes: the test takes the last ones while a controller uses it."""
    mount = tmp_path / "rec"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m,nr_inodes=64", "tmpfs", str(mount)],
                   check=True, timeout=10)
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], timeout=10)


def test_a_call_folder_that_cannot_be_made_fails_the_call_not_the_controller(
        serve: Any, few_inodes: Path) -> None:
    served = serve("--record-dir", str(few_inodes))
    served.wait_state("idle")
    fillers = []
    while True:  # take every inode left: mkdir of the call folder gets ENOSPC
        try:
            path = few_inodes / f"filler-{len(fillers)}"
            path.touch()
            fillers.append(path)
        except OSError:
            break
    assert served.request({"cmd": "call"})["ok"]
    status = served.wait_state("failed", timeout=20)
    assert "cannot create the call folder" in status["reason"], status
    assert "No space left on device" in status["reason"], status
    assert served.proc.poll() is None, "the controller keeps serving"
    assert served.request({"cmd": "ping"})["ok"]
    for path in fillers:
        path.unlink()
    assert served.request({"cmd": "call"})["ok"]
    served.wait_state("in_call", timeout=20)
    assert served.request({"cmd": "hangup"})["ok"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_tcp_without_keys_needs_insecure_and_warns_when_given(tmp_path: Path) -> None:
    endpoint = f"tcp://127.0.0.1:{_free_port()}"
    base = [sys.executable, "-m", "controller.cli", "serve", "--endpoint", endpoint,
            "--device", "virtual", "--speaker", str(tmp_path / "out.wav"),
            "--record-dir", str(tmp_path / "calls"), "--no-standby"]
    refused = subprocess.run(base, capture_output=True, text=True, timeout=30)
    assert refused.returncode == 2
    assert "--insecure" in refused.stderr and len(refused.stderr.strip().splitlines()) == 1
    proc = subprocess.Popen([*base, "--insecure"], stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stderr is not None
        deadline = time.monotonic() + 20
        line = ""
        while time.monotonic() < deadline and "warning" not in line.lower():
            line = proc.stderr.readline()
            if not line and proc.poll() is not None:
                break
        assert "warning" in line.lower() and "local user" in line.lower(), line
    finally:
        proc.terminate()
        proc.wait(10)
