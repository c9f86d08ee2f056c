"""The one serving loop of every control socket: receive, validate, dispatch, reply.

The controller, the audio process and the agent process each bind a REP socket
and answer the commands of their spec (``engine.protocol``). What they share
lives here, once:

* ``Commands``: the base class of a process's handlers. A subclass names its
  spec (``class AudioEngine(Commands, spec=protocol.AUDIO_COMMANDS)``) and has
  one method ``cmd_<name>(self, request) -> reply`` per command of it; the
  class statement raises ``SpecMismatch`` at import if a spec'd command has no
  handler or a ``cmd_*`` method has no spec. ``grep cmd_hangup`` finds the
  spec (``protocol.py``), the handlers, ``docs/protocol.md`` and the tests.
* ``CommandServer``: the socket's options (``ZMQ_MAXMSGSIZE``, no linger),
  the poll, the receive (a REP socket must read every frame of a request
  before it may reply, or its next send fails and the loop dies), the
  validation, the dispatch to the handler, and the error reply — with a
  ``code`` (``protocol.ERROR_CODES``) — for a bad frame or a handler that
  raises. A process runs its loop as ``while …: server.turn(timeout, others)``
  and does its own periodic work between turns (the controller's ``_tick``).

Owned by the thread that polls the socket; not thread-safe.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any, ClassVar

import zmq

from callctl.engine import protocol
from callctl.engine.protocol import Field

HANDLER_PREFIX = "cmd_"
"""A command ``x``'s handler is the method ``cmd_x``."""

Request = dict[str, Any]
Reply = dict[str, Any]
Pollable = zmq.Socket | int
"""What ``CommandServer.turn`` also waits on: a ZeroMQ socket or a file descriptor."""


class SpecMismatch(TypeError):
    """A handler class and its spec disagree: raised when the class is defined."""


def check_handlers(spec: dict[str, dict[str, Field]], handlers: type) -> None:
    """Raise ``SpecMismatch`` unless ``handlers`` has exactly one ``cmd_<name>`` per command."""
    handled = {name[len(HANDLER_PREFIX):] for name in dir(handlers)
               if name.startswith(HANDLER_PREFIX) and callable(getattr(handlers, name))}
    unhandled, unspecified = sorted(spec.keys() - handled), sorted(handled - spec.keys())
    problems = []
    if unhandled:
        problems.append("no handler for " + ", ".join(f"{HANDLER_PREFIX}{n}" for n in unhandled))
    if unspecified:
        problems.append("no spec for handler " + ", ".join(f"{HANDLER_PREFIX}{n}"
                                                           for n in unspecified))
    if problems:
        raise SpecMismatch(f"{handlers.__name__}: {'; '.join(problems)}")


class Commands:
    """Base of one process's command handlers: ``cmd_<name>(request) -> reply`` each.

    ``spec`` (a class keyword) is the process's command table in
    ``engine.protocol``; the subclass is checked against it when it is defined.
    ``failures`` maps an exception a handler may raise to the error code its
    reply carries (``"<cmd> failed: <exc>"``); any other exception is a bug and
    is answered ``internal``. ``redact`` (optional) rewrites every reply
    before it is sent. Handlers run on the serving thread.
    """

    spec: ClassVar[dict[str, dict[str, Field]]]
    failures: ClassVar[dict[type[BaseException], str]] = {}

    def __init_subclass__(cls, spec: dict[str, dict[str, Field]] | None = None,
                          **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if spec is not None:
            cls.spec = spec
        if hasattr(cls, "spec"):
            check_handlers(cls.spec, cls)

    def dispatch(self, request: Request) -> Reply:
        """The reply to one validated request: its handler's, or an error reply."""
        cmd = request["cmd"]
        handler: Callable[[Request], Reply] = getattr(self, HANDLER_PREFIX + cmd)
        try:
            return handler(request)
        except Exception as exc:  # a bug must not take the call down with it
            for kind, code in self.failures.items():
                if isinstance(exc, kind):
                    return protocol.error(code, f"{cmd} failed: {exc}")
            return protocol.error(protocol.INTERNAL,
                                  f"internal error: {type(exc).__name__}: {exc}")

    def redact(self, reply: Reply) -> Reply:
        """The reply as sent; the default sends it as it is."""
        return reply


class CommandServer:
    """A REP socket answering ``handlers``' commands, a request per ``turn``.

    Sets the socket's options itself (construct it before ``bind``: the size
    limit applies to connections made after). ``received_at`` is
    ``time.monotonic()`` when the request being handled was read, so a
    handler can time from the frame's arrival whatever it waited for.
    """

    def __init__(self, socket: zmq.Socket, handlers: Commands) -> None:
        socket.setsockopt(zmq.MAXMSGSIZE, protocol.MAX_FRAME_BYTES)
        socket.setsockopt(zmq.LINGER, 0)
        self.socket = socket
        self.handlers = handlers
        self.received_at = 0.0

    def turn(self, timeout: float, others: Sequence[Pollable] = ()) -> set[Pollable]:
        """Wait at most ``timeout`` seconds for a request or one of ``others``.

        A request that came is answered before this returns (one per turn:
        REP answers one at a time). Returns those of ``others`` that are
        ready to read, for the caller to handle.
        """
        poller = zmq.Poller()
        poller.register(self.socket, zmq.POLLIN)
        for other in others:
            poller.register(other, zmq.POLLIN)
        ready = dict(poller.poll(max(0, round(timeout * 1000))))
        if self.socket in ready:
            self.serve_one()
        return {other for other in others if other in ready}

    def serve_one(self) -> bool:
        """Answer the request waiting, if one is; never blocks. True if one was read."""
        try:
            frames = self.socket.recv_multipart(zmq.NOBLOCK)
        except zmq.Again:
            return False
        self.received_at = time.monotonic()
        if len(frames) != 1:
            self.reply(protocol.error(protocol.BAD_REQUEST,
                                      f"a request is one frame, got {len(frames)}"))
            return True
        try:
            request = protocol.decode_request(frames[0], self.handlers.spec)
        except protocol.ProtocolError as exc:
            self.reply(protocol.error(exc.code, str(exc)))
            return True
        self.reply(self.handlers.dispatch(request))
        return True

    def reply(self, message: Reply) -> None:
        """Send ``message`` as the reply; a peer gone or a socket in a bad state is
        dropped, never raised (the loop must go on)."""
        try:
            self.socket.send(protocol.encode(self.handlers.redact(message)), zmq.NOBLOCK)
        except zmq.ZMQError:
            pass
