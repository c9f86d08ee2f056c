"""One controller per endpoint: an exclusive lock held for the controller's whole life.

A second controller on the same ipc endpoint used to probe the first (300 ms),
unlink its socket when it did not answer in time (busy, not dead), and bind its
own; when the first exited it unlinked the second's. Now the first takes
``flock(LOCK_EX)`` on ``<socket>.lock`` before it binds and holds it until it
has removed its sockets; a second one finds the lock taken and refuses at
once. Only the lock's holder ever unlinks a socket file there, and a socket
file found by a new holder can only be a dead controller's. The kernel drops
the lock when its holder dies, however it dies. The lock file itself stays:
unlinking it would let two processes lock two different files of one name.

tcp endpoints need none: the kernel refuses a second bind of the same port.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path


class EndpointTaken(RuntimeError):
    """Another controller holds the endpoint's lock. ``str()`` is one line."""


class EndpointLock:
    """The held lock of an ipc endpoint (a no-op one for tcp). Owned by the controller."""

    def __init__(self, fd: int | None) -> None:
        self._fd = fd

    @classmethod
    def take(cls, endpoint: str) -> EndpointLock:
        """Lock ``endpoint`` for this process, or raise ``EndpointTaken`` (one line) if
        another controller holds it."""
        if not endpoint.startswith("ipc://"):
            return cls(None)
        path = Path(endpoint[len("ipc://"):] + ".lock")
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise EndpointTaken(f"another controller is already serving {endpoint}") from None
        except OSError:
            os.close(fd)
            raise
        return cls(fd)

    @property
    def held(self) -> bool:
        """True while this process holds an ipc endpoint's lock."""
        return self._fd is not None

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
