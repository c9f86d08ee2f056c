"""``callctl.Client``'s typed errors, against real sockets: nobody there, a server that
never answers, an error reply with and without a ``code``, a controller that refuses."""

from __future__ import annotations

import contextlib
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import zmq

import callctl
from callctl.client import CallctlError, Client, NotRunning, Refused


def test_importing_callctl_is_cheap_and_the_api_loads_on_first_use() -> None:
    code = ("import sys, callctl; assert 'zmq' not in sys.modules, 'zmq at import'; "
            "assert callctl.Client.__module__ == 'callctl.client'; "
            "assert callctl.serve.__module__ == 'callctl.served'; print('ok')")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60)
    assert done.stdout.strip() == "ok", done.stderr
    with pytest.raises(AttributeError):
        _ = callctl.NoSuchThing  # type: ignore[attr-defined]


def test_nobody_at_an_ipc_endpoint_is_not_running_at_once(tmp_path: Path) -> None:
    client = Client(f"ipc://{tmp_path}/nobody")
    began = time.monotonic()
    with pytest.raises(NotRunning) as caught:
        client.status()
    assert time.monotonic() - began < 1.0, "it waited for a socket file that is not there"
    assert caught.value.code == "not_running"
    assert "no controller at" in str(caught.value)
    assert isinstance(caught.value, CallctlError)


@contextlib.contextmanager
def rep_server(endpoint: str, replies: list[dict[str, Any]] | None
               ) -> Iterator[list[dict[str, Any]]]:
    """A REP socket on a thread: it answers each request with the next of ``replies``
    (which the test may extend), or, with None, never answers (a hung controller)."""
    stop, ready = threading.Event(), threading.Event()

    def run() -> None:
        rep: zmq.Socket = zmq.Context.instance().socket(zmq.REP)
        rep.setsockopt(zmq.LINGER, 0)
        rep.bind(endpoint)
        ready.set()
        while not stop.is_set():
            if rep.poll(50) and replies is not None:
                rep.recv()
                rep.send_json(replies.pop(0))
        rep.close(0)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    assert ready.wait(5)
    try:
        yield replies if replies is not None else []
    finally:
        stop.set()
        thread.join(5)


def test_a_server_that_never_answers_is_not_running_after_the_timeout(tmp_path: Path) -> None:
    with rep_server(f"ipc://{tmp_path}/hung", None), \
            Client(f"ipc://{tmp_path}/hung", timeout=0.3) as client:
        began = time.monotonic()
        with pytest.raises(NotRunning, match="within 0.3 s"):
            client.hangup()
        assert 0.25 < time.monotonic() - began < 2.0


def test_an_error_reply_is_refused_with_its_code_or_none(tmp_path: Path) -> None:
    replies: list[dict[str, Any]] = [
        {"ok": False, "error": "no call to hang up"},
        {"ok": False, "error": "no call to hang up", "code": "no_call"},
        {"ok": True, "state": "idle"}]
    with rep_server(f"ipc://{tmp_path}/replying", replies), \
            Client(f"ipc://{tmp_path}/replying") as client:
        with pytest.raises(Refused) as old:  # a controller from before error codes
            client.hangup()
        assert old.value.code is None and str(old.value) == "no call to hang up"
        assert old.value.reply == {"ok": False, "error": "no call to hang up"}
        with pytest.raises(Refused) as new:
            client.hangup()
        assert new.value.code == "no_call" and new.value.message == "no call to hang up"
        assert client.status() == {"ok": True, "state": "idle"}


def test_a_bad_endpoint_or_missing_keys_fail_at_construction(tmp_path: Path) -> None:
    with pytest.raises(CallctlError) as far:
        Client("tcp://10.1.2.3:5555")
    assert far.value.code == "bad_endpoint" and not isinstance(far.value, NotRunning)
    with pytest.raises(CallctlError) as keys:
        Client("tcp://127.0.0.1:5555", curve_dir=tmp_path / "none")
    assert keys.value.code == "bad_keys"


def test_serve_refuses_bad_options_with_the_controllers_reason(tmp_path: Path) -> None:
    began = time.monotonic()
    with pytest.raises(CallctlError) as caught:
        callctl.serve("--kill-after", "-1", endpoint=f"ipc://{tmp_path}/c")
    assert caught.value.code == "serve_failed" and not isinstance(caught.value, NotRunning)
    assert "kill-after" in str(caught.value)
    assert time.monotonic() - began < 20
