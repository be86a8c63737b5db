"""What the cluster mode will rely on, checked against a real nats-server with nats-py.

Each test states one fact (see docs/dev/nats-notes.md). Timings go to stdout as `TIMING name=...s`
(visible with `pytest -s`). No fixed sleeps: every wait polls a condition with a deadline, except
where the time itself is what is tested (lease renewals at a third of the TTL).
"""

from __future__ import annotations

import datetime
import json
import time
from collections.abc import AsyncIterator

import anyio
import nats.errors
import nats.js.errors
import pytest
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import ConsumerConfig, KeyValueConfig, StreamConfig
from nats.js.kv import KeyValue

from tests.nats_server import NatsCluster, NatsServer, nats_connect, wait_until

pytestmark = pytest.mark.anyio

TTL = 1.0  # the lease TTL used here: short, so expiry is observable quickly


def timing(name: str, seconds: float) -> None:
    print(f"TIMING {name}={seconds:.3f}s")


@pytest.fixture
async def nc(nats_server: NatsServer) -> AsyncIterator[Client]:
    client = await nats_connect(nats_server.url)
    try:
        yield client
    finally:
        await client.close()


@pytest.fixture
async def nc2(nats_server: NatsServer) -> AsyncIterator[Client]:
    """A second, independent connection (another instance of the daemon)."""
    client = await nats_connect(nats_server.url)
    try:
        yield client
    finally:
        await client.close()


async def key_absent(kv: KeyValue, key: str) -> bool:
    try:
        await kv.get(key)
    except nats.js.errors.KeyNotFoundError:
        return True
    return False


# --------------------------------------------------------------------------- a) KV leases


async def test_kv_lease_create_update_and_ttl_expiry(nc: Client, nc2: Client) -> None:
    js = nc.jetstream()
    kv = await js.create_key_value(KeyValueConfig(bucket="leases", ttl=TTL, history=1))
    standby = await nc2.jetstream().key_value("leases")

    rev1 = await kv.create("leader", b"instance-a")
    # create() of an existing key is refused: only one instance acquires the lease.
    with pytest.raises(nats.js.errors.KeyWrongLastSequenceError):
        await standby.create("leader", b"instance-b")

    # Renewal is a compare-and-set on the revision; a stale revision is refused.
    rev2 = await kv.update("leader", b"instance-a", last=rev1)
    assert rev2 > rev1
    with pytest.raises(nats.js.errors.KeyWrongLastSequenceError):
        await standby.update("leader", b"instance-b", last=rev1)

    # Renewing every TTL/3 keeps the key alive past several TTLs (each write restarts max_age).
    rev = rev2
    started = time.monotonic()
    while time.monotonic() - started < 2.5 * TTL:
        await anyio.sleep(TTL / 3)
        new = await kv.update("leader", b"instance-a", last=rev)  # fails if it had expired
        assert new > rev
        rev = new

    # No renewal: the key disappears after about TTL, as the standby sees it by polling get().
    renewed_at = time.monotonic()
    await wait_until(lambda: key_absent(standby, "leader"), 5 * TTL, "lease key expired")
    gone_after = time.monotonic() - renewed_at
    timing("kv_ttl1s_expiry_seen_by_polling_get", gone_after)
    assert gone_after >= 0.9 * TTL

    # ... and create() succeeds again; revisions keep growing (they are stream sequences).
    rev_b = await standby.create("leader", b"instance-b")
    assert rev_b > rev
    # The old holder's renewal now fails: it has lost the lease.
    with pytest.raises(nats.js.errors.KeyWrongLastSequenceError):
        await kv.update("leader", b"instance-a", last=rev)
    assert (await kv.get("leader")).value == b"instance-b"


async def test_kv_limit_markers_let_a_standby_watch_for_expiry(nc: Client, nc2: Client) -> None:
    """limit_marker_ttl: expiry writes a marker that watchers see as a PURGE (server 2.11+).

    nats-py 2.16 gap: kv.get() returns the marker as an entry (value None, operation None)
    and kv.create() is refused while the marker lives; take over with update(last=marker rev).
    """
    js = nc.jetstream()
    kv = await js.create_key_value(
        KeyValueConfig(bucket="leases", ttl=TTL, history=1, limit_marker_ttl=TTL)
    )
    assert (await js.stream_info("KV_leases")).config.subject_delete_marker_ttl == TTL
    standby = await nc2.jetstream().key_value("leases")
    watcher = await standby.watch("leader")
    try:
        assert await watcher.updates(timeout=2) is None  # nothing yet: the initial marker

        rev = await kv.create("leader", b"instance-a")
        written_at = time.monotonic()
        entry = await watcher.updates(timeout=2)
        assert entry is not None and entry.revision == rev and entry.operation is None

        expired = await watcher.updates(timeout=5 * TTL)
        seen_after = time.monotonic() - written_at
        timing("kv_ttl1s_expiry_seen_by_watch_marker", seen_after)
        assert expired is not None and expired.operation == "PURGE" and expired.revision > rev
        assert seen_after >= 0.9 * TTL

        marker = await js.get_msg("KV_leases", subject="$KV.leases.leader")
        assert marker.headers is not None and marker.headers.get("Nats-Marker-Reason") == "MaxAge"
        with pytest.raises(nats.js.errors.KeyWrongLastSequenceError):
            await standby.create("leader", b"instance-b")
        taken = await standby.update("leader", b"instance-b", last=expired.revision)
        assert taken > expired.revision
        assert (await kv.get("leader")).value == b"instance-b"
    finally:
        await watcher.stop()


# --------------------------------------------------------------------------- b) dedup


async def test_stream_dedup_window(nc: Client) -> None:
    js = nc.jetstream()
    info = await js.add_stream(
        StreamConfig(name="EVENTS", subjects=["events.>"], duplicate_window=600)
    )
    assert info.config.duplicate_window == 600  # seconds in nats-py; the default is 120

    first = await js.publish("events.x", b"1", headers={"Nats-Msg-Id": "evt-1"})
    again = await js.publish("events.x", b"1", headers={"Nats-Msg-Id": "evt-1"})
    other = await js.publish("events.x", b"2", headers={"Nats-Msg-Id": "evt-2"})
    assert not first.duplicate
    assert again.duplicate is True and again.seq == first.seq
    assert not other.duplicate and other.seq == first.seq + 1
    assert (await js.stream_info("EVENTS")).state.messages == 2


# --------------------------------------------------------------------------- c) consumer group


async def jobs_stream(js: JetStreamContext) -> None:
    await js.add_stream(StreamConfig(name="JOBS", subjects=["jobs.>"]))


async def fetch_one(sub: JetStreamContext.PullSubscription, timeout: float) -> Msg | None:
    try:
        return (await sub.fetch(1, timeout=timeout))[0]
    except nats.errors.TimeoutError:
        return None


async def test_durable_pull_consumer_shared_by_two_workers(nc: Client, nc2: Client) -> None:
    js_a, js_b = nc.jetstream(), nc2.jetstream()
    await jobs_stream(js_a)
    config = ConsumerConfig(durable_name="workers", ack_wait=30)
    worker_a = await js_a.pull_subscribe("jobs.>", durable="workers", stream="JOBS", config=config)
    worker_b = await js_b.pull_subscribe_bind(durable="workers", stream="JOBS")
    for i in range(20):
        await js_a.publish(f"jobs.{i}", str(i).encode())

    got: dict[str, list[int]] = {"a": [], "b": []}

    async def work(name: str, sub: JetStreamContext.PullSubscription) -> None:
        while len(got["a"]) + len(got["b"]) < 20:
            try:
                msgs = await sub.fetch(3, timeout=0.5)
            except nats.errors.TimeoutError:
                continue
            for msg in msgs:
                got[name].append(msg.metadata.sequence.stream)
                await msg.ack()

    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            tg.start_soon(work, "a", worker_a)
            tg.start_soon(work, "b", worker_b)

    assert got["a"] and got["b"], got
    assert not set(got["a"]) & set(got["b"]), got  # each message went to one worker
    assert sorted(got["a"] + got["b"]) == list(range(1, 21))
    info = await js_a.consumer_info("JOBS", "workers")
    assert info.num_pending == 0 and info.num_ack_pending == 0


async def test_nak_with_delay_redelivers_later(nc: Client, nc2: Client) -> None:
    js_a, js_b = nc.jetstream(), nc2.jetstream()
    await jobs_stream(js_a)
    config = ConsumerConfig(durable_name="workers", ack_wait=30)
    worker_a = await js_a.pull_subscribe("jobs.>", durable="workers", stream="JOBS", config=config)
    worker_b = await js_b.pull_subscribe_bind(durable="workers", stream="JOBS")
    await js_a.publish("jobs.1", b"job")

    msg = await fetch_one(worker_a, 2)
    assert msg is not None and msg.metadata.num_delivered == 1
    await msg.nak(delay=0.8)
    nakked_at = time.monotonic()
    assert await fetch_one(worker_b, 0.3) is None  # not before the delay
    again = await fetch_one(worker_b, 5)
    delay = time.monotonic() - nakked_at
    timing("nak_delay_0.8s_redelivered_after", delay)
    assert again is not None and again.metadata.sequence.stream == msg.metadata.sequence.stream
    assert again.metadata.num_delivered == 2
    assert delay >= 0.7
    await again.ack()


async def test_term_stops_redelivery_and_is_advised(nc: Client) -> None:
    js = nc.jetstream()
    await jobs_stream(js)
    advisories = await nc.subscribe("$JS.EVENT.ADVISORY.CONSUMER.MSG_TERMINATED.JOBS.workers")
    config = ConsumerConfig(durable_name="workers", ack_wait=0.4)
    worker = await js.pull_subscribe("jobs.>", durable="workers", stream="JOBS", config=config)
    await js.publish("jobs.1", b"poison")

    msg = await fetch_one(worker, 2)
    assert msg is not None
    await msg.term()
    advisory = json.loads((await advisories.next_msg(timeout=2)).data)
    assert advisory["stream_seq"] == msg.metadata.sequence.stream
    assert await fetch_one(worker, 3 * 0.4) is None  # three ack_waits: never redelivered
    info = await js.consumer_info("JOBS", "workers")
    assert info.num_ack_pending == 0 and info.num_redelivered == 0


async def test_ack_wait_redelivers_an_unacked_message(nc: Client) -> None:
    js = nc.jetstream()
    await jobs_stream(js)
    config = ConsumerConfig(durable_name="workers", ack_wait=0.5)
    worker = await js.pull_subscribe("jobs.>", durable="workers", stream="JOBS", config=config)
    await js.publish("jobs.1", b"job")

    msg = await fetch_one(worker, 2)
    assert msg is not None  # ... and the worker dies without acking
    fetched_at = time.monotonic()
    again = await fetch_one(worker, 5)
    after = time.monotonic() - fetched_at
    timing("ack_wait_0.5s_redelivered_after", after)
    assert again is not None and again.metadata.num_delivered == 2
    assert after >= 0.4
    await again.ack()


async def test_max_deliver_caps_deliveries(nc: Client) -> None:
    js = nc.jetstream()
    await jobs_stream(js)
    advisories = await nc.subscribe("$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.JOBS.workers")
    config = ConsumerConfig(durable_name="workers", ack_wait=0.3, max_deliver=2)
    worker = await js.pull_subscribe("jobs.>", durable="workers", stream="JOBS", config=config)
    await js.publish("jobs.1", b"job")

    first = await fetch_one(worker, 2)
    second = await fetch_one(worker, 3)
    assert first is not None and second is not None
    assert second.metadata.num_delivered == 2
    assert await fetch_one(worker, 3 * 0.3) is None  # no third delivery
    # The advisory comes when the server would have redelivered: with a pull consumer, that is
    # while a fetch is waiting after the last ack_wait.
    advisory = json.loads((await advisories.next_msg(timeout=3)).data)
    assert advisory["stream_seq"] == first.metadata.sequence.stream
    assert advisory["deliveries"] == 2
    # The message stays in the stream (limits retention): a dead-letter reader can get it.
    assert (await js.get_msg("JOBS", seq=first.metadata.sequence.stream)).data == b"job"


# --------------------------------------------------------------------------- d) 3-node cluster


async def publish_retrying(
    js: JetStreamContext, subject: str, payload: bytes, msg_id: str, timeout: float = 20
) -> float:
    """Publish until acked (same Nats-Msg-Id on every try, so retries cannot duplicate)."""

    async def attempt() -> bool:
        try:
            await js.publish(subject, payload, headers={"Nats-Msg-Id": msg_id}, timeout=1)
        except (nats.errors.Error, nats.js.errors.Error):
            return False
        return True

    return await wait_until(attempt, timeout, f"publish {msg_id}", interval=0.05)


async def stream_leader(js: JetStreamContext, stream: str) -> str:
    info = await js.stream_info(stream)
    assert info.cluster is not None and info.cluster.leader
    return info.cluster.leader


async def replicas_current(js: JetStreamContext, stream: str, size: int) -> bool:
    try:
        info = await js.stream_info(stream)
    except (nats.errors.Error, nats.js.errors.Error):
        return False
    cluster = info.cluster
    if cluster is None or not cluster.leader:
        return False
    peers = cluster.replicas or []
    return len(peers) == size - 1 and all(p.current and not p.offline for p in peers)


async def move_stream_leader(nc: Client, js: JetStreamContext, stream: str, to: str) -> None:
    """Ask the stream's leader to step down in favour of `to` (server 2.11+ `preferred`)."""
    if await stream_leader(js, stream) == to:
        return
    request = json.dumps({"placement": {"preferred": to}}).encode()
    reply = json.loads((await nc.request(f"$JS.API.STREAM.LEADER.STEPDOWN.{stream}", request)).data)
    assert reply.get("success"), reply

    async def moved() -> bool:
        try:
            return await stream_leader(js, stream) == to
        except (nats.errors.Error, nats.js.errors.Error, AssertionError):
            return False

    await wait_until(moved, 10, f"{stream} led by {to}")


async def test_r3_stream_and_kv_survive_sigkill_of_their_leader(nats_cluster: NatsCluster) -> None:
    async with await nats_connect(nats_cluster.urls) as nc:
        js = nc.jetstream(timeout=1)
        await js.add_stream(
            StreamConfig(name="EVENTS", subjects=["events.>"], num_replicas=3, duplicate_window=600)
        )
        # A lease TTL longer than a failover (5-9 s after a SIGKILL, measured below).
        kv = await js.create_key_value(KeyValueConfig(bucket="leases", ttl=30, replicas=3))
        await js.publish("events.x", b"1", headers={"Nats-Msg-Id": "evt-1"})
        rev = await kv.create("leader", b"instance-a")
        # One SIGKILL for both: put both raft groups' leadership on the same node first.
        victim = await stream_leader(js, "KV_leases")
        await move_stream_leader(nc, js, "EVENTS", victim)

        await nats_cluster.node(victim).kill()
        killed_at = time.monotonic()
        took = await publish_retrying(js, "events.x", b"2", "evt-2")
        timing("r3_stream_publish_ok_after_leader_sigkill", took)

        async def renewed() -> int | None:
            try:
                return await kv.update("leader", b"instance-a", last=rev)
            except nats.js.errors.KeyWrongLastSequenceError:
                raise  # a retry after a lost reply would land here: not expected in this test
            except (nats.errors.Error, nats.js.errors.Error):
                return None

        new_rev: list[int] = []

        async def renew() -> bool:
            result = await renewed()
            if result is not None:
                new_rev.append(result)
            return result is not None

        await wait_until(renew, 20, "lease renewed after the kill", interval=0.05)
        timing("r3_kv_renew_ok_after_leader_sigkill", time.monotonic() - killed_at)
        assert new_rev[0] > rev
        with pytest.raises(nats.js.errors.KeyWrongLastSequenceError):
            await kv.create("leader", b"instance-b")
        assert (await js.stream_info("EVENTS")).state.messages == 2
        assert await stream_leader(js, "EVENTS") != victim
        assert await stream_leader(js, "KV_leases") != victim

        restarted_at = time.monotonic()
        await nats_cluster.node(victim).restart()
        for stream in ("EVENTS", "KV_leases"):
            await wait_until(lambda s=stream: replicas_current(js, s, 3), 20, f"{stream} current")
        timing("r3_killed_node_restarted_and_current", time.monotonic() - restarted_at)
        node_info = await nats_cluster.node(victim).jsz()
        assert node_info["streams"] == 2


async def test_r3_stream_graceful_stop_of_its_leader_fails_over_at_once(
    nats_cluster: NatsCluster,
) -> None:
    """SIGTERM: the leader hands over before exiting (a rolling restart costs ~no downtime)."""
    async with await nats_connect(nats_cluster.urls) as nc:
        js = nc.jetstream(timeout=1)
        await js.add_stream(StreamConfig(name="EVENTS", subjects=["events.>"], num_replicas=3))
        leader = await stream_leader(js, "EVENTS")
        await nats_cluster.node(leader).stop()
        took = await publish_retrying(js, "events.x", b"1", "evt-1")
        timing("r3_stream_publish_ok_after_leader_sigterm", took)
        assert took < 3
        assert await stream_leader(js, "EVENTS") != leader


async def test_r3_stream_needs_a_quorum(nats_cluster: NatsCluster) -> None:
    """Two of three nodes gone (a partition, seen from the minority): writes fail; one back: ok."""
    async with await nats_connect(nats_cluster.urls) as nc:
        js = nc.jetstream(timeout=2)
        await js.add_stream(StreamConfig(name="EVENTS", subjects=["events.>"], num_replicas=3))
        await js.publish("events.x", b"1")
        leader = await stream_leader(js, "EVENTS")
        others = [node for node in nats_cluster.nodes if node.name != leader]

        for node in others:
            await node.stop()
        with pytest.raises((nats.errors.Error, nats.js.errors.Error)):
            await js.publish("events.x", b"2", timeout=1)

        await others[0].restart(wait=False)
        took = await publish_retrying(js, "events.x", b"3", "evt-3")
        timing("r3_publish_ok_after_quorum_restored", took)
        await others[1].restart()
        await nats_cluster.wait_ready()
        await wait_until(lambda: replicas_current(js, "EVENTS", 3), 20, "EVENTS R3 current")


# --------------------------------------------------------------------------- e) 2.12+ features


def rfc3339_in(seconds: float) -> str:
    at = datetime.datetime.now(datetime.UTC) + datetime.timedelta(seconds=seconds)
    return at.isoformat(timespec="milliseconds").replace("+00:00", "Z")


async def test_message_schedule_at_fires_once_into_the_target(nc: Client) -> None:
    js = nc.jetstream()
    info = await js.add_stream(
        StreamConfig(name="SCHED", subjects=["sched.>", "fire.>"], allow_msg_schedules=True)
    )
    assert info.config.allow_msg_schedules is True
    fired = await js.subscribe("fire.>", ordered_consumer=True)

    await js.publish(
        "sched.job-1",
        b"payload",
        headers={"Nats-Schedule": f"@at {rfc3339_in(1.0)}", "Nats-Schedule-Target": "fire.job"},
    )
    published_at = time.monotonic()
    msg = await fired.next_msg(timeout=5)
    after = time.monotonic() - published_at
    timing("schedule_at_1s_fired_after", after)
    assert after >= 0.8
    assert msg.subject == "fire.job" and msg.data == b"payload"
    assert msg.headers is not None and msg.headers["Nats-Scheduler"] == "sched.job-1"
    # The one-shot schedule removes itself: only the fired message is left.
    state = (await js.stream_info("SCHED", subjects_filter=">")).state
    assert state.messages == 1 and state.subjects == {"fire.job": 1}


async def test_message_schedule_every_repeats_and_validates(nc: Client) -> None:
    js = nc.jetstream()
    await js.add_stream(
        StreamConfig(name="SCHED", subjects=["sched.>", "fire.>"], allow_msg_schedules=True)
    )
    await js.add_stream(StreamConfig(name="PLAIN", subjects=["plain.>"]))
    fired = await js.subscribe("fire.>", ordered_consumer=True)

    headers = {"Nats-Schedule": "@every 1s", "Nats-Schedule-Target": "fire.tick"}
    await js.publish("sched.tick", b"tick", headers=headers)
    first = await fired.next_msg(timeout=3)
    second = await fired.next_msg(timeout=3)
    assert first.headers and second.headers
    assert first.headers["Nats-Schedule-Next"] < second.headers["Nats-Schedule-Next"]
    await js.purge_stream("SCHED", subject="sched.tick")  # a schedule is cancelled by purging it

    async def refused(subject: str, hdrs: dict[str, str]) -> int | None:
        with pytest.raises(nats.js.errors.BadRequestError) as err:
            await js.publish(subject, b"x", headers=hdrs)
        return err.value.err_code

    assert await refused("sched.fast", {**headers, "Nats-Schedule": "@every 500ms"}) == 10189
    assert await refused("sched.x", {**headers, "Nats-Schedule-Target": "elsewhere.x"}) == 10190
    assert await refused("sched.x", {"Nats-Schedule": "@every 1s"}) == 10190  # target required
    assert await refused("plain.x", {**headers, "Nats-Schedule-Target": "plain.y"}) == 10188


async def test_stream_created_by_raw_api_request(nc: Client) -> None:
    """For config fields nats-py does not model: a JSON request to $JS.API.STREAM.CREATE.<name>."""
    config = {
        "name": "RAW",
        "subjects": ["raw.>"],
        "storage": "file",
        "num_replicas": 1,
        "allow_msg_schedules": True,
        "allow_msg_ttl": True,
        "duplicate_window": 600 * 10**9,  # nanoseconds on the wire
    }
    reply = await nc.request("$JS.API.STREAM.CREATE.RAW", json.dumps(config).encode(), timeout=2)
    created = json.loads(reply.data)
    assert "error" not in created, created
    assert created["config"]["allow_msg_schedules"] is True
    info = await nc.jetstream().stream_info("RAW")
    assert info.config.allow_msg_ttl is True and info.config.duplicate_window == 600


async def test_per_message_ttl(nc: Client) -> None:
    js = nc.jetstream()
    await js.add_stream(StreamConfig(name="TTL", subjects=["ttl.>"], allow_msg_ttl=True))
    await js.add_stream(StreamConfig(name="PLAIN", subjects=["plain.>"]))

    ack = await js.publish("ttl.x", b"short", msg_ttl=1)  # header Nats-TTL: "1"
    await js.publish("ttl.y", b"forever")
    published_at = time.monotonic()

    async def expired() -> bool:
        try:
            await js.get_msg("TTL", seq=ack.seq)
        except nats.js.errors.NotFoundError:
            return True
        return False

    await wait_until(expired, 5, "TTL message removed")
    timing("msg_ttl_1s_removed_after", time.monotonic() - published_at)
    assert (await js.stream_info("TTL")).state.messages == 1

    for bad in ("500ms", "0"):  # at least 1 s; msg_ttl=0.5 is sent as "0"
        with pytest.raises(nats.js.errors.BadRequestError) as err:
            await js.publish("ttl.z", b"x", headers={"Nats-TTL": bad})
        assert err.value.err_code == 10165
    with pytest.raises(nats.js.errors.BadRequestError) as err:
        await js.publish("plain.x", b"x", msg_ttl=1)
    assert err.value.err_code == 10166  # per-message TTL is disabled on this stream


async def test_kv_per_key_ttl_lease(nc: Client) -> None:
    """A per-key TTL (kv.create(msg_ttl=)) in a bucket without one; renewal must re-send it."""
    js = nc.jetstream()
    kv = await js.create_key_value(KeyValueConfig(bucket="leases", history=1))
    rev = await kv.create("leader", b"a", msg_ttl=1)

    # kv.update() has no msg_ttl: the renewed revision carries no TTL (the key would live on).
    plain = await kv.update("leader", b"a", last=rev)
    raw = await js.get_msg("KV_leases", seq=plain)
    assert not (raw.headers or {}).get("Nats-TTL")

    # Renew with the TTL: js.publish with the KV's compare-and-set header.
    renewed = await js.publish(
        "$KV.leases.leader",
        b"a",
        headers={"Nats-Expected-Last-Subject-Sequence": str(plain)},
        msg_ttl=1,
    )
    renewed_at = time.monotonic()
    await wait_until(lambda: key_absent(kv, "leader"), 5, "per-key TTL expiry")
    timing("kv_per_key_ttl_1s_expiry_seen_by_polling_get", time.monotonic() - renewed_at)
    assert await kv.create("leader", b"b") > renewed.seq
