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

Memory stays bounded whatever the uploads: a body over ``SPOOL_BYTES`` is
written to an unnamed temporary file as it arrives (``HttpRequest.body_file``),
never held in memory, and at most ``MAX_CONCURRENT_UPLOADS`` such bodies are
taken at once per server. Another one is read and thrown away, then answered
503 (answering before the body is in would make clients that send the whole
body first, as httpx does, see a reset instead of the answer). Measured: 4
parallel 60 MB voice uploads keep the server under 200 MB of RSS
(``tests/reliability/test_hardening_uploads.py``).

``HttpConnection`` does this as a ``websockets`` ``ServerConnection`` subclass
(the library's ``create_connection`` hook), so one listening socket, one
``Server`` and its shutdown cover both kinds of connection.
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
import os
import tempfile
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import IO, Any, ClassVar

from websockets.asyncio.server import ServerConnection

log = logging.getLogger("agent_server")

#: Longest request line plus headers, in bytes.
MAX_HEAD_BYTES = 16 * 1024
#: Largest request body accepted, in bytes (voice samples: the service takes ~10 MB a file).
MAX_BODY_BYTES = 64 * 1024 * 1024
#: Bodies larger than this, in bytes, go to a temporary file as they arrive.
SPOOL_BYTES = 1024 * 1024
#: Spooled bodies (uploads) one server takes at once; more are answered 503.
MAX_CONCURRENT_UPLOADS = 4
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
    """One request with its whole body. Header names are lower-case.

    A body up to ``SPOOL_BYTES`` is in ``body``; a larger one is in
    ``body_file`` (an unnamed temporary file, ``body`` empty), which the
    connection owns and closes when it answers or is lost. Read a body through
    :meth:`open_body`, which is safe from a worker thread that outlives the
    connection.
    """

    method: str
    path: str
    headers: dict[str, str]
    body: bytes = b""
    body_file: IO[bytes] | None = None
    body_size: int = -1
    """Bytes in the body (``len(body)`` when -1)."""

    def open_body(self) -> tuple[IO[bytes], int]:
        """The body as a binary file of the caller's own (close it), and its size in bytes.

        A spooled body comes on a duplicated descriptor, so the file stays
        readable until the caller closes it, whatever the connection does.
        """
        if self.body_file is not None:
            handle = os.fdopen(os.dup(self.body_file.fileno()), "rb")
            handle.seek(0)
            return handle, self.body_size
        return io.BytesIO(self.body), len(self.body)


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


class UploadSlots:
    """The connections of one server whose bodies are being spooled (at most ``limit``)."""

    def __init__(self, limit: int = MAX_CONCURRENT_UPLOADS) -> None:
        self.limit = limit
        self._holders: set[object] = set()

    def acquire(self, holder: object) -> bool:
        """Take a slot for ``holder``; False when all are taken."""
        if holder not in self._holders and len(self._holders) >= self.limit:
            return False
        self._holders.add(holder)
        return True

    def release(self, holder: object) -> None:
        """Give back ``holder``'s slot (no-op if it holds none)."""
        self._holders.discard(holder)

    def __len__(self) -> int:
        return len(self._holders)


@dataclass(frozen=True)
class Hooks:
    """What one server gives its connections: the HTTP handler and connection tracking."""

    http_handler: HttpHandler
    on_open: Callable[[HttpConnection], None] | None = None
    on_close: Callable[[HttpConnection], None] | None = None
    uploads: UploadSlots = field(default_factory=UploadSlots)


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
        self._received = 0
        """Body bytes received so far."""
        self._spool: IO[bytes] | None = None
        """Where a large body goes; handed to the handler, closed by :meth:`_done`."""
        self._refusal: HttpResponse | None = None
        """The answer for a body being read only to be thrown away (no upload slot)."""

    # -- asyncio.Protocol ---------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        if self.hooks is not None and self.hooks.on_open is not None:
            self.hooks.on_open(self)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.hooks is not None and self.hooks.on_close is not None:
            self.hooks.on_close(self)
        self._done()
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
                if self._head[3] > SPOOL_BYTES:
                    self._start_spool()
            method, path, headers, length = self._head
            if self._refusal is not None or self._spool is not None:
                self._take_body(length)
                if self._received < length:
                    return
                if self._refusal is not None:
                    raise _BadRequest(self._refusal)
                assert self._spool is not None
                self._spool.seek(0)
                self._request.set_result(HttpRequest(method, path, headers,
                                                     body_file=self._spool, body_size=length))
            elif len(self._buffer) >= length:
                body = bytes(self._buffer[:length])
                self._buffer.clear()
                self._request.set_result(HttpRequest(method, path, headers, body))
        except _BadRequest as exc:
            self._request.set_exception(exc)
        except OSError as exc:  # the spool's disk is full or failing
            log.warning("request body not stored: %s", exc)
            self._request.set_exception(_BadRequest(_error(503, "no room for the upload")))

    def _start_spool(self) -> None:
        """A large body: a temporary file and an upload slot, or a refusal once it is read."""
        slots = self.hooks.uploads if self.hooks is not None else None
        if slots is not None and not slots.acquire(self):
            log.warning("upload refused: %d uploads already in progress", slots.limit)
            self._refusal = _error(503, f"{slots.limit} uploads already in progress; "
                                        "try again when one is done")
            return
        self._spool = tempfile.TemporaryFile(prefix="callctl-upload-")  # noqa: SIM115

    def _take_body(self, length: int) -> None:
        """Move the buffered body bytes to the spool (or drop them, when refusing)."""
        chunk = self._buffer[: length - self._received]
        if self._spool is not None and self._refusal is None:
            self._spool.write(chunk)
        self._received += len(chunk)
        self._buffer.clear()

    def _done(self) -> None:
        """Free the upload slot and close the spooled body (a reader that :meth:`HttpRequest.
        open_body` gave its own descriptor keeps the file until it closes that)."""
        if self.hooks is not None:
            self.hooks.uploads.release(self)
        spool, self._spool = self._spool, None
        if spool is not None:
            spool.close()

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
        self._done()
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
