"""The Zoom event WebSocket: connect, keep alive, decode, reconnect forever.

Zoom delivers events only while we are connected, so this module's job is
to be connected as much as possible: reconnect quickly (first retry well
under a second), detect dead connections with the app-level heartbeat, and
never let malformed input end the loop. The only way out of `run()` is
cancellation or `AuthError` (bad credentials: retrying cannot help).

What could not be delivered is made visible: given `ConnectionGaps`, the
listener reports each connection coming up and going down (and when it was
last known connected), and emits the `zoomrules.connection_gap` event it
gets back when a connection ends a long enough gap (`engine.sources.gaps`).
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import anyio
import anyio.abc
import orjson
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus

from engine.clock import loop_clock
from engine.errors import InvalidEvent
from engine.events import Event
from engine.logs import LogLimiter, shorten
from engine.redact import redact, redact_url
from engine.retry import Backoff
from engine.services import TokenProvider
from engine.sources.base import EventSink, SourceHealth, count_event
from engine.sources.gaps import ConnectionGaps, gap_event

__all__ = ["ListenerStats", "ZoomListener"]

log = logging.getLogger("zoomrules.listener")

_HEARTBEAT = b'{"module":"heartbeat"}'

#: Close code websockets uses when it refuses a message above max_size.
_MESSAGE_TOO_BIG = 1009


@dataclass
class ListenerStats:
    """Counters for health checks, metrics and tests."""

    connect_attempts: int = 0
    connects: int = 0  # build_connection success
    disconnects: int = 0
    handshake_failures: int = 0
    build_failures: int = 0  # build_connection success:false
    dead_connections: int = 0  # no frame for two heartbeat intervals
    kicks: int = 0  # server closed shortly after a successful connect
    events: int = 0
    #: Events by name (`count_event`: a bounded number of names).
    events_by_name: Counter[str] = field(default_factory=Counter)
    handler_errors: int = 0
    malformed: Counter[str] = field(default_factory=Counter)
    heartbeats_sent: int = 0
    heartbeats_acked: int = 0
    last_heartbeat_at: float | None = None  # time.time() of the last answer
    last_connected_at: float | None = None  # time.time()
    last_disconnected_at: float | None = None
    last_event_at: float | None = None
    last_close_code: int | None = None
    #: Why the last connection ended (or the last attempt failed).
    last_close_reason: str | None = None
    #: When the token of the current (or next) connection expires, epoch
    #: seconds, if the token provider says (`TokenManager` does).
    token_expires_at: float | None = None
    connected: bool = False
    gaps: int = 0  # zoomrules.connection_gap events emitted

    @property
    def malformed_total(self) -> int:
        return sum(self.malformed.values())


@dataclass
class _Session:
    """State of one connection attempt."""

    token: str
    ws: ClientConnection | None = None
    opened_at: float | None = None  # anyio clock when the WebSocket handshake succeeded
    built_at: float | None = None  # anyio clock when build_connection succeeded
    heard_back: bool = False  # the server answered a heartbeat
    idle_since: float | None = None  # anyio clock when recv() started waiting
    closed_by_server: bool = False
    refresh_token: bool = False  # the token was rejected: get a new one before reconnecting
    reason: str = ""
    gap: Event | None = None  # a connection_gap event to hand to the sink next


class ZoomListener:
    """One Zoom event subscription, kept connected until cancelled."""

    def __init__(
        self,
        *,
        subscription: str,
        endpoint: str,
        tokens: TokenProvider,
        heartbeat_interval: float = 30.0,
        max_frame_size: int = 1 << 20,
        backoff_initial: float = 0.25,
        backoff_cap: float = 30.0,
        healthy_after: float = 60.0,
        open_timeout: float = 10.0,
        kick_window: float = 5.0,
        kick_threshold: int = 3,
        settings: object = None,
        gaps: ConnectionGaps | None = None,
        account_id: str | None = None,
    ) -> None:
        self.subscription = subscription
        #: The Zoom account, when configured (a Server-to-Server OAuth app):
        #: the gap events carry it.
        self.account_id = account_id
        #: Where connections coming up and going down are reported, to emit
        #: gap events; None: no gap events.
        self.gaps = gaps
        #: Attempts to connect that failed since the last connection (for
        #: the gap event's cause), and why the last one did.
        self._failures = 0
        self._last_failure = ""
        #: The source's name, which its events carry (`zoomrules.source`).
        self.name = f"zoom:{subscription}"
        self.endpoint = endpoint
        self.tokens = tokens
        #: Where events go; set by `run`.
        self.sink: EventSink = _no_sink
        self.heartbeat_interval = heartbeat_interval
        self.max_frame_size = max_frame_size
        self.healthy_after = healthy_after
        self.open_timeout = open_timeout
        self.kick_window = kick_window
        self.kick_threshold = kick_threshold
        self.stats = ListenerStats()
        self._backoff = Backoff(backoff_initial, backoff_cap)
        #: Lines that a flood of bad input could repeat are rate-limited.
        self._logs = LogLimiter(log)
        #: Why the last connection ended (for `health`).
        self._last_reason = ""
        self._consecutive_kicks = 0
        #: Set while connected (build_connection succeeded); see `wait_up`.
        self._up = anyio.Event()
        #: What it was built from; the factory adds the credentials.
        self.settings = (
            settings if settings is not None else (endpoint, heartbeat_interval, max_frame_size)
        )

    def __repr__(self) -> str:
        return f"ZoomListener(subscription={self.subscription!r}, endpoint={redact_url(self.endpoint)!r})"

    # -- the loop -----------------------------------------------------------

    def health(self) -> SourceHealth:
        stats = self.stats
        if stats.connected:
            return SourceHealth(True, stats.last_connected_at, "connected")
        reason = self._last_reason or "not connected yet"
        return SourceHealth(False, stats.last_disconnected_at, reason)

    async def wait_up(self) -> None:
        await self._up.wait()

    async def run(self, sink: EventSink) -> None:
        """Stay connected, handing events to `sink`, until cancelled; raises
        AuthError on bad credentials."""
        self.sink = sink
        if self.gaps is not None:
            await self.gaps.load(self.name)
        while True:
            session = _Session(token=await self.tokens.token())
            self.stats.token_expires_at = _expiry(self.tokens)
            await self._connect_once(session)
            if session.refresh_token:
                # Outside the connection's task group, so AuthError reaches
                # our caller as itself.
                await self.tokens.refresh(session.token)
            await self._after_session(session)

    async def _after_session(self, session: _Session) -> None:
        """Account for an ended connection and wait before the next attempt."""
        now = anyio.current_time()
        # How long the connection worked: since build_connection, or since
        # the handshake if the server answered heartbeats without ever
        # sending build_connection.
        since = session.built_at
        if since is None and session.heard_back:
            since = session.opened_at
        lived = now - since if since is not None else 0.0
        if lived >= self.healthy_after:
            # A connection that stayed up a while proves the path works:
            # start again from the shortest delay.
            self._backoff.reset()
        self._track_kicks(session, lived)
        self._last_reason = self.stats.last_close_reason = session.reason or "unknown"
        if session.built_at is None:
            self._failures += 1
            self._last_failure = self._last_reason
        delay = self._backoff.next()
        log.info(
            "zoom[%s]: connection ended (%s); reconnecting in %.2fs",
            self.subscription,
            session.reason or "unknown",
            delay,
        )
        await anyio.sleep(delay)

    def _track_kicks(self, session: _Session, lived: float) -> None:
        kicked = (
            session.built_at is not None and session.closed_by_server and lived < self.kick_window
        )
        if not kicked:
            if session.built_at is not None:
                self._consecutive_kicks = 0
            return
        self.stats.kicks += 1
        self._consecutive_kicks += 1
        if self._consecutive_kicks >= self.kick_threshold:
            log.warning(
                "zoom[%s]: the server closed the connection %d times in a row within %.0fs of "
                "connecting. Another client is probably connected to the same subscription "
                "(Zoom keeps one live connection per subscription and a new one replaces the "
                "old): stop the other daemon or give each its own subscription. Backing off.",
                self.subscription,
                self._consecutive_kicks,
                self.kick_window,
            )

    def _url(self, token: str) -> str:
        sep = "&" if "?" in self.endpoint else "?"
        return f"{self.endpoint}{sep}access_token={quote(token, safe='')}"

    async def _connect_once(self, session: _Session) -> None:
        url = self._url(session.token)
        self.stats.connect_attempts += 1
        log.info("zoom[%s]: connecting to %s", self.subscription, redact_url(url))
        try:
            async with connect(
                url,
                max_size=self.max_frame_size,
                # Zoom's liveness protocol is the app-level heartbeat; a
                # server that does not answer protocol pings would otherwise
                # get us disconnected by websockets' own keepalive.
                ping_interval=None,
                open_timeout=self.open_timeout,
                close_timeout=2,
            ) as ws:
                session.ws = ws
                session.opened_at = anyio.current_time()
                try:
                    await self._serve(session)
                except anyio.get_cancelled_exc_class():
                    # The daemon is stopping: say so (1001, going away), not
                    # "internal error" (1011), which is what leaving the
                    # block with an exception would send.
                    session.reason = session.reason or "closed by zoomrules"
                    with anyio.CancelScope(shield=True), anyio.move_on_after(2):
                        await ws.close(1001, "going away")
                    raise
        except InvalidStatus as exc:
            self._handshake_refused(session, exc.response.status_code)
        except (OSError, InvalidHandshake, TimeoutError) as exc:
            self.stats.handshake_failures += 1
            session.reason = f"connect failed: {redact(str(exc)) or type(exc).__name__}"
        finally:
            if session.built_at is not None:
                self._mark_disconnected(session)

    def _handshake_refused(self, session: _Session, status: int) -> None:
        self.stats.handshake_failures += 1
        session.reason = f"handshake refused with HTTP {status}"
        if status in (401, 403):
            log.warning(
                "zoom[%s]: handshake refused with HTTP %d; refreshing the token",
                self.subscription,
                status,
            )
            session.refresh_token = True

    def _mark_disconnected(self, session: _Session) -> None:
        now = time.time()
        self.stats.disconnects += 1
        self.stats.connected = False
        self._up = anyio.Event()
        self.stats.last_disconnected_at = now
        if self.gaps is not None:
            # A close handshake with Zoom (whoever began it) shows the
            # connection delivered until now; otherwise (a reset, the
            # watchdog) the last frame received is the last we know of.
            ws = session.ws
            handshake = ws is not None and ws.protocol.close_rcvd is not None
            alive_until = now if handshake else self._alive_at(session)
            self.gaps.down(
                self.name, session, alive_until=alive_until, reason=session.reason or "unknown"
            )

    @staticmethod
    def _alive_at(session: _Session) -> float:
        """When the connection was last known connected (epoch seconds): now
        while a frame is being handled, else when the last one was (when
        the listener began waiting for the next)."""
        now = time.time()
        idle = session.idle_since
        if idle is None:
            return now
        return now - max(0.0, anyio.current_time() - idle)

    # -- one connection -----------------------------------------------------

    async def _serve(self, session: _Session) -> None:
        """Receive, heartbeat and watch one connection until it ends."""
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._heartbeat, session)
                tg.start_soon(self._watchdog, session, tg.cancel_scope)
                try:
                    await self._receive(session)
                except ConnectionClosed as exc:
                    self._closed(session, exc)
                tg.cancel_scope.cancel()
        except BaseExceptionGroup as group:
            # Let the caller see the real exception (AuthError, the consumer's
            # ClosedResourceError), not a task-group wrapper.
            raise _single(group) from None

    def _closed(self, session: _Session, exc: ConnectionClosed) -> None:
        sent, rcvd = exc.sent, exc.rcvd
        if sent is not None and sent.code == _MESSAGE_TOO_BIG:
            self._malformed("oversized", f"frame larger than {self.max_frame_size} bytes")
        code = rcvd.code if rcvd is not None else (sent.code if sent is not None else 1006)
        self.stats.last_close_code = code
        # Server-initiated: it sent the first close frame. A TCP connection
        # that just died (no close frame either way) is a network fault, not
        # another client taking the subscription over, so it does not count
        # towards the "kicked" warning.
        session.closed_by_server = rcvd is not None and (sent is None or bool(exc.rcvd_then_sent))
        reason = f" {rcvd.reason!r}" if rcvd is not None and rcvd.reason else ""
        session.reason = session.reason or f"closed with code {code}{reason}"

    async def _receive(self, session: _Session) -> None:
        ws = session.ws
        assert ws is not None
        clock = loop_clock()  # read twice per frame: the cheap way
        sink = self.sink
        while True:
            session.idle_since = clock()
            message = await ws.recv()
            session.idle_since = None
            handled = self._frame(session, message)
            if not isinstance(handled, Event):
                if not handled:
                    return
                if session.gap is not None:  # only after build_connection
                    await self._hand_over_gap(session)
                continue
            try:
                await sink(handled)
            except (anyio.ClosedResourceError, anyio.BrokenResourceError):
                raise  # the consumer is gone: the engine is shutting down
            except Exception:
                # A bug downstream must not cost us the connection (and every
                # event Zoom sends while we reconnect).
                self._handler_failed(handled)

    async def _hand_over_gap(self, session: _Session) -> None:
        """Emit the connection_gap event found when this connection came up."""
        assert self.gaps is not None
        event, session.gap = session.gap, None
        assert event is not None
        try:
            await self.sink(event)
        except (anyio.ClosedResourceError, anyio.BrokenResourceError):
            raise  # not delivered: the next start finds the gap again
        except Exception:
            self._handler_failed(event)  # lost for good: do not hold the mark back forever
        self.gaps.handed_over(self.name)

    async def _heartbeat(self, session: _Session) -> None:
        ws = session.ws
        assert ws is not None
        while True:
            await anyio.sleep(self.heartbeat_interval)
            try:
                await ws.send(_HEARTBEAT, text=True)
            except ConnectionClosed:
                return  # the receiver sees the close and ends the session
            self.stats.heartbeats_sent += 1

    async def _watchdog(self, session: _Session, scope: anyio.CancelScope) -> None:
        """Declare the connection dead after two heartbeat intervals of silence.

        Only time spent waiting in recv() counts: while the sink is busy,
        frames queue up in websockets and the server is not silent.
        """
        limit = 2 * self.heartbeat_interval
        while True:
            since = session.idle_since
            now = anyio.current_time()
            if since is not None and now - since >= limit:
                break
            await anyio.sleep(limit - (now - since) if since is not None else limit / 4)
        self.stats.dead_connections += 1
        session.reason = f"no frame from the server for {limit:.1f}s (dead connection)"
        log.warning("zoom[%s]: %s; reconnecting", self.subscription, session.reason)
        assert session.ws is not None
        # A dead peer will not answer a close handshake: drop the TCP connection.
        session.ws.transport.abort()
        scope.cancel()

    # -- frames -------------------------------------------------------------

    def _frame(self, session: _Session, message: str | bytes) -> Event | bool:
        """Decode one frame: the event it carries, or whether to keep the connection."""
        try:
            frame = orjson.loads(message)
        except orjson.JSONDecodeError:
            return self._malformed("invalid_json", message)
        if not isinstance(frame, dict):
            return self._malformed("not_object", message)
        module = frame.get("module")
        if module == "message":
            return self._message(frame, message)
        if module == "heartbeat":
            self.stats.heartbeats_acked += 1
            self.stats.last_heartbeat_at = time.time()
            session.heard_back = True
            return True
        if module == "build_connection":
            return self._build_connection(session, frame)
        if not isinstance(module, str):
            return self._malformed("missing_module", message)
        log.debug("zoom[%s]: ignoring frame with module %r", self.subscription, module)
        return True

    def _message(self, frame: dict[str, Any], message: str | bytes) -> Event | bool:
        content = frame.get("content")
        try:
            if isinstance(content, str | bytes):
                event = Event.from_json(content, source=self.name)
            else:
                event = Event.from_body(content, source=self.name)
        except InvalidEvent as exc:
            return self._malformed("not_event", message, str(exc))
        stats = self.stats
        stats.events += 1
        count_event(stats.events_by_name, event.name)
        stats.last_event_at = event.received_at
        return event

    def _handler_failed(self, event: Event) -> None:
        self.stats.handler_errors += 1
        self._logs.log(
            logging.ERROR, "handler", "zoom[%s]: event handler failed on %s (id %s)",
            self.subscription, shorten(event.name, 100), event.id, exc_info=True,
        )  # fmt: skip

    def _build_connection(self, session: _Session, frame: dict[str, Any]) -> bool:
        content = frame.get("content")
        if frame.get("success") is True:
            session.built_at = anyio.current_time()
            now = time.time()
            self.stats.connects += 1
            self.stats.connected = True
            self._up.set()
            self.stats.last_connected_at = now
            log.info("zoom[%s]: connected (%s)", self.subscription, shorten(content))
            if self.gaps is not None:
                self._connected(session, now)
            return True
        self.stats.build_failures += 1
        session.reason = f"build_connection refused: {shorten(content)}"
        log.warning(
            "zoom[%s]: Zoom refused the connection: %s; fetching a new token",
            self.subscription,
            shorten(content),
        )
        session.refresh_token = True
        return False

    def _connected(self, session: _Session, now: float) -> None:
        """Report the connection up; keep the gap event it ends, if any, for `_receive`."""
        assert self.gaps is not None
        failures, last_failure = self._failures, self._last_failure
        self._failures, self._last_failure = 0, ""
        gap = self.gaps.up(
            self.name, session, lambda: self._alive_at(session),
            now=now, failures=failures, last_failure=last_failure,
        )  # fmt: skip
        if gap is None:
            return
        self.stats.gaps += 1
        session.gap = gap_event(gap, subscription=self.subscription, account_id=self.account_id)
        log.warning(
            "zoom[%s]: no connection for %.1fs, since %s (%s): events Zoom sent meanwhile "
            "are lost; emitting zoomrules.connection_gap",
            self.subscription, gap.seconds, session.gap.body["payload"]["start_time"], gap.cause,
        )  # fmt: skip

    def _malformed(self, reason: str, message: Any, detail: str = "") -> bool:
        self.stats.malformed[reason] += 1
        count = self.stats.malformed[reason]
        # Log the first few of each kind, then every 1000th: a server (or a
        # proxy) spewing garbage must not flood the log.
        if count <= 10 or count % 1000 == 0:
            log.warning(
                "zoom[%s]: skipping malformed frame (%s%s, %d so far): %s",
                self.subscription,
                reason,
                f": {detail}" if detail else "",
                count,
                shorten(message),
            )
        return True


def _expiry(tokens: TokenProvider) -> float | None:
    """When the provider's current token expires (epoch seconds), if it says:
    `expires_in` is not part of `TokenProvider` (plugins' fakes need not have it)."""
    expires_in = getattr(tokens, "expires_in", None)
    return time.time() + expires_in if isinstance(expires_in, int | float) else None


async def _no_sink(event: Event) -> None:
    raise RuntimeError("ZoomListener.run() has not been called")


def _single(group: BaseExceptionGroup) -> BaseException:
    """The one meaningful exception in a task group's group (or the group itself)."""
    leaves: list[BaseException] = []
    pending: list[BaseException] = [group]
    while pending:
        exc = pending.pop()
        if isinstance(exc, BaseExceptionGroup):
            pending.extend(exc.exceptions)
        else:
            leaves.append(exc)
    return leaves[0] if len(leaves) == 1 else group
