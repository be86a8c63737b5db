"""Event sources: what feeds events into the engine.

`base` defines the interface (`EventSource`, `EventSink`, `SourceHealth`,
`Marks`); `zoom_ws` is Zoom's event WebSocket, one source per subscription;
`gaps` turns the times a source had no connection into events.
`build_sources` makes the daemon's sources from its configuration: the one
place that knows which kinds exist. In a cluster each Zoom subscription is
run only by the node holding its lease (`leased.LeasedSource`).
"""

from __future__ import annotations

from engine.auth import TokenManager
from engine.config import Config, Subscription
from engine.leases import Leases
from engine.services import Services, TokenProvider
from engine.sources.base import EventSink, EventSource, Marks, SourceHealth
from engine.sources.gaps import ConnectionGaps, MemoryMarks, mark_interval
from engine.sources.leased import LeasedSource
from engine.sources.zoom_ws import ZoomListener

__all__ = [
    "ConnectionGaps",
    "EventSink",
    "EventSource",
    "Marks",
    "MemoryMarks",
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
) -> list[EventSource]:
    """One source per configured subscription (none without `[zoom]`).

    Subscriptions with the same credentials share one token: the services'
    own (the one actions use) for the default subscription's credentials.
    With `gaps`, each reports its connections there and emits the gap
    events it gets back. With `leases` (a cluster), each runs only while
    this node holds its lease.
    """
    zoom = config.zoom
    if zoom is None:
        return []
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
