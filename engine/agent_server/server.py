"""The websocket + HTTP server: conversations at ``/v1/convai/conversation``, signed URLs.

``ElevenLabs(base_url="http://HOST:PORT")`` points the SDK here:

* ``Conversation(requires_auth=False)`` opens
  ``ws://HOST:PORT/v1/convai/conversation?agent_id=...&source=python_sdk&version=...``;
* ``Conversation(requires_auth=True)`` first calls
  ``GET http://HOST:PORT/v1/convai/conversation/get-signed-url?agent_id=...`` with an
  ``xi-api-key`` header; the answer ``{"signed_url": "ws://...&conversation_signature=T"}``
  is the websocket it then opens.
* ``ElevenLabs(...).voices.ivc.create(name=..., files=[...])`` posts
  ``POST http://HOST:PORT/v1/voices/add`` (multipart), answered by
  :mod:`.voices`. Requests with a body never reach ``websockets`` (which
  refuses them): :mod:`.http` reads them on the same port.

The key must be non-empty and is never logged or stored. Tokens are valid for
``token_ttl_s``; a websocket with an unknown or expired token is refused (403),
and with ``require_auth`` one with no token at all is refused too.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import secrets
import urllib.parse
from dataclasses import dataclass, field
from typing import Any

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.http11 import Request, Response

from . import wire as p
from .conversation import Session, SessionConfig
from .http import HttpConnection, HttpRequest, HttpResponse, connection_class
from .script import Script
from .voice import Voice
from .voices import VOICES_ADD_PATH, VoiceLibrary

log = logging.getLogger("agent_server")

#: Largest client frame accepted, in bytes (the SDK allows 16 MiB).
MAX_FRAME_BYTES = 16 * 1024 * 1024
#: How long the server waits for a close handshake it started (at shutdown), in seconds.
CLOSE_TIMEOUT_S = 1.0
_HOST_HEADER = re.compile(r"^[A-Za-z0-9.\-]+(:\d{1,5})?$|^\[[0-9A-Fa-f:.]+\](:\d{1,5})?$")


@dataclass(frozen=True)
class ServerConfig:
    """Where to listen and how to authenticate (times in seconds)."""

    host: str = "127.0.0.1"
    port: int = 0
    """TCP port; 0 picks a free one (see :attr:`AgentServer.port`)."""
    require_auth: bool = False
    """Refuse websockets that do not carry a signed-URL token."""
    token_ttl_s: float = 900.0
    """Lifetime of a signed-URL token."""
    voice_add_delay_s: float = 0.0
    """Seconds every accepted ``POST /v1/voices/add`` waits before it is answered (tests)."""
    session: SessionConfig = field(default_factory=SessionConfig)


def format_host(host: str) -> str:
    """``host`` as it goes into a URL (IPv6 literals in brackets)."""
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


def _json_response(connection: ServerConnection, status: int, body: dict[str, Any]) -> Response:
    response = connection.respond(status, json.dumps(body) + "\n")
    del response.headers["Content-Type"]
    response.headers["Content-Type"] = "application/json"
    return response


class AgentServer:
    """The local agent server; use ``async with AgentServer(...) as server:``."""

    def __init__(self, script: Script, config: ServerConfig, voice: Voice | None = None) -> None:
        """``voice`` defaults to espeak-ng with the script's voice and speed."""
        self.script = script
        self.config = config
        self.voice = voice or Voice(script.voice, script.words_per_minute)
        self._server: Server | None = None
        self._sessions: set[Session] = set()
        self._tokens: dict[str, float] = {}  # token -> expiry (loop time, s)
        self._port = 0
        self._host = config.host
        self.voices = VoiceLibrary(delay_s=config.voice_add_delay_s)
        self._connections: set[HttpConnection] = set()

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Bind and start accepting connections."""
        self._server = await serve(
            self._handle,
            self.config.host,
            self.config.port,
            process_request=self._process_request,
            create_connection=connection_class(
                self._http_request, self._connections.add, self._connections.discard
            ),
            open_timeout=None,  # HttpConnection times both kinds of request itself
            ping_interval=None,  # the protocol's own ping events keep the session alive
            close_timeout=CLOSE_TIMEOUT_S,
            max_size=MAX_FRAME_BYTES,
            server_header="callctl-agent-server",
            logger=logging.getLogger("websockets.server"),
        )
        sockname = self._server.sockets[0].getsockname()
        self._host, self._port = str(sockname[0]), int(sockname[1])

    async def close(self) -> None:
        """Stop accepting, close every conversation (stalled ones are torn down) and wait."""
        if self._server is None:
            return
        for connection in list(self._connections):
            if connection.mode != "websocket":  # HTTP requests and silent sockets: drop
                connection.transport.abort()
        self._server.close(close_connections=True)
        await self._server.wait_closed()
        self._server = None

    async def __aenter__(self) -> AgentServer:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    # ------------------------------------------------------------------ addresses

    @property
    def port(self) -> int:
        """The bound TCP port (the real one when the config asked for 0)."""
        return self._port

    @property
    def url(self) -> str:
        """``ws://HOST:PORT``: the websocket origin of the server."""
        return f"ws://{format_host(self._host)}:{self._port}"

    @property
    def base_url(self) -> str:
        """``http://HOST:PORT``: what to pass as ``ElevenLabs(base_url=...)``."""
        return f"http://{format_host(self._host)}:{self._port}"

    @property
    def session_count(self) -> int:
        """Conversations currently open."""
        return len(self._sessions)

    # ------------------------------------------------------------------ HTTP and handshake

    def _process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        path, _, query = request.path.partition("?")
        params = urllib.parse.parse_qs(query)
        if path == p.SIGNED_URL_PATH:
            return self._signed_url(connection, request, params)
        if path == p.CONVERSATION_PATH:
            signature = params.get(p.SIGNATURE_PARAM, [""])[0]
            if signature:
                expiry = self._tokens.get(signature)
                if expiry is None or expiry < asyncio.get_running_loop().time():
                    log.warning("websocket refused: unknown or expired signature")
                    return connection.respond(403, "invalid or expired conversation signature\n")
            elif self.config.require_auth:
                log.warning("websocket refused: this agent requires a signed URL")
                return connection.respond(403, "this agent requires a signed URL\n")
            return None
        if path == VOICES_ADD_PATH:
            return _json_response(connection, 405, {"detail": "Method Not Allowed"})
        return connection.respond(404, "not found\n")

    def _signed_url(
        self, connection: ServerConnection, request: Request, params: dict[str, list[str]]
    ) -> Response:
        key = request.headers.get(p.API_KEY_HEADER, "")
        if not key.strip():
            log.warning("signed URL refused: missing or empty %s header", p.API_KEY_HEADER)
            return _json_response(
                connection,
                401,
                {"detail": {"status": "invalid_api_key", "message": "missing API key"}},
            )
        agent_id = params.get("agent_id", [""])[0]
        if not agent_id:
            return _json_response(
                connection, 422, {"detail": {"status": "invalid_request", "message": "agent_id"}}
            )
        now = asyncio.get_running_loop().time()
        for old in [t for t, exp in self._tokens.items() if exp < now]:
            del self._tokens[old]
        token = secrets.token_urlsafe(24)
        self._tokens[token] = now + self.config.token_ttl_s
        host = request.headers.get("Host", "")
        origin = f"ws://{host}" if _HOST_HEADER.match(host) else self.url
        query = urllib.parse.urlencode(
            {"agent_id": agent_id, p.SIGNATURE_PARAM: token}, quote_via=urllib.parse.quote
        )
        log.info("signed URL issued for agent %r", agent_id[:64])
        return _json_response(
            connection, 200, {"signed_url": f"{origin}{p.CONVERSATION_PATH}?{query}"}
        )

    async def _http_request(self, request: HttpRequest) -> HttpResponse:
        """Requests with a body (or any method but GET): the REST endpoints."""
        path = request.path.partition("?")[0]
        if path == VOICES_ADD_PATH:
            if request.method != "POST":
                return HttpResponse(405, {"detail": "Method Not Allowed"})
            return await self.voices.add(request)
        return HttpResponse(404, {"detail": "Not Found"})

    # ------------------------------------------------------------------ conversations

    async def _handle(self, ws: ServerConnection) -> None:
        session = Session(ws, self.script, self.voice, self.config.session)
        self._sessions.add(session)
        try:
            await session.run()
        finally:
            self._sessions.discard(session)
