"""Event sources: what feeds events into the engine.

`base` defines the interface (`EventSource`, `EventSink`, `SourceHealth`,
`Marks`); `zoom_ws` is Zoom's event WebSocket, one source per subscription;
`webhook` is an endpoint Zoom POSTs events to, one per `[zoom.webhook]`;
`gaps` turns the times a source had no connection into events.
`build_sources` makes the daemon's sources from its configuration: the one
place that knows which kinds exist. In a cluster each Zoom subscription is
run only by the node holding its lease (`leased.LeasedSource`); every node
serves the webhooks (the cluster's journal keeps each event once).
"""

from __future__ import annotations

from engine.auth import TokenManager
from engine.config import Config, Subscription
from engine.leases import Leases
from engine.services import Services, TokenProvider
from engine.sources.base import EventSink, EventSource, IntakeCheck, Marks, SourceHealth
from engine.sources.gaps import LIVE_EVERY, ConnectionGaps, MemoryMarks, mark_interval
from engine.sources.leased import LeasedSource
from engine.sources.webhook import RouteHost, WebhookSource
from engine.sources.zoom_ws import ZoomListener

__all__ = [
    "LIVE_EVERY",
    "ConnectionGaps",
    "EventSink",
    "EventSource",
    "IntakeCheck",
    "Marks",
    "MemoryMarks",
    "RouteHost",
    "SourceHealth",
    "build_sources",
    "mark_interval",
]


def _credentials(sub: Subscription) -> tuple[str, str, str, str | None]:
    return (sub.oauth_url, sub.client_id, sub.client_secret, sub.account_id)


def build_sources(
    config: Config,
    services: Services,
    *,
    gaps: ConnectionGaps | None = None,
    leases: Leases | None = None,
    http: RouteHost | None = None,
    intake: IntakeCheck | None = None,
    durable: EventSink | None = None,
) -> list[EventSource]:
    """One source per configured subscription, then one per webhook (none
    without `[zoom]`).

    Subscriptions with the same credentials share one token: the services'
    own (the one actions use) for the default subscription's credentials.
    With `gaps`, each reports its connections there and emits the gap
    events it gets back. With `leases` (a cluster), each runs only while
    this node holds its lease. Webhooks serve their routes on `http`,
    answer 503 while `intake` says the journal cannot take events, and hand
    events to `durable` (the journal's `append_durably`) when given: their
    200 then means the event is durable.
    """
    zoom = config.zoom
    if zoom is None:
        return []
    sources = _listeners(config, services, gaps, leases)
    sources.extend(
        WebhookSource(hook, http, intake=intake, durable=durable) for hook in zoom.webhooks
    )
    return sources


def _listeners(
    config: Config, services: Services, gaps: ConnectionGaps | None, leases: Leases | None
) -> list[EventSource]:
    """One `ZoomListener` per subscription."""
    zoom = config.zoom
    assert zoom is not None
    tokens: dict[tuple[str, str, str, str | None], TokenProvider] = {}
    if services.tokens is not None and zoom.subscriptions:
        tokens[_credentials(zoom.default)] = services.tokens
    sources: list[EventSource] = []
    for sub in zoom.subscriptions:
        key = _credentials(sub)
        if key not in tokens:
            tokens[key] = TokenManager(
                oauth_url=sub.oauth_url,
                client_id=sub.client_id,
                client_secret=sub.client_secret,
                account_id=sub.account_id,
                http=services.http,
            )
        source: EventSource = ZoomListener(
            subscription=sub.name,
            endpoint=sub.endpoint,
            tokens=tokens[key],
            heartbeat_interval=zoom.heartbeat_interval,
            max_frame_size=zoom.max_frame_size,
            settings=(sub, zoom.heartbeat_interval, zoom.max_frame_size),
            gaps=gaps,
            account_id=sub.account_id,
        )
        if leases is not None:
            source = LeasedSource(source, leases.lease(sub.name))
        sources.append(source)
    return sources
