"""Fault injection at the socket level, for tests of what a client does when the peer misbehaves.

* ``stall``: the peer freezes: it stops reading the socket (the kernel buffers
  fill and the client's writes block: TCP backpressure) and stops writing, so a
  close frame is never even seen, let alone answered.
* ``slow-close``: the peer keeps working but never answers the closing
  handshake; it holds the TCP connection until the client gives up and drops it.
* ``drop``: the peer resets the TCP connection mid-call, with no close frame.
"""

from __future__ import annotations

import enum
import socket
import struct
from collections.abc import Callable

from websockets.asyncio.server import ServerConnection
from websockets.frames import Frame, Opcode


class Fault(enum.StrEnum):
    """Fault modes of ``callctl agent-server --fault``."""

    STALL = "stall"
    SLOW_CLOSE = "slow-close"
    DROP = "drop"


def stop_reading(ws: ServerConnection) -> None:
    """Stop reading the connection's socket for good (TCP backpressure on the client)."""
    ws.transport.pause_reading()


def reset_connection(ws: ServerConnection) -> None:
    """Close the TCP connection at once with a reset: no close frame, no FIN handshake."""
    transport = ws.transport
    sock = transport.get_extra_info("socket")
    if sock is not None:
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except OSError:
            pass  # already closed; abort() below still tears the transport down
    transport.abort()


def ignore_close_frames(ws: ServerConnection, on_close: Callable[[], None]) -> None:
    """Make the connection swallow the client's close frame instead of answering it.

    ``on_close`` is called (in the event loop) each time a close frame is
    swallowed. The connection stays OPEN on this side; it ends when the client
    drops the TCP connection (``recv()`` then raises ``ConnectionClosedError``).
    """
    protocol = ws.protocol
    original = protocol.recv_frame

    def recv_frame(frame: Frame) -> None:
        if frame.opcode is Opcode.CLOSE:
            on_close()
            return
        original(frame)

    protocol.recv_frame = recv_frame  # type: ignore[method-assign]
