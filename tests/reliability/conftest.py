"""Fixtures of the reliability tests: small file systems that fill up (root, as CI is)."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest


def _tmpfs(mount: Path, options: str) -> Iterator[Path]:
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(mount)],
                   check=True, timeout=10)
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], timeout=10)


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 160 KB tmpfs: about 2.5 s of stereo 16 kHz recording fills it."""
    yield from _tmpfs(tmp_path / "small", "size=160k")


@pytest.fixture
def few_inodes(tmp_path: Path) -> Iterator[Path]:
    """A tmpfs with few inodes: a test takes the last ones while a controller uses it."""
    yield from _tmpfs(tmp_path / "rec", "size=4m,nr_inodes=64")
