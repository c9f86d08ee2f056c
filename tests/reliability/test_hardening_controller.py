"""Issue 14 in the controller: a call that cannot get its folder fails alone, and tcp
without keys needs --insecure (and says so at start)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from callctl.engine import protocol


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
    base = [sys.executable, "-m", "callctl.cli", "serve", "--endpoint", endpoint,
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


def test_a_call_request_cannot_choose_where_the_api_key_goes(serve: Any) -> None:
    import http.server
    import threading

    heard: list[str] = []

    class Listener(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - the http.server API
            heard.append(str(self.headers))
            self.send_response(404)
            self.end_headers()

        do_POST = do_GET  # noqa: N815

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Listener)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}"
        # The configured service: loopback, nothing listening (no traffic leaves the machine).
        served = serve("--agent", "agent_123", "--base-url", "http://127.0.0.1:9",
                       env={**os.environ, "ELEVENLABS_API_KEY": "sk-not-for-you"})
        reply = served.request({"cmd": "call", "base_url": url})
        assert not reply["ok"] and "unknown field 'base_url'" in reply["error"], reply
        reply = served.request({"cmd": "call", "agent": "agent_456", "base_url": url})
        assert not reply["ok"], reply
        time.sleep(1.0)
        assert heard == [], "the key went where a control client pointed it"
        assert served.request({"cmd": "status"})["state"] == "idle"
    finally:
        server.shutdown()
        server.server_close()


def test_a_second_controller_never_takes_the_endpoint_of_a_busy_first(
        serve: Any, tmp_path: Path) -> None:
    import signal

    first = serve()
    socket_path = Path(first.endpoint[len("ipc://"):])
    os.kill(first.proc.pid, signal.SIGSTOP)  # busy: it answers nothing for a while
    try:
        second = subprocess.run(
            [sys.executable, "-m", "callctl.cli", "serve", "--endpoint", first.endpoint,
             "--device", "virtual", "--speaker", str(tmp_path / "out2.wav"),
             "--record-dir", str(tmp_path / "calls2"), "--no-standby"],
            capture_output=True, text=True, timeout=30)
    finally:
        os.kill(first.proc.pid, signal.SIGCONT)
    # The window picks its hint by the status.
    assert second.returncode == protocol.SERVE_EXIT_STATUS[protocol.ENDPOINT_TAKEN]
    assert "another controller is already serving" in second.stderr, second.stderr
    assert socket_path.exists(), "the second one unlinked the first's socket"
    assert first.request({"cmd": "ping"})["ok"], "the first still serves its endpoint"


def test_a_full_disk_fails_the_post_call_work_loudly(serve: Any, small_disk: Path) -> None:
    served = serve("--record-dir", str(small_disk), "--clone-voice", "caller")
    call_id = served.request({"cmd": "call"})["call_id"]
    served.wait_state("in_call")
    time.sleep(4.0)  # the recording fills the disk
    sent = time.monotonic()
    assert served.request({"cmd": "hangup"})["ok"]
    failed = served.collect(20, until="postcall", where={"stage": "failed"})
    assert failed is not None and failed["call_id"] == call_id, served.named("postcall")
    assert time.monotonic() - sent < 20
    shown = subprocess.run([sys.executable, "-m", "callctl.cli", "calls", "show",
                            call_id,
                            "--record-dir", str(small_disk)],
                           capture_output=True, text=True, timeout=30)
    assert "post-call work failed" in shown.stdout, shown.stdout + shown.stderr
    listed = subprocess.run([sys.executable, "-m", "callctl.cli", "calls",
                             "--record-dir", str(small_disk)],
                            capture_output=True, text=True, timeout=30)
    assert "(post-call failed)" in listed.stdout, listed.stdout


def test_call_clone_voice_returns_soon_with_1_when_the_post_call_work_fails(
        tmp_path: Path, small_disk: Path) -> None:
    began = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "callctl.cli", "call", "--device", "virtual",
         "--speaker", str(tmp_path / "out.wav"), "--record-dir", str(small_disk),
         "--endpoint", f"ipc://{tmp_path}/control", "--hangup-after", "4",
         "--clone-voice", "caller", "--no-standby"],
        capture_output=True, text=True, timeout=90, stdin=subprocess.DEVNULL)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "voice clone failed" in done.stdout + done.stderr, done.stdout + done.stderr
    assert time.monotonic() - began < 60, "it did not wait out the 600 s"


def _environ(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return dict(item.decode(errors="replace").split("=", 1) for item in raw if b"=" in item)


def _descendants(pid: int) -> list[int]:
    out = subprocess.run(["ps", "-e", "-o", "pid=,ppid="], capture_output=True, text=True,
                         timeout=5).stdout.split("\n")
    children: dict[int, list[int]] = {}
    for line in out:
        if line.strip():
            child, parent = map(int, line.split())
            children.setdefault(parent, []).append(child)
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def test_the_api_key_reaches_only_the_processes_that_use_it(serve: Any) -> None:
    served = serve(env={**os.environ, "ELEVENLABS_API_KEY": "sk-only-for-the-agent"})
    assert served.request({"cmd": "call"})["ok"]
    status = served.wait_state("in_call")
    pids = status["pids"]
    audio, server = pids["audio"], pids["agent_server"]
    assert audio and server
    keyless = [audio, server, *_descendants(audio)]  # the audio process's resource tracker too
    for pid in keyless:
        assert "ELEVENLABS_API_KEY" not in _environ(pid), pid
    assert _environ(pids["agent"]).get("ELEVENLABS_API_KEY") == "sk-only-for-the-agent"
    assert served.request({"cmd": "hangup"})["ok"]


def test_a_controller_killed_mid_call_leaves_no_segment_and_no_call_saving_forever(
        tmp_path: Path) -> None:
    import signal

    def segments(pid: int) -> set[str]:
        return {p.name for p in Path("/dev/shm").glob(f"callctl-{pid}-*")}

    endpoint = f"ipc://{tmp_path}/control"
    argv = [sys.executable, "-m", "callctl.cli", "serve", "--endpoint", endpoint,
            "--device", "virtual", "--speaker", str(tmp_path / "out.wav"),
            "--record-dir", str(tmp_path / "calls")]
    first = subprocess.Popen(argv, stderr=subprocess.DEVNULL, start_new_session=True)
    from callctl.engine.control_client import ControlClient

    client = ControlClient(endpoint)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                client.request({"cmd": "ping"}, timeout=1)
                break
            except TimeoutError:
                assert time.monotonic() < deadline
        assert client.request({"cmd": "call"})["ok"]
        deadline = time.monotonic() + 20
        while client.request({"cmd": "status"})["state"] != "in_call":
            assert time.monotonic() < deadline
            time.sleep(0.05)
        left = segments(first.pid)
        assert any(name.endswith("-echo") for name in left), left
        assert any("-rec" in name for name in left), left
        os.killpg(first.pid, signal.SIGKILL)  # the controller and every child at once
        first.wait(10)
        time.sleep(0.5)
        assert segments(first.pid) == left, "nobody was left to clean up"
    finally:
        client.close()
    second = subprocess.Popen(argv, stderr=subprocess.DEVNULL)
    client = ControlClient(endpoint)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                client.request({"cmd": "ping"}, timeout=1)
                break
            except TimeoutError:
                assert time.monotonic() < deadline
        assert segments(first.pid) == set(), "the next controller swept them"
        # The call cut short is marked as such, not "(saving…)" for ever.
        listed = subprocess.run([sys.executable, "-m", "callctl.cli", "calls",
                                 "--record-dir", str(tmp_path / "calls")],
                                capture_output=True, text=True, timeout=20)
        assert listed.returncode == 0, listed.stderr
        assert "(post-call failed)" in listed.stdout and "saving" not in listed.stdout, \
            listed.stdout
        (folder,) = [p for p in (tmp_path / "calls").iterdir() if p.name != "logs"]
        shown = subprocess.run([sys.executable, "-m", "callctl.cli", "calls", "show",
                                folder.name, "--record-dir", str(tmp_path / "calls")],
                               capture_output=True, text=True, timeout=20)
        assert "the controller stopped during the call" in shown.stdout, shown.stdout
        client.request({"cmd": "shutdown"})
        second.wait(15)
    finally:
        client.close()
        if second.poll() is None:
            second.kill()


def test_a_tcp_port_in_use_is_one_line_not_a_traceback(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        runtime = tmp_path / "runtime"
        runtime.mkdir(mode=0o700)
        done = subprocess.run(
            [sys.executable, "-m", "callctl.cli", "serve", "--endpoint",
             f"tcp://127.0.0.1:{port}", "--insecure", "--device", "virtual",
             "--record-dir", str(tmp_path / "calls")],
            capture_output=True, text=True, timeout=30,
            env={**os.environ, "XDG_RUNTIME_DIR": str(runtime)})
    assert done.returncode == 2
    errors = [line for line in done.stderr.splitlines() if "warning" not in line]
    assert len(errors) == 1 and "Address already in use" in errors[0], done.stderr
    left = [p for p in runtime.rglob("*") if p.is_dir()]
    assert all(p.name == "callctl" for p in left), f"a refused start left {left}"


def test_devices_never_holds_up_the_loop(serve: Any) -> None:
    served = serve()
    assert served.request({"cmd": "call"})["ok"]
    served.wait_state("in_call")
    began = time.monotonic()
    first = served.request({"cmd": "devices"})
    hangup = served.request({"cmd": "hangup"})
    took = time.monotonic() - began
    assert first["ok"] and hangup["ok"]
    assert took < 0.5, f"devices then hangup took {took * 1000:.0f} ms"
    deadline = time.monotonic() + 30
    while served.request({"cmd": "devices"}).get("pending"):
        assert time.monotonic() < deadline, "the listing never came"
        time.sleep(0.2)
    listing = served.request({"cmd": "devices"})
    assert isinstance(listing["devices"], list)
    # The listing child ran and answered (the machine may have no device at all).
    assert "listing_error" not in listing, listing
