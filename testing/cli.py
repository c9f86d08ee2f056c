"""The ``callctl`` command as a user runs it: a real process, its output captured."""

from __future__ import annotations

import subprocess
import sys
from typing import Any


def callctl(*args: str, timeout: float = 60, **popen_kwargs: Any
            ) -> subprocess.CompletedProcess[str]:
    """Run ``callctl ARGS…`` (this interpreter's ``callctl.cli``) to the end, with
    no input, text output captured; raises ``subprocess.TimeoutExpired`` after ``timeout``
    seconds. ``popen_kwargs`` go to ``subprocess.run`` (``env``, ``cwd``, ``input``…)."""
    popen_kwargs.setdefault("stdin", None if "input" in popen_kwargs else subprocess.DEVNULL)
    return subprocess.run([sys.executable, "-m", "callctl.cli", *args],
                          capture_output=True, text=True, timeout=timeout, **popen_kwargs)
