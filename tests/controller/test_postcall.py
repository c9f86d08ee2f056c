"""After the call: the call folder, the voice clone and `callctl calls`, with real processes.

The whole-call tests run `callctl serve` on the virtual device (fixture ``serve``)
with the local agent server, whose ``POST /v1/voices/add`` the real elevenlabs
SDK calls, so everything runs offline. ``CALLCTL_CLONE_MIN_SPEECH_S`` lowers the
speech a clone needs, so a few seconds of espeak-ng caller do. Every wait is
bounded.
"""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import time
import wave
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from callctl.controller import postcall
from callctl.engine import protocol
from callctl.engine.wavfile import read_wav
from testing.cli import callctl

RATE = 16_000
SENTINEL_KEY = "sk_SENTINEL_postcall_n0t_for_l0gs_5c1d"
FILES = ("recording.wav", "caller.wav", "transcript.jsonl", "summary.json")


# --------------------------------------------------------------------------- helpers


def clone_env(tmp_path: Path, key: str | None = SENTINEL_KEY,
              min_speech: float | None = 1.5) -> dict[str, str]:
    env = dict(os.environ, CALLCTL_CONFIG=str(tmp_path / "no-config.toml"))
    env.pop("ELEVENLABS_API_KEY", None)
    env.pop("ELEVENLABS_BASE_URL", None)
    if key is not None:
        env["ELEVENLABS_API_KEY"] = key
    if min_speech is not None:
        env[postcall.MIN_SPEECH_ENV] = str(min_speech)
    return env


def postcall_final(served: Any, call_id: str, timeout: float) -> dict[str, Any]:
    """Collect events until the call's final ``postcall`` event (bounded)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for event in served.named("postcall"):
            if event["call_id"] == call_id and event["stage"] in postcall.FINAL_STAGES:
                return event
        served.collect(0.2)
    raise AssertionError(f"no final postcall event for {call_id} in {timeout} s: "
                         f"{[e for e in served.named('postcall') if e['call_id'] == call_id]}")


def wait_event(served: Any, name: str, timeout: float, **where: Any) -> dict[str, Any]:
    for event in served.named(name):
        if all(event.get(k) == v for k, v in where.items()):
            return event
    event = served.collect(timeout, until=name, where=where)
    assert event is not None, f"no {name} event {where} within {timeout} s"
    return dict(event)


def start_call(served: Any, **fields: Any) -> str:
    reply = served.request({"cmd": "call", **fields})
    assert reply["ok"], reply
    served.wait_state("in_call")
    return str(reply["call_id"])


def hang_up(served: Any, call_id: str) -> tuple[dict[str, Any], float]:
    """Hang up; returns the call.ended event and the request's round trip in seconds."""
    sent = time.monotonic()
    reply = served.request({"cmd": "hangup"})
    round_trip = time.monotonic() - sent
    assert reply["ok"] and reply["call_id"] == call_id, reply
    return wait_event(served, "call.ended", 6.0, call_id=call_id), round_trip


def sox_info(path: Path) -> dict[str, str]:
    out = subprocess.run(["sox", "--i", str(path)], capture_output=True, text=True, timeout=10)
    assert out.returncode == 0, out.stderr
    info = {}
    for line in out.stdout.splitlines():
        key, sep, value = line.partition(":")
        if sep:
            info[key.strip()] = value.strip()
    return info


def server_log(served: Any) -> str:
    return (served.tmp / "calls" / "logs" / "agent-server.log").read_text()


def everything_written(root: Path) -> str:
    """Every file under ``root``, as text (binary files decoded leniently)."""
    return "\n".join(p.read_bytes().decode("latin-1") for p in root.rglob("*") if p.is_file())


# --------------------------------------------------------------------------- units


def tone(seconds: float, freq: float, dbfs: float) -> np.ndarray:
    t = np.arange(round(seconds * RATE)) / RATE
    return (10 ** (dbfs / 20) * 32767 * np.sin(2 * np.pi * freq * t)).astype(np.int16)


def test_trim_caller_keeps_speech_and_leaves_out_silence_the_agent_and_its_echo() -> None:
    total = 10 * RATE
    mic = np.random.default_rng(1).normal(0, 10, total).astype(np.int16)  # about -70 dBFS
    speaker = np.zeros(total, np.int16)
    mic[1 * RATE : 3 * RATE] += tone(2.0, 220, -20)  # the caller: 1-3 s ...
    mic[6 * RATE : 7 * RATE] += tone(1.0, 330, -26)  # ... and 6-7 s
    speaker[4 * RATE : 5 * RATE] = tone(1.0, 440, -10)  # the agent: 4-5 s
    mic[4 * RATE + 800 : 5 * RATE + 800] += tone(1.0, 440, -30)  # its echo, 50 ms late
    trimmed = postcall.trim_caller(np.stack([mic, speaker], axis=1))
    assert trimmed.speech_s == pytest.approx(3.0, abs=0.1)
    assert len(trimmed.pieces) == 2
    (a0, a1), (b0, b1) = trimmed.pieces
    assert a0 == pytest.approx(1.0 - postcall.PAD_S, abs=0.03)
    assert a1 == pytest.approx(3.0 + postcall.PAD_S, abs=0.03)
    assert b0 == pytest.approx(6.0 - postcall.PAD_S, abs=0.03)
    expected = 3.0 + 4 * postcall.PAD_S + postcall.JOIN_SILENCE_S
    assert len(trimmed.audio) / RATE == pytest.approx(expected, abs=0.05)
    peak = np.abs(trimmed.audio.astype(np.int32)).max()
    assert 20 * math.log10(peak / 32767) == pytest.approx(postcall.PEAK_DBFS, abs=0.1)
    # Faded in and out: the first and last samples are (near) zero, no click at the joins.
    assert abs(int(trimmed.audio[0])) < 50 and abs(int(trimmed.audio[-1])) < 50
    # The agent's echo is not in the caller's voice: nothing at 440 Hz.
    spectrum = np.abs(np.fft.rfft(trimmed.audio.astype(np.float64)))
    freqs = np.fft.rfftfreq(len(trimmed.audio), 1 / RATE)
    near = lambda f: spectrum[(freqs > f - 5) & (freqs < f + 5)].max()  # noqa: E731
    assert near(440) < near(220) / 100


def test_trim_caller_of_silence_is_empty_and_mono_recordings_work() -> None:
    silent = postcall.trim_caller(np.zeros((RATE, 2), np.int16))
    assert silent.speech_s == 0 and len(silent.audio) == 0
    mono = postcall.trim_caller(tone(1.0, 200, -20).reshape(-1, 1))
    assert mono.speech_s == pytest.approx(1.0, abs=0.05)


def test_wait_for_recording_waits_while_the_writer_holds_the_file(tmp_path: Path) -> None:
    path = tmp_path / "recording.wav"
    with open(path, "wb") as handle:
        handle.write(b"RIFF")
        began = time.monotonic()
        assert not postcall.wait_for_recording(path, os.getpid(), timeout=0.3)
        assert time.monotonic() - began >= 0.3
    began = time.monotonic()
    assert postcall.wait_for_recording(path, os.getpid(), timeout=5)
    assert time.monotonic() - began < 0.5
    assert postcall.held_open_by(path, 2**22 + 7) is False  # no such process: holds nothing


def test_the_clone_sample_is_the_file_or_its_first_minutes(tmp_path: Path) -> None:
    path = tmp_path / "caller.wav"
    postcall.write_wav(path, tone(2.0, 200, -20))
    handle, size = postcall.clone_sample(path, max_s=5.0)
    with handle:
        assert size == path.stat().st_size and handle.read() == path.read_bytes()
    handle, size = postcall.clone_sample(path, max_s=0.5)
    with handle, wave.open(handle) as w:
        assert w.getnframes() == RATE // 2 and w.getframerate() == RATE
    assert size == 44 + RATE


def test_api_error_messages_are_one_readable_line() -> None:
    assert postcall.api_error_message(401, {"detail": {"status": "needs_authorization",
                                                       "message": "no key"}}) == \
        "ElevenLabs refused the API key (HTTP 401): no key"
    listed = postcall.api_error_message(422, {"detail": [
        {"type": "missing", "loc": ["body", "name"], "msg": "Field required"}]})
    assert listed == "ElevenLabs refused the voice clone (HTTP 422): name: Field required"
    assert postcall.api_error_message(503, {"detail": "busy"}) == \
        "ElevenLabs failed to clone the voice (HTTP 503): busy"
    assert "\n" not in postcall.api_error_message(500, "oops\nmore")


# --------------------------------------------------------------------------- whole calls


def test_a_call_leaves_four_valid_files_and_a_cloned_voice_then_a_short_one_is_refused(
        serve: Any, tmp_path: Path) -> None:
    served = serve(speech_at=[3.0], env=clone_env(tmp_path))
    call_id = start_call(served, clone_voice="Test caller")
    wait_event(served, "transcript", 12.0, call_id=call_id, role="caller")
    ended, _ = hang_up(served, call_id)
    final = postcall_final(served, call_id, 20.0)
    assert final["stage"] == "done", final
    voice_id = final["voice_id"]
    assert isinstance(voice_id, str) and re.fullmatch(r"[A-Za-z0-9]{20}", voice_id)
    stages = [e["stage"] for e in served.named("postcall") if e["call_id"] == call_id]
    assert stages[0] == "saving" and stages[-1] == "done"
    assert "trimming" in stages and "cloning" in stages
    progress = [e["progress"] for e in served.named("postcall") if e["call_id"] == call_id]
    assert progress == sorted(progress) and progress[-1] == 1.0
    # The local agent server got callctl's stand-in key, not the user's.
    assert "voices/add received: name 'Test caller'" in server_log(served)
    assert ", key stand-in" in server_log(served) and ", key other" not in server_log(served)

    folder = tmp_path / "calls" / call_id
    assert sorted(p.name for p in folder.iterdir()) == sorted(FILES)  # job file gone
    rec_info, caller_info = sox_info(folder / "recording.wav"), sox_info(folder / "caller.wav")
    assert rec_info["Channels"] == "2" and rec_info["Sample Rate"] == "16000"
    assert caller_info["Channels"] == "1" and caller_info["Sample Rate"] == "16000"
    with wave.open(str(folder / "recording.wav")) as w:
        rec_frames = w.getnframes()
        assert w.getnchannels() == 2 and w.getsampwidth() == 2
    assert os.path.getsize(folder / "recording.wav") == 44 + rec_frames * 4  # finalised
    caller, rate = read_wav(folder / "caller.wav")
    assert rate == RATE and 1.5 * RATE < len(caller) < rec_frames
    peak = np.abs(caller.astype(np.int32)).max()
    assert 20 * math.log10(peak / 32767) == pytest.approx(postcall.PEAK_DBFS, abs=0.2)

    lines = [json.loads(x) for x in (folder / "transcript.jsonl").read_text().splitlines()]
    said = [e["text"] for e in served.named("transcript")
            if e["call_id"] == call_id and e["role"] == "agent"]
    assert said and [x["text"] for x in lines if x["role"] == "agent"] == said
    assert all(x["offset_s"] >= 0 and x["at"] for x in lines)
    assert any(x["role"] == "caller" for x in lines)

    summary = json.loads((folder / "summary.json").read_text())
    assert summary["call_id"] == call_id and summary["agent"] == "local"
    assert summary["end_reason"] == "hangup" and summary["failed"] is False
    assert summary["timings"] == ended["timings"]
    assert summary["started_at"] < summary["ended_at"]
    assert 3.0 < summary["duration_s"] < 20.0
    assert set(summary["xruns"]) >= {"device", "playback_underruns", "capture_overruns"}
    assert summary["recording"]["channels"] == 2
    assert summary["recording"]["duration_s"] == pytest.approx(rec_frames / RATE, abs=0.01)
    assert 1.5 <= summary["caller"]["speech_s"] <= 4.5
    assert summary["voice"]["status"] == "done" and summary["voice"]["sent"] is True
    assert summary["voice_id"] == summary["voice"]["voice_id"] == voice_id
    assert f"voices/add done: voice_id {voice_id}" in server_log(served)

    # A second call with no caller speech: refused, clearly, and nothing is sent.
    short_id = start_call(served, clone_voice="Too short")
    served.collect(1.5)
    hang_up(served, short_id)
    refused = postcall_final(served, short_id, 15.0)
    assert refused["stage"] == "failed" and refused["voice_id"] is None
    assert re.search(r"only \d+\.\d s of the caller's speech \(a voice clone needs 1\.5 s\)",
                     refused["message"]), refused["message"]
    assert "nothing was sent" in refused["message"]
    short = json.loads((tmp_path / "calls" / short_id / "summary.json").read_text())
    assert short["voice"]["status"] == "failed" and short["voice"]["sent"] is False
    assert server_log(served).count("voices/add received") == 1

    # `callctl calls` and `calls show`, as a user types them.
    record = ["--record-dir", str(tmp_path / "calls")]
    listing = callctl("calls", *record)
    assert listing.returncode == 0, listing.stderr
    rows = listing.stdout.splitlines()
    assert rows[0].split()[:3] == ["WHEN", "CALL", "AGENT"] and "HANGUP→SILENCE" in rows[0]
    assert short_id in rows[1] and call_id in rows[2]  # newest first
    assert voice_id in rows[2] and "(failed)" in rows[1]
    assert f"{ended['timings']['audio_silent_ms']:.1f} ms" in rows[2]
    as_json = json.loads(callctl("calls", "--json", *record).stdout)
    assert [r["call_id"] for r in as_json] == [short_id, call_id]
    assert as_json[1]["voice_id"] == voice_id and as_json[1]["agent"] == "local"
    assert as_json[1]["hangup_to_silence_ms"] == ended["timings"]["audio_silent_ms"]
    show = callctl("calls", "show", call_id[:-2], *record)
    assert show.returncode == 0, show.stderr
    assert f"call {call_id}" in show.stdout and voice_id in show.stdout
    assert "hangup → silent" in show.stdout and said[0] in show.stdout
    shown = json.loads(callctl("calls", "show", "last", "--json", *record).stdout)
    assert shown["call_id"] == short_id and shown["summary"]["voice"]["status"] == "failed"
    missing = callctl("calls", "show", "nope", *record)
    assert missing.returncode == 1 and "no call 'nope'" in missing.stderr
    empty = callctl("calls", "--record-dir", str(tmp_path / "nowhere"))
    assert empty.returncode == 0 and "no calls in" in empty.stdout

    assert "Traceback" not in (tmp_path / "calls" / "logs" / "postcall.log").read_text()
    # The key never left the environment: not in an event, a log or a file.
    assert SENTINEL_KEY not in json.dumps(served.events)
    assert SENTINEL_KEY not in everything_written(tmp_path)


def test_without_an_api_key_nothing_is_sent_and_the_message_says_why(
        serve: Any, tmp_path: Path) -> None:
    served = serve(speech_at=[3.0], env=clone_env(tmp_path, key=None))
    call_id = start_call(served, clone_voice="No key")
    wait_event(served, "transcript", 12.0, call_id=call_id, role="caller")
    hang_up(served, call_id)
    final = postcall_final(served, call_id, 15.0)
    assert final["stage"] == "failed"
    assert "no ElevenLabs API key" in final["message"]
    assert "ELEVENLABS_API_KEY" in final["message"] and "nothing was sent" in final["message"]
    folder = tmp_path / "calls" / call_id
    assert all((folder / name).exists() for name in FILES)
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["voice"]["sent"] is False and summary["voice_id"] is None
    assert "voices/add" not in server_log(served)

    # cancel_clone during a call drops that call's clone; the call is still saved.
    dropped = start_call(served, clone_voice="Changed my mind")
    assert served.request({"cmd": "cancel_clone"}) == {
        "ok": True, "call_id": dropped, "before_upload": True}
    hang_up(served, dropped)
    saved = postcall_final(served, dropped, 15.0)
    assert saved["stage"] == "done" and saved["voice_id"] is None
    assert json.loads((tmp_path / "calls" / dropped / "summary.json").read_text())["voice"] is None


def test_a_hangup_during_the_previous_calls_upload_is_not_delayed_and_cancel_clone_stops_one(
        serve: Any, tmp_path: Path) -> None:
    # Call 1 speaks at 3 s of the microphone's timeline; call 2 (whose microphone picks
    # up where call 1's stopped, at about 7.5 s) at 9.5 s.
    served = serve("--agent-server-arg=--voice-add-delay=12", speech_at=[3.0, 9.5],
                   env=clone_env(tmp_path))
    first = start_call(served, clone_voice="First")
    wait_event(served, "transcript", 12.0, call_id=first, role="caller")
    hang_up(served, first)
    wait_event(served, "postcall", 10.0, call_id=first, stage="cloning")
    deadline = time.monotonic() + 10
    while "voices/add received: name 'First'" not in server_log(served):
        assert time.monotonic() < deadline, "call 1's upload never reached the server"
        time.sleep(0.05)

    second = start_call(served, clone_voice="Second")
    wait_event(served, "transcript", 12.0, call_id=second, role="caller")
    assert not [e for e in served.named("postcall")
                if e["call_id"] == first and e["stage"] in postcall.FINAL_STAGES], \
        "call 1's upload should still be running"
    ended, round_trip = hang_up(served, second)
    t = ended["timings"]
    assert round_trip < 0.25, f"hangup request took {round_trip * 1000:.0f} ms"
    assert t["audio_silent_ms"] <= 20 and t["stream_stopped_ms"] <= 50
    assert not t["agent_killed"] and t["agent_exited_ms"] < 1500
    assert not [e for e in served.named("postcall")
                if e["call_id"] == first and e["stage"] in postcall.FINAL_STAGES]

    # Call 2's clone reaches the (slow) server; cancel it.
    wait_event(served, "postcall", 10.0, call_id=second, stage="cloning")
    deadline = time.monotonic() + 10
    while "voices/add received: name 'Second'" not in server_log(served):
        assert time.monotonic() < deadline, "call 2's upload never reached the server"
        time.sleep(0.05)
    reply = served.request({"cmd": "cancel_clone"})
    assert reply == {"ok": True, "call_id": second}
    cancelled = postcall_final(served, second, 5.0)
    assert cancelled["stage"] == "cancelled" and cancelled["voice_id"] is None
    summary = json.loads((tmp_path / "calls" / second / "summary.json").read_text())
    assert summary["voice"]["status"] == "cancelled" and summary["voice_id"] is None
    assert all((tmp_path / "calls" / second / name).exists() for name in FILES)
    deadline = time.monotonic() + 5  # the upload was cut, not left to finish
    while "POST /v1/voices/add abandoned" not in server_log(served):
        assert time.monotonic() < deadline, server_log(served)
        time.sleep(0.05)

    # Call 1's upload was never disturbed: its voice arrives.
    done = postcall_final(served, first, 20.0)
    assert done["stage"] == "done" and done["voice_id"]
    summary = json.loads((tmp_path / "calls" / first / "summary.json").read_text())
    assert summary["voice_id"] == done["voice_id"]
    assert served.request({"cmd": "cancel_clone"}) == {
        "ok": False, "error": "no voice clone in progress", "code": protocol.NO_CLONE}
    assert SENTINEL_KEY not in everything_written(tmp_path)


def test_callctl_call_clone_voice_shows_progress_and_prints_the_voice_id(
        tmp_path: Path, caller_speech: np.ndarray) -> None:
    from testing.sounds import write_caller_wav

    mic = write_caller_wav(tmp_path / "mic.wav", caller_speech, [3.0], 30)
    out = callctl("call", "--endpoint", f"ipc://{tmp_path}/ctl", "--device", "virtual",
                  "--mic", str(mic), "--record-dir", str(tmp_path / "calls"),
                  "--hangup-after", "9", "--clone-voice", "Front end",
                  env=clone_env(tmp_path))
    assert out.returncode == 0, out.stdout + out.stderr
    assert "cloning the caller's voice as 'Front end'" in out.stdout
    assert "  cloning: uploading" in out.stdout
    match = re.search(r"^voice id: ([A-Za-z0-9]{20})$", out.stdout, re.MULTILINE)
    assert match, out.stdout
    summaries = list((tmp_path / "calls").glob("*/summary.json"))
    assert len(summaries) == 1
    assert json.loads(summaries[0].read_text())["voice_id"] == match.group(1)
    assert SENTINEL_KEY not in out.stdout + out.stderr


def test_a_call_folder_claimed_by_a_live_process_is_left_alone_and_a_dead_ones_is_marked(
        tmp_path: Path) -> None:
    """``resume`` at a controller's start: a call whose claim is held (a call in progress
    in another controller sharing the record directory) is not touched; the same folder
    once the claim is released (its controller died mid-call) is marked failed."""
    record_dir = tmp_path / "calls"
    folder = record_dir / "20261129-101010-abcd"
    postcall.make_call_folder(folder)
    claim = postcall.reserve_failure_note(folder)
    assert claim is not None
    assert postcall.claim_call_folder(folder) is None, "the claim is exclusive"
    runner = postcall.PostcallRunner(f"ipc://{tmp_path}/ev")
    assert runner.resume(record_dir) == []
    assert postcall.read_failure_note(folder) is None and runner.take_failures() == []
    postcall.release_claim(claim)  # as the controller's death would
    assert runner.resume(record_dir) == [folder.name]
    assert "stopped during the call" in (postcall.read_failure_note(folder) or "")
    (failure,) = runner.take_failures()
    assert failure["call_id"] == folder.name and failure["stage"] == "failed"
    assert runner.resume(record_dir) == [], "marked once"
