"""Bad files and arguments: one clear line, exit 2, nothing started."""

from __future__ import annotations

import os
import struct
from pathlib import Path

import pytest

from testing.cli import callctl


def wav_header(bits: int, channels: int = 1, rate: int = 16000, fmt: int = 1) -> bytes:
    block = channels * bits // 8
    return (b"RIFF" + struct.pack("<I", 36 + 4) + b"WAVE" + b"fmt "
            + struct.pack("<IHHIIHH", 16, fmt, channels, rate, rate * block, block, bits)
            + b"data" + struct.pack("<I", 4) + b"\0\0\0\0")


@pytest.mark.parametrize("content, problem", [
    (b"", "not a PCM WAV"),
    (b"hello, I am not a WAV", "not a PCM WAV"),
    (wav_header(8), "8-bit samples"),
    (wav_header(32, fmt=3), "not a PCM WAV"),
])
def test_a_bad_microphone_wav_names_the_file_and_the_problem(
        tmp_path: Path, content: bytes, problem: str) -> None:
    bad = tmp_path / "caller.wav"
    bad.write_bytes(content)
    out = callctl("call", "--endpoint", f"ipc://{tmp_path}/c", "--device", "virtual",
                  "--mic", str(bad))
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1, out.stderr
    assert str(bad) in lines[0] and problem in lines[0]


@pytest.mark.parametrize("config, problem", [
    ("api_key = ", "not valid TOML"),
    ('agent = "x"', "unknown setting 'agent'"),
    ("api_key = 5", "must be a string"),
])
def test_a_broken_config_file_is_one_line_and_exit_2(
        tmp_path: Path, config: str, problem: str) -> None:
    path = tmp_path / "config.toml"
    path.write_text(config)
    env = dict(os.environ, CALLCTL_CONFIG=str(path))
    out = callctl("call", "--endpoint", f"ipc://{tmp_path}/c", "--device", "virtual", env=env)
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and str(path) in lines[0] and problem in lines[0], out.stderr


def test_an_ipc_path_too_long_for_linux_is_refused_clearly(tmp_path: Path) -> None:
    out = callctl("status", "--endpoint", "ipc:///" + "x" * 120)
    assert out.returncode == 2 and "limited to 107 bytes" in out.stderr
