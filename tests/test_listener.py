"""ZoomListener against the local simulator: delivery, reconnects, liveness, tokens."""

from __future__ import annotations

import copy
import functools
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import anyio
import httpx
import orjson
import pytest
from conftest import product_events
from websockets.asyncio.client import connect

from engine.auth import TokenManager
from engine.errors import AuthError
from engine.events import Event
from engine.simulator import Simulator
from engine.sources.zoom_ws import ZoomListener


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


pytestmark = pytest.mark.anyio

CLIENT_ID, CLIENT_SECRET = "listener-client-id", "listener-client-secret"


@functools.cache
def _example() -> dict[str, Any]:
    return product_events("meetings")["meeting.started"]["example"]


def meeting_started(n: int) -> dict[str, Any]:
    """Zoom's documented meeting.started example, made unique by event_ts."""
    body = copy.deepcopy(_example())
    body["event_ts"] = 1_700_000_000_000 + n
    return body


class Collector:
    """The listener's sink, which tests can wait on (and wrap: `handler`)."""

    def __init__(self) -> None:
        self.events: list[Event] = []
        self._changed = anyio.Event()
        self.handler: Callable[[Event], Awaitable[None]] = self.record

    async def on_event(self, event: Event) -> None:
        await self.handler(event)

    async def record(self, event: Event) -> None:
        self.events.append(event)
        self._changed.set()
        self._changed = anyio.Event()

    async def wait_for(
        self, predicate: Callable[[list[Event]], bool], timeout: float = 5.0
    ) -> None:
        with anyio.fail_after(timeout):
            while not predicate(self.events):
                await self._changed.wait()

    async def wait_count(self, n: int, timeout: float = 5.0) -> None:
        await self.wait_for(lambda events: len(events) >= n, timeout)

    def stamps(self) -> list[int]:
        return [e.body["event_ts"] for e in self.events]


@asynccontextmanager
async def running(
    sim: Simulator, *, secret: str = CLIENT_SECRET, **options: Any
) -> AsyncIterator[tuple[ZoomListener, Collector, TokenManager]]:
    options.setdefault("backoff_initial", 0.05)
    options.setdefault("backoff_cap", 0.5)
    collector = Collector()
    async with httpx.AsyncClient() as http:
        tokens = TokenManager(
            oauth_url=sim.oauth_url, client_id=CLIENT_ID, client_secret=secret, http=http
        )
        listener = ZoomListener(
            subscription="test", endpoint=sim.ws_endpoint, tokens=tokens, **options
        )
        async with anyio.create_task_group() as tg:
            tg.start_soon(listener.run, collector.on_event)
            yield listener, collector, tokens
            tg.cancel_scope.cancel()


def simulator(**kwargs: Any) -> Simulator:
    return Simulator(client_id=CLIENT_ID, client_secret=CLIENT_SECRET, **kwargs)


async def test_burst_of_1000_events_delivered_exactly_once() -> None:
    async with simulator() as sim, running(sim) as (listener, got, _):
        await sim.wait_connected()
        assert await sim.send_events(meeting_started(i) for i in range(1000)) == 1000
        await got.wait_count(1000)
        # A marker sent after the burst arrives right after it: nothing was duplicated.
        await sim.send_event(meeting_started(1000))
        await got.wait_count(1001)
    stamps = got.stamps()
    assert len(stamps) == 1001 and len(set(stamps)) == 1001
    assert stamps == sorted(stamps)  # and in order
    assert all(e.source == "zoom:test" and e.name == "meeting.started" for e in got.events)
    assert listener.stats.events == 1001 and listener.stats.malformed_total == 0


async def test_content_as_object_is_accepted() -> None:
    async with simulator() as sim, running(sim) as (_, got, _):
        await sim.wait_connected()
        await sim.send_event(meeting_started(1), as_object=True)
        await got.wait_count(1)
    assert got.events[0].body == meeting_started(1)


@pytest.mark.parametrize(
    ("code", "reset"),
    [(1000, False), (1001, False), (1006, False), (4000, False), (4702, False), (1000, True)],
    ids=["1000", "1001", "1006", "4000", "4702", "tcp-reset"],
)
async def test_reconnects_after_server_close(code: int, reset: bool) -> None:
    async with simulator() as sim, running(sim) as (listener, got, _):
        await sim.wait_connected()
        await sim.send_event(meeting_started(1))
        await got.wait_count(1)
        assert await sim.drop(code, "test", reset=reset)
        await sim.wait_connected(count=2)
        await sim.send_event(meeting_started(2))
        await got.wait_count(2)
    assert got.stamps() == [meeting_started(1)["event_ts"], meeting_started(2)["event_ts"]]
    assert listener.stats.disconnects >= 1 and listener.stats.connects == 2
    expected = 1006 if reset else code
    assert listener.stats.last_close_code == expected


async def test_reconnects_through_refused_handshakes() -> None:
    async with simulator() as sim:
        sim.refuse_connections(3)
        async with running(sim) as (listener, got, _):
            await sim.wait_connected()
            await sim.send_event(meeting_started(1))
            await got.wait_count(1)
    assert listener.stats.handshake_failures == 3


async def test_dead_connection_detected_within_two_heartbeat_intervals() -> None:
    interval = 0.2
    async with simulator() as sim, running(sim, heartbeat_interval=interval) as (listener, got, _):
        first = await sim.wait_connected()
        await sim.wait_heartbeats(2)
        assert listener.stats.heartbeats_acked >= 1
        sim.heartbeat_acks = False
        stopped = anyio.current_time()
        await sim.wait_for(lambda: not first.open, timeout=5)
        detected_after = anyio.current_time() - stopped
        # The listener aborted the TCP connection itself (no close frame).
        assert listener.stats.dead_connections == 1
        assert detected_after <= 2 * interval + 0.15
        sim.heartbeat_acks = True
        await sim.wait_connected(count=2)
        await sim.send_event(meeting_started(1))
        await got.wait_count(1)


async def test_busy_handler_is_not_mistaken_for_a_dead_server() -> None:
    interval = 0.1
    release = anyio.Event()

    async with simulator() as sim, running(sim, heartbeat_interval=interval) as (listener, got, _):
        original = got.record

        async def slow(event: Event) -> None:
            if event.body["event_ts"] == meeting_started(1)["event_ts"]:
                await release.wait()
            await original(event)

        got.handler = slow
        await sim.wait_connected()
        await sim.send_event(meeting_started(1))
        # Several intervals pass with the handler blocked: heartbeats keep flowing.
        await sim.wait_heartbeats(sim.heartbeats_received + 6)
        release.set()
        await got.wait_count(1)
    assert listener.stats.dead_connections == 0 and listener.stats.connects == 1


async def test_token_expired_mid_connection_next_connect_uses_a_fresh_token() -> None:
    # The token lives 1 s; the listener's copy goes stale while it is connected.
    async with simulator(token_lifetime=1) as sim, running(sim) as (listener, got, _):
        first = await sim.wait_connected()
        await anyio.sleep(1.1)  # let the token expire (time passing, not synchronisation)
        await sim.drop(1001)
        second = await sim.wait_connected(count=2)
        await sim.send_event(meeting_started(1))
        await got.wait_count(1)
    assert first.token != second.token
    assert second.token == sim.issued_tokens[-1]
    assert listener.stats.build_failures == 0  # the stale token was never offered


async def test_build_connection_failure_fetches_a_new_token() -> None:
    async with simulator() as sim, running(sim) as (listener, got, _):
        first = await sim.wait_connected()
        sim.expire_tokens()  # Zoom-side expiry the client cannot know about
        await sim.drop(1001)
        second = await sim.wait_connected(count=2)
        await sim.send_event(meeting_started(1))
        await got.wait_count(1)
    refused = [c for c in sim.connections if not c.accepted]
    assert [c.content for c in refused] == ["token is invalid"]
    assert refused[0].token == first.token
    assert second.token not in (first.token, None)
    assert listener.stats.build_failures == 1
    assert len(sim.issued_tokens) == 2


async def test_handshake_401_refreshes_the_token() -> None:
    async with simulator() as sim, running(sim) as (listener, _, _):
        first = await sim.wait_connected()
        sim.reject_bad_tokens_at_handshake = True
        sim.expire_tokens()
        await sim.drop(1001)
        second = await sim.wait_connected(count=2)
    assert second.token != first.token
    assert listener.stats.handshake_failures == 1
    assert sim.refused_handshakes == 1


async def test_wrong_credentials_end_run_with_auth_error() -> None:
    async with simulator() as sim, httpx.AsyncClient() as http:
        tokens = TokenManager(
            oauth_url=sim.oauth_url, client_id=CLIENT_ID, client_secret="bad", http=http
        )
        listener = ZoomListener(subscription="t", endpoint=sim.ws_endpoint, tokens=tokens)
        with anyio.fail_after(5), pytest.raises(AuthError, match="client_id / client_secret"):
            await listener.run(Collector().on_event)
    assert len(sim.oauth_requests) == 1
    assert sim.connections == []


async def test_malformed_frames_are_counted_and_skipped() -> None:
    async with simulator() as sim, running(sim, max_frame_size=64 * 1024) as (listener, got, _):
        await sim.wait_connected()
        for raw in [
            "this is not json",
            "[1, 2, 3]",
            '"a string"',
            '{"content": "no module"}',
            '{"module": "message", "content": "{\\"no_event_key\\": 1}"}',
            '{"module": "message", "content": "not json either"}',
            '{"module": "message", "content": 42}',
            '{"module": "message", "content": {"event": 7}}',
            '{"module": "something_new", "content": "ignored"}',
        ]:
            assert await sim.send_raw(raw)
        await sim.send_event(meeting_started(1))
        await got.wait_count(1)
        assert dict(listener.stats.malformed) == {
            "invalid_json": 1,
            "not_object": 2,
            "missing_module": 1,
            "not_event": 4,
        }
        # An oversized frame: websockets refuses it (1009); we count it and reconnect.
        huge = orjson.dumps(
            {
                "module": "message",
                "content": orjson.dumps(meeting_started(2) | {"pad": "x" * 100_000}).decode(),
            }
        )
        assert await sim.send_raw(huge)
        await sim.wait_connected(count=2)
        await sim.send_event(meeting_started(3))
        await got.wait_count(2)
    assert got.stamps() == [meeting_started(1)["event_ts"], meeting_started(3)["event_ts"]]
    assert listener.stats.malformed["oversized"] == 1
    assert listener.stats.connects == 2


async def test_handler_errors_do_not_kill_the_connection() -> None:
    async with simulator() as sim, running(sim) as (listener, got, _):
        original = got.record

        async def flaky(event: Event) -> None:
            if event.body["event_ts"] == meeting_started(1)["event_ts"]:
                raise RuntimeError("bug in a rule")
            await original(event)

        got.handler = flaky
        await sim.wait_connected()
        await sim.send_events([meeting_started(1), meeting_started(2)])
        await got.wait_count(1)
    assert got.stamps() == [meeting_started(2)["event_ts"]]
    assert listener.stats.handler_errors == 1 and listener.stats.connects == 1


async def test_warns_when_another_client_keeps_replacing_ours(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="zoomrules.listener")
    async with simulator() as sim, running(sim) as (listener, _, _):
        rogue_token = sim.issue_token()
        rogue_url = f"{sim.ws_endpoint}&access_token={rogue_token}"

        def ours_live() -> bool:
            return sim.live is not None and sim.live.token != rogue_token

        for _ in range(3):
            await sim.wait_for(ours_live)
            # The other daemon connects: Zoom hands it the subscription and closes ours.
            async with connect(rogue_url) as rogue:
                await rogue.recv()
                await sim.wait_for(lambda: not ours_live())
        await sim.wait_for(ours_live)
    assert listener.stats.kicks >= 3
    assert "Another client is probably connected to the same subscription" in caplog.text


async def test_stopping_closes_with_going_away_not_internal_error() -> None:
    """A cancelled listener (the daemon stopping) closes with 1001, not 1011."""
    async with simulator() as sim:
        async with running(sim) as (listener, got, _):
            await sim.wait_connected()
            await sim.send_event(meeting_started(1))
            await got.wait_count(1)  # connected as the listener sees it, too
        await sim.wait_for(lambda: sim.connections[-1].closed_at is not None, timeout=5)
    assert sim.connections[-1].close_code == 1001
    assert sim.connections[-1].close_reason == "going away"


async def test_backoff_resets_after_a_long_connection_without_build_connection() -> None:
    """A connection that lived past `healthy_after` and answered heartbeats proves
    the path works even if the server never sent `build_connection`."""
    async with simulator() as sim:
        sim.build_connection_frames = False
        options = {"healthy_after": 0.3, "heartbeat_interval": 0.1}
        async with running(sim, **options) as (listener, got, _):
            for cycle in range(1, 4):
                await sim.wait_for(lambda c=cycle: len(sim.connections) >= c, timeout=10)
                beats = sim.heartbeats_received
                await sim.wait_heartbeats(beats + 5, timeout=10)  # >= 0.5 s, answered
                await sim.drop(1006)
            await sim.wait_for(lambda: len(sim.connections) >= 4, timeout=10)
    # Reset after each healthy connection: one step of backoff, never three.
    assert listener._backoff.attempt == 1
