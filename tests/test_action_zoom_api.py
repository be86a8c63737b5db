"""The `zoom_api` action against the local Zoom simulator (and a raw-path recorder)."""

from __future__ import annotations

import copy
import email.utils
import logging
import time
import types
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import anyio
import anyio.abc
import httpx
import pytest
from action_harness import action_type, run_action, serve_tcp, unused_port
from conftest import product_events

from engine.auth import TokenManager
from engine.events import Event
from engine.plugin import ActionError
from engine.rate_limit import TokenBucket
from engine.services import Services
from engine.simulator import SimResponse, Simulator
from plugins import zoom_api

EXAMPLES = product_events("meetings")
MEETING_ID = EXAMPLES["meeting.started"]["example"]["payload"]["object"]["id"]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class RecordingTokens:
    """Wraps the real TokenManager and remembers every token handed out."""

    def __init__(self, inner: TokenManager) -> None:
        self.inner = inner
        self.given: list[str] = []
        self.refreshes: list[str | None] = []

    async def token(self) -> str:
        value = await self.inner.token()
        self.given.append(value)
        return value

    async def refresh(self, stale: str | None = None) -> str:
        self.refreshes.append(stale)
        value = await self.inner.refresh(stale)
        self.given.append(value)
        return value


@dataclass
class Env:
    sim: Simulator
    services: Services
    tokens: RecordingTokens


def zoom_config(base_url: str, rate: tuple[int, float] | None = None) -> Any:
    api_rate = types.SimpleNamespace(count=rate[0], per=rate[1]) if rate else None
    return types.SimpleNamespace(
        notifiers={}, zoom=types.SimpleNamespace(api_base_url=base_url, api_rate=api_rate)
    )


@pytest.fixture
async def env() -> AsyncIterator[Env]:
    async with Simulator() as sim, httpx.AsyncClient(timeout=10) as client:
        tokens = RecordingTokens(
            TokenManager(
                oauth_url=sim.oauth_url,
                client_id=sim.client_id,
                client_secret=sim.client_secret,
                http=client,
            )
        )
        services = Services(config=zoom_config(sim.api_base_url), http=client, tokens=tokens)
        yield Env(sim, services, tokens)


def event(name: str = "meeting.started", **object_fields: Any) -> Event:
    body = copy.deepcopy(EXAMPLES[name]["example"])
    body["payload"]["object"].update(object_fields)
    return Event.from_body(body, source="test")


async def call(
    services: Services, params: Mapping[str, Any], ev: Event | None = None, attempt: int = 1
) -> dict[str, Any]:
    result: dict[str, Any] = await run_action(
        zoom_api, services, params, ev or event(), attempt=attempt
    )
    return result


END_MEETING = {
    "method": "PUT",
    "path": "/meetings/{{ payload.object.id }}/status",
    "json": {"action": "end"},
}


@pytest.mark.anyio
async def test_end_meeting(env: Env) -> None:
    result = await call(env.services, END_MEETING)
    assert result == {"status": 204, "body": None, "headers": {}}
    (api_call,) = env.sim.api_calls
    assert (api_call.method, api_call.path) == ("PUT", f"/v2/meetings/{MEETING_ID}/status")
    assert api_call.json == {"action": "end"}
    assert api_call.token_valid


@pytest.mark.anyio
async def test_429_500_401_then_success(env: Env) -> None:
    """Each failure is classified; a 401 refreshes the token and retries in the same attempt."""
    path = f"/v2/meetings/{MEETING_ID}/status"
    env.sim.script("PUT", path, SimResponse(429, retry_after="2"), 500, 401)

    with pytest.raises(ActionError) as first:
        await call(env.services, END_MEETING, attempt=1)
    assert first.value.retryable and first.value.retry_after == 2.0
    assert "429" in str(first.value)

    with pytest.raises(ActionError) as second:
        await call(env.services, END_MEETING, attempt=2)
    assert second.value.retryable and second.value.retry_after is None
    assert "500" in str(second.value)

    result = await call(env.services, END_MEETING, attempt=3)
    assert result["status"] == 204

    calls = env.sim.api_calls
    assert [(c.method, c.path) for c in calls] == [("PUT", path)] * 4
    assert all(c.json == {"action": "end"} for c in calls)
    # One refresh, with the rejected token; the retry carried the new one.
    first_token = env.tokens.given[0]
    assert env.tokens.refreshes == [first_token]
    assert env.tokens.given[-1] != first_token
    assert env.sim.issued_tokens == [first_token, env.tokens.given[-1]]


@pytest.mark.anyio
async def test_revoked_token_is_refreshed_once(env: Env) -> None:
    await call(env.services, {"path": "/users/me"})
    env.sim.revoke_token(env.tokens.given[0])
    result = await call(env.services, {"path": "/users/me"})
    assert result["status"] == 200 and result["body"]["email"] == "user@example.com"
    assert [c.token_valid for c in env.sim.api_calls] == [True, False, True]
    assert len(env.sim.issued_tokens) == 2


@pytest.mark.anyio
async def test_401_after_refresh_is_permanent(env: Env) -> None:
    env.sim.script("GET", "/v2/users/me", 401, 401, 401)
    with pytest.raises(ActionError) as info:
        await call(env.services, {"path": "/users/me"})
    assert not info.value.retryable
    assert "401" in str(info.value) and "Invalid access token" in str(info.value)
    assert len(env.sim.api_calls) == 2  # one retry after one refresh, no loop
    assert len(env.tokens.refreshes) == 1
    assert not any(t in str(info.value) for t in env.sim.issued_tokens)


@pytest.mark.anyio
async def test_retry_after_http_date(env: Env) -> None:
    when = email.utils.formatdate(time.time() + 30, usegmt=True)
    env.sim.script("GET", "/v2/users/me", SimResponse(429, retry_after=when))
    with pytest.raises(ActionError) as info:
        await call(env.services, {"path": "/users/me"})
    assert info.value.retry_after is not None and 25 <= info.value.retry_after <= 31


@pytest.mark.anyio
async def test_429_without_retry_after(env: Env) -> None:
    reset = int(time.time()) + 10
    env.sim.script(
        "GET",
        "/v2/users/me",
        SimResponse(429, retry_after=""),
        SimResponse(429, retry_after="", headers={"X-RateLimit-Reset": str(reset)}),
    )
    with pytest.raises(ActionError) as bare:
        await call(env.services, {"path": "/users/me"})
    assert bare.value.retryable and bare.value.retry_after is None
    with pytest.raises(ActionError) as with_reset:
        await call(env.services, {"path": "/users/me"})
    assert with_reset.value.retry_after is not None and 8 <= with_reset.value.retry_after <= 10


@pytest.mark.anyio
async def test_404_is_permanent_with_zoom_message(env: Env) -> None:
    env.sim.script("GET", "/v2/meetings/*", 404)
    with pytest.raises(ActionError) as info:
        await call(env.services, {"path": "/meetings/{{ payload.object.id }}"})
    assert not info.value.retryable
    assert "3001" in str(info.value) and f"Meeting does not exist: {MEETING_ID}" in str(info.value)


@pytest.mark.anyio
async def test_expect(env: Env) -> None:
    with pytest.raises(ActionError) as info:
        await call(env.services, {**END_MEETING, "expect": [200]})
    assert not info.value.retryable and "204" in str(info.value)

    env.sim.script("GET", "/v2/meetings/*", 404)
    result = await call(
        env.services, {"path": "/meetings/{{ payload.object.id }}", "expect": [200, 404]}
    )
    assert result["status"] == 404 and result["body"]["code"] == 3001


@pytest.mark.anyio
async def test_create_meeting_result_is_chainable(env: Env) -> None:
    result = await call(
        env.services,
        {
            "method": "POST",
            "path": "/users/me/meetings",
            "json": {"topic": "Follow-up: {{ payload.object.topic }}", "type": 2},
        },
    )
    assert result["status"] == 201
    assert result["body"]["topic"] == "Follow-up: Weekly project sync"
    assert result["body"]["join_url"].startswith("https://zoom.us/j/")
    assert result["headers"]["content-type"] == "application/json"


@pytest.mark.anyio
async def test_query_parameters(env: Env) -> None:
    await call(
        env.services,
        {"path": "/users", "query": {"status": "active", "page_size": 30, "skip": None}},
    )
    assert env.sim.api_calls[0].query == {"status": "active", "page_size": "30"}


@pytest.mark.anyio
async def test_client_side_rate_limit(env: Env) -> None:
    env.services.config = zoom_config(env.sim.api_base_url, rate=(2, 0.2))
    started = anyio.current_time()
    async with anyio.create_task_group() as tg:
        for _ in range(6):
            tg.start_soon(call, env.services, {"path": "/users/me"})
    elapsed = anyio.current_time() - started
    # Burst of 2, then one every 0.1 s: the last four wait at least 0.4 s in total.
    assert elapsed >= 0.35
    assert len(env.sim.api_calls) == 6
    assert isinstance(env.services._limiters["zoom_api"][1], TokenBucket)


@pytest.mark.anyio
async def test_without_credentials() -> None:
    async with httpx.AsyncClient() as client:
        services = Services(config=zoom_config("http://127.0.0.1:9/v2"), http=client)
        with pytest.raises(ActionError) as info:
            await call(services, {"path": "/users/me"})
    assert not info.value.retryable
    assert "zoom_api needs [zoom] credentials" in str(info.value)


@pytest.mark.anyio
async def test_network_error_is_retryable(env: Env) -> None:
    port = await unused_port()
    env.services.config = zoom_config(f"http://127.0.0.1:{port}/v2")
    with pytest.raises(ActionError) as info:
        await call(env.services, {"path": "/users/me"})
    assert info.value.retryable and "network error" in str(info.value)


# -- path-segment encoding, checked on the raw request line ---------------------


@dataclass
class RawServer:
    """Answers every request `200 {}` and records the raw request lines."""

    port: int = 0
    lines: list[str] = field(default_factory=list)
    got: anyio.Event = field(default_factory=anyio.Event)

    async def handle(self, stream: anyio.abc.SocketStream) -> None:
        async with stream:
            data = b""
            while b"\r\n\r\n" not in data:
                data += await stream.receive()
            self.lines.append(data.split(b"\r\n", 1)[0].decode())
            self.got.set()
            await stream.send(
                b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                b"Content-Length: 2\r\nConnection: close\r\n\r\n{}"
            )


@pytest.fixture
async def raw_server() -> AsyncIterator[RawServer]:
    server = RawServer()
    async with serve_tcp(server.handle) as server.port:
        yield server


class StaticTokens:
    async def token(self) -> str:
        return "static-token"

    async def refresh(self, stale: str | None = None) -> str:
        return "static-token"


HOSTILE_SEGMENTS = {
    "../../users/me": "..%2F..%2Fusers%2Fme",
    "..": "%2E%2E",
    ".": "%2E",
    "123?x=1#frag": "123%3Fx%3D1%23frag",
    "a/b": "a%2Fb",
    "%2F": "%252F",
    "/abc==": "%2Fabc%3D%3D",
    "Zoë 会议": "Zo%C3%AB%20%E4%BC%9A%E8%AE%AE",
    "a b\r\nX-Injected: 1": "a%20b%0D%0AX-Injected%3A%201",
}


@pytest.mark.anyio
@pytest.mark.parametrize(("value", "encoded"), list(HOSTILE_SEGMENTS.items()))
async def test_hostile_values_stay_in_their_segment(
    raw_server: RawServer, value: str, encoded: str
) -> None:
    async with httpx.AsyncClient(timeout=5) as client:
        services = Services(
            config=zoom_config(f"http://127.0.0.1:{raw_server.port}/v2"),
            http=client,
            tokens=StaticTokens(),
        )
        await call(
            services,
            {
                "method": "PUT",
                "path": "/meetings/{{ payload.object.id }}/registrants/status",
                "json": {"action": "approve"},
            },
            event(id=value),
        )
    assert raw_server.lines == [f"PUT /v2/meetings/{encoded}/registrants/status HTTP/1.1"]


@pytest.mark.anyio
async def test_empty_segment_is_refused(raw_server: RawServer) -> None:
    async with httpx.AsyncClient(timeout=5) as client:
        services = Services(
            config=zoom_config(f"http://127.0.0.1:{raw_server.port}/v2"),
            http=client,
            tokens=StaticTokens(),
        )
        with pytest.raises(ActionError) as info:
            await call(services, {"path": "/meetings/{{ payload.object.id }}/status"}, event(id=""))
    assert not info.value.retryable
    assert raw_server.lines == []


def test_validate() -> None:
    validate = action_type(zoom_api).validate
    assert validate is not None
    assert validate({"path": "/meetings/{{ payload.object.id }}"}) == []
    assert validate({"path": "https://evil.example.com/x"})
    assert validate({"path": "meetings/1"})
    assert validate({"path": "/users", "expect": [200, 999]})
    assert validate({"path": "/users", "expect": "200"})


# -- hostile days: what reaches messages and logs -------------------------------------


@pytest.mark.anyio
async def test_messages_and_logs_show_the_rules_path_not_the_rendered_one(
    env: Env, caplog: pytest.LogCaptureFixture
) -> None:
    env.sim.script("GET", "/v2/meetings/*", 404)
    long_id = "9" * 3000
    caplog.set_level(logging.DEBUG)
    with pytest.raises(ActionError) as info:
        await call(env.services, {"path": "/meetings/{{ payload.object.id }}"}, event(id=long_id))
    message = str(info.value)
    assert not info.value.retryable
    assert message.startswith(
        "Zoom API GET /meetings/{{ payload.object.id }} answered HTTP 404 (code 3001: "
        "Meeting does not exist: 999"
    )
    assert len(message) < 400
    texts = [message]
    for record in caplog.records:
        if record.name.startswith(("zoomrules", "test.")):
            texts.append(record.getMessage())
            texts.extend(str(v) for v in vars(record).values())
    assert len(texts) > 1
    for text in texts:
        assert "9" * 201 not in text
        for token in env.tokens.given:
            assert token not in text
