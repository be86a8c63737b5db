"""Zoom webhooks: signatures over the raw bytes, every refusal, URL validation,
the answer after the journal and before the actions, one firing per occurrence.

Real HTTP on loopback, ports chosen by the OS. The endpoint tests serve one
`WebhookSource` on the daemon's `HttpServer` with a sink of their own; the
daemon tests run the whole daemon in this process, with the simulator as
Zoom's WebSocket and `WebhookSender` as Zoom's webhook requests.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import httpx
import orjson
import psutil
import pytest
from conftest import DATA_DIR, cli_env, example, run_cli, write_rules
from daemon_process import poll_until, simulator_env

from engine import webhook_signature
from engine.config import (
    ZOOM_WEBHOOK_RETRY_SPAN,
    EngineConfig,
    HttpConfig,
    WebhookConfig,
    read_config,
)
from engine.daemon import Daemon
from engine.events import Event
from engine.http_server import HttpServer
from engine.journal.sqlite.store import SqliteJournal
from engine.loader import load_rules
from engine.plugin import ActionContext, ActionType, hookimpl
from engine.redact import redact
from engine.simulator import EventFeed, Simulator, WebhookSender
from engine.sources import webhook as webhook_source
from engine.sources.webhook import ACCEPT_WAIT, WebhookSource
from engine.webhook_signature import SIGNATURE_HEADER, TIMESTAMP_HEADER, sign

pytestmark = pytest.mark.anyio

SECRET = "test-webhook-secret-token"
PATH = "/zoom/webhook"
#: Zoom's URL validation request body (tests/data/webhook/README.md).
URL_VALIDATION_BODY = (DATA_DIR / "webhook" / "url_validation.json").read_bytes()


def started(**object_fields: Any) -> dict[str, Any]:
    """Zoom's example `meeting.started`, with fields of one's own."""
    body = example("meeting.started")
    body["payload"]["object"].update(object_fields)
    return body


# --------------------------------------------------------------------------
# the endpoint alone: a WebhookSource on an HttpServer, with a sink of our own


@dataclass
class Endpoint:
    source: WebhookSource
    zoom: WebhookSender
    port: int
    #: What the sink was handed.
    received: list[Event] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}{PATH}"


@dataclass(frozen=True)
class Health:
    ok: bool
    detail: str


Sink = Callable[[Event], Awaitable[object]]


@asynccontextmanager
async def endpoint(
    sink: Sink | None = None, *, intake: Callable[[], Health] | None = None, **settings: Any
) -> AsyncIterator[Endpoint]:
    server = HttpServer(HttpConfig("127.0.0.1", 0))
    server.listen()
    config = WebhookConfig("default", PATH, SECRET, **settings)
    source = WebhookSource(config, server, intake=intake)
    async with anyio.create_task_group() as tg:
        await tg.start(server.run)
        url = f"http://127.0.0.1:{server.port}{PATH}"
        async with WebhookSender(url, SECRET, timeout=30) as zoom:
            here = Endpoint(source, zoom, server.port)

            async def keep(event: Event) -> None:
                here.received.append(event)

            tg.start_soon(source.run, sink or keep)
            with anyio.fail_after(10):
                await source.wait_up()
            yield here
        tg.cancel_scope.cancel()


#: Bodies whose bytes change when decoded and encoded again (as Zoom's own
#: samples do before checking the signature): each must be accepted as sent.
REENCODING_CHANGES = {
    "escaped unicode and a raw emoji": (
        b'{"event":"meeting.started","payload":{"object":{"id":"1",'
        b'"topic":"Caf\\u00e9 \xf0\x9f\x9a\x80 sync"}}}',
        ("topic", "Caf\u00e9 \U0001f680 sync"),
    ),
    "an emoji as an escaped surrogate pair": (
        b'{"event":"meeting.started","payload":{"object":{"id":"2","topic":"\\ud83d\\ude80"}}}',
        ("topic", "\U0001f680"),
    ),
    "unusual spacing": (
        b'{ "event" : "meeting.started" ,\r\n\t"payload":{ "object" :{"id" : "3"} } }\n',
        ("id", "3"),
    ),
    "keys out of order": (
        b'{"payload":{"object":{"topic":"z","id":"4"}},"event_ts":1,"event":"meeting.started"}',
        ("id", "4"),
    ),
    "integers beyond 2**53": (
        b'{"event":"meeting.started","payload":{"object":{"id":9007199254740993,'
        b'"uuid":9223372036854775807}}}',
        ("id", 2**53 + 1),
    ),
}


def _double(text: str) -> int | float:
    """A JSON integer as JavaScript reads it: a double, exact only up to 2**53."""
    return int(float(text)) if abs(int(text)) > 2**53 else int(text)


def _reencoded(raw: bytes) -> list[bytes]:
    """What decoding and encoding again makes of `raw` that differs from it:
    JavaScript's `JSON.stringify(JSON.parse(body))` (Zoom's Node samples),
    orjson's, and keys sorted as a canonical form sorts them."""
    again = [
        json.dumps(
            json.loads(raw, parse_int=_double), separators=(",", ":"), ensure_ascii=False
        ).encode(),
        orjson.dumps(orjson.loads(raw)),
        orjson.dumps(orjson.loads(raw), option=orjson.OPT_SORT_KEYS),
    ]
    return [other for other in again if other != raw]


@pytest.mark.parametrize("raw, field_value", REENCODING_CHANGES.values(), ids=REENCODING_CHANGES)
async def test_a_body_is_verified_as_received_byte_for_byte(
    raw: bytes, field_value: tuple[str, Any]
) -> None:
    reencoded = _reencoded(raw)
    assert reencoded, "the case must be one that re-encoding changes"
    async with endpoint() as here:
        delivery = await here.zoom.deliver(raw)
        assert delivery.status == 200, delivery.response.text
        # Signed over the body decoded and encoded again (Zoom's samples'
        # mistake, made on the other side): refused.
        for again in reencoded:
            response = await here.zoom.post(raw, here.zoom.headers(again))
            assert response.status_code == 401, response.text
    [event] = here.received
    assert event.raw == raw
    key, value = field_value
    assert event.body["payload"]["object"][key] == value
    assert event.source == "webhook:default"
    assert here.source.stats.events == 1
    assert here.source.stats.malformed["bad_signature"] == len(reencoded)


def _one_byte_changed(zoom: WebhookSender, body: bytes) -> Awaitable[httpx.Response]:
    changed = body.replace(b'"id":"7"', b'"id":"8"')
    assert len(changed) == len(body) and changed != body
    return zoom.post(changed, zoom.headers(body))


def _without(name: str) -> Callable[[WebhookSender, bytes], Awaitable[httpx.Response]]:
    def send(zoom: WebhookSender, body: bytes) -> Awaitable[httpx.Response]:
        headers = zoom.headers(body)
        del headers[name]
        return zoom.post(body, headers)

    return send


def _with(name: str, value: str) -> Callable[[WebhookSender, bytes], Awaitable[httpx.Response]]:
    def send(zoom: WebhookSender, body: bytes) -> Awaitable[httpx.Response]:
        return zoom.post(body, {**zoom.headers(body), name: value})

    return send


def _signed(body: bytes) -> Callable[[WebhookSender, bytes], Awaitable[httpx.Response]]:
    """Send `body` instead, correctly signed (refused for what it is, not its signature)."""

    def send(zoom: WebhookSender, _: bytes) -> Awaitable[httpx.Response]:
        return zoom.post(body, zoom.headers(body))

    return send


async def _delivered(delivery: Awaitable[Any]) -> httpx.Response:
    response: httpx.Response = (await delivery).response
    return response


def _repeated_signature(zoom: WebhookSender, body: bytes) -> Awaitable[httpx.Response]:
    headers = list(zoom.headers(body).items())
    headers.append((SIGNATURE_HEADER, headers[-1][1]))
    return zoom.http.post(zoom.url, content=body, headers=headers)


def _chunked(zoom: WebhookSender, body: bytes) -> Awaitable[httpx.Response]:
    """Over max_body, sent in chunks without a Content-Length."""
    big = b'{"event":"meeting.started","pad":"' + b"x" * 5000 + b'"}'

    async def chunks() -> AsyncIterator[bytes]:
        for start in range(0, len(big), 512):
            yield big[start : start + 512]

    return zoom.http.post(zoom.url, content=chunks(), headers=zoom.headers(big))


REFUSALS: dict[str, tuple[Callable[[WebhookSender, bytes], Awaitable[httpx.Response]], int, str]] = {
    "one byte changed": (_one_byte_changed, 401, "bad_signature"),
    "another secret": (
        lambda zoom, body: _delivered(zoom.deliver(body, secret="another-secret")),
        401, "bad_signature",
    ),
    "a stale timestamp": (lambda zoom, body: _delivered(zoom.deliver(body, age=360)), 401, "stale"),
    "a future timestamp": (
        lambda zoom, body: _delivered(zoom.deliver(body, age=-360)), 401, "future",
    ),
    "no signature": (_without(SIGNATURE_HEADER), 401, "no_signature"),
    "a signature not v0=": (_with(SIGNATURE_HEADER, "sha256=" + "0" * 64), 401, "bad_signature"),
    "the signature twice": (_repeated_signature, 400, "repeated_header"),
    "no timestamp": (_without(TIMESTAMP_HEADER), 400, "no_timestamp"),
    "a timestamp in milliseconds": (
        _with(TIMESTAMP_HEADER, str(int(time.time() * 1000))), 400, "bad_timestamp",
    ),
    "a fractional timestamp": (_with(TIMESTAMP_HEADER, f"{time.time():.3f}"), 400, "bad_timestamp"),
    "a Content-Type that is not JSON": (_with("content-type", "text/plain"), 415, "not_json"),
    "a body that is not JSON": (_signed(b"event=meeting.started"), 400, "not_event"),
    "a JSON array": (_signed(b'[{"event":"meeting.started"}]'), 400, "not_event"),
    "an object without an event name": (_signed(b'{"payload":{}}'), 400, "not_event"),
    "a URL validation without its token": (
        _signed(b'{"event":"endpoint.url_validation","payload":{}}'), 400, "no_plain_token",
    ),
    "a body over max_body": (_signed(b'{"event":"x","pad":"' + b"x" * 5000 + b'"}'), 413, "too_large"),
    "a chunked body over max_body": (_chunked, 413, "too_large"),
}  # fmt: skip


@pytest.mark.parametrize("send, status, reason", REFUSALS.values(), ids=REFUSALS)
async def test_every_unverified_or_malformed_request_is_refused_with_its_status(
    send: Callable[[WebhookSender, bytes], Awaitable[httpx.Response]], status: int, reason: str
) -> None:
    body = orjson.dumps(started(id="7"))
    async with endpoint(max_body=4096, max_age=300) as here:
        response = await send(here.zoom, body)
        assert response.status_code == status, response.text
        assert response.text.strip(), "a refusal says why"
        # The endpoint still takes what Zoom sends.
        assert (await here.zoom.deliver(body)).status == 200
    stats = here.source.stats
    assert stats.malformed == {reason: 1}
    assert [event.raw for event in here.received] == [body]


async def _raw_exchange(port: int, request: bytes) -> bytes:
    """Send `request` bytes as they are; everything the server answers until it closes."""
    async with await anyio.connect_tcp("127.0.0.1", port) as stream:
        await stream.send(request)
        answer = b""
        with anyio.fail_after(10):
            try:
                while True:
                    answer += await stream.receive()
            except (anyio.EndOfStream, anyio.BrokenResourceError):
                return answer


def _head(zoom: WebhookSender, signed: bytes, length: int) -> bytes:
    headers = "".join(f"{k}: {v}\r\n" for k, v in zoom.headers(signed).items())
    return (
        f"POST {PATH} HTTP/1.1\r\nhost: zoom\r\n{headers}content-length: {length}\r\n\r\n".encode()
    )


async def test_a_lying_content_length_gets_no_event_in() -> None:
    body = orjson.dumps(started(id="9"))
    async with endpoint(max_body=4096) as here:
        # Claims more than max_body and sends nothing: refused at once, unread,
        # and the connection closed.
        answer = await _raw_exchange(here.port, _head(here.zoom, body, 100 << 20))
        assert answer.startswith(b"HTTP/1.1 413 ")
        assert b"connection: close" in answer.lower()
        # Claims less than it sends: only the claimed bytes are the body, and
        # the signature (over everything sent) does not match them.
        answer = await _raw_exchange(here.port, _head(here.zoom, body, len(body) - 20) + body)
        assert answer.startswith(b"HTTP/1.1 401 ")
        assert b"HTTP/1.1 200" not in answer
    assert here.received == []
    assert here.source.stats.malformed == {"too_large": 1, "bad_signature": 1}


async def test_only_post_is_answered() -> None:
    async with endpoint() as here:
        assert (await here.zoom.http.get(here.url)).status_code == 405
        assert (await here.zoom.http.put(here.url, content=b"{}")).status_code == 405


async def test_the_url_validation_is_answered_as_zoom_expects() -> None:
    token = json.loads(URL_VALIDATION_BODY)["payload"]["plainToken"]
    # What Zoom checks, computed here from the definition, not by the engine.
    expected = hmac.new(SECRET.encode(), token.encode(), hashlib.sha256).hexdigest()
    async with endpoint() as here:
        response = (await here.zoom.deliver(URL_VALIDATION_BODY)).response
        assert response.status_code == 200
        assert response.headers["content-type"] == "application/json"
        assert response.json() == {"plainToken": token, "encryptedToken": expected}
        # The simulator's own check agrees, for a token of its choosing.
        assert (await here.zoom.validate_url()).ok(SECRET)
        # Unsigned (or signed with another secret): no token is answered.
        forged = await here.zoom.deliver(URL_VALIDATION_BODY, secret="another-secret")
        assert forged.status == 401 and "encryptedToken" not in forged.response.text
    assert here.received == [], "a URL validation never reaches the rules"
    assert here.source.stats.validations == 2


async def test_signatures_are_compared_in_constant_time(monkeypatch: pytest.MonkeyPatch) -> None:
    compared: list[tuple[bytes, bytes]] = []
    compare_digest = hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        compared.append((a, b))
        return compare_digest(a, b)

    monkeypatch.setattr(webhook_signature.hmac, "compare_digest", spy)
    body = orjson.dumps(started())
    async with endpoint() as here:
        assert (await here.zoom.deliver(body, secret="another-secret")).status == 401
        assert (await here.zoom.deliver(body)).status == 200
    assert len(compared) == 2
    assert all(a.startswith(b"v0=") and b.startswith(b"v0=") for a, b in compared)


async def test_refusals_are_counted_each_and_logged_a_few_times(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="zoomrules.webhook")
    body = orjson.dumps(started())
    async with endpoint() as here:
        for _ in range(30):
            assert (await here.zoom.deliver(body, secret="another-secret")).status == 401
    refused = [r for r in caplog.records if "refused a request" in r.getMessage()]
    assert here.source.stats.malformed["bad_signature"] == 30
    assert 1 <= len(refused) <= 5, "rate-limited"
    assert "401" in refused[0].getMessage() and "does not match" in refused[0].getMessage()
    assert SECRET not in caplog.text


async def _blocked(event: Event) -> None:
    await anyio.sleep_forever()


async def _closed(event: Event) -> None:
    raise anyio.ClosedResourceError


async def _broken(event: Event) -> None:
    raise ValueError("a bug downstream")


async def test_an_event_the_journal_cannot_take_is_answered_503() -> None:
    body = orjson.dumps(started())
    down = Health(False, "cannot write for 3s (database or disk is full)")
    async with endpoint(intake=lambda: down) as here:
        response = (await here.zoom.deliver(body)).response
        assert response.status_code == 503 and "disk is full" in response.text
        health = here.source.health()
        assert not health.up and "disk is full" in health.detail
        assert here.received == []
    for sink, why in ((_blocked, "did not take the event within"), (_closed, "closed")):
        async with endpoint(sink) as here:
            response = (await here.zoom.deliver(body)).response
            assert response.status_code == 503 and why in response.text
            assert here.source.stats.unavailable == 1
    async with endpoint(_broken) as here:
        assert (await here.zoom.deliver(body)).status == 500
        assert here.source.stats.errors == 1


async def test_the_queue_s_wait_is_short_enough_for_zoom() -> None:
    assert ACCEPT_WAIT < 3.0, "Zoom counts an answer after 3 s as a failure"


async def test_the_route_is_served_while_the_source_runs() -> None:
    server = HttpServer(HttpConfig("127.0.0.1", 0))
    server.listen()
    source = WebhookSource(WebhookConfig("default", PATH, SECRET), server)
    assert not source.health().up
    url = f"http://127.0.0.1:{server.port}{PATH}"
    async with anyio.create_task_group() as tg, WebhookSender(url, SECRET, timeout=30) as zoom:
        await tg.start(server.run)
        scope = anyio.CancelScope()

        async def run() -> None:
            with scope:
                await source.run(_closed)

        tg.start_soon(run)
        await source.wait_up()
        health = source.health()
        assert health.up and health.detail == f"serving POST {PATH}"
        scope.cancel()
        await poll_until(lambda: not source.stats.mounted, 10)
        assert (await zoom.deliver(orjson.dumps(started()))).status == 404
        assert source.health().detail == "stopped"
        tg.cancel_scope.cancel()


async def test_without_an_http_server_the_webhook_says_it_is_not_served(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A reload that adds a webhook and [http] to a daemon started without
    [http]: the server starts only at the next start."""
    source = WebhookSource(WebhookConfig("default", PATH, SECRET), None)
    async with anyio.create_task_group() as tg:
        tg.start_soon(source.run, _closed)
        await poll_until(lambda: "not served" in caplog.text, 10)
        health = source.health()
        assert not health.up and "[http] takes effect at the next start" in health.detail
        tg.cancel_scope.cancel()


# --------------------------------------------------------------------------
# event ids: one occurrence, one id, by either way


def test_the_websocket_and_the_webhook_bodies_of_one_occurrence_have_one_id() -> None:
    from conftest import corpus

    for name, body in corpus().items():
        frame = orjson.loads(Simulator.encode_event(body))
        by_websocket = Event.from_json(frame["content"], source="zoom:default")
        # Zoom's webhook body: the same object, however its bytes are laid out.
        pretty = json.dumps(body, indent=2, ensure_ascii=True).encode()
        reordered = json.dumps(dict(reversed(list(body.items())))).encode()
        for raw in (orjson.dumps(body), pretty, reordered):
            by_webhook = Event.from_json(raw, source="webhook:default")
            assert by_webhook.id == by_websocket.id, name


def test_the_dedup_window_covers_zoom_s_retries() -> None:
    assert ZOOM_WEBHOOK_RETRY_SPAN == 85 * 60
    assert EngineConfig().dedup_window >= ZOOM_WEBHOOK_RETRY_SPAN


# --------------------------------------------------------------------------
# the whole daemon


class Held:
    """An action `hold` that runs until the test releases it."""

    def __init__(self) -> None:
        self.started = anyio.Event()
        self.release = anyio.Event()
        self.finished = 0

    @hookimpl
    def zoomrules_action_types(self) -> list[ActionType]:
        async def run(params: Mapping[str, Any], ctx: ActionContext) -> None:
            self.started.set()
            await self.release.wait()
            self.finished += 1

        return [ActionType(name="hold", run=run, description="waits for the test")]


def daemon_rules(
    directory: Path,
    *,
    websocket: bool = True,
    path: str = PATH,
    secret: str = "${ZOOM_WEBHOOK_SECRET_TOKEN}",
    action: str = 'type = "print"\n  message = "{{ event }}"',
) -> Path:
    zoom = (
        'client_id = "${ZOOM_CLIENT_ID}"\nclient_secret = "${ZOOM_CLIENT_SECRET}"\n'
        'endpoint = "${ZOOM_WS_ENDPOINT}"'
        if websocket
        else ""
    )
    text = f"""
version = 1
[zoom]
{zoom}
[zoom.webhook]
path = "{path}"
secret_token = "{secret}"
[engine]
state_dir = "${{ZOOMRULES_STATE_DIR}}"
[http]
listen = "127.0.0.1:0"

[[rule]]
name = "fires"
on = ["meeting.started", "recording.completed"]
  [[rule.action]]
  {action}
"""
    return write_rules(directory, text)


@dataclass
class Running:
    daemon: Daemon
    zoom: WebhookSender
    http: httpx.AsyncClient

    @property
    def fired(self) -> int:
        assert self.daemon.dispatcher is not None
        return self.daemon.dispatcher.stats.fired_by_rule["fires"]

    def journal(self) -> Any:
        store = self.daemon.store
        assert store is not None
        return store


@asynccontextmanager
async def running(
    tmp_path: Path,
    sim: Simulator,
    rules: Path,
    plugins: tuple[object, ...] = (),
    *,
    websocket: bool = True,
) -> AsyncIterator[Running]:
    env = simulator_env(sim, tmp_path / "state", ZOOM_WEBHOOK_SECRET_TOKEN=SECRET)
    if not websocket:
        del env["ZOOM_WS_ENDPOINT"]  # it would add a WebSocket subscription
    loaded = load_rules([rules], env=env, extra_plugins=list(plugins))
    daemon = Daemon([rules], loaded, env=env, handle_signals=False)
    async with anyio.create_task_group() as tg:
        tg.start_soon(daemon.run)
        with anyio.fail_after(30):
            server = await daemon.wait_serving()
            await daemon.wait_ready()
        base = f"http://127.0.0.1:{server.port}"
        async with (
            httpx.AsyncClient(base_url=base, timeout=30) as http,
            WebhookSender(base + PATH, SECRET, http=http, timeout=30) as zoom,
        ):
            try:
                yield Running(daemon, zoom, http)
            finally:
                daemon.stop()


async def _settled(run: Running, deliveries: int, timeout: float = 30) -> None:
    """Until `deliveries` events reached the journal (stored or dropped as
    duplicates) and every job they started is done."""
    journal = run.journal()
    dispatcher = run.daemon.dispatcher
    assert dispatcher is not None

    def settled() -> bool:
        counters = journal.counters
        stats = dispatcher.stats
        return (
            counters.appended + counters.duplicates >= deliveries
            and stats.jobs_done == stats.jobs_started
        )

    await poll_until(settled, timeout)


async def test_one_occurrence_fires_once_by_websocket_webhook_and_retry(tmp_path: Path) -> None:
    async with Simulator() as sim, running(tmp_path, sim, daemon_rules(tmp_path)) as run:
        await sim.wait_connected(timeout=30)
        # The simulator's feed sends each event both ways, as for an app
        # subscribed to both.
        feed = EventFeed(sim, [started(id="by the feed")], webhook=run.zoom)
        sent = await feed.send_next(via="test")
        assert sent.websocket and sent.webhook == "200 accepted", sent.describe()
        await _settled(run, 2)
        assert run.fired == 1
        # By WebSocket, by webhook, and Zoom retrying the webhook (its first
        # answer lost on the way): one occurrence.
        body = started(id="both ways")
        assert await sim.send_event(body) == 1
        first = await run.zoom.deliver(body)
        assert first.status == 200
        assert (await run.zoom.retry(first)).status == 200
        await _settled(run, 5)
        assert run.fired == 2
        # A recording's two deliveries differ in download_token: still one occurrence.
        recording = example("recording.completed")
        await sim.send_event({**recording, "download_token": "token-by-websocket"})
        webhook = await run.zoom.deliver({**recording, "download_token": "token-by-webhook"})
        assert webhook.status == 200
        await _settled(run, 7)
        assert run.fired == 3
        # Another occurrence (a later event_ts) fires again: nothing else is dropped.
        assert (await run.zoom.deliver({**body, "event_ts": body["event_ts"] + 1})).accepted
        await _settled(run, 8)
        assert run.fired == 4
        assert run.journal().counters.duplicates == 4


async def test_the_answer_waits_for_the_journal_and_not_for_the_actions(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    order: list[str] = []
    entered, gate = anyio.Event(), anyio.Event()
    append = SqliteJournal.append

    async def gated_append(self: SqliteJournal, event: Event) -> None:
        entered.set()
        await gate.wait()
        await append(self, event)
        order.append("journal took it")

    monkeypatch.setattr(SqliteJournal, "append", gated_append)
    # However slow this machine, the held-back append is not given up on (503).
    monkeypatch.setattr(webhook_source, "ACCEPT_WAIT", 60.0)
    held = Held()
    rules = daemon_rules(tmp_path, websocket=False, action='type = "hold"')
    async with Simulator() as sim, running(tmp_path, sim, rules, (held,), websocket=False) as run:
        answered = anyio.Event()

        async def deliver() -> None:
            delivery = await run.zoom.deliver(started())
            # Committed, not only queued, by the time Zoom has its answer.
            order.append(f"answered {delivery.status}, {run.journal().counters.appended} committed")
            answered.set()

        async with anyio.create_task_group() as tg:
            tg.start_soon(deliver)
            with anyio.fail_after(10):
                await entered.wait()
            # The journal has not taken the event: no answer comes.
            with anyio.move_on_after(0.5):
                await answered.wait()
            assert not answered.is_set()
            gate.set()
        assert order == ["journal took it", "answered 200, 1 committed"]
        # The action runs after the answer, and the answer did not wait for it.
        with anyio.fail_after(30):
            await held.started.wait()
        assert held.finished == 0
        held.release.set()
        await _settled(run, 1)
        assert held.finished == 1


def _journal_writer() -> psutil.Process:
    """This process's journal writer (`python -m engine.journal.sqlite DB`)."""
    for child in psutil.Process(os.getpid()).children():
        if "engine.journal.sqlite" in " ".join(child.cmdline()):
            return child
    raise AssertionError("no journal writer process")


def _limit_writes(process: psutil.Process, size: int | None) -> None:
    """Make every write of `process` past `size` bytes fail (None: lift it),
    as a full disk makes them."""
    _, hard = process.rlimit(psutil.RLIMIT_FSIZE)
    process.rlimit(psutil.RLIMIT_FSIZE, (hard if size is None else size, hard))


async def test_a_journal_that_cannot_write_answers_503_and_zoom_s_retry_gets_in(
    tmp_path: Path,
) -> None:
    rules = daemon_rules(tmp_path, websocket=False)
    async with Simulator() as sim, running(tmp_path, sim, rules, websocket=False) as run:
        assert (await run.zoom.deliver(started(id="first"))).accepted
        await _settled(run, 1)
        state = tmp_path / "state"
        size = max((state / name).stat().st_size for name in ("journal.db", "journal.db-wal"))
        writer = _journal_writer()
        _limit_writes(writer, size + 4096)
        try:
            # Accepted while the journal can hold them, until it says it cannot write.
            accepted: list[dict[str, Any]] = []
            refused: dict[str, Any] | None = None
            with anyio.fail_after(60):
                while refused is None:
                    body = started(id=f"during-{len(accepted)}")
                    delivery = await run.zoom.deliver(body)
                    if delivery.status == 503:
                        refused = body
                    else:
                        assert delivery.status == 200, delivery.response.text
                        accepted.append(body)
            assert "journal" in delivery.response.text
            ready = await run.http.get("/-/ready")
            assert ready.status_code == 503 and "webhook:default: answering 503" in ready.text
        finally:
            _limit_writes(writer, None)  # space returns
        await poll_until(lambda: run.journal().health().ok, 60)
        # Zoom delivers the refused event again later: it gets in.
        assert (await run.zoom.deliver(refused)).accepted
        await _settled(run, len(accepted) + 2, timeout=60)
        assert run.fired == len(accepted) + 2
        assert run.journal().counters.unwritten == 0


async def test_a_reload_moves_the_route_and_changes_the_secret(tmp_path: Path) -> None:
    rules = daemon_rules(tmp_path, websocket=False)
    async with Simulator() as sim, running(tmp_path, sim, rules, websocket=False) as run:
        assert (await run.zoom.deliver(started(id="before"))).accepted
        rules.write_text(
            rules.read_text()
            .replace(f'path = "{PATH}"', 'path = "/hooks/zoom"')
            .replace('"${ZOOM_WEBHOOK_SECRET_TOKEN}"', '"rotated-secret"')
        )
        [old] = run.daemon.sources
        assert await run.daemon.reload()
        # The new route is served before the old one goes (no request falls between).
        await poll_until(lambda: not old.stats.mounted, 10)
        [new] = run.daemon.sources
        assert new.health().up and new.health().detail == "serving POST /hooks/zoom"
        moved = WebhookSender(
            str(run.http.base_url) + "/hooks/zoom", "rotated-secret", http=run.http
        )
        assert (await run.zoom.deliver(started(id="old path"))).status == 404
        assert (await moved.deliver(started(id="old secret"), secret=SECRET)).status == 401
        assert (await moved.deliver(started(id="after"))).accepted
        await _settled(run, 2)
        assert run.fired == 2


async def test_a_daemon_of_webhooks_alone_runs_is_ready_and_shows_in_metrics(
    tmp_path: Path,
) -> None:
    rules = daemon_rules(tmp_path, websocket=False)
    async with Simulator() as sim, running(tmp_path, sim, rules, websocket=False) as run:
        assert [source.name for source in run.daemon.sources] == ["webhook:default"]
        assert (await run.http.get("/-/ready")).status_code == 200
        assert (await run.zoom.deliver(started())).accepted
        assert (await run.zoom.deliver(started(), age=3600)).status == 401
        await _settled(run, 1)
        assert run.fired == 1
        metrics = (await run.http.get("/metrics")).text.splitlines()
    assert 'zoomrules_source_up{source="webhook:default"} 1.0' in metrics
    assert (
        'zoomrules_events_received_total{event="meeting.started",source="webhook:default"} 1.0'
        in metrics
    )
    assert (
        'zoomrules_events_malformed_total{reason="stale",source="webhook:default"} 1.0' in metrics
    )
    assert sim.connections == [], "no WebSocket without an endpoint"


# --------------------------------------------------------------------------
# configuration


#: A webhook, and the HTTP server it needs.
WEBHOOK_ALONE = """
        version = 1
        [zoom.webhook]
        secret_token = "${ZOOM_WEBHOOK_SECRET_TOKEN}"
        [http]
        listen = "127.0.0.1:9464"
"""


def _read(tmp_path: Path, text: str, **env: str) -> tuple[Any, list[Any]]:
    path = write_rules(tmp_path, text)
    return read_config([path], env={"ZOOM_WEBHOOK_SECRET_TOKEN": SECRET, **env})


def test_a_webhook_s_settings_and_their_defaults(tmp_path: Path) -> None:
    config, problems = _read(tmp_path, WEBHOOK_ALONE)
    assert problems == []
    assert config.zoom.subscriptions == ()
    assert config.zoom.webhooks == (WebhookConfig("default", PATH, SECRET, 1 << 20, 300.0),)
    assert SECRET not in repr(config.zoom.webhooks)
    named, _ = _read(
        tmp_path, WEBHOOK_ALONE.replace("[zoom.webhook]", '[zoom.webhook]\nname = "main"')
    )
    assert [hook.name for hook in named.zoom.webhooks] == ["main"]
    assert redact(f"token {SECRET}") != f"token {SECRET}", "the secret is masked in logs"

    config, problems = _read(
        tmp_path,
        """
        version = 1
        [http]
        listen = "127.0.0.1:9464"
        [[zoom.webhook]]
        name = "sales"
        secret_token = "one"
        max_body = "64KiB"
        max_age = "1m"
        [[zoom.webhook]]
        name = "support"
        secret_token = "two"
        """,
    )
    assert problems == []
    sales, support = config.zoom.webhooks
    assert (sales.path, sales.max_body, sales.max_age) == ("/zoom/webhook/sales", 65536, 60.0)
    assert (support.path, support.secret_token) == ("/zoom/webhook/support", "two")


def _messages(problems: list[Any]) -> str:
    return "\n".join(str(problem) for problem in problems)


def test_webhook_mistakes_are_reported_where_they_are(tmp_path: Path) -> None:
    _, problems = _read(
        tmp_path,
        """
        version = 1
        [[zoom.webhook]]
        name = "a"
        path = "zoom hook"
        [[zoom.webhook]]
        name = "a"
        secret_token = "x"
        path = "/-/ready"
        [[zoom.webhook]]
        name = "b c"
        secret_token = "x"
        max_age = "0s"
        """,
    )
    text = _messages(problems)
    assert "rules.toml:4: [[zoom.webhook]] 'a', key 'path': must be a URL path" in text
    assert "/zoom/webhook/b c" not in text, "a bad name is reported once"
    assert "[[zoom.webhook]] 'a', key 'secret_token': is required" in text
    assert "key 'path': must not be under /-/" in text
    assert "key 'name': must be letters, digits" in text
    assert "key 'max_age': must be at least 1s" in text
    assert "[[zoom.webhook]] 'a': needs the daemon's HTTP server" in text
    assert "[http] listen" in text


def test_a_webhook_warns_of_what_would_fire_twice(tmp_path: Path) -> None:
    config, problems = _read(
        tmp_path,
        """
        version = 1
        [zoom]
        client_id = "id"
        client_secret = "secret"
        [zoom.webhook]
        secret_token = "x"
        [engine]
        dedup_window = "1h"
        [http]
        listen = "127.0.0.1:9464"
        """,
    )
    assert problems == []
    text = _messages(list(config.warnings))
    assert (
        "[engine], key 'dedup_window': is shorter than Zoom's webhook retries (85 minutes" in text
    )
    assert "key 'client_id': is not used" in text
    config, problems = _read(
        tmp_path,
        """
        version = 1
        [zoom.webhook]
        secret_token = "x"
        [engine]
        journal = false
        [http]
        listen = "127.0.0.1:9464"
        """,
    )
    assert problems == []
    assert "duplicates (Zoom's retries" in _messages(list(config.warnings))


def test_check_names_the_missing_http_server(tmp_path: Path) -> None:
    rules = write_rules(
        tmp_path,
        """
        version = 1
        [zoom.webhook]
        secret_token = "${ZOOM_WEBHOOK_SECRET_TOKEN}"
        """,
    )
    result = run_cli("check", "-c", rules)
    assert result.returncode == 2
    assert "rules.toml:2: [zoom.webhook]: needs the daemon's HTTP server" in result.stderr


# --------------------------------------------------------------------------
# `zoomrules test` with a captured webhook request


def _capture(body: bytes, headers: Mapping[str, str]) -> bytes:
    lines = [f"POST {PATH} HTTP/1.1", "Host: zoomrules.example.com"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def test_zoomrules_test_reads_a_webhook_body_or_a_captured_request(tmp_path: Path) -> None:
    rules = write_rules(
        tmp_path,
        WEBHOOK_ALONE
        + """
        [[rule]]
        name = "started"
        on = ["meeting.started"]
          [[rule.action]]
          type = "print"
          message = "{{ payload.object.topic }}"
        """,
    )
    body = orjson.dumps(started(topic="Caf\u00e9 \U0001f680"))
    timestamp = "1700000000"
    headers = {
        "Content-Type": "application/json; charset=utf-8",
        "x-zm-request-timestamp": timestamp,
        "x-zm-signature": sign(SECRET, timestamp, body),
    }
    (tmp_path / "body.json").write_bytes(body)
    (tmp_path / "request.http").write_bytes(_capture(body, headers) + b"\n")
    changed = body.replace("Café".encode(), b"Cafe\xcc\x81")  # é decomposed by an editor
    (tmp_path / "changed.http").write_bytes(_capture(changed, headers))
    # No ZOOM_WS_ENDPOINT: it would add a WebSocket subscription (and want credentials).
    env = {k: v for k, v in cli_env().items() if not k.startswith("ZOOM_")}
    with_secret = {**env, "ZOOM_WEBHOOK_SECRET_TOKEN": SECRET}

    plain = run_cli("test", "-c", rules, tmp_path / "body.json", env=with_secret)
    assert plain.returncode == 0, plain.stderr
    assert "FIRES  started" in plain.stdout and "signature" not in plain.stdout

    valid = run_cli("test", "-c", rules, tmp_path / "request.http", env=with_secret)
    assert valid.returncode == 0, valid.stderr
    assert (
        "webhook signature valid: signed with the secret token of webhook 'default'" in valid.stdout
    )
    assert "would now refuse it as a replay" in valid.stdout
    assert "FIRES  started" in valid.stdout and "Café 🚀" in valid.stdout

    invalid = run_cli("test", "-c", rules, tmp_path / "changed.http", "--json", env=with_secret)
    assert invalid.returncode == 0, invalid.stderr
    document = json.loads(invalid.stdout)
    assert document["webhook"]["signature"] == "invalid"
    assert "the body was changed" in document["webhook"]["detail"]

    unset = run_cli("test", "-c", rules, tmp_path / "request.http", env=env)
    assert "webhook signature unchecked" in unset.stdout

    (tmp_path / "cut.http").write_bytes(_capture(body, headers)[:-10])
    cut = run_cli("test", "-c", rules, tmp_path / "cut.http", env=with_secret)
    assert cut.returncode == 2 and "cut.http: the body is cut short" in cut.stderr
