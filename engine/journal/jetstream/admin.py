"""Dead letters and statistics of a cluster's journal (`JournalAdmin` on JetStream).

Dead letters are the `<name>_DLQ` stream, one message per job on subject
`<name>.dlq.<job id>`; re-queuing one moves it to `<name>_RETRY`, a work
queue every node's feed takes from. Until a node takes it, a re-queued job
is listed (state `retry`), shown and purged as the SQLite journal's are.
Nothing here runs jobs: the live nodes do (`zoomrules dlq retry` only
re-queues).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import orjson

from engine.errors import JournalError
from engine.events import Event
from engine.journal.jetstream.correlations import SnapshotBucket
from engine.journal.jetstream.documents import (
    dead_letter,
    event_from_message,
    job_from_document,
    requeued,
)
from engine.journal.store import DEAD, RETRY, CorrelationRow, JobRow
from engine.nats_link import NatsLink, entries


class JetStreamAdmin:
    """`engine.journal.store.JournalAdmin` over a cluster's streams."""

    def __init__(self, link: NatsLink) -> None:
        self.link = link
        self.names = link.names
        self._last_own_job = 0
        self.snapshots = SnapshotBucket(link)

    async def _messages(self, stream: str, limit: int) -> list[Any]:
        """The first `limit` messages of `stream` (none if it does not exist)."""
        from nats.js.errors import NotFoundError

        found: list[Any] = []
        seq = 1
        while len(found) < limit:
            try:
                # The next message from `seq` on, of any subject: deleted ones
                # leave gaps (a plain get of a gap's sequence finds nothing).
                message = await self.link.js.get_msg(
                    stream, seq=seq, subject=">", next=True, direct=False
                )
            except NotFoundError:
                break
            found.append(message)
            seq = message.seq + 1
        return found

    async def _stored(self, job_id: int) -> tuple[str, Any] | None:
        """Where job `job_id` is kept, the dead letters or the retry queue, and its message."""
        from nats.js.errors import NotFoundError

        names = self.names
        places = (
            (names.dlq, names.dlq_subject(job_id)),
            (names.retry, names.retry_subject(job_id)),
        )
        for stream, subject in places:
            try:
                return stream, await self.link.js.get_last_msg(stream, subject)
            except NotFoundError:
                continue
        return None

    async def dead_letters(self, limit: int) -> list[JobRow]:
        dead = [job_from_document(m.data) for m in await self._messages(self.names.dlq, limit)]
        waiting = [
            job_from_document(m.data, state=RETRY)
            for m in await self._messages(self.names.retry, limit)
        ]
        return sorted(dead + waiting, key=lambda row: row.id)[:limit]

    async def job(self, job_id: int) -> JobRow | None:
        stored = await self._stored(job_id)
        if stored is None:
            return None
        stream, message = stored
        return job_from_document(message.data, state=RETRY if stream == self.names.retry else None)

    async def dead_before(self, cutoff: float) -> list[int]:
        messages = await self._messages(self.names.dlq, 1_000_000)
        rows = [job_from_document(message.data) for message in messages]
        return [row.id for row in rows if row.state == DEAD and row.updated_at < cutoff]

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
            # Published first: a failure between the two leaves the job in
            # both places (it may run twice), never in neither.
            await js.publish(names.retry_subject(job_id), requeued(message.data))
            # By sequence, not by subject: if a node already ran it and it
            # failed again, that newer dead letter stays.
            if await self._delete(names.dlq, message.seq):
                moved += 1
        return moved

    async def purge(self, ids: Sequence[int]) -> int:
        """Delete dead letters, and re-queued ones still in the retry queue (a
        node that already took one finishes it)."""
        removed = 0
        for job_id in ids:
            stored = await self._stored(job_id)
            if stored is not None and await self._delete(stored[0], stored[1].seq):
                removed += 1
        return removed

    async def _delete(self, stream: str, seq: int) -> bool:
        from nats.js.errors import NotFoundError

        try:
            return bool(await self.link.js.delete_msg(stream, seq))
        except NotFoundError:  # gone meanwhile (taken, or deleted by another command)
            return False

    async def stats(self) -> dict[str, Any]:
        from nats.js.errors import NotFoundError

        js, names = self.link.js, self.names
        try:
            events = await js.stream_info(names.events)
            matchers = await js.consumer_info(names.events, names.matchers)
            dlq = await js.stream_info(names.dlq)
            retry = await js.stream_info(names.retry)
        except NotFoundError as exc:
            raise JournalError(
                f"cluster {names.prefix!r} is missing a stream or consumer ({exc}): "
                "a node recreates them when it starts"
            ) from None
        return {
            "backend": "jetstream",
            "cluster": names.prefix,
            "server": self.link.connected_url,
            "events": events.state.messages,
            "events_unmatched": matchers.num_pending,
            "events_in_progress": matchers.num_ack_pending,
            # NATS drops a duplicate on publish without counting it anywhere
            # (each node logs the ones it sent).
            "duplicates_dropped": None,
            "oldest_event_at": await self._oldest_event_at(),
            # Only these states are kept: jobs that ended well leave no trace,
            # and pending ones are the events in progress.
            "jobs": {RETRY: retry.state.messages, DEAD: dlq.state.messages},
            "bytes": events.state.bytes + dlq.state.bytes + retry.state.bytes,
            "marks": await self._marks(),
        }

    async def _marks(self) -> dict[str, float]:
        """Every mark, by name (each value names its own: keys cannot hold `:`)."""
        found = {}
        for entry in await entries(await self.link.bucket("marks")):
            stored = orjson.loads(entry.value)
            if isinstance(stored, dict):
                found[str(stored["name"])] = float(stored["at"])
        return found

    async def _oldest_event_at(self) -> float | None:
        """When the oldest event the stream still holds was received (None: it holds none)."""
        first = await self._messages(self.names.events, 1)
        if not first:
            return None
        return event_from_message(first[0].data, first[0].headers).received_at

    def owner(self) -> str | None:
        return f"the nodes of cluster {self.names.prefix}"

    # -- temporal rules (`TimerAdmin`): the correlator's last snapshot ------------

    async def correlations(self, rule: str | None, limit: int) -> list[CorrelationRow]:
        from nats.js.errors import NotFoundError

        try:
            snapshot = await SnapshotBucket(self.link).read()
        except NotFoundError:  # a cluster whose nodes predate temporal rules
            return []
        rows = [] if snapshot is None else snapshot.rows
        rows = sorted((row for row in rows if rule is None or row.rule == rule),
                      key=lambda row: row.deadline)  # fmt: skip
        return rows[:limit]

    async def cancel_correlations(self, items: Sequence[tuple[str, str]]) -> int:
        # The node running the temporal rules applies them at its next look.
        await self.snapshots.request_cancel(items)
        return len(items)

    async def seen_recently(self, event_id: str, now: float, window: float) -> bool:
        return False  # NATS cannot look an id up without publishing it (see `replay`)

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
        # Not an event of the stream: an id of its own, from the clock (in
        # microseconds, far above the ids of the stream's jobs), never twice.
        job = self._last_own_job = max(time.time_ns() // 1000, self._last_own_job + 1)
        document = dead_letter(
            job, 0, event, rule, next_action, attempts, errors, error, time.time()
        )
        await self.link.js.publish(self.names.dlq_subject(job), document)
        return job

    async def read_mark(self, name: str) -> float | None:
        from nats.js.errors import KeyNotFoundError

        marks = await self.link.bucket("marks")
        try:
            entry = await marks.get(_mark_key(name))
        except KeyNotFoundError:
            return None
        if not entry.value:
            return None
        stored = orjson.loads(entry.value)
        return float(stored["at"] if isinstance(stored, dict) else stored)

    async def write_mark(self, name: str, value: float) -> None:
        marks = await self.link.bucket("marks")
        await marks.put(_mark_key(name), orjson.dumps({"name": name, "at": value}))


def _mark_key(name: str) -> str:
    # KV keys allow letters, digits, `-_=/.`: `alive:zoom:default` -> `alive_zoom_default`.
    return name.replace(":", "_")
