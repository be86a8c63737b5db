"""The cluster journal backend: the events, retry and dead-letter streams of NATS JetStream.

- `documents`: how events and dead letters are written in the streams;
- `admin`: `JetStreamAdmin`, dead letters and statistics (`zoomrules dlq`, `journal stats`);
- `store`: `JetStreamJournal`, the store every node of the cluster runs.

The streams and buckets themselves are set up by `engine.nats_link`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from engine.config import ClusterConfig, EngineConfig
from engine.errors import JournalError
from engine.journal.jetstream.admin import JetStreamAdmin
from engine.journal.jetstream.store import open_store
from engine.nats_link import NatsLink, look

__all__ = ["open_admin", "open_store"]


@asynccontextmanager
async def open_admin(
    engine: EngineConfig, *, cluster: ClusterConfig | None = None, link: NatsLink | None = None
) -> AsyncIterator[JetStreamAdmin]:
    """The cluster's dead letters and statistics, on `link` or a connection of
    its own (a command's: see `engine.nats_link.look`)."""
    if link is not None:
        yield JetStreamAdmin(link)
        return
    if cluster is None:
        raise JournalError("the jetstream journal needs a [cluster] section")
    async with look(cluster, engine) as own:
        yield JetStreamAdmin(own)
