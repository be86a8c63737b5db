"""The Simulator: Zoom's OAuth endpoint, event WebSocket and REST API on loopback.

The WebSocket side uses websockets' server (direct transport access for TCP
resets and exact close codes); OAuth and REST are a small Starlette app under
uvicorn. Both listen on sockets bound to 127.0.0.1 before anything starts
(ports chosen by the OS unless given), so the URLs are known as soon as
`__aenter__` returns. `add_routes` adds HTTP routes of one's own (the
control endpoint of `zoomrules simulate`) beside OAuth and REST.
"""

from __future__ import annotations

import base64
import contextlib
import fnmatch
import hmac
import itertools
import logging
import secrets
import socket
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any
from urllib.parse import parse_qs, urlsplit

import anyio
import anyio.abc
import orjson
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request as HttpRequest
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.frames import Frame, Opcode
from websockets.http11 import Request as WsRequest
from websockets.http11 import Response as WsResponse

from engine.simulator.rest import ApiCall, SimResponse, default_response, error_body, headers_for

__all__ = ["ApiCall", "SimConnection", "SimResponse", "Simulator"]

log = logging.getLogger("zoomrules.simulator")

_HEARTBEAT_ACK = orjson.dumps(
    {"module": "heartbeat", "success": True, "content": "live", "header": {}}
)
_ALL_METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE"]


@dataclass
class SimConnection:
    """One WebSocket connection attempt that completed the HTTP handshake."""

    id: int
    opened_at: float  # time.time()
    token: str | None
    accepted: bool = False  # build_connection success was sent
    content: str = ""  # build_connection content
    closed_at: float | None = None
    close_code: int | None = None
    close_reason: str = ""
    replaced: bool = False  # closed because a newer connection took over
    ws: ServerConnection | None = field(default=None, repr=False)

    @property
    def open(self) -> bool:
        return self.closed_at is None


class _QuietServer(uvicorn.Server):
    """uvicorn without its signal handlers: the host process owns SIGINT/SIGTERM."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


class Simulator:
    """A scriptable local Zoom. Use as `async with Simulator(...) as sim:`."""

    def __init__(
        self,
        *,
        client_id: str = "sim-client-id",
        client_secret: str = "sim-client-secret",
        subscription_id: str = "sim-subscription",
        account_id: str | None = None,
        token_lifetime: float = 3600,
        host: str = "127.0.0.1",
        http_port: int = 0,
        ws_port: int = 0,
    ) -> None:
        """`http_port` (OAuth, REST) and `ws_port` (events): 0 lets the OS choose."""
        self.client_id = client_id
        self.client_secret = client_secret
        self.subscription_id = subscription_id
        self.account_id = account_id
        self.token_lifetime = token_lifetime
        self.host = host

        #: Answer client heartbeats (set False to simulate a silent server).
        self.heartbeat_acks = True
        #: Send `build_connection` on connect (set False for a server that
        #: accepts and delivers without ever saying so).
        self.build_connection_frames = True
        #: Reject bad tokens with HTTP 401 at the handshake instead of a
        #: `build_connection` failure frame.
        self.reject_bad_tokens_at_handshake = False

        # Observable history.
        self.issued_tokens: list[str] = []
        self.oauth_requests: list[dict[str, Any]] = []
        self.connections: list[SimConnection] = []
        self.api_calls: list[ApiCall] = []
        self.heartbeats_received = 0
        self.client_frames: list[str | bytes] = []  # non-heartbeat frames from clients
        self.events_delivered = 0
        self.events_dropped = 0  # sent while no client was connected
        self.refused_handshakes = 0

        self._token_expiry: dict[str, float] = {}  # token -> time.monotonic() deadline
        self._revoked: set[str] = set()
        self._oauth_failures: deque[int] = deque()
        self._refuse_count = 0
        self._refuse_until = 0.0
        self._scripts: dict[tuple[str, str], deque[SimResponse]] = {}
        self._live: SimConnection | None = None
        self._ids = itertools.count(1)
        self._changed: anyio.Event | None = None  # created inside the event loop
        self._stack: AsyncExitStack | None = None
        self._tg: anyio.abc.TaskGroup | None = None
        self._ws_server: Server | None = None
        self._http_server: _QuietServer | None = None
        self._extra_routes: list[BaseRoute] = []
        self.ws_port = ws_port  # the bound port once started
        self.http_port = http_port

    # -- lifecycle ----------------------------------------------------------

    async def __aenter__(self) -> Simulator:
        self._changed = anyio.Event()
        # Bound first: a port in use is a plain OSError, raised before anything runs.
        ws_sock = socket.create_server((self.host, self.ws_port))
        try:
            http_sock = socket.create_server((self.host, self.http_port))
        except BaseException:
            ws_sock.close()
            raise
        self.ws_port = ws_sock.getsockname()[1]
        self.http_port = http_sock.getsockname()[1]
        async with AsyncExitStack() as stack:
            stack.callback(ws_sock.close)  # until the servers own them
            stack.callback(http_sock.close)
            self._tg = await stack.enter_async_context(anyio.create_task_group())
            await self._start_ws(stack, ws_sock)
            self._start_http(stack, http_sock)
            self._stack = stack.pop_all()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        assert self._stack is not None
        stack, self._stack = self._stack, None
        return await stack.__aexit__(exc_type, exc, tb)

    async def _start_ws(self, stack: AsyncExitStack, sock: socket.socket) -> None:
        self._ws_server = await serve(
            self._handle_ws,
            sock=sock,
            process_request=self._process_request,
            ping_interval=None,  # Zoom's liveness check is the app-level heartbeat
            compression=None,  # cheaper for bursts; the client must cope either way
            max_size=None,  # the simulator sends big frames, it does not judge clients'
            close_timeout=2,
        )
        stack.push_async_callback(self._stop_ws)

    async def _stop_ws(self) -> None:
        assert self._ws_server is not None
        self._ws_server.close()  # closes live connections with 1001, like a restarting Zoom
        await self._ws_server.wait_closed()

    def _start_http(self, stack: AsyncExitStack, sock: socket.socket) -> None:
        config = uvicorn.Config(
            self._build_app(),
            log_config=None,  # leave logging to the host process (and its redaction filter)
            access_log=False,
            lifespan="off",
            timeout_graceful_shutdown=2,
        )
        self._http_server = _QuietServer(config)
        assert self._tg is not None
        self._tg.start_soon(self._http_server.serve, [sock])
        stack.callback(self._stop_http)

    def _stop_http(self) -> None:
        # The task group exit waits for serve() to finish shutting down.
        assert self._http_server is not None
        self._http_server.should_exit = True

    @property
    def oauth_url(self) -> str:
        return f"http://{self.host}:{self.http_port}/oauth/token"

    @property
    def api_base_url(self) -> str:
        return f"http://{self.host}:{self.http_port}/v2"

    @property
    def ws_endpoint(self) -> str:
        return f"ws://{self.host}:{self.ws_port}/ws?subscriptionId={self.subscription_id}"

    # -- waiting ------------------------------------------------------------

    def _notify(self) -> None:
        changed = self._changed
        if changed is not None:
            self._changed = anyio.Event()
            changed.set()

    async def wait_for(self, predicate: Callable[[], bool], timeout: float = 5.0) -> None:
        """Wait until `predicate()` holds; re-checked on every simulator state change."""
        with anyio.fail_after(timeout):
            while not predicate():
                assert self._changed is not None, "use the Simulator inside `async with`"
                await self._changed.wait()

    @property
    def accepted_connections(self) -> int:
        """Connections that got `build_connection` success, ever."""
        return sum(1 for c in self.connections if c.accepted)

    @property
    def live(self) -> SimConnection | None:
        """The connection currently holding the subscription."""
        return self._live

    async def wait_connected(self, count: int = 1, timeout: float = 5.0) -> SimConnection:
        """Wait until `count` connections in total were accepted and one is live."""
        await self.wait_for(
            lambda: self.accepted_connections >= count and self._live is not None, timeout
        )
        assert self._live is not None
        return self._live

    async def wait_disconnected(self, timeout: float = 5.0) -> None:
        await self.wait_for(lambda: self._live is None, timeout)

    async def wait_heartbeats(self, count: int, timeout: float = 5.0) -> None:
        await self.wait_for(lambda: self.heartbeats_received >= count, timeout)

    # -- tokens -------------------------------------------------------------

    def issue_token(self, lifetime: float | None = None) -> str:
        """Mint a valid access token directly (what the OAuth endpoint does)."""
        token = secrets.token_urlsafe(32)
        life = self.token_lifetime if lifetime is None else lifetime
        self._token_expiry[token] = time.monotonic() + life
        self.issued_tokens.append(token)
        self._notify()
        return token

    def token_valid(self, token: str | None) -> bool:
        if not token or token in self._revoked:
            return False
        deadline = self._token_expiry.get(token)
        return deadline is not None and time.monotonic() < deadline

    def expire_tokens(self) -> None:
        """Every token issued so far is expired from now on."""
        for token in self._token_expiry:
            self._token_expiry[token] = 0.0

    def revoke_token(self, token: str) -> None:
        self._revoked.add(token)

    def fail_oauth(self, count: int = 1, status: int = 500) -> None:
        """The next `count` token requests answer `status`."""
        self._oauth_failures.extend([status] * count)

    # -- WebSocket side -----------------------------------------------------

    def refuse_connections(self, count: int | None = None, *, seconds: float | None = None) -> None:
        """Answer the next `count` handshakes (or all for `seconds`) with HTTP 503."""
        if count is not None:
            self._refuse_count += count
        if seconds is not None:
            self._refuse_until = time.monotonic() + seconds

    def _process_request(
        self, connection: ServerConnection, request: WsRequest
    ) -> WsResponse | None:
        url = urlsplit(request.path)
        if url.path != "/ws":
            return connection.respond(404, "Not Found\n")
        if self._refuse_count > 0 or time.monotonic() < self._refuse_until:
            self._refuse_count = max(0, self._refuse_count - 1)
            self.refused_handshakes += 1
            self._notify()
            return connection.respond(503, "Service Unavailable\n")
        if self.reject_bad_tokens_at_handshake and not self.token_valid(
            _query(url.query, "access_token")
        ):
            self.refused_handshakes += 1
            self._notify()
            return connection.respond(401, "Unauthorized\n")
        return None

    def _refusal(self, query: str) -> str | None:
        """Why Zoom would refuse this connection, in its words; None if it accepts."""
        token = _query(query, "access_token")
        if not token:
            return "token is empty"
        if _query(query, "subscriptionId") != self.subscription_id:
            return "subscriptionId is invalid"
        if not self.token_valid(token):
            return "token is invalid"
        return None

    async def _handle_ws(self, ws: ServerConnection) -> None:
        assert ws.request is not None
        query = urlsplit(ws.request.path).query
        conn = SimConnection(
            id=next(self._ids), opened_at=time.time(), token=_query(query, "access_token"), ws=ws
        )
        self.connections.append(conn)
        try:
            if await self._build_connection(conn, query):
                await self._serve_client(conn)
        except ConnectionClosed:
            pass
        finally:
            if self._live is conn:
                self._live = None
            conn.closed_at = time.time()
            conn.close_code = ws.close_code if ws.close_code is not None else 1006
            conn.close_reason = ws.close_reason or ""
            self._notify()

    async def _build_connection(self, conn: SimConnection, query: str) -> bool:
        assert conn.ws is not None
        refusal = self._refusal(query)
        if refusal is not None:
            conn.content = refusal
            await conn.ws.send(_build_frame(False, refusal))
            await conn.ws.close(1000, refusal)
            return False
        previous, self._live = self._live, conn
        conn.accepted = True
        conn.content = f"connection established: {secrets.token_hex(8)}"
        if self.build_connection_frames:
            await conn.ws.send(_build_frame(True, conn.content))
        if previous is not None:
            self._replace(previous)
        self._notify()
        return True

    def _replace(self, previous: SimConnection) -> None:
        # Zoom keeps one live connection per subscription: the newcomer wins.
        previous.replaced = True
        if previous.ws is not None and self._tg is not None:
            self._tg.start_soon(previous.ws.close, 1000, "replaced by a new connection")

    async def _serve_client(self, conn: SimConnection) -> None:
        assert conn.ws is not None
        async for message in conn.ws:
            if _is_heartbeat(message):
                self.heartbeats_received += 1
                if self.heartbeat_acks:
                    await conn.ws.send(_HEARTBEAT_ACK, text=True)
            else:
                self.client_frames.append(message)
            self._notify()

    # -- pushing to the client ----------------------------------------------

    @staticmethod
    def encode_event(body: Any, *, as_object: bool = False) -> bytes:
        """The frame Zoom sends for one event (content as a JSON string by default)."""
        content = body if as_object else orjson.dumps(body).decode()
        return orjson.dumps({"module": "message", "content": content})

    async def send_event(self, body: Any, *, as_object: bool = False) -> int:
        """Deliver one event to the live client; 0 if none is connected (dropped)."""
        return await self.send_frames([self.encode_event(body, as_object=as_object)])

    async def send_events(self, bodies: Iterable[Any], *, as_object: bool = False) -> int:
        """Deliver events in a tight loop; returns how many reached the socket."""
        frames = [self.encode_event(body, as_object=as_object) for body in bodies]
        return await self.send_frames(frames)

    async def send_frames(self, frames: Iterable[bytes | str]) -> int:
        """Write pre-encoded text frames; the fast path for benchmarks."""
        frames = frames if isinstance(frames, list) else list(frames)
        conn = self._live
        if conn is None or conn.ws is None:
            self.events_dropped += len(frames)
            return 0
        ws, sent = conn.ws, 0
        try:
            for frame in frames:
                await ws.send(frame, text=True)
                sent += 1
        except ConnectionClosed:
            self.events_dropped += len(frames) - sent
        self.events_delivered += sent
        return sent

    @staticmethod
    def wire_frames(frames: Iterable[bytes | str]) -> list[bytes]:
        """Text frames serialized as they travel from a server (unmasked, uncompressed)."""
        return [
            Frame(Opcode.TEXT, f.encode() if isinstance(f, str) else f).serialize(mask=False)
            for f in frames
        ]

    async def send_wire(self, wire: list[bytes], *, batch: int = 64) -> int:
        """Write frames from `wire_frames` straight to the socket, `batch` per write.

        For benchmarks: a real Zoom server is not a Python process, so the
        per-frame cost of websockets' `send` would make the sender, not the
        client under test, the bottleneck. Frames still reach the client as
        the same bytes and are parsed by its own WebSocket stack; the writes
        wait for the socket to drain like `send` does.
        """
        conn = self._live
        if conn is None or conn.ws is None:
            self.events_dropped += len(wire)
            return 0
        ws, sent = conn.ws, 0
        for start in range(0, len(wire), batch):
            if ws.transport.is_closing():
                break
            chunk = wire[start : start + batch]
            ws.transport.write(b"".join(chunk))
            sent += len(chunk)
            await ws.drain()
        self.events_dropped += len(wire) - sent
        self.events_delivered += sent
        return sent

    async def send_raw(self, data: str | bytes, *, binary: bool = False) -> bool:
        """Send an arbitrary frame (malformed input tests). False if nobody is connected."""
        conn = self._live
        if conn is None or conn.ws is None:
            return False
        try:
            await conn.ws.send(data, text=not binary)
        except ConnectionClosed:
            return False
        return True

    async def drop(self, code: int = 1000, reason: str = "", *, reset: bool = False) -> bool:
        """Close the live connection with `code`; 1006 or `reset=True` abort the TCP connection."""
        conn = self._live
        if conn is None or conn.ws is None:
            return False
        self._live = None
        if reset or code == 1006:
            # 1006 never travels in a close frame: it is what the client
            # reports when the TCP connection just dies.
            conn.ws.transport.abort()
        else:
            await conn.ws.close(code, reason)
        self._notify()
        return True

    # -- HTTP side: OAuth and REST ------------------------------------------

    def add_routes(self, routes: Sequence[BaseRoute]) -> None:
        """Serve `routes` on the HTTP side too (call before `async with`)."""
        assert self._http_server is None, "add routes before the simulator starts"
        self._extra_routes.extend(routes)

    def _build_app(self) -> Starlette:
        return Starlette(
            routes=[
                Route("/oauth/token", self._oauth, methods=["POST"]),
                Route("/v2/{path:path}", self._api, methods=_ALL_METHODS),
                *self._extra_routes,
            ]
        )

    async def _oauth(self, request: HttpRequest) -> Response:
        params = dict(request.query_params)
        if request.headers.get("content-type", "").startswith("application/x-www-form-urlencoded"):
            form = parse_qs((await request.body()).decode(), keep_blank_values=True)
            params.update({k: v[-1] for k, v in form.items()})
        record: dict[str, Any] = {
            "grant_type": params.get("grant_type"),
            "account_id": params.get("account_id"),
        }
        self.oauth_requests.append(record)
        self._notify()
        record["status"], body = self._oauth_answer(request, params)
        return JSONResponse(body, status_code=record["status"])

    def _oauth_answer(
        self, request: HttpRequest, params: dict[str, str]
    ) -> tuple[int, dict[str, Any]]:
        if self._oauth_failures:
            return self._oauth_failures.popleft(), {
                "reason": "Internal Error",
                "error": "server_error",
            }
        if not self._basic_auth_ok(request.headers.get("authorization", "")):
            return 401, {"reason": "Invalid client_id or client_secret", "error": "invalid_client"}
        grant = params.get("grant_type")
        if grant == "account_credentials":
            if not params.get("account_id") or (
                self.account_id and params["account_id"] != self.account_id
            ):
                return 400, {"reason": "Invalid account_id", "error": "invalid_request"}
        elif grant != "client_credentials":
            return 400, {"reason": "Unsupported grant type", "error": "unsupported_grant_type"}
        token = self.issue_token()
        lifetime = self.token_lifetime
        return 200, {
            "access_token": token,
            "token_type": "bearer",
            "expires_in": int(lifetime) if float(lifetime).is_integer() else lifetime,
            "scope": "meeting:read:admin user:read:admin",
        }

    def _basic_auth_ok(self, header: str) -> bool:
        scheme, _, encoded = header.partition(" ")
        if scheme.lower() != "basic":
            return False
        expected = base64.b64encode(f"{self.client_id}:{self.client_secret}".encode()).decode()
        return hmac.compare_digest(encoded.strip().encode(), expected.encode())

    def script(self, method: str, path: str, *responses: int | SimResponse) -> None:
        """Answer the next calls to `method path` with `responses`, in order.

        `path` is the full path (`/v2/meetings/123`) and may use `*` wildcards.
        A bare int is a status with Zoom's error body (or an empty 200/204).
        """
        queue = self._scripts.setdefault((method.upper(), path), deque())
        queue.extend(r if isinstance(r, SimResponse) else SimResponse(r) for r in responses)

    def _scripted(self, method: str, path: str) -> SimResponse | None:
        for (m, pattern), queue in self._scripts.items():
            if m == method and queue and (pattern == path or fnmatch.fnmatchcase(path, pattern)):
                return queue.popleft()
        return None

    async def _api(self, request: HttpRequest) -> Response:
        method, path = request.method, request.url.path
        body = await _json_body(request)
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        valid = scheme.lower() == "bearer" and self.token_valid(token.strip())
        headers = {
            k: v for k, v in request.headers.items() if k.lower() not in ("authorization", "cookie")
        }
        call = ApiCall(method, path, dict(request.query_params), headers, body, valid, time.time())
        self.api_calls.append(call)
        self._notify()
        answer = SimResponse(401) if not valid else self._scripted(method, path)
        if answer is None:
            answer = default_response(method, path, body)
        return _render(answer, path)


def _render(answer: SimResponse, path: str) -> Response:
    headers = headers_for(answer)
    if answer.status == 204:
        return Response(status_code=204, headers=headers)
    body = answer.body
    if body is None:
        body = {} if answer.status < 400 else error_body(answer.status, path)
    return Response(
        orjson.dumps(body),
        status_code=answer.status,
        headers=headers,
        media_type="application/json",
    )


async def _json_body(request: HttpRequest) -> Any:
    raw = await request.body()
    if not raw:
        return None
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        return raw.decode(errors="replace")


def _query(query: str, key: str) -> str | None:
    values = parse_qs(query, keep_blank_values=True).get(key)
    return values[-1] if values else None


def _build_frame(success: bool, content: str) -> str:
    return orjson.dumps(
        {"module": "build_connection", "success": success, "content": content, "header": {}}
    ).decode()


def _is_heartbeat(message: str | bytes) -> bool:
    try:
        frame = orjson.loads(message)
    except orjson.JSONDecodeError:
        return False
    return isinstance(frame, dict) and frame.get("module") == "heartbeat"
