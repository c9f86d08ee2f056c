"""What ``pip install .`` puts in site-packages: the ``callctl`` namespace, nothing else."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_the_wheel_installs_callctl_alone(tmp_path: Path) -> None:
    # Built from a copy: pip builds in the source tree, and a build/ left there from an
    # older tree would put modules that no longer exist into the next wheel.
    source = tmp_path / "source"
    shutil.copytree(ROOT, source, symlinks=True, ignore=shutil.ignore_patterns(
        ".git", ".venv", ".venv-*", "build", "*.egg-info", "__pycache__", ".*_cache",
        "results", "*.so"))
    done = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", str(source),
                           "-w", str(tmp_path)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    (wheel,) = tmp_path.glob("callctl-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    name, version = wheel.name.split("-")[:2]
    assert {n.split("/")[0] for n in names} == {"callctl", f"{name}-{version}.dist-info"}
    # The compiled parts (the native PulseAudio backend's period loop, the echo
    # canceller's frames), each with its stub.
    for module in ("callctl/engine/devices/_pulse_period", "callctl/engine/_echo_batch"):
        assert [n for n in names if n.startswith(module + ".") and n.endswith(".so")], names
        assert module + ".pyi" in names, names
    for package in ("engine", "controller", "gui", "cli"):
        assert f"callctl/{package}/__init__.py" in names, package
    assert "callctl/engine/agent_server/default_script.toml" in names, "package data"
    assert not [n for n in names if "soundserver" in n or n.startswith("callctl/testing")], \
        "the test rig stays in the repository"
    entry_points = zipfile.ZipFile(wheel).read(
        next(n for n in names if n.endswith("entry_points.txt"))).decode()
    assert "callctl = callctl." in entry_points, entry_points
