"""Plain HTTP requests with a body, on the websocket server's own port.

The SDK uses one ``base_url`` for everything, so the REST endpoints it calls
(``POST /v1/voices/add``) must be served on the same port as the websocket.
``websockets`` refuses any request with a body before ``process_request`` sees
it, so each connection first looks at its request line:

* ``GET`` — a websocket handshake or the signed-URL endpoint — goes to
  ``websockets`` untouched (the bytes already read are handed over as they came);
* any other method is read here (head, then ``Content-Length`` bytes of body,
  bounded in size and time), answered by the server's ``http_handler`` with one
  ``HttpResponse``, and the connection is closed (``Connection: close``).

``HttpConnection`` does this as a ``websockets`` ``ServerConnection`` subclass
(the library's ``create_connection`` hook), so one listening socket, one
``Server`` and its shutdown cover both kinds of connection.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

from websockets.asyncio.server import ServerConnection

log = logging.getLogger("agent_server")

#: Longest request line plus headers, in bytes.
MAX_HEAD_BYTES = 16 * 1024
#: Largest request body accepted, in bytes (voice samples: the service takes ~10 MB a file).
MAX_BODY_BYTES = 64 * 1024 * 1024
#: Time allowed from the connection to a complete request line, in seconds.
REQUEST_LINE_TIMEOUT_S = 10.0
#: Time allowed to receive a whole HTTP request (head and body), in seconds.
REQUEST_TIMEOUT_S = 60.0
#: Time allowed for a websocket opening handshake once its request line is in, in seconds.
HANDSHAKE_TIMEOUT_S = 10.0
#: Time allowed for the response to drain before the connection is dropped, in seconds.
RESPONSE_DRAIN_TIMEOUT_S = 5.0

_REASONS = {200: "OK", 400: "Bad Request", 401: "Unauthorized", 404: "Not Found",
            405: "Method Not Allowed", 408: "Request Timeout", 411: "Length Required",
            413: "Content Too Large", 422: "Unprocessable Entity",
            431: "Request Header Fields Too Large", 500: "Internal Server Error",
            503: "Service Unavailable"}


@dataclass
class HttpRequest:
    """One request with its whole body. Header names are lower-case."""

    method: str
    path: str
    headers: dict[str, str]
    body: bytes = b""


@dataclass
class HttpResponse:
    """One response; ``body`` is sent as JSON."""

    status: int
    body: Any = field(default_factory=dict)

    def serialize(self) -> bytes:
        payload = (json.dumps(self.body) + "\n").encode()
        head = (f"HTTP/1.1 {self.status} {_REASONS.get(self.status, 'Error')}\r\n"
                "Content-Type: application/json\r\n"
                f"Content-Length: {len(payload)}\r\n"
                "Connection: close\r\n"
                "Server: callctl-agent-server\r\n\r\n")
        return head.encode("ascii") + payload


HttpHandler = Callable[[HttpRequest], Awaitable[HttpResponse]]


@dataclass(frozen=True)
class Hooks:
    """What one server gives its connections: the HTTP handler and connection tracking."""

    http_handler: HttpHandler
    on_open: Callable[[HttpConnection], None] | None = None
    on_close: Callable[[HttpConnection], None] | None = None


class _BadRequest(Exception):
    def __init__(self, response: HttpResponse) -> None:
        super().__init__(response.status)
        self.response = response


def _error(status: int, message: str) -> HttpResponse:
    return HttpResponse(status, {"detail": {"status": "invalid_request", "message": message}})


class HttpConnection(ServerConnection):
    """A ``ServerConnection`` that serves non-``GET`` requests itself (see module docstring).

    Subclass it with ``hooks`` set — :func:`connection_class` does — and pass
    the subclass to ``serve(create_connection=..., open_timeout=None)``: the
    timeouts of both kinds of request are applied here.
    """

    hooks: ClassVar[Hooks | None] = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.mode: str | None = None
        """None until the request line is in, then ``"websocket"`` or ``"http"``."""
        self._buffer = bytearray()
        self._decided: asyncio.Future[None] = self.loop.create_future()
        self._request: asyncio.Future[HttpRequest] = self.loop.create_future()
        self._head: tuple[str, str, dict[str, str], int] | None = None

    # -- asyncio.Protocol ---------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        if self.hooks is not None and self.hooks.on_open is not None:
            self.hooks.on_open(self)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.hooks is not None and self.hooks.on_close is not None:
            self.hooks.on_close(self)
        for future in (self._decided, self._request):
            if not future.done():
                future.cancel()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self.mode == "websocket":
            super().data_received(data)
            return
        if self._request.done():
            return  # one request a connection: anything after it is dropped unread
        self._buffer += data
        if self.mode is None:
            end = self._buffer.find(b"\n")
            if end < 0 and len(self._buffer) < MAX_HEAD_BYTES:
                return
            method = bytes(self._buffer[: max(0, end)]).split(b" ", 1)[0]
            self.mode = "websocket" if method in (b"GET", b"") or end < 0 else "http"
            self._decided.set_result(None)
            if self.mode == "websocket":
                buffered = bytes(self._buffer)
                self._buffer.clear()
                super().data_received(buffered)
                return
        self._parse_http()

    def eof_received(self) -> None:
        if self.mode != "http":
            super().eof_received()
            return
        # An HTTP client that closes before its answer has given up (as nginx's 499):
        # the transport closes and any handler still working is abandoned.
        if not self._request.done():
            self._request.set_exception(_BadRequest(_error(400, "incomplete request")))

    # -- the HTTP side ------------------------------------------------------------

    def _parse_http(self) -> None:
        if self._request.done():
            return
        try:
            if self._head is None:
                end = self._buffer.find(b"\r\n\r\n")
                if end < 0:
                    if len(self._buffer) > MAX_HEAD_BYTES:
                        raise _BadRequest(_error(431, "request head too large"))
                    return
                self._head = self._parse_head(bytes(self._buffer[:end]))
                del self._buffer[: end + 4]
            method, path, headers, length = self._head
            if len(self._buffer) >= length:
                body = bytes(self._buffer[:length])
                self._buffer.clear()
                self._request.set_result(HttpRequest(method, path, headers, body))
        except _BadRequest as exc:
            self._request.set_exception(exc)

    @staticmethod
    def _parse_head(head: bytes) -> tuple[str, str, dict[str, str], int]:
        lines = head.decode("latin-1").split("\r\n")
        parts = lines[0].split(" ")
        if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
            raise _BadRequest(_error(400, "bad request line"))
        headers: dict[str, str] = {}
        for line in lines[1:]:
            name, sep, value = line.partition(":")
            if not sep or not name.strip():
                raise _BadRequest(_error(400, "bad header line"))
            headers[name.strip().lower()] = value.strip()
        if "transfer-encoding" in headers:
            raise _BadRequest(_error(411, "send a Content-Length; transfer codings are "
                                          "not supported"))
        try:
            length = int(headers.get("content-length", "0"))
        except ValueError:
            raise _BadRequest(_error(400, "bad Content-Length")) from None
        if length < 0:
            raise _BadRequest(_error(400, "bad Content-Length"))
        if length > MAX_BODY_BYTES:
            raise _BadRequest(_error(413, f"request body over {MAX_BODY_BYTES} bytes"))
        return parts[0], parts[1], headers, length

    async def _serve_http(self) -> None:
        try:
            async with asyncio.timeout(REQUEST_TIMEOUT_S):
                request = await self._request
            handler = self.hooks.http_handler if self.hooks is not None else None
            if handler is None:
                response = _error(404, "not found")
            else:
                # The client hanging up (or the server dropping the connection at
                # shutdown) abandons the handler, as a real service would.
                task: asyncio.Future[HttpResponse] = asyncio.ensure_future(handler(request))
                lost: asyncio.Future[Any] = self.connection_lost_waiter
                await asyncio.wait([task, lost], return_when=asyncio.FIRST_COMPLETED)
                if not task.done():
                    task.cancel()
                    log.info("%s %s abandoned: the client went away", request.method,
                             request.path.partition("?")[0][:80])
                    return
                response = task.result()
        except _BadRequest as exc:
            response = exc.response
        except TimeoutError:
            response = _error(408, "request not received in time")
        except asyncio.CancelledError:
            if not self.connection_lost_waiter.done():
                raise  # the server is shutting down
            return  # the client went away
        except Exception:
            log.exception("HTTP handler failed")
            response = _error(500, "internal error")
        if self.transport.is_closing():
            return
        self.transport.write(response.serialize())
        self.transport.close()
        try:
            async with asyncio.timeout(RESPONSE_DRAIN_TIMEOUT_S):
                await asyncio.shield(self.connection_lost_waiter)
        except TimeoutError:
            self.transport.abort()

    # -- websockets' hook -----------------------------------------------------------

    async def handshake(self, *args: Any, **kwargs: Any) -> None:
        """Wait for the request line; then the websocket handshake or the HTTP answer.

        ``websockets`` then drops the transport unless the handshake opened a
        websocket; the HTTP path has closed it cleanly by then.
        """
        async with asyncio.timeout(REQUEST_LINE_TIMEOUT_S):
            await asyncio.wait([self._decided, self.connection_lost_waiter],
                               return_when=asyncio.FIRST_COMPLETED)
        if self.mode == "http":
            await self._serve_http()
        elif self.mode == "websocket":
            async with asyncio.timeout(HANDSHAKE_TIMEOUT_S):
                await super().handshake(*args, **kwargs)


def connection_class(
    http_handler: HttpHandler,
    on_open: Callable[[HttpConnection], None] | None = None,
    on_close: Callable[[HttpConnection], None] | None = None,
) -> type[HttpConnection]:
    """An ``HttpConnection`` subclass bound to one server's handler and bookkeeping."""
    hooks = Hooks(http_handler, on_open, on_close)
    return type("BoundHttpConnection", (HttpConnection,), {"hooks": hooks})
