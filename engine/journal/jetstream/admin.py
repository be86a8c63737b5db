"""Dead letters and statistics of a cluster's journal (`JournalAdmin` on JetStream).

Dead letters are the `<name>_DLQ` stream, one message per job on subject
`<name>.dlq.<job id>`; re-queuing one moves it to `<name>_RETRY`, a work
queue every node's feed takes from. There is always somebody to run them:
the cluster (`owner` says so), so `zoomrules dlq retry` only re-queues.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import orjson

from engine.events import Event
from engine.journal.jetstream.documents import dead_letter, job_from_document, requeued
from engine.journal.store import DEAD, RETRY, JobRow
from engine.nats_link import NatsLink


class JetStreamAdmin:
    """`engine.journal.store.JournalAdmin` over a cluster's streams."""

    def __init__(self, link: NatsLink) -> None:
        self.link = link
        self.names = link.names

    async def _dlq_messages(self, limit: int) -> list[Any]:
        from nats.js.errors import NotFoundError

        js, stream = self.link.js, self.names.dlq
        found: list[Any] = []
        seq = 1
        while len(found) < limit:
            try:
                message = await js.get_msg(stream, seq=seq, next=True, direct=False)
            except NotFoundError:
                break
            found.append(message)
            seq = message.seq + 1
        return found

    async def dead_letters(self, limit: int) -> list[JobRow]:
        rows = [job_from_document(m.data) for m in await self._dlq_messages(limit)]
        return sorted(rows, key=lambda row: row.id)

    async def job(self, job_id: int) -> JobRow | None:
        from nats.js.errors import NotFoundError

        try:
            message = await self.link.js.get_last_msg(
                self.names.dlq, self.names.dlq_subject(job_id)
            )
        except NotFoundError:
            return None
        return job_from_document(message.data)

    async def dead_before(self, cutoff: float) -> list[int]:
        return [row.id for row in await self.dead_letters(1_000_000) if row.updated_at < cutoff]

    async def requeue(self, ids: Sequence[int]) -> int:
        """Move dead letters to the retry queue, where any node takes them."""
        from nats.js.errors import NotFoundError

        js, names = self.link.js, self.names
        moved = 0
        for job_id in ids:
            try:
                message = await js.get_last_msg(names.dlq, names.dlq_subject(job_id))
            except NotFoundError:
                continue
            if job_from_document(message.data).state != DEAD:
                continue
            await js.publish(names.retry_subject(job_id), requeued(message.data))
            await js.purge_stream(names.dlq, subject=names.dlq_subject(job_id))
            moved += 1
        return moved

    async def purge(self, ids: Sequence[int]) -> int:
        from nats.js.errors import NotFoundError

        js, names = self.link.js, self.names
        removed = 0
        for job_id in ids:
            try:
                await js.get_last_msg(names.dlq, names.dlq_subject(job_id))
            except NotFoundError:
                continue
            await js.purge_stream(names.dlq, subject=names.dlq_subject(job_id))
            removed += 1
        return removed

    async def stats(self) -> dict[str, Any]:
        js, names = self.link.js, self.names
        events = await js.stream_info(names.events)
        matchers = await js.consumer_info(names.events, names.matchers)
        dlq = await js.stream_info(names.dlq)
        retry = await js.stream_info(names.retry)
        first = events.state.first_ts
        return {
            "backend": "jetstream",
            "cluster": names.prefix,
            "events": events.state.messages,
            "events_unmatched": matchers.num_pending,
            "events_in_progress": matchers.num_ack_pending,
            "duplicates_dropped": None,
            "oldest_event_at": first.timestamp() if first is not None else None,
            "jobs": {RETRY: retry.state.messages, DEAD: dlq.state.messages},
            "bytes": events.state.bytes + dlq.state.bytes + retry.state.bytes,
        }

    def owner(self) -> str | None:
        return f"the nodes of cluster {self.names.prefix}"

    async def seen_recently(self, event_id: str, now: float, window: float) -> bool:
        return False  # replay does not de-duplicate against a cluster

    async def record_seen(self, event: Event) -> bool:
        return False  # the cluster's stream holds only what its nodes received

    async def record_dead_letter(
        self,
        event: Event,
        rule: str,
        next_action: int,
        attempts: int,
        error: str,
        *,
        errors: int = 0,
    ) -> int | None:
        # Not an event of the stream: an id of its own, from the clock.
        job = time.time_ns() // 1000
        document = dead_letter(
            job, 0, event, rule, next_action, attempts, errors, error, time.time()
        )
        await self.link.js.publish(self.names.dlq_subject(job), document)
        return job

    async def read_mark(self, name: str) -> float | None:
        from nats.js.errors import KeyNotFoundError

        marks = await self.link.bucket("marks")
        try:
            entry = await marks.get(name.replace(":", "_"))
        except KeyNotFoundError:
            return None
        return float(orjson.loads(entry.value)) if entry.value else None

    async def write_mark(self, name: str, value: float) -> None:
        marks = await self.link.bucket("marks")
        await marks.put(name.replace(":", "_"), orjson.dumps(value))
