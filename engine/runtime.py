"""Wiring the engine's parts: services, dispatcher, pipeline, journal and its feed.

The one module that knows how the parts fit together; each part knows only
the interfaces it is handed (`engine.journal.JournalStore`,
`engine.sources.EventSink`, ...). The daemon, `replay` and `dlq retry` start
what they need through here.
"""

from __future__ import annotations

import logging
import math
from collections.abc import AsyncIterator, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import anyio
import httpx

from engine.config import ClusterConfig, Config, EngineConfig
from engine.correlator import Correlator
from engine.dispatch import Dispatcher, DispatchStats
from engine.journal import CorrelationLog, JobRow, JournalStore, open_journal
from engine.journal_feed import JournalFeed
from engine.leases import Leases
from engine.loader import LoadedRules
from engine.membership import NodeBeacon
from engine.nats_link import NatsLink, connect
from engine.pipeline import Pipeline
from engine.services import Services
from engine.shared_limits import SharedRate, SharedThrottles
from engine.sources.base import EventSink, Marks
from engine.sources.gaps import MemoryMarks

log = logging.getLogger("zoomrules.cluster")

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


def refresh_services(services: Services, config: Config) -> None:
    """After a reload: actions see the new configuration (notifiers, the API's
    base URL and rate, ...), and the Zoom token of the new default
    credentials if those changed."""
    from engine.auth import TokenManager

    zoom = services.config.zoom
    old = zoom.default if zoom and zoom.subscriptions else None  # webhooks alone have none
    new = config.zoom.default if config.zoom and config.zoom.subscriptions else None
    services.config = config
    if new is None:
        services.tokens = None
    elif old != new:
        services.tokens = TokenManager(
            oauth_url=new.oauth_url,
            client_id=new.client_id,
            client_secret=new.client_secret,
            account_id=new.account_id,
            http=services.http,
        )


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


@dataclass
class ClusterNode:
    """This daemon as a node of a cluster: its NATS link and its leases."""

    link: NatsLink
    leases: Leases
    #: The `nodes` bucket, where this node says it is alive (`engine.membership`).
    nodes: Any
    #: Runs the cluster's temporal rules while this node holds its lease.
    correlator: Correlator | None = None


@dataclass
class Runtime:
    """The parts of one running engine, wired together."""

    pipeline: Pipeline
    #: Where event sources hand their events: the journal (`store.append`)
    #: when it is on, else the pipeline itself.
    intake: EventSink
    store: JournalStore | None = None
    feed: JournalFeed | None = None
    #: Where event sources keep what they remember across restarts (when
    #: each was last connected): the journal when it is on; else memory,
    #: for this run only.
    marks: Marks = field(default_factory=MemoryMarks)
    #: Set when the daemon is a node of a cluster (`[cluster]`).
    cluster: ClusterNode | None = None


@asynccontextmanager
async def running_engine(
    loaded: LoadedRules,
    services: Services,
    *,
    grace: float | None = None,
    journal: bool = False,
) -> AsyncIterator[Runtime]:
    """A pipeline whose dispatcher runs for the duration of the block.

    On leaving the block normally, jobs still in flight get `grace` seconds
    (default `[engine] shutdown_grace`; `math.inf` waits for all) to
    finish; whatever is left then is cancelled.

    `journal=True` (the daemon, when `[engine] journal` is on) puts the
    journal between the event sources and the matcher: `intake` appends to
    it and a consumer task feeds the matcher from it (see
    `engine.journal_feed`). Raises JournalError if it cannot be opened.
    """
    if journal:
        async with _journaled(loaded, services, grace) as runtime:
            yield runtime
        return
    engine = loaded.config.engine
    dispatcher = _dispatcher(engine, services)
    async with anyio.create_task_group() as tg:
        await tg.start(dispatcher.run)
        pipeline = Pipeline(loaded, dispatcher)
        await tg.start(pipeline.compile_plans)
        try:
            yield Runtime(pipeline, pipeline.handle)
            with anyio.move_on_after(_grace_limit(engine, grace)):
                await dispatcher.wait_idle()
        finally:
            tg.cancel_scope.cancel()


@asynccontextmanager
async def _journaled(
    loaded: LoadedRules, services: Services, grace: float | None
) -> AsyncIterator[Runtime]:
    engine, cluster = loaded.config.engine, loaded.config.cluster
    async with _cluster_link(cluster, engine) as link:
        # The journal is opened first and closed last: every progress update
        # of a job cancelled at the end of the grace period is still committed.
        store_cm: AbstractAsyncContextManager[JournalStore] = (
            open_journal(engine) if link is None else open_journal(engine, link=link)
        )
        async with store_cm as store:
            dispatcher = _dispatcher(engine, services)
            pipeline = Pipeline(loaded, dispatcher)
            node = await _join(link, services, pipeline) if link is not None else None
            # The daemon's sources tell absences about gaps (`watch_sources`).
            feed = JournalFeed(store, pipeline, hold_absences=True)
            dispatcher.observer = feed.observer
            async with anyio.create_task_group() as tg:
                await tg.start(dispatcher.run)
                await tg.start(feed.run)
                if node is not None:
                    tg.start_soon(_beacon(node, dispatcher).run)
                    if isinstance(store, CorrelationLog):
                        node.correlator = await _correlator(node, store, pipeline)
                        tg.start_soon(node.correlator.run)
                try:
                    yield Runtime(pipeline, store.append, store, feed, marks=store, cluster=node)
                    # Events already journaled are matched and run within the
                    # grace period too; what is left stays pending for next
                    # start (in a cluster: another node takes it).
                    with anyio.move_on_after(_grace_limit(engine, grace)):
                        await feed.wait_drained()
                finally:
                    tg.cancel_scope.cancel()


@asynccontextmanager
async def _cluster_link(
    cluster: ClusterConfig | None, engine: EngineConfig
) -> AsyncIterator[NatsLink | None]:
    if cluster is None:
        yield None
        return
    async with connect(cluster, engine) as link:
        yield link


async def _join(link: NatsLink, services: Services, pipeline: Pipeline) -> ClusterNode:
    """Share this node's throttles and rate budgets with the cluster's."""
    log.info(
        "cluster %r: node %r joined through the NATS server at %s",
        link.cluster.name, link.node, link.connected_url,
    )  # fmt: skip
    limits = await link.bucket("limits")
    pipeline.shared_throttles = SharedThrottles(limits)
    services.make_limiter = lambda name, rate: SharedRate(limits, name, rate)
    cluster = link.cluster
    nodes = await link.bucket("nodes")
    leases = Leases(await link.bucket("leases"), cluster.node, cluster.lease_ttl, nodes)
    return ClusterNode(link, leases, nodes)


async def _correlator(node: ClusterNode, store: CorrelationLog, pipeline: Pipeline) -> Correlator:
    """The cluster's temporal rules, on whichever node holds their lease."""
    cluster = node.link.cluster
    # A bucket of its own: the subscriptions' leases are spread over the
    # nodes and listed by `cluster status`; this one is neither.
    leases = Leases(await node.link.bucket("correlator"), cluster.node, cluster.lease_ttl)
    return Correlator(store, leases.lease("temporal-rules"), lambda: pipeline.rules)


def _beacon(node: ClusterNode, dispatcher: Dispatcher) -> NodeBeacon:
    def describe() -> dict[str, Any]:
        stats = dispatcher.stats
        return {
            "holds": sorted(node.leases.held),
            "runs": node.leases.names,
            "in_flight": dispatcher.in_flight,
            "jobs_done": stats.jobs_done,
            "jobs_failed": stats.jobs_failed,
        }

    cluster = node.link.cluster
    return NodeBeacon(node.nodes, cluster.node, cluster.lease_ttl, describe)


async def run_jobs_now(
    loaded: LoadedRules, services: Services, store: JournalStore, rows: Sequence[JobRow]
) -> DispatchStats:
    """Run stored jobs to their end here, recording progress in `store`
    (`zoomrules dlq retry` when no daemon runs); returns how they went."""
    engine = loaded.config.engine
    dispatcher = _dispatcher(engine, services)
    feed = JournalFeed(store, Pipeline(loaded, dispatcher))
    dispatcher.observer = feed.observer
    async with anyio.create_task_group() as tg:
        await tg.start(dispatcher.run)
        await feed.run_rows(rows)
        await dispatcher.wait_idle()
        tg.cancel_scope.cancel()
    return dispatcher.stats
