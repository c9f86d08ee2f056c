"""Issue 14, item 9: malicious WAVs are refused in one line, before any large allocation.

Each read runs in a child process whose address space is capped
(``RLIMIT_AS``), so a reader that trusts the header fails with a
``MemoryError`` instead of taking the shared machine's memory.
"""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
MEMORY_CAP = 1536 * 1024 * 1024
"""Bytes of address space the reading child may use (numpy and soxr need ~0.5 GB)."""


def wav(rate: int = 16000, channels: int = 1, declared: int | None = None,
        payload: bytes = b"\0" * 356, bits: int = 16) -> bytes:
    """A PCM WAV whose data chunk declares ``declared`` bytes and holds ``payload``."""
    block = channels * bits // 8
    size = len(payload) if declared is None else declared
    return (b"RIFF" + struct.pack("<I", (36 + size) & 0xFFFFFFFF) + b"WAVE" + b"fmt "
            + struct.pack("<IHHIIHH", 16, 1, channels, rate, (rate * block) & 0xFFFFFFFF,
                          block, bits)
            + b"data" + struct.pack("<I", size) + payload)


def read_in_capped_child(path: Path, function: str) -> dict[str, object]:
    """``engine.wavfile.<function>(path)`` in a child with ``MEMORY_CAP``; what happened."""
    code = f"""
import json, resource, sys
resource.setrlimit(resource.RLIMIT_AS, ({MEMORY_CAP}, {MEMORY_CAP}))
from callctl.engine import wavfile
try:
    out = wavfile.{function}(sys.argv[1])
    frames = out[0] if isinstance(out, tuple) else out
    print(json.dumps({{"ok": True, "len": int(len(frames))}}))
except wavfile.WavFormatError as exc:
    print(json.dumps({{"ok": False, "error": str(exc)}}))
"""
    env = dict(os.environ, PYTHONPATH=str(ROOT), OPENBLAS_NUM_THREADS="1",
               OMP_NUM_THREADS="1")
    done = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True,
                          text=True, timeout=60, env=env, cwd=ROOT)
    assert done.returncode == 0, f"the reader crashed: {done.stderr.strip()[-400:]}"
    result: dict[str, object] = json.loads(done.stdout)
    return result


@pytest.mark.parametrize("function", ["read_wav", "read_mono_16k"])
@pytest.mark.parametrize("rate", [1, 7999, 192001, 4_000_000_000])
def test_a_rate_outside_8_to_192_khz_is_refused(tmp_path: Path, function: str,
                                                rate: int) -> None:
    path = tmp_path / "evil.wav"
    path.write_bytes(wav(rate=rate))
    assert path.stat().st_size == 400
    result = read_in_capped_child(path, function)
    assert result["ok"] is False, result
    error = str(result["error"])
    assert "\n" not in error and str(path) in error and "8000" in error and "192000" in error


@pytest.mark.parametrize("function", ["read_wav", "read_mono_16k"])
def test_a_declared_size_beyond_the_file_is_refused_before_reading(
        tmp_path: Path, function: str) -> None:
    path = tmp_path / "liar.wav"
    path.write_bytes(wav(declared=0xF0000000, payload=b"\0" * 200))
    assert path.stat().st_size == 244
    result = read_in_capped_child(path, function)
    assert result["ok"] is False, result
    error = str(result["error"])
    assert "\n" not in error and str(path) in error and "200" in error


def test_a_zero_or_absurd_channel_count_is_refused(tmp_path: Path) -> None:
    for channels in (0, 300):
        path = tmp_path / f"ch{channels}.wav"
        path.write_bytes(wav(channels=channels, payload=b"\0" * 1200))
        result = read_in_capped_child(path, "read_wav")
        assert result["ok"] is False, result


@pytest.mark.parametrize("rate", [8000, 16000, 44100, 192000])
def test_honest_wavs_still_read_at_every_accepted_rate(tmp_path: Path, rate: int) -> None:
    from callctl.engine.wavfile import GrowingWav, read_mono_16k, read_wav

    path = tmp_path / "ok.wav"
    writer = GrowingWav(path, rate, channels=2)
    writer.append(np.full(2 * rate // 10, 1000, np.int16))  # 0.1 s, stereo
    writer.close()
    frames, got = read_wav(path)
    assert got == rate and frames.shape == (rate // 10, 2)
    mono = read_mono_16k(path)
    assert abs(len(mono) - 1600) <= 2
    # A file longer than its header (a recording cut by a crash mid-append) still reads.
    with open(path, "ab") as f:
        f.write(b"\1\0" * 10)
    assert read_wav(path)[0].shape == (rate // 10, 2)


def test_the_cli_refuses_a_malicious_microphone_in_one_line(tmp_path: Path) -> None:
    for name, content in (("slow.wav", wav(rate=1)),
                          ("liar.wav", wav(declared=0xF0000000, payload=b"\0" * 200))):
        path = tmp_path / name
        path.write_bytes(content)
        out = subprocess.run(
            [sys.executable, "-m", "callctl.cli", "call", "--endpoint", f"ipc://{tmp_path}/c",
             "--device", "virtual", "--mic", str(path)], capture_output=True, text=True,
            timeout=60, stdin=subprocess.DEVNULL, cwd=ROOT,
            env=dict(os.environ, PYTHONPATH=str(ROOT)))
        lines = out.stderr.strip().splitlines()
        assert out.returncode == 2 and len(lines) == 1, out.stderr
        assert str(path) in lines[0]
