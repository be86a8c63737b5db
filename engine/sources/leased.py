"""A source run by one node of a cluster at a time: the holder of its lease.

`LeasedSource` wraps another source (a Zoom subscription): it stands by
until this node takes the subscription's lease (`engine.leases`), then runs
the source for as long as it keeps the lease, renewing it. If a renewal is
refused (another node took over) or fails for too long (this node lost
NATS), it stops the source at once and stands by again. Stopping cleanly
gives the lease up, so a standby takes over without waiting for it to expire.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import anyio

from engine.leases import Lease
from engine.sources.base import EventSink, EventSource, SourceHealth

log = logging.getLogger("zoomrules.cluster")


class LeasedSource:
    """`inner`, run only while this node holds `lease`."""

    def __init__(self, inner: EventSource, lease: Lease) -> None:
        self.inner = inner
        self.lease = lease
        self.name = inner.name
        self.settings = inner.settings
        #: When this node last stood by (time.time()), for `health`.
        self._standby_since: float | None = None
        #: Times the lease was taken by this node, and lost.
        self.takeovers = 0
        self.losses = 0

    @property
    def stats(self) -> Any:
        return self.inner.stats

    def health(self) -> SourceHealth:
        if self.lease.holding is not None:
            return self.inner.health()
        if self.lease.elsewhere:
            return SourceHealth(
                False,
                self._standby_since,
                "standby: another node holds it",
                elsewhere=True,
                standby=True,
            )
        return SourceHealth(
            False, self._standby_since, "standby: no node holds it yet", standby=True
        )

    async def wait_up(self) -> None:
        await self.inner.wait_up()

    async def run(self, sink: EventSink) -> None:
        running = self.lease.leases.running
        running[self.lease.name] += 1
        try:
            while True:
                self._standby_since = time.time()
                holding = await self.lease.acquire()
                self.takeovers += 1
                log.info(
                    "%s: this node took the lease (epoch %d); connecting", self.name, holding.epoch
                )
                why = await self._hold(sink)
                if self.lease.holding is None:  # handed over (released already)
                    log.info("%s: %s; standing by", self.name, why)
                    continue
                self.losses += 1
                self.lease.lost()
                log.warning("%s: lease lost (%s); stopped reading, standing by", self.name, why)
        finally:
            running[self.lease.name] -= 1
            await self.lease.release()

    async def _hold(self, sink: EventSink) -> str:
        """Run the source while the lease is renewed; why the lease ended."""
        why = ""
        async with anyio.create_task_group() as tg:

            async def keep() -> None:
                nonlocal why
                why = await self.lease.keep()
                tg.cancel_scope.cancel()  # fencing: stop reading at once

            tg.start_soon(keep)
            await self.inner.run(sink)
            tg.cancel_scope.cancel()
        return why or "the source stopped"
