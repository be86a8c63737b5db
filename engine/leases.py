"""Leases on Zoom subscriptions: one node at a time holds each, the others stand by.

A lease is a key of the cluster's `leases` bucket, whose bucket-level TTL
(`[cluster] lease_ttl`) removes it when its holder stops renewing it: a
standby's `create` then succeeds. (A per-key TTL would be the natural tool,
but one was seen never to expire after its node was killed in a 3-node
cluster: see docs/cluster.md.) The key's revision only grows, so it serves
as the holder's epoch, and `update(last=revision)` refuses a holder whose
lease was taken over.

Fencing: a holder that could not renew for `FENCE` of the TTL stops reading
at once, before the key can expire and a standby can take it, so two nodes
never both read one subscription (give or take the clocks' rates over one
TTL). A node leaving cleanly deletes its lease: a standby takes over at its
next look instead of waiting for the TTL.

Spreading: redundant subscriptions guard against a node's death only when
different nodes hold them. A node about to compete for a lease lets the
others go first for each lease it already holds; and a node holding two
more leases than another live node that runs the same subscription hands
one over (`Leases.crowded`): its other subscriptions keep Zoom's events
flowing meanwhile, and a single subscription is never handed over.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any

import anyio
import orjson

from engine.membership import members
from engine.nats_link import entries
from engine.retry import Backoff

log = logging.getLogger("zoomrules.cluster")

#: A holder stops reading once this share of the TTL passed without a renewal.
FENCE = 2 / 3
#: Renewals per TTL, and how often a standby looks (at most once a second).
RENEWALS = 10
LOOKS = 5
#: After a failed renewal, the first retry's longest wait (seconds; jittered,
#: doubling up to half the renewal period). A renewal period later would
#: already be the fence.
RETRY_FIRST = 0.2


def lease_key(subscription: str) -> str:
    """The key of a subscription's lease (a key may not hold every character a name may)."""
    return subscription.replace(":", "_")


@dataclass(frozen=True)
class Holding:
    """A lease held: its epoch (the key's revision) and when it was taken."""

    epoch: int
    since: float


class Leases:
    """This node's leases in the `leases` bucket."""

    def __init__(self, bucket: Any, node: str, ttl: float, nodes: Any = None) -> None:
        self.bucket = bucket
        self.node = node
        self.ttl = ttl
        #: The `nodes` bucket (`engine.membership`), to see how others are loaded.
        self.nodes = nodes
        #: Subscriptions this node holds now.
        self.held: set[str] = set()
        #: Sources running for each subscription (held or standing by); two
        #: while a reload replaces one.
        self.running: Counter[str] = Counter()

    @property
    def names(self) -> list[str]:
        """The subscriptions this node runs (held or standing by), for its record."""
        return sorted(name for name, count in self.running.items() if count > 0)

    def lease(self, name: str) -> Lease:
        return Lease(self, name)

    async def crowded(self, name: str) -> bool:
        """Whether this node should hand `name` over: it holds two more
        leases than a live node that also runs `name`, and `name` is the
        last of its leases (one handed over at a time)."""
        if self.nodes is None or len(self.held) < 2 or name != max(self.held):
            return False
        try:
            others = [
                record
                for record in await members(self.nodes)
                if record.get("node") != self.node and name in record.get("runs", ())
            ]
        except Exception as exc:  # noqa: BLE001 - keep what it holds
            log.debug("cannot read the cluster's nodes (%s)", exc)
            return False
        fewest = min((len(record.get("holds", ())) for record in others), default=None)
        return fewest is not None and len(self.held) >= fewest + 2


class Lease:
    """One subscription's lease, from this node's side."""

    def __init__(self, leases: Leases, name: str) -> None:
        self.leases = leases
        self.name = name
        self.key = lease_key(name)
        self.holding: Holding | None = None
        #: While standing by: whether another node held it at the last look.
        self.elsewhere = False
        self._revision = 0
        self._renewed = 0.0  # monotonic time of the last successful write

    @property
    def ttl(self) -> float:
        return self.leases.ttl

    def _value(self, since: float, epoch: int = 0) -> bytes:
        # The epoch (the revision that created the holding) is known only
        # after the create: renewals carry it, for `cluster status`.
        value: dict[str, Any] = {"node": self.leases.node, "since": since}
        if epoch:
            value["epoch"] = epoch
        return orjson.dumps(value)

    async def acquire(self) -> Holding:
        """Wait until this node holds the lease (standing by meanwhile)."""
        from nats.js.errors import KeyWrongLastSequenceError

        look = min(1.0, self.ttl / LOOKS)
        while True:
            # A node that holds other subscriptions lets the others go first,
            # so redundant subscriptions spread over the nodes.
            held_elsewhere = len(self.leases.held - {self.name})
            if held_elsewhere:
                await anyio.sleep(look * held_elsewhere)
            now, attempted = time.time(), time.monotonic()
            try:
                self._revision = await self.leases.bucket.create(self.key, self._value(now))
            except KeyWrongLastSequenceError:
                self.elsewhere = True  # held by another node: stand by
                await anyio.sleep(look)
                continue
            except Exception as exc:  # noqa: BLE001 - NATS unreachable: keep trying
                log.debug("lease %s: cannot reach NATS (%s)", self.name, exc)
                self.elsewhere = False
                await anyio.sleep(look)
                continue
            self.elsewhere = False
            self._renewed = attempted  # the fence counts from the sending (see keep)
            self.holding = Holding(self._revision, now)
            self.leases.held.add(self.name)
            return self.holding

    async def keep(self) -> str:
        """Renew until the lease is lost, fenced or handed over; returns why it ended.

        A refused or unanswered renewal (NATS electing a stream leader,
        reconnecting) is retried within a fraction of a second, not a
        renewal period later: a period later is already the fence, and one
        refusal would cost the lease."""
        from nats.js.errors import KeyWrongLastSequenceError

        assert self.holding is not None
        every = self.ttl / RENEWALS
        retry = Backoff(min(RETRY_FIRST, every / 2), every / 2)
        wait = every
        while True:
            await anyio.sleep(max(0.0, min(wait, self._fence_at() - time.monotonic())))
            if time.monotonic() >= self._fence_at():
                return f"no renewal for {self.ttl * FENCE:.1f}s (NATS unreachable?)"
            # The key's TTL restarts when NATS applies the update, after it
            # was sent: the fence counts from the sending, to be safe.
            attempted = time.monotonic()
            try:
                with anyio.fail_after(max(0.1, self._fence_at() - attempted)):
                    self._revision = await self.leases.bucket.update(
                        self.key,
                        self._value(self.holding.since, self.holding.epoch),
                        last=self._revision,
                    )
            except KeyWrongLastSequenceError:
                if await self._renewed_unseen():
                    # Renew soon from the revision found; the fence stays
                    # where the last confirmed renewal put it.
                    wait = retry.next()
                    continue
                return "taken over by another node"
            except Exception as exc:  # noqa: BLE001 - retried until fenced
                wait = retry.next()
                log.debug("lease %s: renewal failed (%s); again in %.1fs", self.name, exc, wait)
                continue
            wait = every
            retry.reset()
            self._renewed = attempted
            if await self.leases.crowded(self.name):
                await self.release()
                return "handed over to a node that holds fewer subscriptions"

    async def _renewed_unseen(self) -> bool:
        """Whether the key still names this holding at a newer revision: a
        renewal that NATS applied but whose answer never came (a timeout,
        a reconnect). If so, that revision is ours from now on. The epoch
        is unique to a holding (the revision of its create), so another
        node's value never matches."""
        assert self.holding is not None
        try:
            entry = await self.leases.bucket.get(self.key)
        except Exception as exc:  # noqa: BLE001 - deleted or unreadable: not ours
            log.debug("lease %s: reading the key failed (%s)", self.name, exc)
            return False
        value = orjson.loads(entry.value) if entry.value else {}
        if value.get("node") == self.leases.node and value.get("epoch") == self.holding.epoch:
            self._revision = entry.revision
            return True
        return False

    def _fence_at(self) -> float:
        return self._renewed + self.ttl * FENCE

    async def release(self) -> None:
        """Give the lease up now (a clean stop), if still ours."""
        self.leases.held.discard(self.name)
        if self.holding is None:
            return
        self.holding = None
        with anyio.CancelScope(shield=True), anyio.move_on_after(2):
            try:
                await self.leases.bucket.delete(self.key, last=self._revision)
            except Exception as exc:  # noqa: BLE001 - it expires by itself anyway
                log.debug("lease %s: release failed (%s)", self.name, exc)

    def lost(self) -> None:
        self.leases.held.discard(self.name)
        self.holding = None


async def holders(bucket: Any) -> dict[str, dict[str, Any]]:
    """Every held lease: its key (`lease_key`) -> {"node", "since", "epoch"}
    (for `cluster status`). The epoch is the revision that created the
    holding: it changes on a takeover, not on a renewal."""
    found = {}
    for entry in await entries(bucket):
        value = orjson.loads(entry.value)
        value.setdefault("epoch", entry.revision)  # not renewed yet: this is the creation
        found[entry.key] = value
    return found
