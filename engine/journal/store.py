"""The journal's interface: what the engine asks of any store, and its values.

Zoom never redelivers what a client missed, so once an event has been read
it lives only in the journal until its jobs are done. A store keeps:

- events, durable before anyone acts on them, each matched once;
- jobs, one per (event, rule) firing: `pending` until its actions end, then
  `done`, `failed` (a `continue_on_error` action failed) or `dead` (an action
  failed for good: a dead letter); `retry` marks a dead letter re-queued by
  `zoomrules dlq retry`, for the process running jobs to pick up;
- each job's progress (`next_action`), so a resumed job starts at its first
  unfinished action;
- marks: named timestamps the engine keeps across restarts (`read_mark`,
  `write_mark`);
- the engine's state between events (`StateStore`, the single-process
  journal): temporal rules' open correlations and their deadlines, and
  throttle windows, changed by `add_jobs` in the transaction that records
  the jobs of the same events, so that a crash never leaves one without
  the other.

The shape is dramatiq's broker and consumer: the event source appends
(`append`), one consumer takes committed events in order (`take_events`),
records the jobs they fire (`add_jobs`) and, action by action, their outcomes
(`record_outcome`: the ack, or the nack that makes a dead letter). Two
protocols, because two kinds of caller open a journal:

- `JournalStore`: the process that runs jobs (the daemon; `dlq retry` when
  no daemon runs) owns the journal;
- `JournalAdmin`: `zoomrules dlq` and `journal stats` look at it, and
  re-queue or purge dead letters, while a daemon may own it; `replay`
  records the events it handled and its dead letters through it while no
  daemon does.

Backends live in subpackages (`engine.journal.sqlite`) and are chosen by
name (`engine.journal.open_journal`). Each applies `[engine] retention` and
the duplicate window itself.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol, runtime_checkable

import orjson

from engine.timings import Timings

if TYPE_CHECKING:
    from engine.events import Event

__all__ = [
    "CLOSED",
    "CorrelationLog",
    "CorrelationSnapshot",
    "DEAD",
    "DONE",
    "FAILED",
    "JOB_STATES",
    "OPENED",
    "PENDING",
    "RETRY",
    "THROTTLED",
    "ActionOutcome",
    "CorrelationRow",
    "EngineState",
    "Firings",
    "JobRow",
    "JobStart",
    "JournalAdmin",
    "JournalCounters",
    "JournalStore",
    "KeyedJob",
    "StateChange",
    "StateStore",
    "StoreHealth",
    "StoredEvent",
    "ThrottleRow",
    "TimerAdmin",
]

#: States of a job.
PENDING, RETRY, DONE, FAILED, DEAD = "pending", "retry", "done", "failed", "dead"
JOB_STATES = (PENDING, RETRY, DONE, FAILED, DEAD)

#: A job of a temporal rule's firing (engine.correlate): the rule's name,
#: the firing's idempotency key (a digest of the rule, the correlation key
#: and the opening event), and what its actions see under `zoomrules` beside
#: the event's own metadata (a JSON object). A store keeps one job per key:
#: the same firing recorded again is not a second job.
KeyedJob = tuple[str, str, bytes]
#: Matched events and the jobs each fired, in order: (the event's position
#: in the journal, rule names or keyed jobs). A temporal rule's deadline
#: fires on its opening event, matched long before.
Firings = Sequence[tuple[int, Sequence[str | KeyedJob]]]
#: A job to run: its id, and the index of its first action (-1: none, it is done).
JobStart = tuple[int, int]

#: A change to the engine's state between events, recorded by `add_jobs` in
#: the transaction of its jobs. Plain tuples (they travel to a writer process):
#:
#: - `(OPENED, rule, key, definition, form, seq, deadline, gap, held)`: a
#:   correlation opened or changed (the fields of a `CorrelationRow`, but
#:   `held` names its opening event only, `[event time, seq, id]`: the
#:   journal has it, and keeps it while the correlation is open; the other
#:   events of a count's window are whole, as in `CorrelationRow.events`);
#: - `(CLOSED, rule, key)`: it ended (fired, expired, satisfied, dropped);
#: - `(THROTTLED, rule, key, expires_at, hits)`: a throttle window's firings
#:   (a JSON list of epoch seconds; `[]`: the window is empty, forget it).
StateChange = tuple[Any, ...]
OPENED, CLOSED, THROTTLED = "correlation", "closed", "throttle"


class CorrelationRow(NamedTuple):
    """An open correlation of a temporal rule, as a store keeps it."""

    rule: str
    #: The correlation key's value, as JSON text.
    key: str
    #: What the rule meant when it opened (`CompiledCorrelation.definition`).
    definition: str
    #: "absence", "sequence" or "count".
    form: str
    #: The opening event's position in the journal (an absence fires on it).
    seq: int | None
    #: When it falls due (epoch seconds): fires (absence) or expires.
    deadline: float
    #: A connection gap overlapped its window (absence).
    gap: bool
    #: The events it holds, the opening one first, as a JSON list of
    #: `[event time, seq, id, name, received_at, source, body]`.
    events: bytes

    def as_dict(self) -> dict[str, Any]:
        held = orjson.loads(self.events)
        return {
            "rule": self.rule,
            "key": orjson.loads(self.key),
            "form": self.form,
            "deadline": self.deadline,
            "gap": self.gap,
            "opened_at": held[0][0] if held else None,
            "events": [
                {"event_time": at, "seq": seq, "id": event_id, "event": name}
                for at, seq, event_id, name, *_ in held
            ],
        }


class ThrottleRow(NamedTuple):
    """A throttle window as a store keeps it: a rule's firings for one key."""

    rule: str
    key: str
    #: Epoch seconds, oldest first.
    hits: tuple[float, ...]


@dataclass(frozen=True)
class EngineState:
    """What `StateStore.load_state` gives back at start."""

    correlations: list[CorrelationRow]
    throttles: list[ThrottleRow]


class StoredEvent(NamedTuple):
    """A committed event and its place in the journal.

    NamedTuples here and for `ActionOutcome`: one is built per event or
    action on the event loop, where a frozen dataclass's slower
    construction showed.
    """

    seq: int
    event: Event


@dataclass(frozen=True)
class JobRow:
    """A job as stored, with its event."""

    id: int
    event_seq: int
    rule: str
    state: str
    next_action: int
    attempts: int
    errors: int
    last_error: str | None
    created_at: float
    updated_at: float
    event: Event
    #: A temporal rule's firing: what its actions see under `zoomrules`
    #: besides the event's own metadata (`KeyedJob`).
    context: dict[str, Any] | None = None

    def as_dict(self) -> dict[str, Any]:
        extra = {} if self.context is None else {"context": self.context}
        return {
            "id": self.id,
            "rule": self.rule,
            "state": self.state,
            "next_action": self.next_action,
            "attempts": self.attempts,
            "errors": self.errors,
            "last_error": self.last_error,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
            "event_id": self.event.id,
            "event": self.event.name,
            "received_at": self.event.received_at,
            "source": self.event.source,
            **extra,
        }


class ActionOutcome(NamedTuple):
    """What the dispatcher reports after one action of a journaled job."""

    job_id: int
    action: int
    last_action: int
    error: str | None
    attempts: int
    continue_on_error: bool


@dataclass
class JournalCounters:
    """What a store has done since it opened (for stats, metrics and tests)."""

    appended: int = 0
    duplicates: int = 0
    commits: int = 0
    ops: int = 0
    write_errors: int = 0
    #: Batches of new jobs held back one segment to meet their outcomes
    #: (the SQLite store's `_carry`).
    carried: int = 0
    #: Rows removed by retention.
    purged: int = 0
    #: Events read but never made durable: the journal stopped while its
    #: storage refused writes (the daemon then exits with a failure).
    unwritten: int = 0
    #: Jobs that became dead letters (an action failed for good, or the
    #: job could not be run).
    dead_letters: int = 0
    #: How long each write took, from the batch handed to the storage
    #: (SQLite's writer, NATS) to its commit (or the storage's refusal).
    write_seconds: Timings = field(default_factory=Timings)


@dataclass(frozen=True)
class StoreHealth:
    """Whether a store takes writes; if not, why, and what it holds meanwhile."""

    ok: bool
    detail: str


class JournalAdmin(Protocol):
    """Dead letters and statistics, usable while another process runs jobs."""

    async def dead_letters(self, limit: int) -> list[JobRow]:
        """Dead jobs and those re-queued but not picked up yet, oldest first."""
        ...

    async def job(self, job_id: int) -> JobRow | None:
        """One job in any state, with its event."""
        ...

    async def dead_before(self, cutoff: float) -> list[int]:
        """Ids of dead letters that failed before `cutoff` (epoch seconds)."""
        ...

    async def requeue(self, ids: Sequence[int]) -> int:
        """Mark dead letters `ids` for the process running jobs to retry; how many were."""
        ...

    async def purge(self, ids: Sequence[int]) -> int:
        """Delete dead or re-queued jobs `ids`; returns how many were deleted."""
        ...

    async def stats(self) -> dict[str, Any]:
        """Counts of events and of jobs by state, and backend-specific figures.

        Every backend gives `events`, `events_unmatched`, `duplicates_dropped`,
        `oldest_event_at` (or None) and `jobs` (state -> count).
        """
        ...

    def owner(self) -> str | None:
        """Who runs the jobs of this journal right now (e.g. a daemon's pid), or None."""
        ...

    async def seen_recently(self, event_id: str, now: float, window: float) -> bool:
        """Whether an event with this id was stored within `window` before `now`."""
        ...

    async def record_seen(self, event: Event) -> bool:
        """Store an event handled outside the daemon (replay) as already matched;
        False (nothing stored) while another process owns the journal."""
        ...

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
        """Store a job run outside the daemon (replay) that failed for good as
        a dead letter, the way the daemon stores one: a job of `event` in
        state `dead` for `rule`, stopped at action `next_action` (the failed
        one, 0-based) after `attempts` attempts with `error`; `errors` counts
        its earlier `continue_on_error` failures. `zoomrules dlq` then lists,
        shows and retries it. The event is stored as seen first if it is not
        in the journal yet (`record_seen` usually stored it already).

        Returns the job's id; None (nothing stored) while another process
        owns the journal."""
        ...


class JournalStore(JournalAdmin, Protocol):
    """The journal as the process that runs jobs sees it."""

    counters: JournalCounters

    def health(self) -> StoreHealth:
        """Whether writes succeed right now (a full disk makes this false)."""
        ...

    def disk_bytes(self) -> int | None:
        """What the journal takes on this host's disk, in bytes; None where
        it is kept elsewhere (a cluster's streams: NATS reports their size)."""
        ...

    # -- the event sources' side -----------------------------------------------

    async def append(self, event: Event) -> None:
        """Journal `event`: it reaches `take_events` once durable.

        Returns once queued; waits while the store cannot take more (that
        wait is the backpressure that stops reading the socket). An event
        stored within the duplicate window is dropped (counted).
        """
        ...

    async def append_durably(self, event: Event) -> None:
        """`append`, returning only once `event` is durable: committed, or
        dropped as a duplicate of one that is.

        For a source whose answer lets the sender forget the event (a
        webhook's 200: Zoom does not deliver it again). It waits for a
        commit, which `append` does not; a caller bounds the wait (a
        journal that cannot write never returns)."""
        ...

    # -- the consumer's side ----------------------------------------------------

    async def take_events(self, limit: int) -> tuple[list[int], list[Event]]:
        """Committed events not matched yet and not taken before by this
        store, oldest first, at most `limit`: their positions and the
        events (two lists, not a tuple per event: this runs per event).
        Empty when there are none right now."""
        ...

    async def wait_for_events(self) -> None:
        """Return once `take_events` may have more (at once if it may already)."""
        ...

    async def add_jobs(self, firings: Firings, state: Sequence[StateChange] = ()) -> list[JobStart]:
        """Record the jobs of taken events as pending; the events count as
        matched (those that fired nothing too). Returns, in order, each job's
        id and the index of its first action to run now (0; more for a job
        taken over half-done from another node; -1: finished already, do not
        run it: a keyed job recorded before). Their actions' outcomes may be
        recorded at once (the store keeps them in order).

        `state`: changes to the engine's state that matching these events
        made, committed with the jobs or not at all (only a `StateStore`
        takes any)."""
        ...

    def try_record_outcome(
        self,
        job_id: int,
        index: int,
        last_index: int,
        error: str | None,
        attempts: int,
        continue_on_error: bool,
    ) -> bool:
        """`record_outcome` if it can be queued without waiting; False (and
        nothing done) otherwise. The fields of an `ActionOutcome`, passed
        apart: one call per action, no tuple built."""
        ...

    async def record_outcome(
        self,
        job_id: int,
        index: int,
        last_index: int,
        error: str | None,
        attempts: int,
        continue_on_error: bool,
    ) -> None:
        """Record how action `index` of a job ended: the job moves on, ends
        (`done`/`failed`) or becomes a dead letter."""
        ...

    async def mark_dead(self, job_id: int, error: str) -> None:
        """Make a job a dead letter without running it (e.g. its rule is gone)."""
        ...

    # -- resuming and retrying ---------------------------------------------------

    async def unfinished_jobs(self, after_id: int, limit: int) -> list[JobRow]:
        """Jobs an earlier run left pending (and dead letters re-queued while
        nothing ran), with ids above `after_id`, oldest first: the jobs to
        resume at start. Only those that existed when the store opened."""
        ...

    async def claim_retries(self, limit: int) -> list[JobRow]:
        """Dead letters re-queued (`JournalAdmin.requeue`) since, now pending
        for this process to run."""
        ...

    async def retry_now(self, ids: Sequence[int]) -> list[JobRow]:
        """Dead (or re-queued) jobs `ids`, made pending for the caller to run now."""
        ...

    # -- marks ------------------------------------------------------------------

    async def read_mark(self, name: str) -> float | None:
        """The value last written for the mark `name`, or None if it never was.

        Marks are a small map of names to epoch seconds that survives
        restarts, for the engine's own bookkeeping: the event sources keep
        `alive:<source name>` there, the last moment that source was known
        connected (its connection-gap event starts there after a restart).
        A read sees the process's own writes, committed or still queued.
        """
        ...

    async def write_mark(self, name: str, value: float) -> None:
        """Set the mark `name` to `value` (epoch seconds), replacing the old one.

        Returns once queued, without waiting for the commit (it waits only
        while the store cannot take more, as `append` does); the write is
        durable after everything queued before it, so an event appended
        first is never lost while a mark written after it survives. Callers
        throttle their writes (a few per minute per name): a mark is not a
        counter.
        """
        ...


@runtime_checkable
class StateStore(Protocol):
    """A journal that also keeps the engine's state between events: temporal
    rules' open correlations and throttle windows (the SQLite journal).

    Changes arrive with the jobs (`JournalStore.add_jobs(firings, state)`)
    and commit with them. A cluster keeps temporal rules' state its own
    way (`CorrelationLog`: one node matches them, in order) and throttle
    windows in `engine.shared_limits`.
    """

    async def load_state(self) -> EngineState:
        """Every open correlation and throttle window, as last committed."""
        ...

    async def claim_cancelled(self) -> list[tuple[str, str]]:
        """(rule, key) of the correlations `zoomrules timers cancel` marked
        cancelled while this process runs; they are closed (by the caller,
        through `add_jobs`)."""
        ...


@runtime_checkable
class TimerAdmin(Protocol):
    """Open correlations as `zoomrules timers` sees them, beside a daemon."""

    async def correlations(self, rule: str | None, limit: int) -> list[CorrelationRow]:
        """Open correlations (of `rule`, or all), earliest deadline first."""
        ...

    def owner(self) -> str | None:
        """Who runs the jobs of this journal right now (a daemon's pid), or None."""
        ...

    async def cancel_correlations(self, items: Sequence[tuple[str, str]]) -> int:
        """Cancel open correlations (rule, key): at once when no daemon owns
        the journal, else marked for the daemon to close within a second or
        so. Returns how many there were."""
        ...


@dataclass(frozen=True)
class CorrelationSnapshot:
    """A cluster's temporal rule state as one node last saved it."""

    #: Every open correlation, its events whole (`Correlations.rows`).
    rows: list[CorrelationRow]
    #: Gap intervals (start, end) seen, for windows that open later.
    gaps: list[tuple[float, float]]
    #: The position of the last event the state has seen: matching resumes after it.
    cursor: int


@runtime_checkable
class CorrelationLog(Protocol):
    """Temporal rules in a cluster (the JetStream journal): one node at a
    time (a lease) reads every event in order after the saved state's
    cursor, matches temporal rules in memory, queues their firings as jobs
    any node runs, then saves the state with the new cursor. A node that
    takes over loads the last save and reads the events after it again:
    the firings it makes again carry the same idempotency key, and the
    store keeps one job per key."""

    async def load_correlations(self) -> CorrelationSnapshot:
        """The last saved state; this node's later saves must follow it
        (else `CorrelationsTakenOver`)."""
        ...

    async def events_after(
        self, cursor: int, limit: int, timeout: float
    ) -> tuple[list[int], list[Event]]:
        """Events after position `cursor`, in order, at most `limit`; waits
        up to `timeout` seconds for one when there are none."""
        ...

    async def queue_firings(self, firings: Sequence[tuple[int, Event, KeyedJob]]) -> None:
        """Jobs of temporal rules' firings (the position of the event each
        fires on, the event, the keyed job) for any node to run; a key
        queued before is not queued again."""
        ...

    async def save_correlations(self, snapshot: CorrelationSnapshot) -> None:
        """Replace the saved state; `CorrelationsTakenOver` if another node
        saved since this one loaded or saved."""
        ...

    async def claim_cancelled(self) -> list[tuple[str, str]]:
        """(rule, key) of the correlations `zoomrules timers cancel` asked
        to close since the last call."""
        ...

    async def shared_marks(self, names: Sequence[str]) -> tuple[list[float | None], int]:
        """The marks `names` as every node sees them (not this node's own
        still unpublished ones), and then the position of the stream's last
        event: once read up to there, every event published before those
        marks has been seen (a mark is published after the events queued
        before it)."""
        ...
