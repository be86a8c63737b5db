"""Starting and stopping the engine's moving parts (services, dispatcher, pipeline)."""

from __future__ import annotations

import math
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
import httpx

from engine.config import Config, EngineConfig
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


def _dispatcher(engine: EngineConfig, services: Services) -> Dispatcher:
    return Dispatcher(
        services,
        max_concurrency=engine.max_concurrency,
        backoff=engine.retry_backoff,
        backoff_cap=engine.retry_backoff_cap,
    )


def _grace_limit(engine: EngineConfig, grace: float | None) -> float | None:
    limit = engine.shutdown_grace if grace is None else grace
    return None if math.isinf(limit) else limit


@asynccontextmanager
async def running_pipeline(
    loaded: LoadedRules,
    services: Services,
    *,
    grace: float | None = None,
    journal: bool = False,
) -> AsyncIterator[Pipeline]:
    """A pipeline whose dispatcher runs for the duration of the block.

    On leaving the block normally, jobs still in flight get `grace` seconds
    (default `[engine] shutdown_grace`; `math.inf` waits for all) to
    finish; whatever is left then is cancelled.

    `journal=True` (the daemon, when `[engine] journal` is on) puts the
    journal between the event source and the matcher: `pipeline.accept`
    appends to it and a consumer task feeds the matcher from it (see
    `engine.journal_feed`). Raises JournalError if it cannot be opened.
    """
    if journal:
        async with _journaled_pipeline(loaded, services, grace) as pipeline:
            yield pipeline
        return
    engine = loaded.config.engine
    dispatcher = _dispatcher(engine, services)
    async with anyio.create_task_group() as tg:
        await tg.start(dispatcher.run)
        pipeline = Pipeline(loaded, dispatcher)
        try:
            yield pipeline
            with anyio.move_on_after(_grace_limit(engine, grace)):
                await dispatcher.wait_idle()
        finally:
            tg.cancel_scope.cancel()


@asynccontextmanager
async def _journaled_pipeline(
    loaded: LoadedRules, services: Services, grace: float | None
) -> AsyncIterator[Pipeline]:
    from engine.journal import open_journal
    from engine.journal_feed import JournalFeed

    engine = loaded.config.engine
    # The journal is opened first and closed last: every progress update of
    # a job cancelled at the end of the grace period is still committed.
    async with open_journal(engine) as store:
        dispatcher = _dispatcher(engine, services)
        pipeline = Pipeline(loaded, dispatcher)
        feed = JournalFeed(store, pipeline)
        dispatcher.observer = feed.observer
        pipeline.intake = feed.accept
        pipeline.feed = feed
        async with anyio.create_task_group() as tg:
            await tg.start(dispatcher.run)
            await tg.start(feed.run)
            try:
                yield pipeline
                # Events already journaled are matched and run within the
                # grace period too; what is left stays pending for next start.
                with anyio.move_on_after(_grace_limit(engine, grace)):
                    await feed.wait_drained()
            finally:
                tg.cancel_scope.cancel()
