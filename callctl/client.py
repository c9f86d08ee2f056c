"""``callctl.Client``: a running controller, from Python, over the public protocol.

The same JSON requests and events as docs/protocol.md, with typed errors:

* :class:`NotRunning` — no controller answers at the endpoint (the CLI's exit 2);
* :class:`Refused` — the controller answered ``{"ok": false, ...}`` (e.g. ``hangup``
  with no call: the CLI's exit 1); ``.reply`` is that reply;
* :class:`CallctlError` — their base, and what a bad endpoint or bad CurveZMQ keys
  raise. Every one carries ``.code`` (a short machine-readable word, or None when
  the controller's reply had none) and ``str()``, one line a person can read.

Threads: a ``Client`` (and each :class:`EventStream`) belongs to the thread that
uses it; make one per thread. Each holds ZeroMQ sockets; ``close()`` them (or use
``with``). Times are seconds.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from types import TracebackType
from typing import Any

import zmq

from callctl.controller import endpoints
from callctl.controller.curve import ClientKeys, CurveError, curve_dir
from callctl.engine import protocol
from callctl.engine.control_client import ControlClient

REQUEST_TIMEOUT_S = 3.0
"""How long a request waits for the controller's reply before :class:`NotRunning`."""
CALL_TIMEOUT_S = 10.0
"""``call`` waits longer: the controller starts the agent side before it answers."""
SUBSCRIBE_SETTLE_S = 0.2
"""A ZeroMQ subscription takes a moment to reach the publisher; events published
before that are not delivered. ``events()`` returns after this long, so a request
sent afterwards has its events seen."""


class CallctlError(Exception):
    """A request that did not do what was asked. ``code``: machine-readable or None."""

    def __init__(self, message: str, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.code = code


class NotRunning(CallctlError):
    """No controller answered at the endpoint (nothing listens, or it did not reply in
    time). ``code`` is ``"not_running"``."""

    def __init__(self, message: str) -> None:
        super().__init__(message, "not_running")


class Refused(CallctlError):
    """The controller answered with an error reply. ``reply`` is that reply as sent;
    ``code`` is its ``code`` field (None from a controller that sends none)."""

    def __init__(self, reply: dict[str, Any]) -> None:
        code = reply.get("code")
        super().__init__(str(reply.get("error") or "refused"),
                         code if isinstance(code, str) else None)
        self.reply = reply


class Client:
    """A controller at ``endpoint`` (default: ``$CALLCTL_ENDPOINT``, else the per-user
    ipc socket that ``callctl serve`` binds). ``curve_dir``: CurveZMQ client keys
    from ``callctl keys`` (default ``$CALLCTL_CURVE_DIR``), needed for ``tcp://``
    unless ``insecure``. Constructing connects nothing and sends nothing; a bad
    endpoint or unusable keys raise :class:`CallctlError` at once."""

    def __init__(self, endpoint: str | None = None, *, curve_dir: str | Path | None = None,
                 insecure: bool = False, timeout: float = REQUEST_TIMEOUT_S) -> None:
        keys_dir = _curve_dir(curve_dir)
        try:
            self.keys = ClientKeys.load(keys_dir) if keys_dir else None
            self.endpoint = endpoints.control_endpoint(endpoint, curve=keys_dir is not None,
                                                       insecure=insecure)
        except CurveError as exc:
            raise CallctlError(str(exc), "bad_keys") from None
        except endpoints.EndpointError as exc:
            raise CallctlError(str(exc), "bad_endpoint") from None
        self.timeout = timeout
        self._control: ControlClient | None = None

    # -- the commands ---------------------------------------------------------------

    def call(self, agent: str | None = None, clone_voice: str | None = None) -> dict[str, Any]:
        """Start a call (``agent``: ``"local"``, an ElevenLabs agent id, or None for the
        controller's ``--agent``); returns the reply (``call_id``, ``state``). Progress
        follows as events. :class:`Refused` if a call is already in progress."""
        message: dict[str, Any] = {"cmd": "call"}
        if agent is not None:
            message["agent"] = agent
        if clone_voice is not None:
            message["clone_voice"] = clone_voice
        return self.request(message, timeout=max(self.timeout, CALL_TIMEOUT_S))

    def hangup(self) -> dict[str, Any]:
        """End the call; returns once the audio is silent (``call_id``, ``audio`` with
        ``silent_ms`` …). :class:`Refused` when there is no call to hang up."""
        return self.request({"cmd": "hangup"})

    def status(self) -> dict[str, Any]:
        """The controller's ``status`` reply: ``state``, ``endpoint``, ``events``, ``call``…"""
        return self.request({"cmd": "status"})

    def shutdown(self) -> dict[str, Any]:
        """Ask the controller to end any call and exit."""
        return self.request({"cmd": "shutdown"})

    def request(self, message: dict[str, Any], timeout: float | None = None) -> dict[str, Any]:
        """Send one request (a protocol message, ``{"cmd": ...}``) and return the reply
        when it is ``ok``; :class:`Refused` when it is not, :class:`NotRunning` when no
        reply comes within ``timeout`` seconds (default: the client's)."""
        wait = self.timeout if timeout is None else timeout
        if self.endpoint.startswith("ipc://") and not Path(self.endpoint[6:]).exists():
            # Nothing bound there: say so now rather than after the timeout.
            raise NotRunning(f"no controller at {self.endpoint} (start one with "
                             "`callctl call` or `callctl serve`)")
        if self._control is None:
            self._control = ControlClient(self.endpoint,
                                          secure=self.keys.apply if self.keys else None)
        try:
            reply = self._control.request(message, timeout=wait)
        except TimeoutError:
            raise NotRunning(f"no controller answered at {self.endpoint} within "
                             f"{wait:g} s") from None
        if not reply.get("ok"):
            raise Refused(reply)
        return reply

    def events(self, topics: Iterable[str] = (), timeout: float | None = None,
               events_endpoint: str | None = None) -> EventStream:
        """Subscribe to the controller's events (all, or only ``topics``: ``state``,
        ``transcript``, ``levels``, ``call.ended``, ``error``, ``agent``,
        ``postcall``). Iterating yields each event as a dict (its ``event`` field is
        the topic) and stops after ``timeout`` seconds in all (None: never). Asks
        ``status`` for the event endpoint unless ``events_endpoint`` is given."""
        where = events_endpoint or str(self.status()["events"])
        return EventStream(where, topics, timeout, self.keys)

    def close(self) -> None:
        if self._control is not None:
            self._control.close()
            self._control = None

    def __enter__(self) -> Client:
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


class EventStream:
    """A subscription to a controller's events; an iterator of event dicts. Close it
    (or use ``with``) to drop the subscription."""

    def __init__(self, endpoint: str, topics: Iterable[str] = (), timeout: float | None = None,
                 keys: ClientKeys | None = None) -> None:
        self.endpoint = endpoint
        self._deadline = None if timeout is None else time.monotonic() + timeout
        sub: zmq.Socket = zmq.Context.instance().socket(zmq.SUB)
        sub.setsockopt(zmq.LINGER, 0)
        sub.setsockopt(zmq.MAXMSGSIZE, protocol.MAX_FRAME_BYTES)
        if keys is not None:
            keys.apply(sub)
        for topic in list(topics) or [""]:
            sub.setsockopt(zmq.SUBSCRIBE, topic.encode())
        sub.connect(endpoint)
        self._sub: zmq.Socket | None = sub
        time.sleep(SUBSCRIBE_SETTLE_S)

    def next(self, timeout: float) -> dict[str, Any] | None:
        """The next event, or None if none came within ``timeout`` seconds (or the
        stream's own deadline passed, or it is closed)."""
        if self._sub is None:
            return None
        if self._deadline is not None:
            timeout = min(timeout, self._deadline - time.monotonic())
        if timeout <= 0 or not self._sub.poll(int(timeout * 1000)):
            return None
        topic, body = self._sub.recv_multipart()
        event = json.loads(body)
        if not isinstance(event, dict):  # the controller always sends objects
            return {"event": topic.decode(errors="replace"), "body": event}
        event.setdefault("event", topic.decode(errors="replace"))
        return event

    def __iter__(self) -> Iterator[dict[str, Any]]:
        while self._sub is not None:
            if self._deadline is not None and time.monotonic() >= self._deadline:
                return
            event = self.next(0.1)  # short polls, so that a deadline is noticed
            if event is not None:
                yield event

    def close(self) -> None:
        if self._sub is not None:
            self._sub.close(0)
            self._sub = None

    def __enter__(self) -> EventStream:
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


def _curve_dir(explicit: str | Path | None) -> Path | None:
    return curve_dir(str(explicit) if explicit is not None else None)
