"""TokenManager: caching, single flight, refresh, fatal and transient failures."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable

import anyio
import httpx
import pytest

from engine.auth import Backoff, TokenManager
from engine.errors import AuthError
from engine.simulator import Simulator


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


pytestmark = pytest.mark.anyio

CLIENT_ID, CLIENT_SECRET = "auth-client-id", "auth-client-secret-value"


@pytest.fixture
async def sim() -> AsyncIterator[Simulator]:
    async with Simulator(
        client_id=CLIENT_ID, client_secret=CLIENT_SECRET, account_id="acct-1"
    ) as sim:
        yield sim


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient() as client:
        yield client


def _manager(sim: Simulator, http: httpx.AsyncClient, **kwargs: object) -> TokenManager:
    kwargs.setdefault("client_secret", CLIENT_SECRET)
    return TokenManager(oauth_url=sim.oauth_url, client_id=CLIENT_ID, http=http, **kwargs)  # type: ignore[arg-type]


async def test_token_is_fetched_once_and_cached(sim: Simulator, http: httpx.AsyncClient) -> None:
    tokens = _manager(sim, http)
    first = await tokens.token()
    assert await tokens.token() == first
    assert sim.issued_tokens == [first]
    assert sim.oauth_requests[0]["grant_type"] == "client_credentials"


async def test_account_credentials_grant(sim: Simulator, http: httpx.AsyncClient) -> None:
    tokens = _manager(sim, http, account_id="acct-1")
    assert await tokens.token() in sim.issued_tokens
    assert sim.oauth_requests == [
        {"grant_type": "account_credentials", "account_id": "acct-1", "status": 200}
    ]


async def test_concurrent_callers_share_one_request(
    sim: Simulator, http: httpx.AsyncClient
) -> None:
    tokens = _manager(sim, http)
    results: list[str] = []

    async def ask() -> None:
        results.append(await tokens.token())

    async with anyio.create_task_group() as tg:
        for _ in range(50):
            tg.start_soon(ask)
    assert len(sim.oauth_requests) == 1
    assert set(results) == set(sim.issued_tokens) and len(results) == 50


async def test_burst_of_refreshes_for_one_stale_token_makes_one_request(
    sim: Simulator, http: httpx.AsyncClient
) -> None:
    tokens = _manager(sim, http)
    stale = await tokens.token()
    fresh: list[str] = []

    async def on_401() -> None:
        fresh.append(await tokens.refresh(stale))

    async with anyio.create_task_group() as tg:
        for _ in range(20):
            tg.start_soon(on_401)
    assert len(sim.oauth_requests) == 2
    assert set(fresh) == {sim.issued_tokens[1]} and stale not in fresh
    # A later 401 for the already-replaced token costs nothing either.
    assert await tokens.refresh(stale) == sim.issued_tokens[1]
    assert len(sim.oauth_requests) == 2


async def test_refresh_without_stale_and_invalidate_force_new_tokens(
    sim: Simulator, http: httpx.AsyncClient
) -> None:
    tokens = _manager(sim, http)
    one = await tokens.token()
    two = await tokens.refresh()
    tokens.invalidate()
    three = await tokens.token()
    assert len({one, two, three}) == 3 == len(sim.oauth_requests)


async def test_token_refreshed_before_expiry(http: httpx.AsyncClient) -> None:
    # Lifetime 0.4 s: the margin is bounded to a quarter of it (0.1 s), not 60 s,
    # so the token is used for 0.3 s and then replaced.
    async with Simulator(
        client_id=CLIENT_ID, client_secret=CLIENT_SECRET, token_lifetime=0.4
    ) as sim:
        tokens = _manager(sim, http)
        first = await tokens.token()
        assert await tokens.token() == first
        expires_in = tokens.expires_in
        assert expires_in is not None and 0.3 < expires_in <= 0.4
        await anyio.sleep(0.35)  # let time pass (not synchronisation)
        assert await tokens.token() != first
        assert len(sim.issued_tokens) == 2


async def test_wrong_credentials_raise_auth_error_after_one_request(
    sim: Simulator, http: httpx.AsyncClient
) -> None:
    tokens = _manager(sim, http, client_secret="wrong-secret-value")
    errors: list[AuthError] = []

    async def ask() -> None:
        try:
            await tokens.token()
        except AuthError as exc:
            errors.append(exc)

    async with anyio.create_task_group() as tg:
        for _ in range(10):
            tg.start_soon(ask)
    assert len(errors) == 10
    assert len(sim.oauth_requests) == 1  # no retry storm, not even from 10 callers
    message = str(errors[0])
    assert "[zoom] client_id / client_secret" in message
    assert "oauth_url" in message and sim.oauth_url in message
    assert "Invalid client_id or client_secret" in message and "invalid_client" in message
    assert "HTTP 401" in message
    assert "wrong-secret-value" not in message and "wrong-secret-value" not in repr(errors[0])


async def test_auth_error_names_account_id_when_used(
    sim: Simulator, http: httpx.AsyncClient
) -> None:
    tokens = _manager(sim, http, account_id="other-account")
    with pytest.raises(AuthError, match=r"client_id / client_secret / account_id"):
        await tokens.token()


async def test_server_errors_are_retried_with_backoff(
    sim: Simulator, http: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    sim.fail_oauth(3, status=503)
    tokens = _manager(sim, http, backoff_initial=0.01)
    with caplog.at_level(logging.WARNING, logger="zoomrules.auth"), anyio.fail_after(5):
        token = await tokens.token()
    assert token == sim.issued_tokens[0]
    assert len(sim.oauth_requests) == 4
    assert caplog.text.count("retrying in") == 3


def _mock(handler: Callable[[httpx.Request], httpx.Response]) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.MockTransport(handler))


async def test_network_errors_are_retried() -> None:
    calls: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request)
        if len(calls) < 3:
            raise httpx.ConnectError("connection refused", request=request)
        return httpx.Response(200, json={"access_token": "tok-after-outage", "expires_in": 3600})

    async with _mock(handler) as client:
        tokens = TokenManager(
            oauth_url="https://zoom.example/oauth/token",
            client_id="id",
            client_secret="secret-value",
            http=client,
            backoff_initial=0.01,
        )
        with anyio.fail_after(5):
            assert await tokens.token() == "tok-after-outage"
    assert len(calls) == 3
    assert calls[0].url.params["grant_type"] == "client_credentials"
    assert calls[0].headers["Authorization"].startswith("Basic ")


async def test_zoom_documentation_key_spelling_is_accepted() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(
            200, json={"Access_token": "doc-style", "Token_type": "bearer", "Expire_in": 1200}
        )

    async with _mock(handler) as client:
        tokens = TokenManager(
            oauth_url="https://z/oauth/token", client_id="i", client_secret="s", http=client
        )
        assert await tokens.token() == "doc-style"
        assert tokens.expires_in is not None and 1190 < tokens.expires_in <= 1200


async def test_missing_lifetime_defaults_to_an_hour() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json={"access_token": "no-lifetime"})

    async with _mock(handler) as client:
        tokens = TokenManager(
            oauth_url="https://z/oauth/token", client_id="i", client_secret="s", http=client
        )
        await tokens.token()
        assert tokens.expires_in is not None and 3590 < tokens.expires_in <= 3600


def test_repr_hides_the_secret() -> None:
    tokens = TokenManager(
        oauth_url="https://zoom.us/oauth/token",
        client_id="visible-id",
        client_secret="hidden-secret-value",
        http=httpx.AsyncClient(),
    )
    assert "hidden-secret-value" not in repr(tokens)
    assert "hidden-secret-value" not in repr(vars(tokens))
    assert "visible-id" in repr(tokens)


def test_backoff_is_capped_full_jitter() -> None:
    backoff = Backoff(0.2, 30.0)
    delays = [backoff.next() for _ in range(200)]
    assert all(0 <= d <= 30.0 for d in delays)
    assert delays[0] <= 0.2
    backoff.reset()
    assert backoff.next() <= 0.2
