"""The JetStream journal's own guarantees on a real nats-server (the cluster's
end-to-end behaviour is in test_cluster.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import anyio
import pytest
from conftest import example

from engine.config import ClusterConfig, EngineConfig
from engine.events import Event
from engine.journal import JournalStore, open_journal
from engine.nats_link import NatsLink, connect, entries
from tests.nats_server import NatsServer

pytestmark = pytest.mark.anyio


@pytest.fixture
async def link(nats_server: NatsServer) -> AsyncIterator[NatsLink]:
    cluster = ClusterConfig(servers=(nats_server.url,), name="j", node="a")
    async with connect(cluster, EngineConfig(journal_backend="jetstream")) as made:
        yield made


async def _stream_messages(link: NatsLink) -> int:
    return (await link.js.stream_info(link.names.events)).state.messages


async def test_a_mark_is_written_only_after_the_events_queued_before_it(link: NatsLink) -> None:
    engine = EngineConfig(journal_backend="jetstream")
    store: JournalStore
    async with open_journal(engine, link=link) as store:
        # The events stream is gone: publishing fails until it is back.
        await link.js.delete_stream(link.names.events)
        await store.append(Event.from_body(example("meeting.started"), source="test"))
        await store.write_mark("alive:zoom:default", 1234.5)
        assert await store.read_mark("alive:zoom:default") == 1234.5  # its own write, queued

        marks = await link.bucket("marks")
        with anyio.move_on_after(1.0):
            while True:  # noqa: ASYNC110 - the publisher is retrying in the background
                assert not await entries(marks), "the mark went ahead"
                await anyio.sleep(0.1)

        await link.ensure()
        with anyio.fail_after(20):
            while not await entries(marks):  # noqa: ASYNC110
                await anyio.sleep(0.05)
        assert await _stream_messages(link) == 1
        assert store.health().ok


async def _queued_jobs(link: NatsLink) -> int:
    return (await link.js.stream_info(link.names.retry)).state.messages


async def test_a_firing_made_again_after_the_duplicate_window_is_not_queued_again(
    link: NatsLink,
) -> None:
    from engine.journal.store import CorrelationLog

    event = Event.from_body(example("meeting.started"), source="test")
    firing = (7, event, ("host-not-joined", "f" * 32, b'{"correlation_id": "ff"}'))
    other = (8, event, ("host-not-joined", "e" * 32, b'{"correlation_id": "ee"}'))
    async with open_journal(EngineConfig(journal_backend="jetstream"), link=link) as store:
        assert isinstance(store, CorrelationLog)
        await store.queue_firings([firing])
        assert await _queued_jobs(link) == 1

        # The retry stream forgets the ids it saw (as once its duplicate
        # window has passed): a new stream, the job taken meanwhile.
        await link.js.delete_stream(link.names.retry)
        await link.ensure()
        # A successor makes the same firing again, and a new one.
        await store.queue_firings([firing, other])
        assert await _queued_jobs(link) == 1  # the new one only
        firings = await link.bucket("firings")
        assert sorted(entry.key for entry in await entries(firings)) == ["e" * 32, "f" * 32]


async def test_a_firing_queued_but_not_recorded_is_dropped_by_its_message_id(
    link: NatsLink,
) -> None:
    from engine.journal.store import CorrelationLog

    event = Event.from_body(example("meeting.started"), source="test")
    firing = (7, event, ("host-not-joined", "d" * 32, b'{"correlation_id": "dd"}'))
    async with open_journal(EngineConfig(journal_backend="jetstream"), link=link) as store:
        assert isinstance(store, CorrelationLog)
        await store.queue_firings([firing])
        # The node died between queuing the job and recording its key: the
        # successor's job is the stream's duplicate, and the key is recorded.
        firings = await link.bucket("firings")
        await firings.purge("d" * 32)
        assert not await entries(firings)
        await store.queue_firings([firing])
        assert await _queued_jobs(link) == 1
        assert [entry.key for entry in await entries(firings)] == ["d" * 32]


async def test_a_redelivered_event_waits_for_its_progress_through_a_nats_hiccup(
    nats_server: NatsServer,
) -> None:
    """Its node died: the event comes back to another node, which must learn
    where its jobs stand before running them. NATS not answering that
    question for a moment (a stream electing its leader) is waited out, not
    a crash of the node."""
    cluster = ClusterConfig(servers=(nats_server.url,), name="r", node="a", ack_wait=1.0)
    engine = EngineConfig(journal_backend="jetstream")
    async with connect(cluster, engine) as link:
        store: JournalStore
        async with open_journal(engine, link=link) as store:
            await store.append(Event.from_body(example("meeting.started"), source="test"))
            with anyio.fail_after(10):
                while not (taken := await store.take_events(10))[0]:
                    await store.wait_for_events()
            # Taken, never acknowledged: this node "dies" with it.
    async with connect(cluster, engine) as link:
        failures = 2
        bucket = link.bucket

        async def unanswered(kind: str) -> object:
            nonlocal failures
            if kind == "progress" and failures:
                failures -= 1
                raise TimeoutError("nats: timeout")
            return await bucket(kind)

        link.bucket = unanswered  # type: ignore[method-assign]
        async with open_journal(engine, link=link) as store:
            with anyio.fail_after(20):
                while not (again := await store.take_events(10))[0]:
                    await store.wait_for_events()
            assert again[1][0].id == taken[1][0].id
            with anyio.fail_after(20):
                starts = await store.add_jobs([(again[0][0], ["rule-a", "rule-b"])])
            assert [start for _, start in starts] == [0, 0]
            assert failures == 0
