"""The cluster's journal: a `JournalStore` on NATS JetStream.

- **Intake.** `append` queues the event; a publisher sends it to the events
  stream with its id as `Nats-Msg-Id`, so the stream keeps each occurrence
  once however many nodes (redundant subscriptions, a webhook) deliver it.
  A publish NATS does not confirm is sent again (the id makes that safe);
  while NATS cannot take them, events are held in memory up to `[engine]
  journal_buffer`, then intake waits, as with the SQLite journal.
- **Matching.** Every node takes events through one durable pull consumer,
  so each event goes to one node. The event's message is acknowledged once
  all the jobs it fired have ended (done, or a dead letter); until then the
  node says "in progress" every third of `[cluster] ack_wait`. A node that
  dies holding it lets the message come back to another node after
  `ack_wait`, which matches it again and resumes its jobs where the
  progress bucket says they stand: a job that ended is not run again, one
  that was half-done starts at its first unfinished action.
- **Dead letters and retries.** A job that failed for good is a document on
  the dead-letter stream (see `admin`); `dlq retry` moves it to the retry
  work queue, from which any node's feed takes it (`claim_retries`).

Job ids are the event's stream sequence times 1000 plus the job's place
among the event's firings: the same job has the same id on every node.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections import deque
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import anyio
import orjson
from anyio.abc import TaskStatus

from engine.config import ClusterConfig, EngineConfig
from engine.errors import JournalError
from engine.events import Event
from engine.journal.jetstream.admin import JetStreamAdmin
from engine.journal.jetstream.documents import (
    MSG_ID,
    dead_letter,
    event_from_message,
    event_message,
    firing_job_id,
    job_from_document,
    job_id,
)
from engine.journal.store import (
    RETRY,
    CorrelationSnapshot,
    Firings,
    JobRow,
    JobStart,
    JournalCounters,
    KeyedJob,
    StateChange,
    StoreHealth,
)
from engine.logs import LogLimiter
from engine.nats_link import NatsLink, connect
from engine.retry import Backoff

log = logging.getLogger("zoomrules.journal")

#: Publishes awaiting NATS's confirmation at once.
_IN_FLIGHT = 256
#: Outcomes queued for the outcome task before `try_record_outcome` says wait.
_OUTCOMES = 8192
#: How long a stopping node keeps trying to publish what it holds.
_STOP_TIMEOUT = 10.0


@dataclass(eq=False)
class _Held:
    """An event message this node took and has not acknowledged yet."""

    msg: Any
    seq: int
    event: Event
    delivered: int
    jobs: int = 0
    #: Jobs not ended yet; the message is acknowledged when this reaches 0.
    pending: int = 0


@dataclass(eq=False)
class _Job:
    held: _Held | None  # the event message, or None for a re-queued dead letter
    retry_msg: Any | None
    rule: str
    created_at: float
    next_action: int = 0
    errors: int = 0
    ended: bool = False


@dataclass(frozen=True)
class _Mark:
    """A mark to write once every event queued before it is published."""

    name: str
    value: float


@dataclass
class _Outbox:
    """Events and marks to publish, in order."""

    events: deque[Event | _Mark] = field(default_factory=deque)
    bytes: int = 0


def _size(item: Event | _Mark) -> int:
    if isinstance(item, _Mark):
        return 64
    return len(item.raw) if item.raw is not None else 1024


class JetStreamJournal(JetStreamAdmin):
    """`engine.journal.store.JournalStore` on a cluster's streams."""

    def __init__(self, link: NatsLink, engine: EngineConfig, *, batch: int = 256) -> None:
        super().__init__(link)
        self.engine = engine
        self.batch = batch
        self.counters = JournalCounters()
        self._logs = LogLimiter(log)
        self._outbox = _Outbox()
        self._wake_publisher = anyio.Event()
        self._room = anyio.Event()
        #: Items ever queued and ever published (or dropped as duplicates):
        #: `append_durably` waits until the second passes its item's place.
        self._queued_items = 0
        self._published_items = 0
        self._published = anyio.Event()
        self._closed = False
        self._events_sub: Any = None
        self._retry_sub: Any = None
        self._fetched: deque[Any] = deque()
        self._held: dict[int, _Held] = {}
        self._jobs: dict[int, _Job] = {}
        self._outcomes: deque[tuple[Any, ...]] = deque()
        self._wake_outcomes = anyio.Event()
        #: Set whenever the outcome queue is empty, or has room again.
        self._outcomes_idle = anyio.Event()
        self._failure: str | None = None
        self._outage_since: float | None = None
        self._stopped = anyio.Event()
        #: The correlator's reader of the events stream, in order (`events_after`).
        self._ordered: Any = None
        self._ordered_next = 0
        self._ordered_fresh = False

    # -- lifecycle -------------------------------------------------------------------

    async def run(self, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        js, names = self.link.js, self.names
        self._events_sub = await js.pull_subscribe_bind(durable=names.matchers, stream=names.events)
        self._retry_sub = await js.pull_subscribe_bind(durable=names.retriers, stream=names.retry)
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._say_in_progress)
            tg.start_soon(self._record_outcomes)
            task_status.started()
            await self._publish()  # returns once closed and everything is out
            await self._outcomes_done()
            tg.cancel_scope.cancel()
        self._stopped.set()

    async def close(self) -> None:
        self._closed = True
        self._wake_publisher.set()

    def health(self) -> StoreHealth:
        if not self.link.connected:
            return StoreHealth(False, "disconnected from NATS; reconnecting")
        if self._outage_since is not None:
            since = time.monotonic() - self._outage_since
            return StoreHealth(
                False,
                f"cannot publish for {since:.0f}s ({self._failure}); "
                f"{len(self._outbox.events)} event(s) held",
            )
        return StoreHealth(True, "publishing")

    def disk_bytes(self) -> None:
        return None  # the cluster's streams are NATS's: its own metrics tell their size

    # -- intake ---------------------------------------------------------------------------

    async def append(self, event: Event) -> None:
        while self._outbox.bytes >= self.engine.journal_buffer:
            if self._closed:
                raise anyio.ClosedResourceError
            if self._room.is_set():
                self._room = anyio.Event()
            await self._room.wait()
        if self._closed:
            raise anyio.ClosedResourceError
        self._queue(event)

    async def append_durably(self, event: Event) -> None:
        await self.append(event)
        place = self._queued_items
        while self._published_items < place:
            if self._published.is_set():
                self._published = anyio.Event()
            await self._published.wait()

    def _queue(self, item: Event | _Mark) -> None:
        self._queued_items += 1
        self._outbox.events.append(item)
        self._outbox.bytes += _size(item)
        self._wake_publisher.set()

    # -- marks ------------------------------------------------------------------------------

    async def write_mark(self, name: str, value: float) -> None:
        # Published after the events queued before it, so a mark never
        # says a source was connected later than the last event kept.
        if self._closed:
            raise anyio.ClosedResourceError
        self._queue(_Mark(name, value))

    async def read_mark(self, name: str) -> float | None:
        queued = [
            item.value
            for item in self._outbox.events
            if isinstance(item, _Mark) and item.name == name
        ]
        return queued[-1] if queued else await super().read_mark(name)

    async def _publish(self) -> None:
        """Publish held events in order, as many in flight as NATS takes."""
        outbox = self._outbox
        retry = Backoff(0.2, 5.0)
        deadline: float | None = None
        while True:
            if not outbox.events:
                if self._closed:
                    return
                self._wake_publisher = anyio.Event()
                await self._wake_publisher.wait()
                continue
            if self._closed and deadline is None:
                deadline = time.monotonic() + _STOP_TIMEOUT
            head = outbox.events[0]
            if isinstance(head, _Mark):
                wanted, done = 1, await self._publish_mark(head)
            else:
                events = self._leading_events()
                wanted, done = len(events), await self._publish_batch(events)
            for _ in range(done):
                outbox.bytes -= _size(outbox.events.popleft())
            self._published_items += done
            self._published.set()
            self._room.set()
            if done == wanted:
                if self._outage_since is not None:
                    log.warning(
                        "journal: publishing again after %.1fs",
                        time.monotonic() - self._outage_since,
                    )
                    self._outage_since = None
                retry.reset()
                continue
            if deadline is not None and time.monotonic() >= deadline:
                self._give_up()
                return
            await anyio.sleep(retry.next())

    def _leading_events(self) -> list[Event]:
        """The events at the head of the outbox, up to the first mark."""
        batch: list[Event] = []
        for item in self._outbox.events:
            if isinstance(item, _Mark) or len(batch) >= _IN_FLIGHT:
                break
            batch.append(item)
        return batch

    async def _publish_mark(self, mark: _Mark) -> int:
        try:
            await JetStreamAdmin.write_mark(self, mark.name, mark.value)
        except Exception as exc:  # noqa: BLE001 - held and written again
            self._outage(exc)
            return 0
        return 1

    async def _publish_batch(self, batch: Sequence[Event]) -> int:
        """Publish `batch`; how many of its first events NATS confirmed."""
        js, subject = self.link.js, self.names.events_subject
        futures = []
        started = time.perf_counter()
        try:
            for event in batch:
                data, headers = event_message(event)
                futures.append(await js.publish_async(subject, data, headers=headers))
        except Exception as exc:  # noqa: BLE001 - held and published again
            self._outage(exc)
        confirmed = 0
        for future in futures:
            try:
                ack = await future
            except Exception as exc:  # noqa: BLE001 - held and published again
                self._outage(exc)
                break
            confirmed += 1
            if ack.duplicate:
                self.counters.duplicates += 1
                self._logs.log(logging.INFO, "duplicate", "duplicate of an event dropped")
            else:
                self.counters.appended += 1
        self.counters.commits += 1
        self.counters.write_seconds.observe(time.perf_counter() - started)
        return confirmed

    def _outage(self, exc: BaseException) -> None:
        self.counters.write_errors += 1
        self._failure = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        if self._outage_since is None:
            self._outage_since = time.monotonic()
            log.error(
                "journal: cannot publish to NATS (%s); holding %d event(s) and retrying",
                self._failure, len(self._outbox.events),
            )  # fmt: skip

    def _give_up(self) -> None:
        events = [item for item in self._outbox.events if isinstance(item, Event)]
        self.counters.unwritten += len(events)
        shown = ", ".join(event.id for event in events[:20])
        log.critical(
            "journal: stopping while NATS cannot take events (%s): %d event(s) read from Zoom "
            "were never journaled and are lost: %s%s",
            self._failure, len(events), shown, " and more" if len(events) > 20 else "",
        )  # fmt: skip
        self._outbox.events.clear()

    # -- taking events ----------------------------------------------------------------------

    async def take_events(self, limit: int) -> tuple[list[int], list[Event]]:
        if not self._fetched:
            await self._fetch(limit, timeout=0.05)
        seqs: list[int] = []
        events: list[Event] = []
        while self._fetched and len(seqs) < limit:
            msg = self._fetched.popleft()
            metadata = msg.metadata
            seq = metadata.sequence.stream
            try:
                event = event_from_message(msg.data, msg.headers)
            except Exception as exc:  # noqa: BLE001 - not an event: dropped, said so
                log.error("journal: message %d of the events stream is not an event: %s", seq, exc)
                await msg.term()
                continue
            self._held[seq] = _Held(msg, seq, event, metadata.num_delivered)
            seqs.append(seq)
            events.append(event)
        return seqs, events

    async def _fetch(self, limit: int, timeout: float) -> None:
        from nats.errors import TimeoutError as NatsTimeout

        try:
            self._fetched.extend(await self._events_sub.fetch(limit, timeout=timeout))
        except (NatsTimeout, TimeoutError):  # nothing to take (nats-py raises either)
            pass
        except Exception as exc:  # noqa: BLE001 - NATS away: the next look tries again
            self._logs.log(logging.WARNING, "fetch", "journal: cannot fetch events (%r)", exc)
            await anyio.sleep(0.5)

    async def wait_for_events(self) -> None:
        while not self._fetched:
            await self._fetch(self.batch, timeout=1.0)

    async def add_jobs(self, firings: Firings, state: Sequence[StateChange] = ()) -> list[JobStart]:
        # Temporal rules and their state are the single-process journal's
        # for now (`zoomrules check` refuses them with [cluster]); throttle
        # windows are the cluster's shared ones (engine.shared_limits).
        if state:
            raise JournalError(
                "the cluster's journal keeps no temporal rule state (see docs/correlation.md)"
            )
        starts: list[JobStart] = []
        now = time.time()
        for seq, rules in firings:
            held = self._held[seq]
            if not rules:
                await self._ack(held)
                continue
            begin = (
                await self._progress(seq, len(rules)) if held.delivered > 1 else [0] * len(rules)
            )
            held.jobs = len(rules)
            held.pending = sum(1 for start in begin if start >= 0)
            for index, (rule, start) in enumerate(zip(rules, begin, strict=True)):
                if not isinstance(rule, str):  # a keyed job: a temporal rule's firing
                    raise JournalError(
                        "the cluster's journal runs no temporal rule (see docs/correlation.md)"
                    )
                job = job_id(seq, index)
                self._jobs[job] = _Job(held, None, rule, now, next_action=max(start, 0))
                starts.append((job, start))
            if held.pending == 0:
                await self._ack(held)
        return starts

    async def _progress(self, seq: int, count: int) -> list[int]:
        """Where each job of a redelivered event stands (-1: ended); asked
        until NATS answers (a stream electing its leader, a reconnect): the
        jobs cannot start before it is known, or an action could run twice."""
        retry = Backoff(0.2, 5.0)
        while True:
            try:
                return await self._read_progress(seq, count)
            except Exception as exc:  # noqa: BLE001 - NATS away: asked again
                self._logs.log(
                    logging.WARNING, "progress",
                    "journal: cannot read where a redelivered event's jobs stand (%r); retrying",
                    exc,
                )  # fmt: skip
                await anyio.sleep(retry.next())

    async def _read_progress(self, seq: int, count: int) -> list[int]:
        from nats.js.errors import KeyNotFoundError

        bucket = await self.link.bucket("progress")
        out = []
        for index in range(count):
            try:
                entry = await bucket.get(str(job_id(seq, index)))
            except KeyNotFoundError:
                out.append(0)
                continue
            stored = orjson.loads(entry.value) if entry.value else {}
            out.append(-1 if stored.get("ended") else int(stored.get("next", 0)))
        return out

    async def _ack(self, held: _Held) -> None:
        self._held.pop(held.seq, None)
        try:
            await held.msg.ack()
        except Exception as exc:  # noqa: BLE001 - it comes back; its jobs' progress says done
            self._logs.log(logging.WARNING, "ack", "journal: cannot acknowledge event (%s)", exc)

    async def _say_in_progress(self) -> None:
        """Tell NATS every busy message is still being worked on."""
        while True:
            await anyio.sleep(self.link.cluster.ack_wait / 3)
            busy = [held.msg for held in self._held.values() if held.pending]
            busy += [job.retry_msg for job in self._jobs.values() if job.retry_msg is not None]
            for msg in busy:
                try:
                    await msg.in_progress()
                except Exception as exc:  # noqa: BLE001 - the next round tries again
                    log.debug("journal: in-progress failed (%s)", exc)

    # -- outcomes -----------------------------------------------------------------------------

    def try_record_outcome(
        self,
        job_id: int,
        index: int,
        last_index: int,
        error: str | None,
        attempts: int,
        continue_on_error: bool,
    ) -> bool:
        if len(self._outcomes) >= _OUTCOMES:
            return False
        self._outcomes.append((job_id, index, last_index, error, attempts, continue_on_error))
        self._wake_outcomes.set()
        return True

    async def record_outcome(
        self,
        job_id: int,
        index: int,
        last_index: int,
        error: str | None,
        attempts: int,
        continue_on_error: bool,
    ) -> None:
        while not self.try_record_outcome(
            job_id, index, last_index, error, attempts, continue_on_error
        ):
            await self._outcomes_room()

    async def _outcomes_room(self) -> None:
        if self._outcomes_idle.is_set():
            self._outcomes_idle = anyio.Event()
        await self._outcomes_idle.wait()

    async def _outcomes_done(self) -> None:
        while self._outcomes:
            await self._outcomes_room()

    async def _record_outcomes(self) -> None:
        while True:
            while not self._outcomes:
                self._outcomes_idle.set()
                self._wake_outcomes = anyio.Event()
                await self._wake_outcomes.wait()
            outcome = self._outcomes.popleft()
            if len(self._outcomes) < _OUTCOMES // 2:
                self._outcomes_idle.set()
            try:
                await self._record(*outcome)
            except Exception as exc:  # noqa: BLE001 - the event comes back; progress redone
                log.error("journal: cannot record an outcome in NATS (%s)", exc)

    async def _record(
        self,
        job: int,
        index: int,
        last_index: int,
        error: str | None,
        attempts: int,
        continue_on_error: bool,
    ) -> None:
        info = self._jobs.get(job)
        if info is None or info.ended:
            return
        failed = error is not None
        if failed and continue_on_error:
            info.errors += 1
        if failed and not continue_on_error:
            await self._dead(job, info, index, attempts, error)
            return
        info.next_action = index + 1
        if index >= last_index:
            await self._ended(job, info)
            return
        if info.held is not None:
            bucket = await self.link.bucket("progress")
            await bucket.put(str(job), orjson.dumps({"next": index + 1, "errors": info.errors}))

    async def _dead(
        self, job: int, info: _Job, index: int, attempts: int, error: str | None
    ) -> None:
        event = info.held.event if info.held is not None else None
        seq = info.held.seq if info.held is not None else 0
        context = None
        if event is None and info.retry_msg is not None:
            row = job_from_document(info.retry_msg.data)
            event, seq, context = row.event, row.event_seq, row.context
        assert event is not None
        document = dead_letter(
            job, seq, event, info.rule, index, attempts, info.errors, error, info.created_at,
            context=context,
        )  # fmt: skip
        await self.link.js.publish(self.names.dlq_subject(job), document)
        self.counters.dead_letters += 1
        await self._ended(job, info)

    async def _ended(self, job: int, info: _Job) -> None:
        info.ended = True
        self._jobs.pop(job, None)
        if info.retry_msg is not None:
            await info.retry_msg.ack()
            return
        held = info.held
        assert held is not None
        held.pending -= 1
        if held.pending <= 0:
            await self._ack(held)
        elif held.jobs > 1:
            # The event comes back if this node dies: this job is not run again.
            bucket = await self.link.bucket("progress")
            await bucket.put(str(job), orjson.dumps({"ended": True}))

    async def mark_dead(self, job_id: int, error: str) -> None:
        info = self._jobs.get(job_id)
        if info is not None:
            await self._dead(job_id, info, info.next_action, 0, error)

    # -- resuming and retrying -------------------------------------------------------------------

    async def unfinished_jobs(self, after_id: int, limit: int) -> list[JobRow]:
        return []  # a node's unfinished work comes back to the cluster by itself (ack_wait)

    async def claim_retries(self, limit: int) -> list[JobRow]:
        from nats.errors import TimeoutError as NatsTimeout

        try:
            msgs = await self._retry_sub.fetch(limit, timeout=0.05)
        except (NatsTimeout, TimeoutError):  # nothing to take
            return []
        except Exception as exc:  # noqa: BLE001 - the next poll tries again
            log.debug("journal: cannot fetch retries (%s)", exc)
            return []
        rows = []
        for msg in msgs:
            row = job_from_document(msg.data, state=RETRY)
            self._jobs[row.id] = _Job(
                None, msg, row.rule, row.created_at, row.next_action, row.errors
            )
            rows.append(row)
        return rows

    async def retry_now(self, ids: Sequence[int]) -> list[JobRow]:
        await self.requeue(ids)
        return []  # the nodes take them from the retry queue

    # -- temporal rules (`CorrelationLog`): the node holding the correlator lease ------

    async def load_correlations(self) -> CorrelationSnapshot:
        snapshot = await self.snapshots.read()
        if snapshot is not None:
            return snapshot
        # The cluster's first run of temporal rules: they follow the events
        # from now on (not the stream's retained past, which would open
        # correlations long closed). Saved at once, so that a second node
        # starting the same moment finds this cursor or loses the race.
        info = await self.link.js.stream_info(self.names.events)
        snapshot = CorrelationSnapshot([], [], int(info.state.last_seq))
        await self.save_correlations(snapshot)
        return snapshot

    async def save_correlations(self, snapshot: CorrelationSnapshot) -> None:
        await self.snapshots.write(snapshot, self.link.node)

    async def claim_cancelled(self) -> list[tuple[str, str]]:
        return await self.snapshots.claim_cancelled()

    async def shared_marks(self, names: Sequence[str]) -> tuple[list[float | None], int]:
        # From the bucket, not the outbox (`read_mark`): a mark still queued
        # here vouches for events not published yet.
        values = [await JetStreamAdmin.read_mark(self, name) for name in names]
        info = await self.link.js.stream_info(self.names.events)
        return values, int(info.state.last_seq)

    async def events_after(
        self, cursor: int, limit: int, timeout: float
    ) -> tuple[list[int], list[Event]]:
        from nats.errors import TimeoutError as NatsTimeout

        if self._ordered is None or self._ordered_next != cursor + 1:
            await self._read_from(cursor + 1)
        assert self._ordered is not None
        try:
            msgs = await self._ordered.fetch(limit, timeout=timeout)
        except (NatsTimeout, TimeoutError):  # nothing new
            return [], []
        except Exception as exc:  # noqa: BLE001 - NATS away: start again from the cursor
            self._logs.log(logging.WARNING, "ordered", "correlator: cannot read events (%r)", exc)
            await self._stop_reading()
            await anyio.sleep(0.5)
            return [], []
        seqs: list[int] = []
        events: list[Event] = []
        for msg in msgs:
            seq = msg.metadata.sequence.stream
            # The consumer acknowledges nothing: a fetch cut short skips what
            # it carried. A hole in the sequence is read again from the cursor.
            if seq != self._ordered_next and not (self._ordered_fresh and not seqs):
                await self._stop_reading()
                break
            self._ordered_fresh = False
            self._ordered_next = seq + 1
            try:
                event = event_from_message(msg.data, msg.headers)
            except Exception:  # noqa: BLE001 - not an event (the matchers said so)
                continue
            seqs.append(seq)
            events.append(event)
        return seqs, events

    async def _read_from(self, start: int) -> None:
        from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

        await self._stop_reading()
        config = ConsumerConfig(
            deliver_policy=DeliverPolicy.BY_START_SEQUENCE, opt_start_seq=max(1, start),
            ack_policy=AckPolicy.NONE, inactive_threshold=60.0, mem_storage=True,
            num_replicas=1,
        )  # fmt: skip
        self._ordered = await self.link.js.pull_subscribe(
            self.names.events_subject, durable=None, stream=self.names.events, config=config
        )
        self._ordered_next = start
        # Retention may have removed events after the cursor: the first one
        # the stream still has comes first.
        self._ordered_fresh = True

    async def _stop_reading(self) -> None:
        ordered, self._ordered = self._ordered, None
        if ordered is not None:
            with anyio.CancelScope(shield=True):
                try:
                    await ordered.unsubscribe()
                except Exception as exc:  # noqa: BLE001 - it expires by itself
                    log.debug("correlator: cannot drop the event reader (%s)", exc)

    async def queue_firings(self, firings: Sequence[tuple[int, Event, KeyedJob]]) -> None:
        from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError

        queued = await self.link.bucket("firings")
        now = time.time()
        for seq, event, (rule, key, context) in firings:
            # Queued before, however long ago (a successor making it again
            # from an older save): the `firings` bucket keeps each key for
            # the retention, the stream's duplicate window only minutes.
            try:
                await queued.get(key)
                log.info("correlator: firing %s was queued before; not again", key)
                continue
            except KeyNotFoundError:
                pass
            job = firing_job_id(seq, rule)
            document = dead_letter(
                job, seq, event, rule, 0, 0, 0, None, now, state=RETRY,
                context=orjson.loads(context),
            )  # fmt: skip
            # The job first, then its entry: a crash in between leaves no
            # entry, and the successor's second publish is within the
            # duplicate window (a takeover takes seconds), dropped by its id.
            # The other order would lose the firing to a crash in between.
            await self.link.js.publish(
                self.names.retry_subject(job), document, headers={MSG_ID: f"firing-{key}"}
            )
            entry = orjson.dumps({"job": job, "rule": rule, "node": self.link.node, "at": now})
            # Created already by a node that queued it too: queued once all the same.
            with contextlib.suppress(KeyWrongLastSequenceError):
                await queued.create(key, entry)


@asynccontextmanager
async def open_store(
    engine: EngineConfig,
    *,
    cluster: ClusterConfig | None = None,
    link: NatsLink | None = None,
    **options: Any,
) -> AsyncIterator[JetStreamJournal]:
    """Run the cluster's journal for the block, on `link` or a connection of its own."""
    if link is None:
        if cluster is None:
            raise JournalError("the jetstream journal needs a [cluster] section")
        async with connect(cluster, engine) as own, _running(own, engine) as journal:
            yield journal
        return
    async with _running(link, engine) as journal:
        yield journal


@asynccontextmanager
async def _running(link: NatsLink, engine: EngineConfig) -> AsyncIterator[JetStreamJournal]:
    journal = JetStreamJournal(link, engine)
    async with anyio.create_task_group() as tg:
        await tg.start(journal.run)
        try:
            yield journal
        finally:
            with anyio.CancelScope(shield=True):
                await journal.close()
