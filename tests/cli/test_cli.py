"""`callctl` end to end, as subprocesses, the way a user types it."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from testing.cli import callctl
from testing.sounds import write_caller_wav


def test_help_teaches_and_unknown_commands_fail_with_2() -> None:
    out = callctl("--help")
    assert out.returncode == 0
    for command in ("call", "hangup", "status", "events", "devices", "agent-server"):
        assert command in out.stdout
    bad = callctl("frobnicate")
    assert bad.returncode == 2 and "unknown command" in bad.stderr
    assert callctl("call", "--help").returncode == 0


def test_no_controller_is_exit_2_with_a_clear_line(tmp_path: Path) -> None:
    for command in ("hangup", "status", "events"):
        out = callctl(command, "--endpoint", f"ipc://{tmp_path}/nobody")
        assert out.returncode == 2, (command, out.stderr)
        assert "no controller" in out.stderr
        assert len(out.stderr.strip().splitlines()) == 1


def test_bad_usage_is_exit_2(tmp_path: Path) -> None:
    cases = [
        ["call", "--endpoint", "tcp://10.1.2.3:5555"],
        ["call", "--mic", str(tmp_path / "x.wav")],
        ["call", "--kill-after", "-1"],
        ["call", "--hangup-after", "soon"],
        ["call", "--echo", "loud"],
        ["call", "--period-ms", "2"],
        ["serve", "--period-ms", "fast"],
    ]
    for args in cases:
        out = callctl(*args)
        assert out.returncode == 2, (args, out.stdout, out.stderr)
        assert out.stderr.strip(), args


def test_call_in_the_foreground_prints_recording_and_timings(
        tmp_path: Path, caller_speech: np.ndarray) -> None:
    mic = write_caller_wav(tmp_path / "mic.wav", caller_speech, [6.0], 30)
    out = callctl("call", "--endpoint", f"ipc://{tmp_path}/ctl", "--device", "virtual",
                  "--mic", str(mic), "--speaker", str(tmp_path / "spk.wav"),
                  "--record-dir", str(tmp_path / "calls"), "--hangup-after", "12")
    assert out.returncode == 0, out.stderr
    assert "agent: Hello" in out.stdout
    assert "caller: [speech" in out.stdout
    assert "hangup → audio silent" in out.stdout and "hangup → agent exited" in out.stdout
    recording = [line.split()[-1] for line in out.stdout.splitlines() if "recording:" in line]
    assert recording and Path(recording[0]).exists()


def test_hangup_status_and_events_against_a_running_controller(serve: Any) -> None:
    served = serve(speech_at=[30.0])
    ep = ["--endpoint", served.endpoint]
    status = callctl("status", "--json", *ep)
    assert status.returncode == 0 and json.loads(status.stdout)["state"] == "idle"
    nothing = callctl("hangup", *ep)
    assert nothing.returncode == 1 and "no call to hang up" in nothing.stderr

    events: dict[str, Any] = {}

    def listen() -> None:
        events["out"] = callctl("events", "--json", "--topic", "state", "--count", "3",
                                "--timeout", "30", *ep)

    listener = threading.Thread(target=listen)
    listener.start()
    time.sleep(1.0)
    assert served.request({"cmd": "call"})["ok"]
    served.wait_state("in_call")
    text = callctl("status", *ep)
    assert "state:     in_call" in text.stdout
    hung = callctl("hangup", *ep)
    assert hung.returncode == 0 and "hung up call" in hung.stdout
    listener.join(40)
    states = [json.loads(line)["state"] for line in events["out"].stdout.splitlines()]
    assert states == ["starting", "in_call", "ending"]
