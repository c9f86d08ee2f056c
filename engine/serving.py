"""The one request/reply loop step that every process's control socket uses.

The controller, the audio process and the agent process each bind a REP socket
and answer requests from it. ``RequestSocket`` is the part they share: it
receives a *whole* message (a REP socket must read every frame of a request
before it may reply, or its next send fails and the loop dies), refuses
anything but one frame, decodes and validates it against the process's command
table (``engine.protocol``), and sends the reply, never letting a ZeroMQ error
out. A bad frame gets an error reply; the loop carries on.

Owned by the thread that polls the socket; not thread-safe.
"""

from __future__ import annotations

import time
from typing import Any

import zmq

from callctl.engine import protocol
from callctl.engine.protocol import Field


class RequestSocket:
    """A bound REP socket that answers any frame sequence and keeps serving.

    ``received_at``: ``time.monotonic()`` when the last request's frames were read,
    so a handler can report times from the moment a request arrived, whatever
    it had to wait for.
    """

    def __init__(self, socket: zmq.Socket, commands: dict[str, dict[str, Field]]) -> None:
        socket.setsockopt(zmq.MAXMSGSIZE, protocol.MAX_FRAME_BYTES)
        socket.setsockopt(zmq.LINGER, 0)
        self.socket = socket
        self.commands = commands
        self.received_at = 0.0

    def receive(self) -> dict[str, Any] | None:
        """The next request, validated; None if there was none ready, or if it was bad
        (then it has been answered with an error already). Never blocks."""
        try:
            frames = self.socket.recv_multipart(zmq.NOBLOCK)
        except zmq.Again:
            return None
        self.received_at = time.monotonic()
        if len(frames) != 1:
            self.reply(protocol.error(f"a request is one frame, got {len(frames)}"))
            return None
        try:
            return protocol.decode_request(frames[0], self.commands)
        except protocol.ProtocolError as exc:
            self.reply(protocol.error(str(exc)))
            return None

    def reply(self, message: dict[str, Any]) -> None:
        """Send ``message`` as the reply; a peer gone or a socket in a bad state is
        dropped, never raised (the loop must go on)."""
        try:
            self.socket.send(protocol.encode(message), zmq.NOBLOCK)
        except zmq.ZMQError:
            pass
