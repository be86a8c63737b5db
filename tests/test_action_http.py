"""The `http` action against a scripted HTTP server on loopback."""

from __future__ import annotations

import json
import logging
import types
from collections import deque
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import anyio
import anyio.abc
import httpx
import pytest
from action_harness import action_type, read_http_request, run_action, serve_tcp, unused_port
from conftest import product_events

from engine.events import Event
from engine.plugin import ActionError
from engine.services import Services
from plugins import http

EXAMPLES = product_events("meetings")


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@dataclass
class Received:
    method: str
    target: str
    headers: dict[str, str]
    body: bytes


@dataclass
class Reply:
    status: int
    body: bytes = b"{}"
    headers: dict[str, str] = field(default_factory=lambda: {"Content-Type": "application/json"})


@dataclass
class Server:
    """Minimal HTTP/1.1 server: answers scripted replies in order (then 200 `{}`)."""

    port: int = 0
    received: list[Received] = field(default_factory=list)
    replies: deque[Reply] = field(default_factory=deque)

    async def handle(self, stream: anyio.abc.SocketStream) -> None:
        async with stream:
            method, target, headers, body = await read_http_request(stream)
            self.received.append(Received(method, target, headers, body))
            reply = self.replies.popleft() if self.replies else Reply(200)
            extra = "".join(f"{k}: {v}\r\n" for k, v in reply.headers.items())
            await stream.send(
                f"HTTP/1.1 {reply.status} X\r\n{extra}Content-Length: {len(reply.body)}\r\n"
                f"Connection: close\r\n\r\n".encode()
                + reply.body
            )


@pytest.fixture
async def server() -> AsyncIterator[Server]:
    srv = Server()
    async with serve_tcp(srv.handle) as srv.port:
        yield srv


@pytest.fixture
async def services() -> AsyncIterator[Services]:
    async with httpx.AsyncClient(timeout=5) as client:
        yield Services(config=types.SimpleNamespace(notifiers={}, zoom=None), http=client)


async def call(services: Services, params: Mapping[str, Any], attempt: int = 1) -> dict[str, Any]:
    ev = Event.from_body(EXAMPLES["meeting.participant_joined"]["example"], source="test")
    result: dict[str, Any] = await run_action(
        http, services, params, ev, action_index=1, attempt=attempt
    )
    return result


@pytest.mark.anyio
async def test_post_json_with_headers(server: Server, services: Services) -> None:
    server.replies.append(Reply(201, b'{"ok": true, "id": 7}'))
    result = await call(
        services,
        {
            "url": f"http://127.0.0.1:{server.port}/hook?src=zoom",
            "headers": {"Authorization": "Bearer s3cret", "X-Meeting": "{{ payload.object.id }}"},
            "query": {"event": "{{ event }}"},
            "json": {
                "who": "{{ payload.object.participant.user_name }}",
                "duration": "{{ payload.object.duration }}",
            },
        },
    )
    assert result == {
        "status": 201,
        "body": {"ok": True, "id": 7},
        "headers": {"content-type": "application/json"},
    }
    (req,) = server.received
    assert req.method == "POST"
    assert req.target == "/hook?src=zoom&event=meeting.participant_joined"
    assert req.headers["authorization"] == "Bearer s3cret"
    assert req.headers["x-meeting"] == "85746065432"
    assert req.headers["content-type"] == "application/json"
    assert json.loads(req.body) == {"who": "Riley Park", "duration": 60}


@pytest.mark.anyio
async def test_raw_body_and_method(server: Server, services: Services) -> None:
    server.replies.append(Reply(200, b"accepted", {"Content-Type": "text/plain"}))
    result = await call(
        services,
        {
            "url": f"http://127.0.0.1:{server.port}/raw",
            "method": "PUT",
            "headers": {"Content-Type": "text/plain"},
            "body": "{{ payload.object.participant.email }} joined",
        },
    )
    assert result["body"] == "accepted"
    (req,) = server.received
    assert (req.method, req.body) == ("PUT", b"riley.park@example.com joined")


@pytest.mark.anyio
async def test_500_then_200(server: Server, services: Services) -> None:
    """What the engine's retry loop sees: a retryable failure, then success."""
    server.replies.extend([Reply(500, b'{"message": "boom"}'), Reply(200)])
    url = f"http://user:pw@127.0.0.1:{server.port}/secret-path-token?key=secret"
    with pytest.raises(ActionError) as first:
        await call(services, {"url": url, "json": {"a": 1}}, attempt=1)
    assert first.value.retryable and "500" in str(first.value) and "boom" in str(first.value)
    for secret in ("pw", "secret-path-token", "key=secret"):
        assert secret not in str(first.value)
    result = await call(services, {"url": url, "json": {"a": 1}}, attempt=2)
    assert result["status"] == 200
    assert len(server.received) == 2


@pytest.mark.anyio
async def test_429_retry_after(server: Server, services: Services) -> None:
    server.replies.append(Reply(429, b"slow down", {"Retry-After": "7"}))
    with pytest.raises(ActionError) as info:
        await call(services, {"url": f"http://127.0.0.1:{server.port}/"})
    assert info.value.retryable and info.value.retry_after == 7.0


@pytest.mark.anyio
@pytest.mark.parametrize("status", [400, 403, 404, 410, 422])
async def test_4xx_is_permanent(server: Server, services: Services, status: int) -> None:
    server.replies.append(Reply(status, b'{"error": "nope"}'))
    with pytest.raises(ActionError) as info:
        await call(services, {"url": f"http://127.0.0.1:{server.port}/"})
    assert not info.value.retryable
    assert str(status) in str(info.value) and "nope" in str(info.value)


@pytest.mark.anyio
async def test_expect(server: Server, services: Services) -> None:
    server.replies.extend([Reply(200), Reply(202)])
    with pytest.raises(ActionError) as info:
        await call(services, {"url": f"http://127.0.0.1:{server.port}/", "expect": [202]})
    assert not info.value.retryable
    result = await call(services, {"url": f"http://127.0.0.1:{server.port}/", "expect": [202]})
    assert result["status"] == 202


@pytest.mark.anyio
async def test_connection_refused_is_retryable(services: Services) -> None:
    port = await unused_port()
    with pytest.raises(ActionError) as info:
        await call(services, {"url": f"http://127.0.0.1:{port}/"})
    assert info.value.retryable


def test_validate() -> None:
    validate = action_type(http).validate
    assert validate is not None
    assert validate({"url": "https://example.com", "json": {}, "body": "x"})
    assert validate({"url": "ftp://example.com"})
    assert validate({"url": "https://example.com", "headers": {"X": 1}})
    assert validate({"url": "https://example.com", "expect": [42]})
    assert validate({"url": "{{ payload.object.join_url }}"}) == []


# -- hostile days: header injection ---------------------------------------------------


def topic_event(topic: Any) -> Event:
    body = json.loads(json.dumps(EXAMPLES["meeting.participant_joined"]["example"]))
    body["payload"]["object"]["topic"] = topic
    return Event.from_body(body, source="test")


async def call_with(services: Services, params: Mapping[str, Any], event: Event) -> Any:
    return await run_action(http, services, params, event)


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("a\r\nX-Injected: 1", "a line break or NUL byte"),
        ("a\nX-Injected: 1", "a line break or NUL byte"),
        ("a\rX-Injected: 1", "a line break or NUL byte"),
        ("a\x00X-Injected", "a line break or NUL byte"),
        ("a\x01X-Injected", "a control character"),
        ("Zoë X-Injected", "a character that is not ASCII (put such values in json or query)"),
    ],
)
async def test_a_bad_templated_header_value_fails_at_once_unsent(
    server: Server, services: Services, value: str, problem: str
) -> None:
    with pytest.raises(ActionError) as info:
        await call_with(
            services,
            {
                "url": f"http://127.0.0.1:{server.port}/hook",
                "headers": {
                    "X-Topic": "{{ payload.object.topic }}",
                    "Authorization": "Bearer s3cret",
                },
            },
            topic_event(value),
        )
    assert not info.value.retryable
    assert str(info.value) == f"headers.X-Topic: the value has {problem}; not sent"
    assert "Injected" not in str(info.value) and "s3cret" not in str(info.value)
    assert server.received == []


@pytest.mark.anyio
async def test_a_bad_header_name_from_the_event_fails_at_once_unsent(
    server: Server, services: Services
) -> None:
    with pytest.raises(ActionError) as info:
        await call_with(
            services,
            {
                "url": f"http://127.0.0.1:{server.port}/hook",
                "headers": "{{ payload.object.topic }}",
            },
            topic_event({"X-Ok": "1", "X-A\r\nX-Injected": "1"}),
        )
    assert not info.value.retryable
    assert str(info.value) == "headers: 'X-A X-Injected' is not a valid header name; not sent"
    assert server.received == []


@pytest.mark.anyio
async def test_a_long_header_name_from_the_event_is_not_echoed_at_length(
    server: Server, services: Services
) -> None:
    name = "X-" + "n" * 5000
    with pytest.raises(ActionError) as info:
        await call_with(
            services,
            {
                "url": f"http://127.0.0.1:{server.port}/hook",
                "headers": "{{ payload.object.topic }}",
            },
            topic_event({name: "a\r\nX-Injected: 1"}),
        )
    assert not info.value.retryable
    assert str(info.value).startswith("headers.X-nnn")
    assert str(info.value).endswith("…: the value has a line break or NUL byte; not sent")
    assert len(str(info.value)) < 120
    assert server.received == []


# -- hostile days: nothing of the URL's path or query, nor Authorization, in logs ------

SECRET_PATH = "/hooks/T0KEN-in-the-path/more"
SECRET_QUERY = "sig=S1GNATURE-in-the-query"


@pytest.mark.anyio
@pytest.mark.parametrize("status", [200, 404, 500])
async def test_debug_logs_and_errors_never_show_the_url_path_query_or_authorization(
    server: Server, services: Services, caplog: pytest.LogCaptureFixture, status: int
) -> None:
    # A server that echoes what it got: the request line and the Authorization header.
    echo = f"{status} for POST {SECRET_PATH}?{SECRET_QUERY}&who=x (auth: Bearer AUTH-s3cret-value)"
    server.replies.append(Reply(status, json.dumps({"message": echo}).encode()))
    caplog.set_level(logging.DEBUG)
    url = f"http://127.0.0.1:{server.port}{SECRET_PATH}?{SECRET_QUERY}"
    params = {
        "url": url,
        "query": {"who": "{{ payload.object.participant.user_name }}"},
        "headers": {"Authorization": "Bearer AUTH-s3cret-value"},
        "json": {"a": 1},
    }
    messages = []
    try:
        await call(services, params)
    except ActionError as exc:
        messages.append(str(exc))
    assert (status == 200) == (messages == [])
    assert server.received[0].target.startswith(SECRET_PATH)  # it was really sent there
    ours = [r for r in caplog.records if r.name.startswith(("zoomrules", "test."))]
    assert ours  # the DEBUG line of the response is there
    for record in ours:
        messages.append(record.getMessage())
        messages.extend(str(v) for v in vars(record).values())
    for text in messages:
        for secret in ("T0KEN-in-the-path", "S1GNATURE-in-the-query", "AUTH-s3cret-value"):
            assert secret not in text, text
        assert "/hooks/" not in text, text
    if status != 200:
        assert f"answered HTTP {status}" in messages[0]
        assert messages[0].startswith(f"POST http://127.0.0.1:{server.port}/… answered")
