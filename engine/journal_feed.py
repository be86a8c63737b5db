"""Feeding the pipeline from the journal: source -> journal -> consumer -> dispatcher.

The event sources only append to the journal (fast, bounded), so a slow
action target never stops the WebSocket from being read: events wait in
the journal, not in memory. One consumer task takes committed events in
order, matches them, records their jobs and then submits them to the
dispatcher, whose concurrency bound is what makes the consumer wait.

On start, jobs left unfinished by a previous run are resumed first (each
starting at its first unfinished action), then events journaled but never
matched. Dead letters re-queued by `zoomrules dlq retry` are picked up by
polling.

Only the `engine.journal.JournalStore` interface is used: any backend will do.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import anyio
from anyio.abc import TaskStatus

from engine.dispatch import Job
from engine.errors import ActionFailed
from engine.events import Event
from engine.journal.store import JobRow, JournalStore
from engine.pipeline import Pipeline
from engine.ruleset import CompiledRule

log = logging.getLogger("zoomrules.journal")


class JournalFeed:
    def __init__(
        self,
        journal: JournalStore,
        pipeline: Pipeline,
        *,
        batch: int = 256,
        retry_poll: float = 1.0,
    ) -> None:
        self.journal = journal
        self.pipeline = pipeline
        self.batch = batch
        self.retry_poll = retry_poll
        self.resumed = 0
        self.retried = 0
        self._waiting = False
        self._went_waiting = anyio.Event()

    # -- the two ends: dispatcher, lifecycle ------------------------------------

    async def observer(
        self, job: Job, index: int, error: ActionFailed | None, attempts: int
    ) -> None:
        """The dispatcher's callback after each action: record progress."""
        if job.id is None:
            return
        actions = job.rule.actions
        continue_on_error = actions[index].spec.continue_on_error
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
        """Resume, then consume forever (until cancelled), polling for retries."""
        async with anyio.create_task_group() as tg:
            # Compiles the matcher's plans off the event loop (see Pipeline.choose).
            await tg.start(self.pipeline.compile_plans)
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
        journal = self.journal
        while True:
            seqs, events = await journal.take_events(self.batch)
            if not seqs:
                await self._idle()
                continue
            await self._process(seqs, events)

    async def _idle(self) -> None:
        self._waiting = True
        went, self._went_waiting = self._went_waiting, anyio.Event()
        went.set()
        try:
            await self.journal.wait_for_events()
        finally:
            self._waiting = False

    async def _process(self, seqs: Sequence[int], events: Sequence[Event]) -> None:
        """Match committed events (`seqs[i]` is the position of `events[i]`) and start their jobs."""
        # `choose` lets the event loop run between (and within) events when
        # matching takes long: heartbeats and socket reads go on.
        choose = self.pipeline.choose
        fired = [await choose(event) for event in events]
        # The events are durable already; the store keeps the jobs' pending
        # rows ahead of anything their actions record, so the jobs need not
        # wait for that commit.
        starts = iter(
            await self.journal.add_jobs(
                [
                    (seq, [rule.name for rule in rules])
                    for seq, rules in zip(seqs, fired, strict=True)
                ]
            )
        )
        submit = self.pipeline.dispatcher.submit
        for event, rules in zip(events, fired, strict=True):
            for rule in rules:
                job_id, start = next(starts)
                if start == 0:
                    await submit(Job(event, rule, id=job_id))
                elif 0 < start < len(rule.actions):
                    # Taken over half-done: its first actions succeeded elsewhere.
                    await submit(Job(event, rule, start_at=start, id=job_id))

    # -- resuming and retrying ---------------------------------------------------

    async def _resume(self) -> None:
        """Run the jobs an earlier run left unfinished (at-least-once)."""
        after = 0
        while rows := await self.journal.unfinished_jobs(after, self.batch):
            after = rows[-1].id
            self.resumed += await self.run_rows(rows)
        if self.resumed:
            log.info("resumed %d unfinished job(s) from the journal", self.resumed)

    async def _retry_loop(self) -> None:
        while True:
            await anyio.sleep(self.retry_poll)
            rows = await self.journal.claim_retries(self.batch)
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
