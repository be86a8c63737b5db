"""Temporal rules in a cluster: one node at a time matches them, in order.

The single-process daemon keeps open correlations in memory and records
their changes with the jobs of the events that made them. A cluster's
events are matched by whichever node takes them, in no particular order,
so temporal rules are not matched there (the journal feed leaves them out):
the node holding the `correlator` lease (`engine.leases`, fenced as a
subscription's is) does it here, alone:

1. it loads the last snapshot (`CorrelationLog.load_correlations`): the
   open correlations, and the cursor, the last event they have seen;
2. it reads every event after the cursor, in the stream's order, and
   matches the temporal rules against it (`engine.correlate`); deadlines
   fall by the clock between batches, and in step with the events'
   arrival while it catches up;
3. it queues each firing as a job any node runs (the retry work queue),
   keyed by the firing's `zoomrules.correlation_id`, and then saves the
   snapshot with the new cursor, compare-and-set against its own last save.

Gaps: the node learns of them from the `zoomrules.connection_gap` events
it reads, which are in the stream only once the connection is back. So an
absence waits until it is known that no subscription missed anything in
its window (`SharedWatch`: the `up:`/`alive:` marks the subscriptions'
holders share), as in the single daemon; a gap event read meanwhile marks it.

A node that takes the lease over after a crash loads the last save and
reads the events after its cursor again: it makes the same firings again,
and the store drops the ones queued already (same key), so a crash loses
no firing and doubles none. Deadlines that passed while no node held the
lease fire when one takes it, `late_by` saying how late. A node whose
lease was taken over is refused its next save (`CorrelationsTakenOver`)
and goes back to standing by.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence

import anyio
import orjson

from engine.config import Config
from engine.correlate import Correlations, Firing
from engine.errors import CorrelationsTakenOver
from engine.events import Event
from engine.journal.store import CorrelationLog, CorrelationSnapshot, KeyedJob
from engine.leases import Lease
from engine.loader import LoadedRules
from engine.sources.gaps import LIVE_EVERY, LIVE_PREFIX, MARK_PREFIX
from engine.timers import Clock, WallClock

log = logging.getLogger("zoomrules.correlator")

#: How long a read waits for events when no deadline is nearer (seconds).
POLL = 1.0
#: Cancel requests (`zoomrules timers cancel`) are looked for this often.
CANCEL_LOOK = 1.0
#: A snapshot whose only change is the cursor is saved at most this often:
#: what a successor reads again after a crash, at most.
CURSOR_SAVE = 5.0
#: Changed state without firings is saved at most this often (firings are
#: saved at once: their keys must still be deduplicated when read again).
STATE_SAVE = 0.5
#: After a failure (NATS away), how long before standing by again.
PAUSE = 1.0
#: The subscriptions' shared marks are read this often (`SharedWatch`).
MARKS_LOOK = 1.0
#: Added to `gap_threshold` before a mark's age alone says "a gap": the
#: holder writes it every LIVE_EVERY, it is read every MARKS_LOOK, and
#: publishing it takes a moment.
_MARK_SLACK = LIVE_EVERY + MARKS_LOOK + 1.0


class SharedWatch:
    """The sources' view (`engine.correlate.StreamWatch`) in a cluster: what
    the holders of the Zoom subscriptions share in the marks bucket.

    A subscription is complete until the later of its `up:` mark (it was
    connected then, every event received before handed to the journal) and
    its `alive:` mark; the cluster is, until the earliest of them. A value
    counts only once the events published before it have been read (`seen`):
    a gap's event is published before the marks move past its start, so an
    absence whose window a gap overlapped is marked by then. Gaps themselves
    come from the stream's gap events (`gaps_since` has none to add).
    """

    def __init__(self) -> None:
        self.threshold: float | None = None
        self._names: tuple[str, ...] = ()
        #: Complete until (epoch seconds; None: not known yet).
        self._until: float | None = None
        #: Read, not yet counted: (complete until, position to read up to).
        self._pending: tuple[float | None, int] | None = None

    def configure(self, config: Config) -> None:
        zoom = config.zoom
        subs = zoom.subscriptions if zoom is not None else ()
        self._names = tuple(f"zoom:{sub.name}" for sub in subs)
        gap = zoom.gap_threshold if zoom is not None else None
        self.threshold = None if gap is None else gap + _MARK_SLACK

    async def refresh(self, store: CorrelationLog) -> None:
        if not self._names:
            return
        names = [prefix + name for name in self._names for prefix in (LIVE_PREFIX, MARK_PREFIX)]
        values, position = await store.shared_marks(names)
        each = []
        for index in range(0, len(values), 2):
            known = [value for value in values[index : index + 2] if value is not None]
            each.append(max(known) if known else None)
        # One never connected yet (no mark): nothing is known.
        until = None if None in each else min(value for value in each if value is not None)
        self._pending = (until, position)

    def seen(self, cursor: int) -> None:
        """The events up to position `cursor` have been read."""
        pending = self._pending
        if pending is not None and cursor >= pending[1]:
            self._until, self._pending = pending[0], None

    def complete_until(self) -> float | None:
        now = time.time()
        if not self._names or self.threshold is None:
            return now  # no subscription, or gaps never reported: nothing to wait for
        return None if self._until is None else min(self._until, now)

    def gaps_since(self, after: float) -> list[tuple[float, float]]:
        return []


class Correlator:
    """Runs the cluster's temporal rules while this node holds `lease`."""

    def __init__(
        self,
        store: CorrelationLog,
        lease: Lease,
        rules: Callable[[], LoadedRules],
        *,
        batch: int = 256,
        clock: Clock | None = None,
    ) -> None:
        self.store = store
        self.lease = lease
        self.rules = rules
        self.batch = batch
        self.clock: Clock = clock or WallClock()
        #: What the subscriptions' holders share, for absences.
        self.watch = SharedWatch()
        #: The correlations while this node runs them (None: standing by).
        self.correlations: Correlations | None = None
        #: Takeovers of the lease by this node (for its log and tests).
        self.takeovers = 0

    async def run(self) -> None:
        """Stand by, run the temporal rules while holding the lease; forever."""
        while True:
            await self.lease.acquire()
            self.takeovers += 1
            log.info("correlator: this node runs the cluster's temporal rules")
            try:
                async with anyio.create_task_group() as tg:
                    tg.start_soon(self._keep, tg.cancel_scope)
                    await self._serve()
            except CorrelationsTakenOver as exc:
                log.warning("correlator: %s; standing by", exc)
            except Exception as exc:  # noqa: BLE001 - NATS away: stand by, try again
                log.error("correlator: stopped (%r); standing by", exc)
                await anyio.sleep(PAUSE)
            finally:
                self.correlations = None
                # Shielded inside: a clean stop hands the lease over at once.
                await self.lease.release()

    async def _keep(self, scope: anyio.CancelScope) -> None:
        why = await self.lease.keep()
        log.warning("correlator: lease lost (%s); standing by", why)
        scope.cancel()

    async def _serve(self) -> None:
        store, clock = self.store, self.clock
        snapshot = await store.load_correlations()
        loaded = self.rules()
        watch = self.watch = SharedWatch()
        watch.configure(loaded.config)
        correlations = Correlations(loaded.rules, clock=clock, watch=watch)
        correlations.restore(snapshot.rows)
        for start, end in snapshot.gaps:
            correlations.note_gap(start, end)
        self.correlations = correlations
        cursor = saved_cursor = snapshot.cursor
        dirty = bool(correlations.take_changes())
        last_save = last_cancel = time.monotonic()
        last_marks = -math.inf
        log.info(
            "correlator: %d open correlation(s), resuming after event %d",
            len(correlations), cursor,
        )  # fmt: skip
        while True:
            current = self.rules()
            if current is not loaded:
                loaded = current
                correlations.replace_rules(loaded.rules)
                watch.configure(loaded.config)
            if time.monotonic() - last_marks >= MARKS_LOOK:
                # Before reading events: what the marks vouch for counts
                # once the events published before them have been read.
                last_marks = time.monotonic()
                await watch.refresh(store)
                watch.seen(cursor)
            due = correlations.next_deadline()
            wait = POLL if due is None else min(POLL, max(0.01, due - clock.now()))
            seqs, events = await store.events_after(cursor, self.batch, wait)
            fired: list[Firing] = []
            if seqs:
                # What fell due before these events arrived falls first.
                fired += correlations.due(min(clock.now(), events[0].received_at))
                fired += self._match(loaded, correlations, seqs, events)
                cursor = seqs[-1]
                watch.seen(cursor)
                # Behind (a full batch): deadlines fall in step with arrivals.
                caught_up = len(seqs) < self.batch
                fired += correlations.due(clock.now() if caught_up else events[-1].received_at)
            else:
                fired += correlations.due(clock.now())
            if time.monotonic() - last_cancel >= CANCEL_LOOK:
                last_cancel = time.monotonic()
                for rule, key in await store.claim_cancelled():
                    correlations.cancel(rule, key)
            dirty = bool(correlations.take_changes()) or dirty
            since = time.monotonic() - last_save
            if not (
                fired
                or (dirty and since >= STATE_SAVE)
                or (cursor != saved_cursor and since >= CURSOR_SAVE)
            ):
                continue
            # Queued before the save that closes them: a crash in between
            # makes them again from the older save, with the same keys.
            await store.queue_firings([_keyed(firing) for firing in fired])
            await store.save_correlations(
                CorrelationSnapshot(correlations.rows(), correlations.gaps, cursor)
            )
            saved_cursor, dirty, last_save = cursor, False, time.monotonic()

    @staticmethod
    def _match(
        loaded: LoadedRules,
        correlations: Correlations,
        seqs: Sequence[int],
        events: Sequence[Event],
    ) -> list[Firing]:
        matcher = loaded.matcher
        fired: list[Firing] = []
        for seq, event in zip(seqs, events, strict=True):
            # Ordinary rules are the other nodes' work: match only where a
            # temporal rule may open (the whole matcher: `stop` still applies).
            if any(rule.correlation is not None for rule in matcher.candidates(event.name)):
                opening = [r for r in matcher.match_event(event) if r.correlation is not None]
            else:
                opening = []
            fired += correlations.observe(event, seq, opening)
        return fired


def _keyed(firing: Firing) -> tuple[int, Event, KeyedJob]:
    assert firing.seq is not None and firing.key is not None and firing.context is not None
    return firing.seq, firing.event, (firing.rule.name, firing.key, orjson.dumps(firing.context))
