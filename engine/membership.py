"""A cluster's members: each node says it is alive, and what it runs, in the `nodes` bucket.

Every node writes its record every third of `[cluster] lease_ttl`; the
bucket's TTL (the same) removes the record of a node that died, so `zoomrules
cluster status` lists exactly the nodes alive within one TTL. A node leaving
cleanly removes its own record at once.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Callable
from typing import Any

import anyio
import orjson

from engine import __version__
from engine.nats_link import entries

log = logging.getLogger("zoomrules.cluster")


class NodeBeacon:
    """This node's record in the `nodes` bucket, kept fresh while `run` runs."""

    def __init__(
        self, bucket: Any, node: str, ttl: float, describe: Callable[[], dict[str, Any]]
    ) -> None:
        self.bucket = bucket
        self.node = node
        self.ttl = ttl
        #: What the node runs now (subscriptions held, jobs in flight, ...).
        self.describe = describe
        self.started = time.time()
        self.key = node.replace(":", "_").replace(" ", "_")

    def record(self) -> bytes:
        return orjson.dumps(
            {
                "node": self.node,
                "host": socket.gethostname(),
                "pid": os.getpid(),
                "version": __version__,
                "started": self.started,
                "seen": time.time(),
                **self.describe(),
            }
        )

    async def run(self) -> None:
        try:
            while True:
                try:
                    await self.bucket.put(self.key, self.record())
                except Exception as exc:  # noqa: BLE001 - the next round tries again
                    log.debug("node record not written (%s)", exc)
                await anyio.sleep(self.ttl / 3)
        finally:
            with anyio.CancelScope(shield=True), anyio.move_on_after(2):
                try:
                    await self.bucket.delete(self.key)
                except Exception as exc:  # noqa: BLE001 - it expires by itself
                    log.debug("node record not removed (%s)", exc)


async def members(bucket: Any) -> list[dict[str, Any]]:
    """Every live node's record, by name."""
    records = [orjson.loads(entry.value) for entry in await entries(bucket)]
    return sorted(records, key=lambda record: str(record.get("node")))
