"""Committing a batch of journal operations in one transaction.

The writer (a process of its own, or a thread of the daemon when that
process cannot run) commits what the async store queued: segments of
appends, new jobs and outcomes (`apply_segment`), or calls of functions of
the database (`apply_batch`). When a batch fails, each op is retried in a
transaction of its own, so one bad op fails alone.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Sequence
from typing import Any

from engine.journal.sqlite.db import JournalDB
from engine.journal.sqlite.rows import EventRow, JobsRow, OutcomeRow, with_ids

log = logging.getLogger("zoomrules.journal")

#: Kinds of queued ops; see `apply_batch` for how a batch of them runs.
#: OP_CALL: fn(db); OP_APPEND: an EventRow; OP_FINISHED: an OutcomeRow;
#: OP_JOBS: (firings, when, first job id), see `SqliteJournal.add_jobs`.
OP_CALL, OP_APPEND, OP_FINISHED, OP_JOBS = 0, 1, 2, 3
#: SQLite's primary result codes that mean the storage cannot take writes
#: right now (busy or locked, out of memory, read-only, an I/O error such as
#: a full disk or a file-size limit, full, cannot open, a locking protocol
#: error) or at all (corrupt): what is being written is kept and written
#: again later, never dropped.
_STORAGE_CODES = frozenset({5, 6, 7, 8, 10, 11, 13, 14, 15})


def storage_failure(exc: BaseException) -> bool:
    """Whether `exc` says the database cannot be written, rather than that
    one operation is wrong."""
    code = getattr(exc, "sqlite_errorcode", None)
    return isinstance(exc, sqlite3.Error) and code is not None and code & 0xFF in _STORAGE_CODES


#: One op as the writer sees it.
WireOp = tuple[int, Any]
#: Per op: (result, None) or (None, the error).
OpResult = tuple[Any, BaseException | None]


def apply_batch(db: JournalDB, ops: Sequence[WireOp], dedup_window: float) -> list[OpResult]:
    """Commit `ops` in one transaction; if that fails, each op in its own,
    so one bad op fails alone (its error is handed back, the rest commit)."""
    results: list[Any] = [None] * len(ops)
    try:
        with db.transaction():
            _run_ops(db, ops, results, dedup_window)
        return [(result, None) for result in results]
    except Exception as exc:  # noqa: BLE001 - isolate the failing op below
        if storage_failure(exc):
            return [(None, exc)] * len(ops)  # none of them is wrong: none could be written
        log.warning("journal: a batch of %d failed; retrying one by one", len(ops))
    return _one_by_one(db, ops, dedup_window)


def _one_by_one(db: JournalDB, ops: Sequence[WireOp], dedup_window: float) -> list[OpResult]:
    out: list[OpResult] = []
    for op in ops:
        one: list[Any] = [None]
        try:
            with db.transaction():
                _run_ops(db, [op], one, dedup_window)
            out.append((one[0], None))
        except Exception as exc:  # noqa: BLE001 - handed to whoever waits for it
            out.append((None, exc))
    return out


def _run_ops(db: JournalDB, ops: Sequence[WireOp], results: list[Any], dedup_window: float) -> None:
    """Run a batch in as few statements as its order allows.

    Every statement costs the writer a round of SQLite work, and a writer
    thread a re-take of the GIL too, so the batch is regrouped:

    - All appends go first, as one `append_rows`. They only add new rows to
      `events`, which no other op reads: the others touch jobs, and events
      only once committed (matched flags, retention of old ones).
    - Jobs (`OP_JOBS`) and outcomes (`OP_FINISHED`) keep their order with
      respect to calls, which may read or change jobs. Between two calls,
      all new jobs are inserted before all outcomes are applied: an outcome
      is always queued after its job's insert, so this keeps every job's
      own order.
    """
    appends = [i for i, (kind, _) in enumerate(ops) if kind == OP_APPEND]
    if appends:
        stored = db.append_rows([ops[i][1] for i in appends], dedup_window)
        for i, result in zip(appends, stored, strict=True):
            results[i] = result
    jobs: list[Any] = []
    finished: list[Any] = []
    for i, (kind, arg) in enumerate(ops):
        if kind == OP_JOBS:
            jobs.append(arg)
        elif kind == OP_FINISHED:
            finished.append(arg)
        elif kind == OP_CALL:
            _flush_jobs(db, jobs, finished)
            results[i] = arg(db)
    _flush_jobs(db, jobs, finished)


def _flush_jobs(db: JournalDB, jobs: list[Any], finished: list[Any]) -> None:
    if jobs:
        db.record_jobs_and_outcomes(jobs, finished)
    elif finished:
        db.outcomes_finished(finished)
    jobs.clear()
    finished.clear()


#: The writer's answer for a segment: (seq before the first row, seq of the
#: first row) when every row was stored, with consecutive seqs (the usual
#: case, answered without a pair per row); otherwise per row, (previous seq,
#: seq) or None (a duplicate, or failed). Then the (position, message) of
#: every op that failed, positions counted over rows, then jobs, then
#: outcomes; None when all committed. Then the ids of the rows, in order,
#: when the writer computed some (`with_ids`); else None.
#: When the storage cannot take writes (`storage_failure`), nothing of the
#: segment is committed and the answer is `unavailable(message)`: the first
#: item is None and the message is the one error's.
SegmentAnswer = tuple[
    tuple[int, int] | list[tuple[int, int] | None] | None,
    list[tuple[int, str]] | None,
    list[str] | None,
]


def unavailable(message: str) -> SegmentAnswer:
    """The answer for a segment not written because the storage cannot take writes."""
    return None, [(-1, message)], None


def apply_segment(
    db: JournalDB,
    rows: Sequence[EventRow],
    jobs: Sequence[JobsRow],
    finished: Sequence[OutcomeRow],
    dedup_window: float,
) -> SegmentAnswer:
    """Commit a segment (see `_Segment`) in one transaction: its appends,
    then its jobs, then its outcomes, as `_run_ops` orders a batch of them;
    if that fails, each op in its own transaction, so one bad op fails alone.

    Takes and returns plain tuples and lists only: this is what travels to and
    from the writer process (marshal), and what the thread fallback runs.
    """
    rows, ids = with_ids(rows)
    try:
        with db.transaction():
            stored = db.append_rows(rows, dedup_window)
            if jobs:
                db.record_jobs_and_outcomes(jobs, finished)
            elif finished:
                db.outcomes_finished(finished)
        if stored and None not in stored:
            # All stored: append_rows numbers them consecutively.
            first = stored[0]
            assert first is not None
            return first, None, ids
        return stored, None, ids
    except Exception as exc:  # noqa: BLE001 - isolate the failing op below
        if storage_failure(exc):
            return unavailable(f"{type(exc).__name__}: {exc}")
        log.warning(
            "journal: a batch of %d failed; retrying one by one",
            len(rows) + len(jobs) + len(finished),
        )
    ops: list[WireOp] = [(OP_APPEND, row) for row in rows]
    ops.extend((OP_JOBS, job) for job in jobs)
    ops.extend((OP_FINISHED, outcome) for outcome in finished)
    results = _one_by_one(db, ops, dedup_window)
    errors = [
        (index, f"{type(error).__name__}: {error}")
        for index, (_, error) in enumerate(results)
        if error is not None
    ]
    return [result for result, _ in results[: len(rows)]], errors or None, ids
