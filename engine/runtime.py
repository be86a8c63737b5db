"""Starting and stopping the engine's moving parts (services, dispatcher, pipeline)."""

from __future__ import annotations

import math
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
import httpx

from engine.config import Config
from engine.dispatch import Dispatcher
from engine.loader import LoadedRules
from engine.pipeline import Pipeline
from engine.services import Services

#: Outbound HTTP defaults; each action's own `timeout` bounds it further.
HTTP_TIMEOUT = httpx.Timeout(30.0, connect=10.0)


@asynccontextmanager
async def open_services(config: Config) -> AsyncIterator[Services]:
    """The shared HTTP client and, when `[zoom]` is configured, the token manager."""
    from engine.auth import TokenManager

    async with httpx.AsyncClient(timeout=HTTP_TIMEOUT, follow_redirects=False) as http:
        tokens = None
        if config.zoom is not None and config.zoom.subscriptions:
            sub = config.zoom.default
            tokens = TokenManager(
                oauth_url=sub.oauth_url,
                client_id=sub.client_id,
                client_secret=sub.client_secret,
                account_id=sub.account_id,
                http=http,
            )
        yield Services(config=config, http=http, tokens=tokens)


@asynccontextmanager
async def running_pipeline(
    loaded: LoadedRules, services: Services, *, grace: float | None = None
) -> AsyncIterator[Pipeline]:
    """A pipeline whose dispatcher runs for the duration of the block.

    On leaving the block normally, jobs still in flight get `grace` seconds
    (default `[engine] shutdown_grace`; `math.inf` waits for all) to
    finish; whatever is left then is cancelled.
    """
    engine = loaded.config.engine
    dispatcher = Dispatcher(
        services,
        max_concurrency=engine.max_concurrency,
        backoff=engine.retry_backoff,
        backoff_cap=engine.retry_backoff_cap,
    )
    async with anyio.create_task_group() as tg:
        await tg.start(dispatcher.run)
        pipeline = Pipeline(loaded, dispatcher)
        try:
            yield pipeline
            limit = engine.shutdown_grace if grace is None else grace
            with anyio.move_on_after(None if math.isinf(limit) else limit):
                await dispatcher.wait_idle()
        finally:
            tg.cancel_scope.cancel()
