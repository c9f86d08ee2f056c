"""A request client for one ZeroMQ REP endpoint (the controller's, an audio process's).

Every request has a timeout; a request that times out leaves the client usable
(the REQ socket is replaced: the "lazy pirate" pattern). ``send``/``poll_reply``
are the same request split in two, for a loop that must never wait.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import zmq

from callctl.engine import protocol


class ControlClient:
    """A REQ client with timeouts for one ZeroMQ endpoint. One thread uses it."""

    def __init__(self, endpoint: str, context: zmq.Context | None = None,
                 secure: Callable[[zmq.Socket], None] | None = None) -> None:
        self.endpoint = endpoint
        self._ctx = context or zmq.Context.instance()
        self._sock: zmq.Socket | None = None
        self._secure = secure  # e.g. CurveZMQ client keys' ``apply``
        self._sent_at: float | None = None

    def _socket(self) -> zmq.Socket:
        if self._sock is None:
            sock = self._ctx.socket(zmq.REQ)
            sock.setsockopt(zmq.LINGER, 0)
            sock.setsockopt(zmq.MAXMSGSIZE, protocol.MAX_FRAME_BYTES)
            if self._secure is not None:
                self._secure(sock)
            sock.connect(self.endpoint)
            self._sock = sock
        return self._sock

    def request(self, message: dict[str, Any], timeout: float = 2.0) -> dict[str, Any]:
        """Send one request, wait at most ``timeout`` seconds for the reply."""
        if self._sent_at is not None:
            self.close()  # a REQ socket sends again only after a reply: abandon that one
        sock = self._socket()
        sock.send(protocol.encode(message))
        if not sock.poll(int(timeout * 1000)):
            self.close()
            raise TimeoutError(f"no reply to {message.get('cmd')!r} from {self.endpoint} "
                               f"within {timeout:g} s")
        reply: dict[str, Any] = sock.recv_json()  # type: ignore[assignment]
        return reply

    @property
    def pending_for(self) -> float | None:
        """Seconds since the request sent by ``send`` went out unanswered, else None."""
        return None if self._sent_at is None else time.monotonic() - self._sent_at

    def send(self, message: dict[str, Any]) -> None:
        """Send a request and return at once; its reply comes from ``poll_reply``. A
        request still unanswered is abandoned (its socket replaced)."""
        if self._sent_at is not None:
            self.close()
        self._socket().send(protocol.encode(message))
        self._sent_at = time.monotonic()

    def poll_reply(self) -> dict[str, Any] | None:
        """The reply to the request of ``send`` if it has come, else None. Never waits."""
        sock = self._sock
        if self._sent_at is None or sock is None or not sock.poll(0):
            return None
        self._sent_at = None
        reply: dict[str, Any] = sock.recv_json()  # type: ignore[assignment]
        return reply

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close(0)
            self._sock = None
        self._sent_at = None
