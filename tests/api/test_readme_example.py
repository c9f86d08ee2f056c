"""The README's Python API example, extracted and run exactly as written."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
MARKER = "<!-- api-example"


def readme_example() -> str:
    """The first ```python block after the ``api-example`` marker in README.md."""
    text = (ROOT / "README.md").read_text()
    assert MARKER in text, "the README lost its API example marker"
    found = re.search(r"```python\n(.*?)```", text[text.index(MARKER):], re.DOTALL)
    assert found, "no python block after the marker"
    return found.group(1)


def test_the_readme_api_example_runs_as_written(tmp_path: Path) -> None:
    script = tmp_path / "example.py"
    script.write_text(readme_example())
    # Its own runtime directory: the example's controller binds a private endpoint there.
    env = {**os.environ, "XDG_RUNTIME_DIR": str(tmp_path / "run")}
    (tmp_path / "run").mkdir(mode=0o700)
    done = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120,
                          stdin=subprocess.DEVNULL)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith("calling: "), done.stdout
    assert lines[1].startswith("agent: Hello"), done.stdout
    assert re.fullmatch(r"silent \d+\.\d ms after the hangup arrived", lines[2]), done.stdout
    assert lines[3] == "refused: no call to hang up", done.stdout
    # The controller it started is gone, and so is its private endpoint directory.
    assert not any((tmp_path / "run" / "callctl").glob("serve-*")), \
        list((tmp_path / "run" / "callctl").iterdir())
