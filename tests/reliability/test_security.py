"""Who may hang up: private ipc sockets, CurveZMQ beyond loopback, size limits, no key leaks."""

from __future__ import annotations

import json
import os
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import zmq

from callctl.controller.curve import ClientKeys, generate
from callctl.engine.control_client import ControlClient
from testing.cli import callctl

SENTINEL = "sk_sentinel_4d3c2b1a0f9e8d7c6b5a"


def test_default_ipc_endpoint_is_private(tmp_path: Path) -> None:
    env = dict(os.environ, XDG_RUNTIME_DIR=str(tmp_path / "run"))
    (tmp_path / "run").mkdir(mode=0o755)
    proc = subprocess.Popen([sys.executable, "-m", "callctl.cli", "serve", "--device",
                             "virtual", "--record-dir", str(tmp_path / "calls")],
                            env=env, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert "serving ipc://" in line
        directory = tmp_path / "run" / "callctl"
        sock = directory / "control"
        assert stat.S_IMODE(directory.stat().st_mode) == 0o700
        assert stat.S_IMODE(sock.stat().st_mode) == 0o600
        assert stat.S_IMODE((directory / "control.events").stat().st_mode) == 0o600
        out = callctl("status", "--json", env=env)
        assert json.loads(out.stdout)["state"] == "idle"
    finally:
        callctl("hangup", env=env)
        proc.terminate()
        proc.wait(15)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_tcp_beyond_loopback_needs_curve_and_only_authorised_clients_get_in(
        tmp_path: Path) -> None:
    port = free_port()
    refused = callctl("serve", "--endpoint", f"tcp://0.0.0.0:{port}", "--device", "virtual")
    assert refused.returncode == 2 and "CurveZMQ" in refused.stderr

    keys = tmp_path / "keys"
    generate(keys)
    intruder = tmp_path / "intruder"
    generate(intruder)  # a well-formed key pair the server never authorised
    (intruder / "server.key").write_bytes((keys / "server.key").read_bytes())
    proc = subprocess.Popen(
        [sys.executable, "-m", "callctl.cli", "serve", "--endpoint",
         f"tcp://0.0.0.0:{port}", "--curve-dir", str(keys), "--device", "virtual",
         "--record-dir", str(tmp_path / "calls")],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    local = f"tcp://127.0.0.1:{port}"
    try:
        assert proc.stdout is not None and "serving" in proc.stdout.readline()
        good = ControlClient(local, secure=ClientKeys.load(keys).apply)
        deadline = time.monotonic() + 20
        while True:
            try:
                assert good.request({"cmd": "ping"}, timeout=1)["ok"]
                break
            except TimeoutError:
                assert time.monotonic() < deadline
        for secure in (None, ClientKeys.load(intruder).apply):
            other = ControlClient(local, secure=secure)
            for cmd in ("hangup", "call", "status"):
                try:
                    other.request({"cmd": cmd}, timeout=1.0)
                    raise AssertionError(f"{cmd} answered to an unauthorised client")
                except TimeoutError:
                    pass
            other.close()
        assert good.request({"cmd": "status"})["state"] == "idle", "nothing was started"
        out = callctl("status", "--json", "--endpoint", local, "--curve-dir", str(keys))
        assert out.returncode == 0 and json.loads(out.stdout)["ok"]
        good.close()
    finally:
        proc.terminate()
        proc.wait(15)


def test_every_public_socket_has_a_size_limit(serve: Any) -> None:
    served = serve(speech_at=[30.0])
    sock = zmq.Context.instance().socket(zmq.REQ)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(served.endpoint)
    sock.send(b"x" * (2 * 1024 * 1024))  # over ZMQ_MAXMSGSIZE: the connection is dropped
    assert not sock.poll(1000)
    sock.close()
    assert served.request({"cmd": "ping"})["ok"], "the controller is fine"


def test_api_key_appears_in_no_log_event_summary_or_output(serve: Any, tmp_path: Path) -> None:
    env = dict(os.environ, ELEVENLABS_API_KEY=SENTINEL)
    served = serve(speech_at=[3.0], env=env)
    assert served.request({"cmd": "call"})["ok"]
    served.wait_state("in_call")
    served.collect(8.0)
    assert any(e["event"] == "transcript" and e["role"] == "caller" for e in served.events), \
        "a whole call with the key set (signed-URL auth to the local server)"
    assert served.request({"cmd": "hangup"})["ok"]
    served.collect(5, until="call.ended")
    status = served.request({"cmd": "status"})
    served.request({"cmd": "shutdown"})
    out, _ = served.proc.communicate(timeout=15)
    seen = [json.dumps(served.events), json.dumps(status), out or ""]
    for path in tmp_path.rglob("*"):
        if path.is_file():
            seen.append(path.read_bytes().decode("latin-1"))
    written = "\n".join(seen)
    assert SENTINEL not in written
    assert SENTINEL[3:18] not in written, "not even part of it"
