"""Subscription leases and shared limits on a real nats-server, one part at a time.

Two `NatsLink`s on one server stand for two nodes. The end-to-end behaviour
(real daemons failing over) is in test_cluster.py.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from typing import Any

import anyio
import orjson
import pytest

from engine.config import ClusterConfig, EngineConfig
from engine.durations import Rate
from engine.leases import Leases, holders
from engine.membership import NodeBeacon, members
from engine.nats_link import NatsLink, connect
from engine.shared_limits import SharedRate, SharedThrottles
from tests.nats_server import NatsServer

pytestmark = pytest.mark.anyio

TTL = 2.0


@pytest.fixture
async def links(nats_server: NatsServer) -> AsyncIterator[tuple[NatsLink, NatsLink]]:
    """Two nodes' links to one cluster on `nats_server`."""
    async with AsyncExitStack() as stack:
        made = []
        for node in ("a", "b"):
            cluster = ClusterConfig(
                servers=(nats_server.url,), name="u", node=node, lease_ttl=TTL, ack_wait=5.0
            )
            made.append(await stack.enter_async_context(connect(cluster, EngineConfig())))
        yield made[0], made[1]


async def _leases(link: NatsLink) -> Leases:
    return Leases(await link.bucket("leases"), link.node, TTL, await link.bucket("nodes"))


async def test_one_holder_the_other_takes_over_after_a_clean_release(
    links: tuple[NatsLink, NatsLink],
) -> None:
    a, b = [await _leases(link) for link in links]
    first = a.lease("default")
    held = await first.acquire()
    assert held.epoch >= 1 and a.held == {"default"}

    second = b.lease("default")
    with anyio.move_on_after(TTL / 2) as waited:
        await second.acquire()
    assert waited.cancelled_caught, "a second node took a held lease"

    found = await holders(a.bucket)
    assert found["default"]["node"] == "a" and found["default"]["epoch"] == held.epoch
    # Renewals keep the epoch: it names the holding, not the last write.
    with anyio.move_on_after(TTL * 0.8):
        await first.keep()
    assert (await holders(a.bucket))["default"]["epoch"] == held.epoch

    await first.release()
    assert a.held == set()
    with anyio.fail_after(5):
        taken = await second.acquire()
    assert taken.epoch > held.epoch
    assert (await holders(b.bucket))["default"]["node"] == "b"


async def test_a_holder_learns_at_its_next_renewal_that_it_was_taken_over(
    links: tuple[NatsLink, NatsLink],
) -> None:
    a, b = [await _leases(link) for link in links]
    lease = a.lease("default")
    await lease.acquire()
    # Another node overwrites the key (as after an expiry and a takeover).
    await b.bucket.put("default", orjson.dumps({"node": "b", "since": 0}))
    with anyio.fail_after(5):
        why = await lease.keep()
    assert why == "taken over by another node"


async def test_a_holder_fences_itself_when_it_cannot_renew(
    links: tuple[NatsLink, NatsLink], nats_server: NatsServer
) -> None:
    a, _ = [await _leases(link) for link in links]
    lease = a.lease("default")
    await lease.acquire()
    await nats_server.stop()
    with anyio.fail_after(TTL * 3):
        why = await lease.keep()
    assert why.startswith("no renewal for")


async def test_a_node_holding_two_more_leases_than_another_hands_one_over(
    links: tuple[NatsLink, NatsLink],
) -> None:
    link_a, link_b = links
    a, b = await _leases(link_a), await _leases(link_b)
    leases = [a.lease("sub-0"), a.lease("sub-1")]
    for lease in leases:
        a.running[lease.name] += 1
        await lease.acquire()
    assert not await a.crowded("sub-1"), "no other node runs the subscriptions yet"

    def idle_record() -> dict[str, object]:
        return {"holds": [], "runs": ["sub-0", "sub-1"]}

    beacon = NodeBeacon(b.nodes, "b", TTL, idle_record)
    await b.nodes.put(beacon.key, beacon.record())
    assert [record["node"] for record in await members(b.nodes)] == ["b"]
    assert not await a.crowded("sub-0"), "only the last lease is handed over"
    assert await a.crowded("sub-1")

    with anyio.fail_after(5):
        why = await leases[1].keep()
    assert why.startswith("handed over")
    assert a.held == {"sub-0"}
    assert set(await holders(a.bucket)) == {"sub-0"}


async def test_shared_throttle_windows_count_every_node_and_each_occurrence_once(
    links: tuple[NatsLink, NatsLink],
) -> None:
    a, b = [SharedThrottles(await link.bucket("limits")) for link in links]
    assert await a.allow("rule", "meeting-1", 2, 60.0, "event-1")
    assert await b.allow("rule", "meeting-1", 2, 60.0, "event-2")
    assert not await a.allow("rule", "meeting-1", 2, 60.0, "event-3")
    # The same occurrence matched again (its node died) keeps its slot.
    assert await b.allow("rule", "meeting-1", 2, 60.0, "event-1")
    # Other keys and other rules have windows of their own.
    assert await b.allow("rule", "meeting-2", 2, 60.0, "event-3")
    assert await a.allow("other", "meeting-1", 2, 60.0, "event-3")


async def test_concurrent_throttle_decisions_let_exactly_the_limit_through(
    links: tuple[NatsLink, NatsLink],
) -> None:
    nodes = [SharedThrottles(await link.bucket("limits")) for link in links]
    allowed: list[bool] = []

    async def fire(index: int) -> None:
        allowed.append(await nodes[index % 2].allow("rule", "k", 3, 60.0, f"event-{index}"))

    async with anyio.create_task_group() as tg:
        for index in range(12):
            tg.start_soon(fire, index)
    assert allowed.count(True) == 3


async def test_a_shared_rate_budget_is_spent_by_every_node(
    links: tuple[NatsLink, NatsLink],
) -> None:
    # 4 per hour: the bucket does not refill within the test.
    a, b = [SharedRate(await link.bucket("limits"), "api", Rate(4, 3600.0)) for link in links]
    assert [await a._take(), await b._take(), await a._take(), await b._take()] == [0.0] * 4
    assert await a._take() > 0
    assert await b._take() > 0


async def test_a_changed_lease_ttl_updates_the_buckets_at_the_next_start(
    nats_server: NatsServer,
) -> None:
    for ttl in (2.0, 5.0):
        cluster = ClusterConfig(servers=(nats_server.url,), name="v", node="a", lease_ttl=ttl)
        async with connect(cluster, EngineConfig()) as link:
            info = await link.js.stream_info("KV_v_leases")
            assert info.config.max_age == ttl


class _Refusing:
    """The leases bucket, whose `update` fails the next `times` calls as
    NATS does while it elects a stream leader; `applied` makes a failure
    happen after NATS applied the update (its answer lost)."""

    def __init__(self, bucket: Any, times: int, *, applied: bool = False) -> None:
        self.bucket = bucket
        self.times = times
        self.applied = applied
        self.refused = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self.bucket, name)

    async def update(self, key: str, value: bytes, last: int) -> int:
        if self.refused < self.times:
            self.refused += 1
            if self.applied:
                await self.bucket.update(key, value, last=last)
            raise TimeoutError("no response from stream")
        return int(await self.bucket.update(key, value, last=last))


@pytest.mark.parametrize("applied", [False, True], ids=["refused", "answer-lost"])
async def test_a_holder_rides_out_a_refused_renewal(
    links: tuple[NatsLink, NatsLink], applied: bool
) -> None:
    """One or two failed renewals (NATS electing a leader, an answer lost)
    cost nothing: the next try comes within a fraction of a second, not at
    the fence; and an update NATS applied without answering is recognised
    as this holding's own, not as a takeover."""
    a, b = [await _leases(link) for link in links]
    refusing = _Refusing(a.bucket, times=2, applied=applied)
    a.bucket = refusing
    lease = a.lease("default")
    held = await lease.acquire()
    with anyio.move_on_after(TTL * 2) as kept:
        why = await lease.keep()
    assert kept.cancelled_caught, f"the lease was lost: {why}"
    assert refusing.refused == 2
    assert (await holders(b.bucket))["default"]["epoch"] == held.epoch
    # Still fenced when NATS stays away for good.
    refusing.times = 10**9
    with anyio.fail_after(TTL * 2):
        why = await lease.keep()
    assert why.startswith("no renewal for")
