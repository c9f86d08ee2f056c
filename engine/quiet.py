"""Hide PortAudio's ALSA/JACK start-up chatter, which it prints straight to fd 2.

The noise comes from C libraries, so redirecting ``sys.stderr`` is not
enough: the file descriptor itself is pointed at /dev/null for the duration.
Only the thread that initialises PortAudio should use this, at start-up.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def quiet_stderr(enabled: bool = True) -> Iterator[None]:
    """While active, anything written to fd 2 is discarded (when ``enabled``)."""
    if not enabled:
        yield
        return
    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)
