"""The window's ZeroMQ link to a controller: requests on a DEALER, events on a SUB.

GUI thread only; nothing here blocks. Both sockets are watched by a
``QSocketNotifier`` on their ``ZMQ_FD``. That descriptor is edge-triggered:
it says "the socket's state may have changed", not "a message is waiting",
and only until ``ZMQ_EVENTS`` is read. So on every notification, and after
every send (a send can swallow the edge of a message that arrived meanwhile),
the socket is drained while ``ZMQ_EVENTS & POLLIN``. A slow safety timer
drains too, so a missed edge costs at most its interval, never a stuck link.

Requests are single-frame JSON objects (docs/protocol.md). The DEALER speaks
to the controller's REP with an empty delimiter frame; REP answers one
request at a time, in order, so replies are matched to requests first in,
first out. Every request has a deadline (a ``QTimer``), counted from when
the request ahead of it was due at the latest: when one passes, every
pending request is answered with ``{"ok": false, "error": "controller not
responding …", "code": "not_responding", "timeout": true}``,
``unresponsive`` is emitted, and the DEALER is replaced, so that a late
reply cannot be matched to the wrong request (ZeroMQ's "lazy pirate"
pattern). The next reply that arrives emits ``responsive``.

Events are multipart ``[topic, json]``; each is emitted as
``event_received(topic, object)``. Malformed events are dropped.
"""

from __future__ import annotations

import json
import sys
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

import zmq
from PyQt6.QtCore import QObject, QSocketNotifier, QTimer, pyqtSignal

from callctl.engine import protocol

Reply = dict[str, Any]
ReplyHandler = Callable[[Reply], None]

DEFAULT_TIMEOUT_S = 3.0
"""Seconds a request may wait for its reply before the controller counts as not responding."""
SAFETY_DRAIN_MS = 250
"""Interval of the drain that does not rely on the notifier (a missed edge costs at most this)."""


@dataclass
class _Pending:
    cmd: str
    on_reply: ReplyHandler | None
    timeout: float
    """Seconds."""
    deadline: float
    """``time.monotonic()`` seconds."""


def _readable(sock: zmq.Socket) -> bool:
    """Reading ``ZMQ_EVENTS`` also re-arms the edge-triggered ``ZMQ_FD``."""
    return bool(cast(int, sock.getsockopt(zmq.EVENTS)) & zmq.POLLIN)


def _new_socket(ctx: zmq.Context, kind: int) -> zmq.Socket:
    sock = ctx.socket(kind)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.MAXMSGSIZE, protocol.MAX_FRAME_BYTES)
    sock.setsockopt(zmq.RECONNECT_IVL, 20)  # ms: a controller that is starting is found fast
    sock.setsockopt(zmq.RECONNECT_IVL_MAX, 500)
    return sock


class ControllerLink(QObject):
    """A DEALER to a controller's control endpoint and, once known, a SUB to its events.

    Construct and use on the GUI thread. ``request`` never blocks: it queues
    the frame and returns; ``on_reply`` runs later on the GUI thread with the
    reply (or a timeout error). ``close`` drops everything pending unanswered.
    """

    event_received = pyqtSignal(str, object)
    """``(topic, body)``: one controller event; ``body`` is the decoded JSON object."""
    unresponsive = pyqtSignal(str)
    """A request missed its deadline; the argument is one line for a person."""
    responsive = pyqtSignal()
    """A reply arrived after ``unresponsive``."""

    def __init__(self, endpoint: str, parent: QObject | None = None,
                 context: zmq.Context | None = None) -> None:
        super().__init__(parent)
        self.endpoint = endpoint
        self.events_endpoint: str | None = None
        self._ctx = context or zmq.Context.instance()
        self._pending: deque[_Pending] = deque()
        self._dealer: zmq.Socket | None = None
        self._dealer_notifier: QSocketNotifier | None = None
        self._sub: zmq.Socket | None = None
        self._sub_notifier: QSocketNotifier | None = None
        self._draining_dealer = False
        self._draining_sub = False
        self._is_unresponsive = False
        self._closed = False
        self._deadline_timer = QTimer(self)
        self._deadline_timer.setSingleShot(True)
        self._deadline_timer.timeout.connect(self._check_deadlines)
        self._safety = QTimer(self)
        self._safety.setInterval(SAFETY_DRAIN_MS)
        self._safety.timeout.connect(self._drain_all)
        self._safety.start()
        self._open_dealer()

    # -- sockets -------------------------------------------------------------

    def _watch(self, sock: zmq.Socket, slot: Callable[[], None]) -> QSocketNotifier:
        fd = cast(Any, sock.getsockopt(zmq.FD))  # an int on POSIX
        notifier = QSocketNotifier(fd, QSocketNotifier.Type.Read, self)
        notifier.activated.connect(lambda *_: slot())
        return notifier

    def _open_dealer(self) -> None:
        self._dealer = _new_socket(self._ctx, zmq.DEALER)
        self._dealer.connect(self.endpoint)
        self._dealer_notifier = self._watch(self._dealer, self._drain_dealer)

    def _close_dealer(self) -> None:
        if self._dealer_notifier is not None:
            self._dealer_notifier.setEnabled(False)
            self._dealer_notifier.deleteLater()
            self._dealer_notifier = None
        if self._dealer is not None:
            self._dealer.close(0)
            self._dealer = None

    def subscribe(self, events_endpoint: str) -> None:
        """Receive the events published at ``events_endpoint`` (all topics). Idempotent."""
        if self._closed or events_endpoint == self.events_endpoint:
            return
        self._close_sub()
        self.events_endpoint = events_endpoint
        sub = _new_socket(self._ctx, zmq.SUB)
        sub.setsockopt(zmq.SUBSCRIBE, b"")
        sub.connect(events_endpoint)
        self._sub = sub
        self._sub_notifier = self._watch(sub, self._drain_sub)
        self._drain_sub()

    def _close_sub(self) -> None:
        if self._sub_notifier is not None:
            self._sub_notifier.setEnabled(False)
            self._sub_notifier.deleteLater()
            self._sub_notifier = None
        if self._sub is not None:
            self._sub.close(0)
            self._sub = None
        self.events_endpoint = None

    def close(self) -> None:
        """Close both sockets; pending requests are dropped without an answer."""
        self._closed = True
        self._safety.stop()
        self._deadline_timer.stop()
        self._pending.clear()
        self._close_dealer()
        self._close_sub()

    # -- requests ------------------------------------------------------------

    @property
    def pending(self) -> int:
        """Requests sent and not yet answered."""
        return len(self._pending)

    def request(self, message: dict[str, Any], on_reply: ReplyHandler | None = None,
                timeout: float | None = None) -> None:
        """Send ``message``; ``on_reply(reply)`` runs on the GUI thread when it is answered.

        ``timeout`` in seconds (default ``DEFAULT_TIMEOUT_S``). A request that
        cannot even be queued (link closed, queue full) is answered with an
        error on the next turn of the event loop, never synchronously.
        """
        cmd = str(message.get("cmd"))
        timeout = DEFAULT_TIMEOUT_S if timeout is None else timeout
        if self._closed or self._dealer is None:
            self._answer_later(on_reply, protocol.error(protocol.NOT_CONNECTED, "not connected"))
            return
        try:
            self._dealer.send_multipart([b"", protocol.encode(message)], zmq.NOBLOCK)
        except zmq.Again:
            self._answer_later(on_reply, protocol.error(
                protocol.NOT_RESPONDING, "controller not responding (queue full)", timeout=True))
            return
        # The controller answers one request at a time: a request's clock starts when the
        # one ahead of it is due at the latest (a slow ``devices`` does not time out the
        # ``status`` queued behind it).
        now = time.monotonic()
        start = max(now, self._pending[-1].deadline) if self._pending else now
        self._pending.append(_Pending(cmd, on_reply, timeout, start + timeout))
        self._arm_deadline()
        self._drain_dealer()  # the send may have swallowed an edge

    def _answer_later(self, on_reply: ReplyHandler | None, reply: Reply) -> None:
        if on_reply is not None:
            QTimer.singleShot(0, lambda: self._call(on_reply, reply))

    def _arm_deadline(self) -> None:
        if not self._pending:
            self._deadline_timer.stop()
            return
        due = min(p.deadline for p in self._pending)
        self._deadline_timer.start(max(0, round((due - time.monotonic()) * 1000)) + 1)

    def _check_deadlines(self) -> None:
        now = time.monotonic()
        late = [p for p in self._pending if p.deadline <= now]
        if not late:
            self._arm_deadline()
            return
        first = late[0]
        message = (f"controller not responding (no reply to {first.cmd!r} "
                   f"within {first.timeout:g} s)")
        pending, self._pending = list(self._pending), deque()
        self._close_dealer()
        self._open_dealer()
        self._is_unresponsive = True
        for p in pending:
            if p.on_reply is not None:
                self._call(p.on_reply, protocol.error(protocol.NOT_RESPONDING, message,
                                                      timeout=True))
        self.unresponsive.emit(message)

    # -- draining ------------------------------------------------------------

    def _drain_all(self) -> None:
        self._drain_dealer()
        self._drain_sub()

    def _drain_dealer(self) -> None:
        if self._draining_dealer:
            return  # re-entered from a reply handler: the outer loop re-reads ZMQ_EVENTS
        self._draining_dealer = True
        try:
            while (sock := self._dealer) is not None and _readable(sock):
                try:
                    frames = sock.recv_multipart(zmq.NOBLOCK)
                except zmq.Again:
                    break
                self._on_reply_frame(frames[-1])
        finally:
            self._draining_dealer = False

    def _on_reply_frame(self, frame: bytes) -> None:
        if not self._pending:
            return  # nobody asked (cannot happen with one REP peer; ignore)
        pending = self._pending.popleft()
        self._arm_deadline()
        try:
            reply = json.loads(frame)
        except ValueError:
            reply = None
        if not isinstance(reply, dict):
            reply = protocol.error(protocol.BAD_REPLY,
                                   "the controller sent a reply that is not JSON")
        if self._is_unresponsive:
            self._is_unresponsive = False
            self.responsive.emit()
        if pending.on_reply is not None:
            self._call(pending.on_reply, reply)

    def _drain_sub(self) -> None:
        if self._draining_sub:
            return
        self._draining_sub = True
        try:
            while (sock := self._sub) is not None and _readable(sock):
                try:
                    frames = sock.recv_multipart(zmq.NOBLOCK)
                except zmq.Again:
                    break
                if len(frames) != 2:
                    continue
                try:
                    topic = frames[0].decode()
                    body = json.loads(frames[1])
                except ValueError:
                    continue
                if isinstance(body, dict):
                    self.event_received.emit(topic, body)
        finally:
            self._draining_sub = False

    @staticmethod
    def _call(handler: ReplyHandler, reply: Reply) -> None:
        """Run a reply handler; its exception is reported but never stops the draining."""
        try:
            handler(reply)
        except Exception:
            sys.excepthook(*sys.exc_info())
