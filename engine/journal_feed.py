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

Temporal rules (engine.correlate) and throttle windows keep their state in
a journal that can (`StateStore`): what matching a batch changed is recorded
with the batch's jobs (`add_jobs(firings, state)`), deadlines fall between
batches (`_fall_due`), and the state comes back at start (`_load_state`).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Iterable, Sequence
from typing import Any

import anyio
import orjson
from anyio.abc import TaskStatus

from engine.correlate import Correlations, Firing, StreamWatch
from engine.dispatch import Job
from engine.errors import ActionFailed
from engine.events import Event
from engine.journal.store import THROTTLED, JobRow, JournalStore, StateChange, StateStore
from engine.loader import LoadedRules
from engine.pipeline import Pipeline
from engine.ruleset import CompiledRule
from engine.timers import Clock, WallClock

log = logging.getLogger("zoomrules.journal")


class JournalFeed:
    def __init__(
        self,
        journal: JournalStore,
        pipeline: Pipeline,
        *,
        batch: int = 256,
        retry_poll: float = 1.0,
        clock: Clock | None = None,
        hold_absences: bool = False,
    ) -> None:
        """`hold_absences`: absences wait for `watch_sources` (the daemon's
        sources) to say whether a connection gap overlapped their window."""
        self.journal = journal
        self.pipeline = pipeline
        self.batch = batch
        self.retry_poll = retry_poll
        self.resumed = 0
        self.retried = 0
        self._waiting = False
        self._went_waiting = anyio.Event()
        self.clock: Clock = clock or WallClock()
        #: Where temporal rules and throttle windows keep their state (None:
        #: a journal that keeps none: the cluster's, whose temporal rules
        #: run in engine.correlator and throttles in engine.shared_limits).
        self.state: StateStore | None = journal if isinstance(journal, StateStore) else None
        self.correlations = Correlations(
            pipeline.rules.rules, clock=self.clock, watch_required=hold_absences
        )
        #: The rules `correlations` follows (the pipeline's change on reload).
        self._rules: LoadedRules = pipeline.rules
        #: Held while matching changes state and the change is queued: the
        #: journal gets state changes in the order they were made.
        self._recording = anyio.Lock()
        #: Set to wake an idle feed (a watch attached, a cancellation).
        self._nudge = anyio.Event()

    def watch_sources(self, watch: StreamWatch) -> None:
        """The daemon's sources: absences ask them about gaps (`StreamWatch`)."""
        self.correlations.watch = watch
        self._nudge.set()

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
            await self._load_state()
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
                await self._fall_due(self.clock.now())
                await self._idle()
                continue
            await self._process(seqs, events)
            # Behind (a full batch): deadlines fall in step with the events
            # received before them, which may cancel them.
            caught_up = len(seqs) < self.batch
            await self._fall_due(self.clock.now() if caught_up else events[-1].received_at)

    async def _idle(self) -> None:
        self._waiting = True
        went, self._went_waiting = self._went_waiting, anyio.Event()
        went.set()
        try:
            due = self.correlations.next_deadline()
            if due is None:
                await self.journal.wait_for_events()
            else:
                await self._wait_events_or(due)
        finally:
            self._waiting = False

    async def _wait_events_or(self, due: float) -> None:
        """Until events come, the clock reaches `due`, or the feed is nudged."""
        async with anyio.create_task_group() as tg:

            async def until(waiting: Awaitable[object]) -> None:
                await waiting
                tg.cancel_scope.cancel()

            if self._nudge.is_set():
                self._nudge = anyio.Event()
            tg.start_soon(until, self.journal.wait_for_events())
            tg.start_soon(until, self.clock.sleep_until(due))
            tg.start_soon(until, self._nudge.wait())

    async def _process(self, seqs: Sequence[int], events: Sequence[Event]) -> None:
        """Match committed events (`seqs[i]` is the position of `events[i]`) and start their jobs."""
        self._follow_reloads()
        # `choose` lets the event loop run between (and within) events when
        # matching takes long: heartbeats and socket reads go on.
        choose = self.pipeline.choose
        fired = [await choose(event) for event in events]
        if self.state is None and self.correlations.active:
            # A cluster's temporal rules are matched by one node, in order
            # (engine.correlator), not by whichever node takes the event.
            fired = [[rule for rule in rules if rule.correlation is None] for rules in fired]
        if self.state is None or not (self.correlations.active or self.pipeline.rules.throttles):
            # Nothing to keep between events: jobs by rule name.
            firings = [
                (seq, [rule.name for rule in rules]) for seq, rules in zip(seqs, fired, strict=True)
            ]
            jobs = (
                (event, rule, None)
                for event, rules in zip(events, fired, strict=True)
                for rule in rules
            )
            await self._submit(jobs, firings, ())
            return
        async with self._recording:
            observe = self.correlations.observe
            matched = [
                (seq, observe(event, seq, rules)) for seq, event, rules in zip(
                    seqs, events, fired, strict=True
                )
            ]  # fmt: skip
            await self._record(matched)

    async def _record(self, matched: Sequence[tuple[int, Sequence[Firing]]]) -> None:
        """Record firings (each with its event's position) and the state
        changes made so far, together; then start the firings' jobs."""
        state = self.correlations.take_changes()
        state.extend(self._throttle_changes())
        if not matched and not state:
            return
        firings = [
            (seq, [_stored(firing) for firing in fired]) for seq, fired in matched
        ]  # fmt: skip
        jobs = (
            (firing.event, firing.rule, firing.context) for _, fired in matched for firing in fired
        )
        await self._submit(jobs, firings, state)

    async def _submit(
        self,
        jobs: Iterable[tuple[Event, CompiledRule, dict[str, Any] | None]],
        firings: Sequence[tuple[int, Sequence[Any]]],
        state: Sequence[StateChange],
    ) -> None:
        """`add_jobs`, then start each job: `jobs` are (event, rule, context)
        in the order of `firings`."""
        # The events are durable already; the store keeps the jobs' pending
        # rows ahead of anything their actions record, so the jobs need not
        # wait for that commit.
        starts = iter(await self.journal.add_jobs(firings, state))
        submit = self.pipeline.dispatcher.submit
        for event, rule, context in jobs:
            job_id, start = next(starts)
            if start == 0:
                await submit(Job(event, rule, id=job_id, context=context))
            elif 0 < start < len(rule.actions):
                # Taken over half-done: its first actions succeeded elsewhere.
                await submit(Job(event, rule, start_at=start, id=job_id, context=context))

    # -- state between events: temporal rules, throttle windows ---------------------

    async def _load_state(self) -> None:
        """What the journal kept: open correlations and throttle windows."""
        if self.state is None:
            return
        kept = await self.state.load_state()
        throttles = self.pipeline.rules.throttles
        for rule, key, hits in kept.throttles:
            throttle = throttles.get(rule)
            if throttle is not None:
                throttle.restore(key, hits)
        for throttle in throttles.values():
            throttle.changed = set()
        if kept.correlations or self.correlations.active:
            self.correlations.restore(kept.correlations)
            async with self._recording:
                await self._record([])

    def _follow_reloads(self) -> None:
        """After a reload: correlations of rules whose definition changed go
        (said in the log); throttle windows of new rules are kept too."""
        rules = self.pipeline.rules
        if rules is self._rules:
            return
        self._rules = rules
        self.correlations.replace_rules(rules.rules)
        if self.state is not None:
            for throttle in rules.throttles.values():
                if throttle.changed is None:
                    throttle.changed = set()

    def _throttle_changes(self) -> list[StateChange]:
        changes: list[StateChange] = []
        for name, throttle in self.pipeline.rules.throttles.items():
            for key, empties_at, hits in throttle.changed_windows():
                changes.append((THROTTLED, name, key, empties_at, orjson.dumps(hits)))
        return changes

    async def _fall_due(self, now: float) -> None:
        """Fire the deadlines up to `now` (absences), forget what expired."""
        correlations = self.correlations
        if self.state is None or not correlations.active:
            return
        due = correlations.next_deadline()
        if due is None or due > now:
            return
        async with self._recording:
            self._follow_reloads()
            # An absence fires on its opening event, journaled (hence a seq).
            await self._record([(_journaled(firing), [firing]) for firing in correlations.due(now)])

    async def _tend_state(self) -> None:
        """Between batches (every `retry_poll`): apply a reload to open
        correlations (and say what it dropped) even while no event comes,
        and close those `zoomrules timers cancel` marked."""
        if self.state is None:
            return
        requested = await self.state.claim_cancelled()
        if not requested and self.pipeline.rules is self._rules:
            return
        async with self._recording:
            self._follow_reloads()
            for rule, key in requested:
                self.correlations.cancel(rule, key)
            await self._record([])

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
            await self._tend_state()

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
                Job(row.event, rule, start_at=row.next_action, id=row.id, context=row.context)
            )
            submitted += 1
        return submitted


def _journaled(firing: Firing) -> int:
    assert firing.seq is not None, "a firing on an event the journal does not hold"
    return firing.seq


def _stored(firing: Firing) -> str | tuple[str, str, bytes]:
    """How the journal records a firing's job: the rule's name, or a keyed job."""
    if firing.context is None or firing.key is None:
        return firing.rule.name
    return (firing.rule.name, firing.key, orjson.dumps(firing.context))


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
