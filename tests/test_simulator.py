"""The local Zoom simulator behaves like the parts of Zoom we depend on."""

from __future__ import annotations

import anyio
import httpx
import orjson
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from engine.simulator import SimResponse, Simulator


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


pytestmark = pytest.mark.anyio

CLIENT_ID, CLIENT_SECRET = "sim-id", "sim-secret-value"


def _ws_url(sim: Simulator, token: str | None) -> str:
    return sim.ws_endpoint + (f"&access_token={token}" if token is not None else "")


async def _token(sim: Simulator, http: httpx.AsyncClient, **params: str) -> httpx.Response:
    params.setdefault("grant_type", "client_credentials")
    return await http.post(sim.oauth_url, params=params, auth=(CLIENT_ID, CLIENT_SECRET))


async def test_oauth_issues_tokens_for_both_grants() -> None:
    async with (
        Simulator(client_id=CLIENT_ID, client_secret=CLIENT_SECRET, token_lifetime=120) as sim,
        httpx.AsyncClient() as http,
    ):
        r1 = await _token(sim, http)
        r2 = await _token(sim, http, grant_type="account_credentials", account_id="acc")
    assert r1.status_code == r2.status_code == 200
    body = r1.json()
    assert body["token_type"] == "bearer" and body["expires_in"] == 120
    assert sim.issued_tokens == [body["access_token"], r2.json()["access_token"]]


async def test_oauth_rejects_wrong_credentials_and_can_fail_on_purpose() -> None:
    sim = Simulator(client_id=CLIENT_ID, client_secret=CLIENT_SECRET)
    async with sim, httpx.AsyncClient() as http:
        bad = await http.post(
            sim.oauth_url, params={"grant_type": "client_credentials"}, auth=(CLIENT_ID, "nope")
        )
        sim.fail_oauth(2)
        failed = [await _token(sim, http) for _ in range(2)]
        ok = await _token(sim, http)
    assert bad.status_code == 401
    assert bad.json() == {"reason": "Invalid client_id or client_secret", "error": "invalid_client"}
    assert [r.status_code for r in failed] == [500, 500]
    assert ok.status_code == 200
    assert len(sim.oauth_requests) == 4


async def test_rest_api_records_calls_and_answers_plausibly() -> None:
    async with Simulator(client_id=CLIENT_ID, client_secret=CLIENT_SECRET) as sim:
        token = sim.issue_token()
        headers = {"Authorization": f"Bearer {token}"}
        async with httpx.AsyncClient(base_url=sim.api_base_url) as http:
            meeting = await http.get("/meetings/85746065432", headers=headers)
            patched = await http.patch(
                "/meetings/85746065432", headers=headers, json={"topic": "x"}
            )
            unauthorized = await http.get("/users/me", headers={"Authorization": "Bearer wrong"})
    assert meeting.status_code == 200
    assert meeting.json()["join_url"] == "https://zoom.us/j/85746065432"
    assert patched.status_code == 204
    assert unauthorized.status_code == 401 and unauthorized.json()["code"] == 124
    calls = sim.api_calls
    assert [(c.method, c.path) for c in calls] == [
        ("GET", "/v2/meetings/85746065432"),
        ("PATCH", "/v2/meetings/85746065432"),
        ("GET", "/v2/users/me"),
    ]
    assert calls[1].json == {"topic": "x"}
    assert all("authorization" not in c.headers for c in calls)
    assert [c.token_valid for c in calls] == [True, True, False]


async def test_rest_api_scripted_statuses_in_sequence() -> None:
    async with Simulator() as sim:
        token = sim.issue_token()
        sim.script(
            "GET",
            "/v2/meetings/*",
            SimResponse(429, retry_after=2),
            401,
            500,
            404,
        )
        async with httpx.AsyncClient(
            base_url=sim.api_base_url, headers={"Authorization": f"Bearer {token}"}
        ) as http:
            answers = [await http.get("/meetings/123") for _ in range(5)]
    assert [r.status_code for r in answers] == [429, 401, 500, 404, 200]
    assert answers[0].headers["Retry-After"] == "2"
    assert answers[3].json() == {"code": 3001, "message": "Meeting does not exist: 123."}


async def test_websocket_connect_heartbeat_and_events() -> None:
    async with Simulator() as sim, connect(_ws_url(sim, sim.issue_token())) as ws:
        build = orjson.loads(await ws.recv())
        assert build["module"] == "build_connection" and build["success"] is True
        await ws.send('{"module":"heartbeat"}')
        assert orjson.loads(await ws.recv()) == {
            "module": "heartbeat",
            "success": True,
            "content": "live",
            "header": {},
        }
        await sim.wait_connected()
        assert await sim.send_events([{"event": "a"}, {"event": "b"}]) == 2
        assert await sim.send_event({"event": "c"}, as_object=True) == 1
        frames = [orjson.loads(await ws.recv()) for _ in range(3)]
    assert orjson.loads(frames[0]["content"]) == {"event": "a"}
    assert frames[2]["content"] == {"event": "c"}
    assert sim.heartbeats_received == 1


@pytest.mark.parametrize(
    ("token", "content"),
    [(None, "token is empty"), ("not-a-token", "token is invalid")],
)
async def test_websocket_refuses_bad_tokens(token: str | None, content: str) -> None:
    async with Simulator() as sim, connect(_ws_url(sim, token)) as ws:
        frame = orjson.loads(await ws.recv())
        with pytest.raises(ConnectionClosed):
            await ws.recv()
    assert frame == {
        "module": "build_connection",
        "success": False,
        "content": content,
        "header": {},
    }


async def test_expired_and_revoked_tokens_are_refused() -> None:
    async with Simulator() as sim:
        expired, revoked = sim.issue_token(), sim.issue_token()
        sim.expire_tokens()
        sim.revoke_token(revoked)
        fresh = sim.issue_token()
        assert (
            not sim.token_valid(expired) and not sim.token_valid(revoked) and sim.token_valid(fresh)
        )


async def test_events_without_a_client_are_dropped() -> None:
    async with Simulator() as sim:
        assert await sim.send_event({"event": "lost"}) == 0
        assert sim.events_dropped == 1


async def test_new_connection_replaces_the_old_one() -> None:
    async with Simulator() as sim:
        async with connect(_ws_url(sim, sim.issue_token())) as first:
            await first.recv()
            async with connect(_ws_url(sim, sim.issue_token())) as second:
                await second.recv()
                with pytest.raises(ConnectionClosed):
                    await first.recv()
                await sim.wait_connected(count=2)
                assert sim.live is sim.connections[1]
        assert sim.connections[0].replaced


@pytest.mark.parametrize("code", [1000, 1001, 4000])
async def test_drop_with_close_code(code: int) -> None:
    async with Simulator() as sim, connect(_ws_url(sim, sim.issue_token())) as ws:
        await ws.recv()
        await sim.wait_connected()
        assert await sim.drop(code, "bye")
        with pytest.raises(ConnectionClosed) as info:
            await ws.recv()
    assert info.value.rcvd is not None and info.value.rcvd.code == code


async def test_drop_with_reset_gives_1006() -> None:
    async with Simulator() as sim, connect(_ws_url(sim, sim.issue_token())) as ws:
        await ws.recv()
        await sim.wait_connected()
        await sim.drop(reset=True)
        with pytest.raises(ConnectionClosed) as info:
            await ws.recv()
    assert info.value.rcvd is None and info.value.sent is None  # no close frame: 1006


async def test_refused_handshakes_answer_503() -> None:
    async with Simulator() as sim:
        sim.refuse_connections(1)
        with pytest.raises(InvalidStatus) as info:
            async with connect(_ws_url(sim, sim.issue_token())):
                pass
        assert info.value.response.status_code == 503
        async with connect(_ws_url(sim, sim.issue_token())) as ws:
            assert orjson.loads(await ws.recv())["success"] is True
    assert sim.refused_handshakes == 1


async def test_fast_bulk_send() -> None:
    n = 20_000
    async with Simulator() as sim:
        frames = [
            Simulator.encode_event({"event": "meeting.started", "event_ts": i}) for i in range(n)
        ]
        async with connect(_ws_url(sim, sim.issue_token()), max_queue=None) as ws:
            await ws.recv()
            await sim.wait_connected()
            received = 0

            async def drain() -> None:
                nonlocal received
                while received < n:
                    await ws.recv()
                    received += 1

            with anyio.fail_after(20):
                async with anyio.create_task_group() as tg:
                    tg.start_soon(drain)
                    assert await sim.send_frames(frames) == n
    assert received == n


async def test_pre_serialized_frames_arrive_whole_and_in_order() -> None:
    n = 2_000
    frames = [
        Simulator.encode_event({"event": "meeting.started", "event_ts": i, "pad": "x" * (i % 700)})
        for i in range(n)
    ]
    async with Simulator() as sim, connect(_ws_url(sim, sim.issue_token())) as ws:
        await ws.recv()
        await sim.wait_connected()
        received: list[str] = []

        async def drain() -> None:
            while len(received) < n:
                received.append(await ws.recv())

        with anyio.fail_after(20):
            async with anyio.create_task_group() as tg:
                tg.start_soon(drain)
                assert await sim.send_wire(Simulator.wire_frames(frames), batch=7) == n
    assert [frame.encode() for frame in received] == frames
    assert sim.events_delivered == n


async def test_pre_serialized_frames_without_a_client_are_counted_as_dropped() -> None:
    async with Simulator() as sim:
        assert await sim.send_wire(Simulator.wire_frames([b'{"module":"message"}'])) == 0
    assert sim.events_dropped == 1
