"""Feeding the pipeline from the journal: listener -> journal -> consumer -> dispatcher.

The listener only appends to the journal (fast, bounded), so a slow action
target never stops the WebSocket from being read: events wait on disk, not
in memory. One consumer task takes committed events in order (from a small
in-memory window, or read back from disk when it fell behind), matches
them, records their jobs as pending and then submits them to the
dispatcher, whose concurrency bound is what makes the consumer wait.

On start, jobs left pending by a previous run are resumed first (each
starting at its first unfinished action), then events journaled but never
matched. Jobs re-queued by `zoomrules dlq retry` are picked up by polling.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Sequence

import anyio
from anyio.abc import TaskStatus

from engine.dispatch import Job
from engine.errors import ActionFailed
from engine.events import Event
from engine.journal import PENDING, RETRY, JobRow, Journal, JournalDB, StoredEvent
from engine.pipeline import Pipeline
from engine.ruleset import CompiledRule

log = logging.getLogger("zoomrules.journal")


class JournalFeed:
    def __init__(
        self,
        journal: Journal,
        pipeline: Pipeline,
        *,
        batch: int = 256,
        retry_poll: float = 1.0,
        retention_every: float | None = None,
    ) -> None:
        self.journal = journal
        self.pipeline = pipeline
        self.batch = batch
        self.retry_poll = retry_poll
        retention = journal.config.retention
        self.retention_every = retention_every or min(max(retention / 10, 1.0), 3600.0)
        self.resumed = 0
        self.retried = 0
        self.purged = 0
        self._last_seq = 0
        self._waiting = False
        self._went_waiting = anyio.Event()
        #: The listener's callback: journal the event (never waits for
        #: actions). The journal's own method: no coroutine of ours around it.
        self.accept: Callable[[Event], Awaitable[None]] = journal.append

    # -- the three ends: listener, dispatcher, lifecycle ----------------------

    async def observer(
        self, job: Job, index: int, error: ActionFailed | None, attempts: int
    ) -> None:
        """The dispatcher's callback after each action: record progress."""
        if job.id is None:
            return
        actions = job.rule.actions
        continue_on_error = actions[index].spec.continue_on_error
        if error is not None and not continue_on_error:
            log.error(
                "job %d (rule %r, event %s) is a dead letter: see `zoomrules dlq show %d`",
                job.id, job.rule.name, job.event.id, job.id,
                extra={"rule": job.rule.name, "event_id": job.event.id, "job_id": job.id},
            )  # fmt: skip
        # The fields of an ActionOutcome, without building one per action;
        # waits (record_outcome) only when the journal's queue is full.
        fields = (
            job.id,
            index,
            len(actions) - 1,
            None if error is None else str(error),
            attempts,
            continue_on_error,
        )
        if not self.journal.try_record_outcome(*fields):
            await self.journal.record_outcome(*fields)

    async def run(self, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Resume, then consume forever (until cancelled), with retention and retry polling."""
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._retention_loop)
            task_status.started()
            await self._resume()
            tg.start_soon(self._retry_loop)
            await self._consume()

    async def wait_drained(self) -> None:
        """Wait until every journaled event is matched and no job is running."""
        dispatcher = self.pipeline.dispatcher
        while True:
            await dispatcher.wait_idle()
            if self._waiting and not dispatcher.in_flight:
                return
            await self._went_waiting.wait()

    # -- consuming ----------------------------------------------------------

    async def _consume(self) -> None:
        async with anyio.create_task_group() as tg:
            ahead: _ReadAhead | None = None
            while True:
                signal = self.journal.changed
                seqs, events = self.journal.take_hot(self._last_seq, self.batch)
                if not seqs:
                    if ahead is not None and ahead.after == self._last_seq:
                        batch = await ahead.result()
                    else:
                        batch = await self.journal.unmatched(self._last_seq, self.batch)
                    ahead = None
                    if len(batch) == self.batch:
                        # Behind on disk: read the next batch while this one is
                        # matched and dispatched, so the dispatcher never waits
                        # for the read.
                        ahead = _ReadAhead(self.journal, batch[-1].seq, self.batch)
                        tg.start_soon(ahead.run)
                    seqs = [stored.seq for stored in batch]
                    events = [stored.event for stored in batch]
                if not seqs:
                    await self._idle_until(signal)
                    continue
                self._last_seq = seqs[-1]
                await self._process(seqs, events)

    async def _idle_until(self, signal: anyio.Event) -> None:
        self._waiting = True
        went, self._went_waiting = self._went_waiting, anyio.Event()
        went.set()
        try:
            await signal.wait()
        finally:
            self._waiting = False

    async def _process(self, seqs: Sequence[int], events: Sequence[Event]) -> None:
        """Match committed events (`seqs[i]` is the seq of `events[i]`) and start their jobs."""
        select = self.pipeline.select
        fired = [select(event) for event in events]
        # The events are durable already; the jobs' pending rows are queued
        # ahead of anything their actions record (see Journal.queue_jobs), so
        # the jobs need not wait for that commit.
        ids = iter(
            await self.journal.queue_jobs(
                [
                    (seq, [rule.name for rule in rules])
                    for seq, rules in zip(seqs, fired, strict=True)
                ]
            )
        )
        submit = self.pipeline.dispatcher.submit
        for event, rules in zip(events, fired, strict=True):
            for rule in rules:
                await submit(Job(event, rule, id=next(ids)))

    # -- resuming and retrying ---------------------------------------------------

    async def _resume(self) -> None:
        """Run the jobs an earlier run left unfinished (at-least-once)."""
        now = time.time()
        max_id: int = await self.journal.call(lambda db: _requeue_retries(db, now))
        after = 0
        while True:
            rows: list[JobRow] = await self.journal.call(
                lambda db, after=after: db.jobs(
                    [PENDING], after_id=after, max_id=max_id, limit=self.batch
                )
            )
            if not rows:
                break
            after = rows[-1].id
            self.resumed += await self.run_rows(rows)
        if self.resumed:
            log.info("resumed %d unfinished job(s) from the journal", self.resumed)

    async def _retry_loop(self) -> None:
        while True:
            await anyio.sleep(self.retry_poll)
            now = time.time()
            rows: list[JobRow] = await self.journal.call(
                lambda db, now=now: db.claim_retries(now, self.batch)
            )
            if rows:
                log.info("dlq retry: running %d re-queued job(s)", len(rows))
                self.retried += await self.run_rows(rows)

    async def run_rows(self, rows: Sequence[JobRow]) -> int:
        """Submit stored jobs with the current rules; returns how many were submitted."""
        rules = {rule.name: rule for rule in self.pipeline.rules.rules}
        submitted = 0
        for row in rows:
            rule = rules.get(row.rule)
            problem = _unrunnable(row, rule)
            if problem is not None:
                log.error("job %d: %s", row.id, problem)
                await self.journal.mark_dead(row.id, problem)
                continue
            assert rule is not None
            await self.pipeline.dispatcher.submit(
                Job(row.event, rule, start_at=row.next_action, id=row.id)
            )
            submitted += 1
        return submitted

    # -- retention ------------------------------------------------------------------

    async def _retention_loop(self) -> None:
        config = self.journal.config
        while True:
            while True:
                now = time.time()
                deleted: int = await self.journal.call(
                    lambda db, now=now: db.purge_expired(now, config.retention, config.dedup_window)
                )
                self.purged += deleted
                if not deleted:
                    break
            await anyio.sleep(self.retention_every)


class _ReadAhead:
    """One read of committed, unmatched events, started before it is needed.

    Its result is only used if the consumer continues exactly where the read
    started (`after`); being a snapshot of committed events in seq order, it
    is then what reading at that moment would have given, or a prefix of it.
    """

    def __init__(self, journal: Journal, after: int, limit: int) -> None:
        self.after = after
        self._journal = journal
        self._limit = limit
        self._done = anyio.Event()
        self._batch: list[StoredEvent] = []
        self._error: BaseException | None = None

    async def run(self) -> None:
        try:
            self._batch = await self._journal.unmatched(self.after, self._limit)
        except Exception as exc:  # noqa: BLE001 - raised where the result is used
            self._error = exc
        finally:
            self._done.set()

    async def result(self) -> list[StoredEvent]:
        await self._done.wait()
        if self._error is not None:
            raise self._error
        return self._batch


def _requeue_retries(db: JournalDB, now: float) -> int:
    """Jobs re-queued while no daemon ran become plain pending; returns the max job id."""
    db.conn.execute(
        "UPDATE jobs SET state = ?, updated_at = ? WHERE state = ?", (PENDING, now, RETRY)
    )
    return db.max_job_id()


def _unrunnable(row: JobRow, rule: CompiledRule | None) -> str | None:
    if rule is None:
        return (
            f"rule {row.rule!r} is no longer in the loaded rules; add it back and run "
            f"`zoomrules dlq retry {row.id}`, or `zoomrules dlq purge {row.id}`"
        )
    if row.next_action >= len(rule.actions):
        return (
            f"rule {row.rule!r} now has {len(rule.actions)} action(s) but the job stopped at "
            f"action {row.next_action + 1}; the rule changed since"
        )
    return None
