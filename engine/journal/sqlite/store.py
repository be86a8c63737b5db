"""The SQLite journal as the daemon uses it: async, group-committed, off the GIL.

`SqliteJournal` implements `engine.journal.store.JournalStore` on one
database in `[engine] state_dir` (WAL). Appends, new jobs and action
outcomes are queued in memory (a list append each) and committed in
batches by one writer: a process of its own (`engine.journal.sqlite.writer`)
or, when that cannot run, a thread of the daemon. Committed events are
handed to the consumer from a bounded in-memory window, or read back from
disk through a second, read-only connection when it fell behind.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from functools import partial
from typing import Any, Literal

import anyio
from anyio.abc import TaskGroup, TaskStatus

from engine.config import EngineConfig
from engine.errors import JournalBusy, JournalError, JournalWriterLost
from engine.events import Event
from engine.journal.sqlite.batches import (
    OP_CALL,
    SegmentAnswer,
    apply_batch,
    apply_segment,
    storage_failure,
)
from engine.journal.sqlite.db import JournalDB
from engine.journal.sqlite.files import ensure_state_dir, exclusive_lock, lock_holder
from engine.journal.sqlite.rows import EventRow, JobsRow, OutcomeRow, event_row, stored_events
from engine.journal.sqlite.writer import WriterProcess
from engine.journal.store import (
    DEAD,
    PENDING,
    RETRY,
    EngineState,
    Firings,
    JobRow,
    JobStart,
    JournalCounters,
    StateChange,
    StoredEvent,
    StoreHealth,
)
from engine.logs import LogLimiter, shorten
from engine.retry import Backoff

log = logging.getLogger("zoomrules.journal")

#: How long a stopping journal waits for its writer process's last answers.
_WRITER_STOP_TIMEOUT = 30.0
#: How long a stopping journal keeps trying to write what it holds while the
#: storage refuses writes, before it gives up on it (and says how much).
_OUTAGE_STOP_TIMEOUT = 10.0
#: While the storage refuses writes: the first retry soon, then at most
#: this often; and how often the outage is logged again meanwhile.
_RETRY_FIRST, _RETRY_CAP = 0.2, 5.0
_OUTAGE_REPORT_EVERY = 60.0


@dataclass(slots=True)
class _Op:
    """A call (`OP_CALL`: a function of the database) queued for the writer."""

    kind: int
    arg: Callable[[JournalDB], Any]
    #: Set once committed, for a caller that waits for the result.
    done: anyio.Event | None = None
    result: Any = None
    error: BaseException | None = None


class _Segment:
    """The appends, new jobs and action outcomes queued one after another with
    no call between them, column by column.

    Queuing one of these ops is a list append, with no object of its own to
    build, queue, send and finish (measured: that per-op bookkeeping and
    pickling each op was most of the journal's cost on the event loop). A
    segment is committed as one batch (`apply_segment`: appends, then jobs,
    then outcomes), so the order that matters is kept: a job's pending row is
    queued before its outcomes, into the same segment or an earlier one, and
    segments commit in queue order.
    """

    __slots__ = (
        "bytes", "carried", "committed", "events", "finished", "job_counts", "jobs", "rows",
        "sent_at", "size",
    )  # fmt: skip

    def __init__(self) -> None:
        self.events: list[Event] = []
        self.jobs: list[JobsRow] = []
        #: How many jobs each entry of `jobs` numbers.
        self.job_counts: list[int] = []
        #: The first entries of `jobs` were carried here from the segment
        #: before (`SqliteJournal._carry`): they are not carried again.
        self.carried = 0
        self.finished: list[OutcomeRow] = []
        #: Ops queued in it (an append, an `add_jobs` call, an outcome: one each).
        self.size = 0
        #: `events` as stored (`event_row`).
        self.rows: list[EventRow] = []
        #: The size of their JSON bodies.
        self.bytes = 0
        #: When it was handed to the writer (time.perf_counter).
        self.sent_at = 0.0
        #: Set once it is committed; made only when someone waits for that
        #: (`append_durably`): the usual append builds no event.
        self.committed: anyio.Event | None = None


class _HotRun:
    """Committed events with consecutive seqs, kept for the consumer (`take_hot`).

    One per segment in the usual case (no duplicates in it), so neither the
    commit nor the consumer handles a window entry per event.
    """

    __slots__ = ("events", "first", "previous", "size", "taken")

    def __init__(self, previous: int, first: int, events: list[Event], size: int) -> None:
        #: The seq of the committed event just before the first one.
        self.previous = previous
        #: The first event's seq; event i has seq `first + i`.
        self.first = first
        self.events = events
        #: The events' JSON size, released once all are taken.
        self.size = size
        #: How many the consumer has taken (or read back from disk) so far.
        self.taken = 0


class SqliteJournal:
    """The daemon's journal: async operations on one connection, group-committed.

    Appends return as soon as the event is queued (the queue is bounded, so
    a slow disk slows the reader instead of growing memory); the event is
    handed to the consumer only after its commit. Just-committed events are
    also kept in a bounded in-memory window (`take_hot`), so a consumer that
    keeps up does not read them back from disk. The window is bounded by the
    events' JSON size (`hot_bytes`, 4 MiB: some 20-30 MiB of Python objects)
    as well as their number, so it holds many small events or a few large
    ones, never more memory than that.

    The queue holds segments (`_Segment`: appends, new jobs and outcomes, at
    most `max_batch` ops each) and, between them, calls that do not wait for
    their result (`mark_dead`), in queue order; calls someone waits for jump
    ahead of it (see `_collect`).
    """

    def __init__(
        self,
        db: JournalDB,
        config: EngineConfig,
        *,
        queue_size: int = 8192,
        max_batch: int = 1024,
        commit_delay: float = 0.002,
        hot_window: int = 32768,
        hot_bytes: int = 4 << 20,
        writer: Literal["process", "thread"] = "process",
        max_in_flight: int = 4,
        read_batch: int = 256,
        retention_every: float | None = None,
        queue_bytes: int | None = None,
    ) -> None:
        self.db = db
        #: Where SQLite writes run: a separate process (the default: its
        #: SQLite work then never waits for the event loop's GIL, nor the
        #: loop for it), or a thread of this process.
        self._writer = writer
        self._process: WriterProcess | None = None
        #: Segments sent to the writer process and not answered yet, in order.
        self._in_flight: deque[_Segment] = deque()
        self.max_in_flight = max_in_flight
        self._sent = anyio.Event()
        self._answered = anyio.Event()
        self.config = config
        self.max_batch = max_batch
        self.commit_delay = commit_delay
        self.counters = JournalCounters()
        #: Duplicates (one line each, else) are rate-limited.
        self._logs = LogLimiter(log)
        # A plain deque, not a memory object stream: queuing an op is then a
        # list append with no task switch (a stream send cost ~40 us here).
        self._queue: deque[_Segment | _Op] = deque()
        #: The segment new appends, jobs and outcomes go to: the queue's last
        #: entry, until the writer takes it or a call is queued behind it.
        self._open: _Segment | None = None
        #: Ops in `_queue` (what `queue_size` bounds), and the JSON size of
        #: the events appended and not committed yet, wherever they are
        #: (what `queue_bytes` bounds).
        self._queued = 0
        self._held_bytes = 0
        self._queue_bytes = config.journal_buffer if queue_bytes is None else queue_bytes
        #: Calls someone waits for (the consumer's first `queue_jobs`, resume,
        #: retries, retention): they jump the queue, see `_collect`.
        self._calls: deque[_Op] = deque()
        self._queue_size = queue_size
        self._closed = False
        #: The writer waits on `_work` (queue empty) / on `_urgent` (lingering).
        self._writer_waiting = False
        self._lingering = False
        #: Set when an op is queued (the writer waits on it when idle).
        self._work = anyio.Event()
        #: Set when someone waits for a commit: the writer stops lingering.
        self._urgent = anyio.Event()
        #: Set when the writer took ops off a full queue.
        self._space = anyio.Event()
        self._limiter = anyio.CapacityLimiter(1)
        self._hot: deque[_HotRun] = deque()
        #: Events in `_hot` not taken yet (at most `hot_window`).
        self._hot_count = 0
        self._hot_window = hot_window
        self._hot_budget = hot_bytes
        self._hot_bytes = 0
        #: Set (and replaced) after each commit that stored new events.
        self.changed = anyio.Event()
        #: Next job id to hand out (`queue_jobs`); read from the database by `run`.
        self._next_job_id: int | None = None
        #: Read-only connection for reading events back (`unmatched`).
        self._reader: JournalDB | None = None
        self._read_limiter = anyio.CapacityLimiter(1)
        #: The consumer's cursor: the last seq `take_events` handed out (or
        #: skipped as matched already), and the last seq known committed.
        self._taken = 0
        self._committed = db.last_seq
        #: The next read from disk, started while the last one is matched.
        self._ahead: _ReadAhead | None = None
        self._read_batch = read_batch
        #: Jobs up to this id existed when the journal opened (`unfinished_jobs`).
        self._resume_max_id = 0
        retention = config.retention
        self.retention_every = retention_every or min(max(retention / 10, 1.0), 3600.0)
        #: Background reads (`_ReadAhead`); set by `run`.
        self._tasks: TaskGroup | None = None
        # -- when the storage refuses writes (a full disk, an I/O error) ------
        #: Why the last write was refused; None while writes succeed. While
        #: set, nothing more is sent to be written until `_recover` retries.
        self._failure: str | None = None
        #: What was refused, and what was taken to be written after it and
        #: not sent: written again, in this order, by `_recover`.
        self._refused: list[_Segment | _Op] = []
        self._unsent: list[_Segment | _Op] = []
        #: When the current outage began (monotonic), and when it was last logged.
        self._outage_since: float | None = None
        self._outage_logged = 0.0
        self._intake_stopped = False
        self._retry = Backoff(_RETRY_FIRST, _RETRY_CAP)
        #: Set once closing: until then, a refusing storage is retried forever.
        self._close_deadline: float | None = None
        #: Marks written by this process (`write_mark`), committed or queued.
        self._marks: dict[str, float] = {}

    # -- writer ----------------------------------------------------------------

    async def run(self, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """The writer: returns once `close()` was called and every queued op is committed."""
        # Dead letters re-queued while no daemon ran become plain pending, to
        # be resumed with the rest (`unfinished_jobs`). The newest job id is
        # read once, before any job can be queued: the consumer's first batch
        # then starts its jobs at once instead of waiting (as a call) behind
        # every append already sent to the writer.
        now = time.time()
        self._resume_max_id = await anyio.to_thread.run_sync(
            lambda: self.db.requeue_retries(now), limiter=self._limiter
        )
        self._next_job_id = self._resume_max_id + 1
        if self._writer == "process":
            self._process = await self._start_process()
        async with anyio.create_task_group() as tg:
            self._tasks = tg
            if self._process is not None:
                tg.start_soon(self._receive_answers)
            task_status.started()
            try:
                while True:
                    if self._failure is not None:
                        if not await self._recover():
                            break
                        continue
                    calls, entries = await self._collect()
                    if not calls and not entries:
                        # Closing: what was sent may still come back refused.
                        with anyio.CancelScope(shield=True):
                            await self._wait_answered()
                        if self._failure is not None:
                            continue
                        break
                    # Shielded: a cancelled daemon still commits what it already took.
                    with anyio.CancelScope(shield=True):
                        await self._write(calls, entries)
            finally:
                # Also when cancelled: what was sent is finished, and the
                # process goes (killed if it does not answer in time).
                with anyio.CancelScope(shield=True):
                    with anyio.move_on_after(_WRITER_STOP_TIMEOUT):
                        await self._wait_answered()
                    if self._process is not None:
                        process, self._process = self._process, None
                        self._sent.set()  # let `_receive_answers` see it is over
                        if self._in_flight:
                            # Not answering: killed, and `_receive_answers`
                            # rewrites what it had from a thread.
                            await process.kill()
                        else:
                            await process.close()

    @property
    def writer_pid(self) -> int | None:
        """The writer process's pid; None while writing from a thread."""
        return self._process.pid if self._process is not None else None

    async def _start_process(self) -> WriterProcess | None:
        try:
            return await WriterProcess.start(self.db.path)
        except JournalWriterLost as exc:
            log.warning("journal: %s; writing from a thread of the daemon instead", exc)
            return None

    async def _collect(self) -> tuple[list[_Op], list[_Segment | _Op]]:
        """Wait for ops, linger up to `commit_delay` for more, take a batch:
        (calls someone waits for, queue entries of at most `max_batch` ops).

        Waited-for calls are taken alone, and run first: behind a burst of
        appends they would otherwise wait for several full batches, and the
        consumer (waiting for its first job id, say) with them. Jumping ahead
        is safe: queued appends and action updates are not visible to anyone
        yet, and every call's subject (committed events, jobs recorded
        earlier, retry/dead jobs) is not touched by them.
        """
        queue, calls = self._queue, self._calls
        while not queue and not calls:
            if self._closed or self._failure is not None:
                return [], []
            if self._work.is_set():
                self._work = anyio.Event()
            self._writer_waiting = True
            try:
                await self._work.wait()
            finally:
                self._writer_waiting = False
        if calls:
            taken = list(calls)
            calls.clear()
            return taken, []
        if self._queued < self.max_batch and not self._closed:
            self._lingering = True
            try:
                with anyio.move_on_after(self.commit_delay):
                    await self._urgent.wait()
            finally:
                self._lingering = False
        if self._urgent.is_set():
            self._urgent = anyio.Event()
        entries: list[_Segment | _Op] = []
        ops = 0
        while queue:
            entry = queue[0]
            size = entry.size if isinstance(entry, _Segment) else 1
            if entries and ops + size > self.max_batch:
                break
            queue.popleft()
            entries.append(entry)
            ops += size
        self._queued -= ops
        if not queue:
            last, self._open = self._open, None  # taken: what comes next goes to a new segment
            if last is not None and not self._closed and self._carry(last) and not last.size:
                # Everything in it was carried on: take the next segment
                # instead (whose carried jobs are not held back again).
                entries.pop()
                if not entries:
                    return await self._collect()
        self._space.set()
        return list(calls), entries

    def _carry(self, segment: _Segment) -> bool:
        """Carry new jobs that have no outcome yet over to the next segment,
        with the outcomes of theirs that are here; True if any were.

        Their `pending` rows and outcomes then usually commit together: the
        writer folds an outcome into its job's row as it inserts it, instead
        of inserting the row and updating it (measured: an outcome that
        misses its job's segment costs the writer about a third more per
        event). The order that matters holds: a carried job's row still
        commits before, or with, each of its outcomes, which all follow it
        into the new segment. Each batch of jobs is carried at most once
        (its rows commit at most one segment later; if the daemon dies
        first, its event is still unmatched and runs again at the next
        start, as before), only from the last segment queued (no call
        queued after it can be overtaken), and never while closing.
        """
        counts, jobs = segment.job_counts, segment.jobs
        if len(counts) <= segment.carried:
            return False
        finished = segment.finished
        ended = {row[0] for row in finished}
        held = [
            index
            for index in range(segment.carried, len(counts))
            if not ended.issuperset(range(jobs[index][2], jobs[index][2] + counts[index]))
        ]
        if not held:
            return False
        held_ids: set[int] = set()
        for index in held:
            held_ids.update(range(jobs[index][2], jobs[index][2] + counts[index]))
        new = self._segment()
        new.jobs = [jobs[index] for index in held]
        new.job_counts = [counts[index] for index in held]
        new.carried = len(held)
        new.finished = [row for row in finished if row[0] in held_ids]
        if new.finished:
            segment.finished = [row for row in finished if row[0] not in held_ids]
        kept = [index for index in range(len(counts)) if index not in held]
        segment.jobs = [jobs[index] for index in kept]
        segment.job_counts = [counts[index] for index in kept]
        moved = len(new.jobs) + len(new.finished)
        new.size = moved
        segment.size -= moved
        self._queued += moved
        self.counters.carried += len(held)
        return True

    async def _write(self, calls: list[_Op], entries: list[_Segment | _Op]) -> None:
        """Commit `calls`, then `entries` in order, finishing each once committed.

        With a writer process: segments are sent there and finished when the
        answer comes back (`_receive_answers`), up to `max_in_flight` at a
        time. Calls (arbitrary functions of the database) cannot travel to
        another process: each waits for everything sent before it, then runs
        in a thread on this process's connection.
        """
        for index, op in enumerate(calls):
            if self._failure is not None or not await self._run_call(op):
                # Refused: they wait at the head, as they were, for `_recover`.
                self._calls.extendleft(reversed(calls[index:]))
                break
        for entry in entries:
            if isinstance(entry, _Segment):
                await self._send(entry)
            elif self._failure is not None:
                self._unsent.append(entry)
            else:
                await self._run_call(entry)

    async def _run_call(self, op: _Op) -> bool:
        """Run a call and finish it; False when the storage refused it (not finished)."""
        # If a writer process was lost, what it had in flight goes first.
        await self._wait_answered()
        started = time.perf_counter()
        results = await anyio.to_thread.run_sync(
            apply_batch, self.db, [(op.kind, op.arg)], self.config.dedup_window,
            limiter=self._limiter,
        )  # fmt: skip
        self.counters.write_seconds.observe(time.perf_counter() - started)
        ((op.result, op.error),) = results
        if op.error is not None and storage_failure(op.error):
            # Nothing wrong with the call: the storage cannot take writes.
            # It waits for `_recover` (the caller puts a waited-for call back).
            message = f"{type(op.error).__name__}: {op.error}"
            op.error = None
            if op.done is None:
                self._refused.append(op)
            self._refuse(message)
            return False
        self._succeeded()
        self.counters.commits += 1
        self.counters.ops += 1
        if op.error is not None:
            self.counters.write_errors += 1
            if op.done is None:
                log.error("journal: write failed: %s", op.error)
        if op.done is not None:
            op.done.set()
        return True

    async def _write_in_thread(self, segment: _Segment) -> None:
        segment.sent_at = time.perf_counter()
        answer = await anyio.to_thread.run_sync(
            apply_segment, self.db, segment.rows, segment.jobs, segment.finished,
            self.config.dedup_window, limiter=self._limiter,
        )  # fmt: skip
        self._finish(segment, answer)

    async def _send(self, segment: _Segment) -> None:
        while len(self._in_flight) >= self.max_in_flight:
            await self._answered_event().wait()
        if self._failure is not None:
            self._unsent.append(segment)  # written after what was refused, in order
            return
        if self._process is None:  # writing from a thread, or lost while we waited
            # After `_writer_lost` has rewritten what was in flight: order matters.
            await self._wait_answered()
            await self._write_in_thread(segment)
            return
        self._in_flight.append(segment)
        self._sent.set()
        segment.sent_at = time.perf_counter()
        # If it is gone, `_receive_answers` finds out too and rewrites what is in flight.
        with contextlib.suppress(JournalWriterLost):
            await self._process.send(
                segment.rows, segment.jobs, segment.finished, self.config.dedup_window
            )

    # -- when the storage refuses writes -------------------------------------------

    def _refuse(self, message: str) -> None:
        """The storage refused a write: stop sending, and say so (once per outage,
        then every `_OUTAGE_REPORT_EVERY`)."""
        self.counters.write_errors += 1
        self._failure = message
        now = time.monotonic()
        if self._outage_since is None:
            self._outage_since = self._outage_logged = now
            log.error(
                "journal: cannot write (%s); holding %d event(s) in memory and retrying; "
                "nothing is dropped, and reading stops once %d events or %d MiB are held",
                message, self.held_events(), self._queue_size, self._queue_bytes >> 20,
            )  # fmt: skip
        elif now - self._outage_logged >= _OUTAGE_REPORT_EVERY:
            self._outage_logged = now
            log.error(
                "journal: still cannot write after %.0fs (%s); %d event(s) held in memory",
                now - self._outage_since, message, self.held_events(),
            )  # fmt: skip
        # Wake the writer if it waits for work: it has some.
        self._work.set()
        self._urgent.set()

    def _succeeded(self) -> None:
        """A write committed: an outage, if there was one, is over."""
        if self._outage_since is None:
            return
        log.warning(
            "journal: writing again after %.1fs without; %d event(s) still held",
            time.monotonic() - self._outage_since, self.held_events(),
        )  # fmt: skip
        self._outage_since = None
        self._intake_stopped = False
        self._retry.reset()

    async def _recover(self) -> bool:
        """After a refused write: wait (backing off), then put everything that was
        refused or not sent back at the head of the queue, in order, and let the
        writer try again. False when the journal is closing and the storage has
        kept refusing for `_OUTAGE_STOP_TIMEOUT`: what is held is then given up
        (`counters.unwritten`), loudly."""
        await self._wait_answered()
        if self._closed:
            if self._close_deadline is None:
                self._close_deadline = time.monotonic() + _OUTAGE_STOP_TIMEOUT
            if time.monotonic() >= self._close_deadline:
                self._give_up()
                return False
        await anyio.sleep(self._retry.next())
        held = [*self._refused, *self._unsent]
        self._refused.clear()
        self._unsent.clear()
        for entry in reversed(held):
            self._queue.appendleft(entry)
            if isinstance(entry, _Segment):
                self._queued += entry.size
            else:
                self._queued += 1
        if self._process is not None:
            with contextlib.suppress(JournalWriterLost):
                await self._process.send_retry()
        self._failure = None
        return True

    def _give_up(self) -> None:
        """Stopping with writes still refused: count and name what is lost."""
        held = [*self._refused, *self._unsent, *self._queue]
        events = [event for entry in held if isinstance(entry, _Segment) for event in entry.events]
        self.counters.unwritten += len(events)
        for op in self._calls:
            op.error = JournalError(f"the journal cannot write ({self._failure})")
            if op.done is not None:
                op.done.set()
        self._calls.clear()
        if events:
            shown = ", ".join(event.id for event in events[:20])
            more = f" and {len(events) - 20} more" if len(events) > 20 else ""
            log.critical(
                "journal: stopping while it cannot write (%s): %d event(s) read from Zoom were "
                "never journaled and are lost: %s%s",
                self._failure, len(events), shown, more,
            )  # fmt: skip

    def held_events(self) -> int:
        """Events read and not yet durable (queued, sent, or refused and waiting)."""
        count = 0
        for entry in (*self._queue, *self._in_flight, *self._refused, *self._unsent):
            if isinstance(entry, _Segment):
                count += len(entry.events)
        return count

    def health(self) -> StoreHealth:
        if self._outage_since is None:
            return StoreHealth(True, "writing")
        since = time.monotonic() - self._outage_since
        stopped = "; intake stopped" if self._intake_stopped else ""
        return StoreHealth(
            False,
            f"cannot write for {since:.0f}s ({self._failure}); "
            f"{self.held_events()} event(s) held{stopped}",
        )

    def disk_bytes(self) -> int:
        return sum(self.db.file_sizes().values())

    def _answered_event(self) -> anyio.Event:
        if self._answered.is_set():
            self._answered = anyio.Event()
        return self._answered

    async def _wait_answered(self) -> None:
        """Until every segment sent to the writer process has been finished."""
        while self._in_flight:
            await self._answered_event().wait()

    async def _receive_answers(self) -> None:
        """Finish the segments sent to the writer process, in order, as their answers come.

        Shielded as a whole: what was sent gets finished even in a cancelled
        daemon. It ends when the process is gone (`run` lets it go last).
        """
        with anyio.CancelScope(shield=True):
            while self._process is not None:
                if not self._in_flight:
                    if self._sent.is_set():
                        self._sent = anyio.Event()
                    await self._sent.wait()
                    continue
                try:
                    answer = await self._process.receive()
                except JournalWriterLost as exc:
                    await self._writer_lost(exc)
                    return
                self._finish(self._in_flight.popleft(), answer)
                self._answered.set()

    async def _writer_lost(self, exc: Exception) -> None:
        """Go on in a thread, rewriting every segment the process may not have committed.

        Nothing is lost: what it committed stays committed; written again,
        an append of it is a duplicate of itself (the consumer reads committed
        events back from disk) and the insert of a job already there is skipped.
        """
        log.error("journal: %s; writing from a thread of the daemon from now on", exc)
        process, self._process = self._process, None
        if process is not None:
            await process.kill()
        await anyio.to_thread.run_sync(self.db.refresh_last_seq, limiter=self._limiter)
        while self._in_flight:
            # Popped only once written: until then `_send` waits behind it.
            await self._write_in_thread(self._in_flight[0])
            self._in_flight.popleft()
        self._answered.set()

    def _finish(self, segment: _Segment, answer: SegmentAnswer) -> None:
        """A committed segment: count it, log its failures, hand its new events on.

        A refused one (the storage cannot take writes) is kept to be
        written again, with everything after it (`_recover`).
        """
        stored, errors, ids = answer
        self.counters.write_seconds.observe(time.perf_counter() - segment.sent_at)
        if stored is None:
            self._refused.append(segment)
            self._refuse(errors[0][1] if errors else "refused")
            return
        self._succeeded()
        if segment.committed is not None:
            segment.committed.set()
        if segment.bytes:
            self._held_bytes -= segment.bytes
            self._space.set()
        if ids is not None:
            # Before the events reach the consumer: matching and the jobs
            # then find each id known, and nothing is hashed on this loop.
            for event, identity in zip(segment.events, ids, strict=True):
                event.settle_id(identity)
        counters = self.counters
        counters.commits += 1
        counters.ops += segment.size
        if isinstance(stored, tuple):
            # The usual case: every event stored, with consecutive seqs.
            previous, first = stored
            count = len(segment.events)
            counters.appended += count
            self._keep_hot(_HotRun(previous, first, segment.events, segment.bytes))
            last = first + count - 1
        else:
            self._finish_one_by_one(segment, stored, errors)
            seqs = [result[1] for result in stored if result is not None]
            count, last = len(seqs), max(seqs, default=0)
        if count:
            self._committed = max(self._committed, last)
            changed, self.changed = self.changed, anyio.Event()
            changed.set()

    def _finish_one_by_one(
        self,
        segment: _Segment,
        stored: list[tuple[int, int] | None],
        errors: list[tuple[int, str]] | None,
    ) -> None:
        counters = self.counters
        failed: set[int] = set()
        for index, message in errors or ():
            counters.write_errors += 1
            failed.add(index)
            log.error("journal: write failed: %s", message)
        for index, (event, row, result) in enumerate(
            zip(segment.events, segment.rows, stored, strict=True)
        ):
            if result is None:
                if index not in failed:
                    counters.duplicates += 1
                    self._logs.log(
                        logging.INFO, "duplicate", "duplicate of event %s (%s) dropped",
                        event.id, shorten(event.name, 100),
                    )  # fmt: skip
                continue
            counters.appended += 1
            self._keep_hot(_HotRun(result[0], result[1], [event], len(row[4])))

    def _keep_hot(self, run: _HotRun) -> None:
        # Beyond the window the consumer reads events back from the journal.
        count = len(run.events)
        if (
            self._hot_count + count <= self._hot_window
            and self._hot_bytes + run.size <= self._hot_budget
        ):
            self._hot.append(run)
            self._hot_count += count
            self._hot_bytes += run.size

    async def close(self) -> None:
        """No more operations: the writer commits what is queued, then ends."""
        self._closed = True
        self._work.set()
        self._urgent.set()

    async def _room(self) -> None:
        """Wait while the queue is full; raise once the journal is closed."""
        while True:
            if self._closed:
                raise anyio.ClosedResourceError
            if self._queued < self._queue_size and self._held_bytes < self._queue_bytes:
                return
            if self._outage_since is not None and not self._intake_stopped:
                self._intake_stopped = True
                log.error(
                    "journal: %d event(s) held in memory and none can be written (%s): "
                    "stopped taking events (the WebSocket is not read) until the journal "
                    "can write again",
                    self.held_events(), self._failure or "refused",
                )  # fmt: skip
            if self._space.is_set():
                self._space = anyio.Event()
            await self._space.wait()

    def _segment(self) -> _Segment:
        """The open segment, if it has room for one more op; else a new one."""
        segment = self._open
        if segment is None or segment.size >= self.max_batch:
            segment = self._open = _Segment()
            self._queue.append(segment)
        return segment

    def _added(self, segment: _Segment) -> None:
        """One op was added to `segment`: count it, wake the writer if it
        waits for exactly this (this runs once or twice per event, and a
        needless `Event.set()` showed)."""
        segment.size += 1
        self._queued += 1
        if self._lingering and self._queued >= self.max_batch:
            self._urgent.set()
        if self._writer_waiting:
            self._work.set()

    async def _put_call(self, op: _Op) -> None:
        if self._closed:
            raise anyio.ClosedResourceError
        if op.done is not None:
            # Not counted against the queue's bound: its caller waits for it.
            self._calls.append(op)
            if self._lingering:
                self._urgent.set()
        else:
            await self._room()
            self._queue.append(op)
            self._open = None  # what is queued after the call commits after it
            self._queued += 1
            if self._lingering and self._queued >= self.max_batch:
                self._urgent.set()
        if self._writer_waiting:
            self._work.set()

    async def call(self, fn: Callable[[JournalDB], Any]) -> Any:
        """Run `fn` in the next batch and wait for its commit; returns its result."""
        op = _Op(OP_CALL, fn, done=anyio.Event())
        await self._put_call(op)
        assert op.done is not None
        await op.done.wait()
        if op.error is not None:
            raise op.error
        return op.result

    # -- operations --------------------------------------------------------------

    async def append(self, event: Event) -> None:
        """Queue `event` for the journal (waits only while the queue is full)."""
        if (
            self._closed
            or self._queued >= self._queue_size
            or self._held_bytes >= self._queue_bytes
        ):
            await self._room()
        row = event_row(event)  # here, so a bad event fails its caller, not the writer
        # `_segment()` and `_added()`, inlined: this runs for every event.
        segment = self._open
        if segment is None or segment.size >= self.max_batch:
            segment = self._segment()
        segment.events.append(event)
        segment.rows.append(row)
        size = len(row[4])
        segment.bytes += size
        segment.size += 1
        self._queued += 1
        self._held_bytes += size
        if self._lingering and self._queued >= self.max_batch:
            self._urgent.set()
        if self._writer_waiting:
            self._work.set()

    async def append_durably(self, event: Event) -> None:
        await self.append(event)
        # `append` queued it in the open segment and returned without
        # yielding to the event loop: that segment is still the open one.
        segment = self._open
        assert segment is not None and segment.events and segment.events[-1] is event
        if segment.committed is None:
            segment.committed = anyio.Event()
        committed = segment.committed
        if self._lingering:
            self._urgent.set()  # someone waits: commit now, do not linger for more
        await committed.wait()

    def take_hot(self, after_seq: int, limit: int) -> tuple[list[int], list[Event]]:
        """Committed events directly following `after_seq`, from memory, at
        most `limit`: their seqs and the events (empty if the next one is
        not in memory)."""
        hot = self._hot
        seqs: list[int] = []
        events: list[Event] = []
        while hot and len(seqs) < limit:
            run = hot[0]
            first, taken, available = run.first, run.taken, len(run.events)
            if first + available - 1 <= after_seq:  # all read back from disk meanwhile
                self._drop_hot()
                continue
            if first + taken <= after_seq:  # partly read back from disk
                skipped = after_seq + 1 - (first + taken)
                self._hot_count -= skipped
                taken = run.taken = taken + skipped
            if (run.previous if taken == 0 else first + taken - 1) != after_seq:
                break  # the next committed event is not in memory
            count = min(limit - len(seqs), available - taken)
            seqs.extend(range(first + taken, first + taken + count))
            events.extend(run.events[taken : taken + count])
            taken = run.taken = taken + count
            self._hot_count -= count
            after_seq = first + taken - 1
            if taken == available:
                self._drop_hot()
        return seqs, events

    def _drop_hot(self) -> None:
        run = self._hot.popleft()
        self._hot_count -= len(run.events) - run.taken
        self._hot_bytes -= run.size

    async def unmatched(self, after_seq: int, limit: int) -> list[StoredEvent]:
        """Committed, unmatched events after `after_seq`, read back from disk.

        Through a second, read-only connection: WAL lets it read committed
        rows while the writer is busy with its next batch, so a consumer
        that fell behind does not queue behind a thousand appends for every
        read. Only this one task reads through it.
        """
        if self._reader is None:
            self._reader = await anyio.to_thread.run_sync(self._open_reader)
        reader = self._reader
        text = await anyio.to_thread.run_sync(
            reader.unmatched_json, after_seq, limit, limiter=self._read_limiter
        )
        # Decoded here, not in the thread: Python work in the thread would
        # wait for the GIL again and again behind the busy event loop.
        return stored_events(text)

    def _open_reader(self) -> JournalDB:
        return JournalDB.open_reader(self.db.path)

    def close_reader(self) -> None:
        if self._reader is not None:
            self._reader.close()
            self._reader = None

    async def add_jobs(self, firings: Firings, state: Sequence[StateChange] = ()) -> list[JobStart]:
        """Queue the jobs' `pending` rows without waiting for their commit.

        The ids are handed out here (this process is the journal's only
        writer: the state-directory lock), so the jobs can start at once.
        Ordering keeps this safe: the writer commits ops in queue order (a
        segment's jobs before its outcomes), so a job's `pending` row always
        commits before its outcome; and if the process dies before that
        commit, the event is still unmatched in the journal, so the next
        start matches it again and runs its jobs (at least once).

        `firings` travels to the writer process as it is: (seq, rule names)
        pairs of ints and strings, in lists or tuples (and keyed jobs:
        tuples of strings and bytes). `state` goes with them, in the same
        transaction: whatever carries the jobs to a later segment carries it
        too (`_carry`).
        """
        count = sum(len(rules) for _, rules in firings)
        if self._next_job_id is None:
            raise RuntimeError("the journal is not running")
        first, self._next_job_id = self._next_job_id, self._next_job_id + count
        if self._closed or self._queued >= self._queue_size:
            await self._room()
        segment = self._segment()
        segment.jobs.append((firings, time.time(), first, state))
        segment.job_counts.append(count)
        self._added(segment)
        return [(job_id, 0) for job_id in range(first, first + count)]

    async def record_outcome(
        self,
        job_id: int,
        index: int,
        last_index: int,
        error: str | None,
        attempts: int,
        continue_on_error: bool,
    ) -> None:
        """Record an `ActionOutcome`, its fields passed apart (waits while the queue is full)."""
        while not self.try_record_outcome(
            job_id, index, last_index, error, attempts, continue_on_error
        ):
            await self._room()

    def try_record_outcome(
        self,
        job_id: int,
        index: int,
        last_index: int,
        error: str | None,
        attempts: int,
        continue_on_error: bool,
    ) -> bool:
        """`record_outcome` if the queue has room; False (nothing done) if it
        is full or closed. The dispatcher's observer calls this first: one
        coroutine less per action."""
        if self._closed or self._queued >= self._queue_size:
            return False
        if error is not None and not continue_on_error:
            self.counters.dead_letters += 1
        # `_segment()` and `_added()`, inlined: this runs for every action.
        segment = self._open
        if segment is None or segment.size >= self.max_batch:
            segment = self._segment()
        segment.finished.append(
            (job_id, index, last_index, error, attempts, continue_on_error, time.time())
        )
        segment.size += 1
        self._queued += 1
        if self._lingering and self._queued >= self.max_batch:
            self._urgent.set()
        if self._writer_waiting:
            self._work.set()
        return True

    async def mark_dead(self, job_id: int, error: str) -> None:
        now = time.time()
        await self._put_call(_Op(OP_CALL, lambda db: db.mark_dead(job_id, error, now)))
        self.counters.dead_letters += 1

    # -- the consumer's cursor -----------------------------------------------------

    async def take_events(self, limit: int) -> tuple[list[int], list[Event]]:
        """Committed, unmatched events after the last taken: from the
        in-memory window while it has the next one, else read back from disk
        (the next read already started while this batch is matched)."""
        seqs, events = self.take_hot(self._taken, limit)
        if seqs:
            self._taken = seqs[-1]
            return seqs, events
        if self._taken >= self._committed:
            return [], []
        ahead, self._ahead = self._ahead, None
        if ahead is not None and ahead.after == self._taken and ahead.limit == limit:
            batch, known = await ahead.result()
        else:
            known = self._committed
            batch = await self.unmatched(self._taken, limit)
        if len(batch) == limit and self._tasks is not None:
            # Behind on disk: read the next batch while this one is matched
            # and dispatched, so the dispatcher never waits for the read.
            self._ahead = _ReadAhead(self, batch[-1].seq, limit)
            self._tasks.start_soon(self._ahead.run)
        elif len(batch) < limit:
            # The read saw every event committed up to `known`: those not in
            # it were matched already.
            self._taken = max(self._taken, known)
        if batch:
            self._taken = max(self._taken, batch[-1].seq)
        return [stored.seq for stored in batch], [stored.event for stored in batch]

    async def wait_for_events(self) -> None:
        while self._taken >= self._committed:
            await self.changed.wait()

    # -- resuming and retrying -----------------------------------------------------

    async def unfinished_jobs(self, after_id: int, limit: int) -> list[JobRow]:
        max_id = self._resume_max_id
        rows: list[JobRow] = await self.call(
            lambda db: db.jobs([PENDING], after_id=after_id, max_id=max_id, limit=limit)
        )
        return rows

    async def claim_retries(self, limit: int) -> list[JobRow]:
        now = time.time()
        rows: list[JobRow] = await self.call(lambda db: db.claim_retries(now, limit))
        return rows

    async def retry_now(self, ids: Sequence[int]) -> list[JobRow]:
        now = time.time()
        rows: list[JobRow] = await self.call(lambda db: db.retry_now(ids, now))
        return rows

    # -- dead letters and statistics (`JournalAdmin`) --------------------------------

    async def dead_letters(self, limit: int) -> list[JobRow]:
        rows: list[JobRow] = await self.call(lambda db: db.jobs([DEAD, RETRY], limit=limit))
        return rows

    async def job(self, job_id: int) -> JobRow | None:
        row: JobRow | None = await self.call(lambda db: db.job(job_id))
        return row

    async def dead_before(self, cutoff: float) -> list[int]:
        ids: list[int] = await self.call(lambda db: db.dead_before(cutoff))
        return ids

    async def requeue(self, ids: Sequence[int]) -> int:
        now = time.time()
        count: int = await self.call(lambda db: db.set_state(ids, RETRY, [DEAD], now))
        return count

    async def purge(self, ids: Sequence[int]) -> int:
        count: int = await self.call(lambda db: db.delete_jobs(ids, [DEAD, RETRY]))
        return count

    async def stats(self) -> dict[str, Any]:
        stats: dict[str, Any] = await self.call(lambda db: db.stats())
        return stats

    def owner(self) -> str | None:
        return f"pid {os.getpid()}"

    async def seen_recently(self, event_id: str, now: float, window: float) -> bool:
        seen: bool = await self.call(lambda db: db.seen_recently(event_id, now, window))
        return seen

    async def record_seen(self, event: Event) -> bool:
        await self.call(lambda db: db.record_seen(event))
        return True

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
        # This process owns the journal: the id comes from its own numbering.
        if self._next_job_id is None:
            raise RuntimeError("the journal is not running")
        job_id, self._next_job_id = self._next_job_id, self._next_job_id + 1
        now = time.time()
        await self.call(
            lambda db: db.record_dead_letter(
                event, rule, next_action, attempts, error, errors, now, job_id
            )
        )
        return job_id

    # -- marks -------------------------------------------------------------------------

    async def read_mark(self, name: str) -> float | None:
        # This process alone writes the journal (its lock): what it wrote,
        # committed or still queued, is the newest value.
        if name in self._marks:
            return self._marks[name]
        value: float | None = await self.call(lambda db: db.read_mark(name))
        return value

    async def write_mark(self, name: str, value: float) -> None:
        """Queued like `mark_dead`, without waiting for the commit: it commits
        after everything queued before it (an event appended just before is
        durable first)."""
        now = time.time()
        await self._put_call(_Op(OP_CALL, lambda db: db.write_mark(name, value, now)))
        self._marks[name] = value

    # -- the engine's state between events (`StateStore`) ------------------------------

    async def load_state(self) -> EngineState:
        now = time.time()
        state: EngineState = await self.call(lambda db: db.load_state(now))
        return state

    async def claim_cancelled(self) -> list[tuple[str, str]]:
        found: list[tuple[str, str]] = await self.call(lambda db: db.claim_cancelled())
        return found

    # -- retention -------------------------------------------------------------------

    async def keep_tidy(self) -> None:
        """Forever: delete finished jobs and old events past `[engine] retention`
        (events stay while a job needs them, and for the duplicate window)."""
        config = self.config
        while True:
            while True:
                now = time.time()
                deleted: int = await self.call(
                    partial(JournalDB.purge_expired, now=now, retention=config.retention,
                            keep_events=config.dedup_window)
                )  # fmt: skip
                self.counters.purged += deleted
                if not deleted:
                    break
            await anyio.sleep(self.retention_every)


class _ReadAhead:
    """One read of committed, unmatched events, started before it is needed.

    Its result is only used if the consumer continues exactly where the read
    started (`after`); being a snapshot of committed events in seq order, it
    is then what reading at that moment would have given, or a prefix of it.
    `known` is the last seq committed when it started: the read saw them all.
    """

    def __init__(self, journal: SqliteJournal, after: int, limit: int) -> None:
        self.after = after
        self.limit = limit
        self.known = journal._committed
        self._journal = journal
        self._done = anyio.Event()
        self._batch: list[StoredEvent] = []
        self._error: BaseException | None = None

    async def run(self) -> None:
        try:
            self._batch = await self._journal.unmatched(self.after, self.limit)
        except Exception as exc:  # noqa: BLE001 - raised where the result is used
            self._error = exc
        finally:
            self._done.set()

    async def result(self) -> tuple[list[StoredEvent], int]:
        await self._done.wait()
        if self._error is not None:
            raise self._error
        return self._batch, self.known


@asynccontextmanager
async def open_store(
    engine: EngineConfig, *, tidy: bool = True, **options: Any
) -> AsyncIterator[SqliteJournal]:
    """Lock, open and run the journal for the block; flushes everything on exit.

    `tidy` runs retention in the background (a short-lived owner such as
    `dlq retry` leaves it to the daemon). Raises JournalBusy when another
    process holds the journal, JournalError (with the recovery step) when it
    cannot be used.
    """
    state_dir = engine.state_dir
    ensure_state_dir(state_dir)
    with exclusive_lock(state_dir) as locked:
        if not locked:
            raise JournalBusy(
                f"another zoomrules process (pid {lock_holder(state_dir)}) is using the journal in "
                f"{state_dir}; two daemons must not share a state directory"
            )
        db = await anyio.to_thread.run_sync(lambda: JournalDB.open(state_dir))
        journal = SqliteJournal(db, engine, **options)
        try:
            async with anyio.create_task_group() as tg:
                await tg.start(journal.run)
                tidying = anyio.CancelScope()
                if tidy:
                    tg.start_soon(_within, tidying, journal.keep_tidy)
                try:
                    yield journal
                finally:
                    tidying.cancel()
                    with anyio.CancelScope(shield=True):
                        await journal.close()
        finally:
            journal.close_reader()
            db.close()


async def _within(scope: anyio.CancelScope, work: Callable[[], Awaitable[None]]) -> None:
    with scope:
        await work()
