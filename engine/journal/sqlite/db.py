"""The SQLite journal's tables on one connection: `JournalDB` (synchronous).

Every statement the journal runs is here. The async store
(`engine.journal.sqlite.store`) and the writer process run these methods;
`zoomrules dlq` and `journal stats` use a `JournalDB` of their own through
`engine.journal.sqlite.admin`.
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

import orjson

from engine.errors import JournalError
from engine.events import Event
from engine.journal.sqlite.files import DB_NAME, create_private, ensure_state_dir, recovery_hint
from engine.journal.sqlite.rows import (
    EventRow,
    JobsRow,
    OutcomeRow,
    StoredRow,
    event_row,
    job_from_row,
    stored_events,
    with_ids,
)
from engine.journal.sqlite.schema import SCHEMA_VERSION, migrate
from engine.journal.store import (
    CLOSED,
    DEAD,
    JOB_STATES,
    OPENED,
    PENDING,
    RETRY,
    THROTTLED,
    ActionOutcome,
    CorrelationRow,
    EngineState,
    JobRow,
    StateChange,
    StoredEvent,
    ThrottleRow,
)

T = TypeVar("T")

_JOB_COLUMNS = (
    "j.id, j.event_seq, j.rule, j.state, j.next_action, j.attempts, j.errors, j.last_error, "
    "j.created_at, j.updated_at, j.context, e.event_id, e.name, e.source, e.received_at, e.body"
)
_CORRELATION_COLUMNS = "rule, key, definition, form, seq, deadline, gap, held"
#: Opening or changing correlations: one statement for many (see _CHUNK).
_UPSERT_CORRELATIONS = (
    f"INSERT INTO correlations ({_CORRELATION_COLUMNS}, updated_at) VALUES {{values}} "
    "ON CONFLICT(rule, key) DO UPDATE SET definition = excluded.definition, "
    "form = excluded.form, seq = excluded.seq, deadline = excluded.deadline, "
    "gap = excluded.gap, held = excluded.held, updated_at = excluded.updated_at"
)


#: Rows per multi-row statement (at most 8 parameters a row, well under
#: SQLite's limit of 32,766). One statement is one sqlite3_step: the writer
#: thread releases and re-takes the GIL for each, and each re-take waits for
#: the busy event loop to let go (measured: ~1.6 ms a statement, tripling
#: the writer's time), so fewer, larger statements win (executemany would
#: step once per row).
_CHUNK = 1024

#: Progress of a chunk of jobs (v: one row per job, see `_finished_args`).
_ACTION_FINISHED = """
    WITH v(counted, next, attempts, error, now, dead, last, id) AS (VALUES {values})
    UPDATE jobs SET
        errors = errors + v.counted,
        next_action = v.next,
        attempts = v.attempts,
        last_error = COALESCE(v.error, last_error),
        updated_at = v.now,
        state = CASE
            WHEN v.dead THEN 'dead'
            WHEN NOT v.last THEN 'pending'
            WHEN errors + v.counted > 0 THEN 'failed'
            ELSE 'done' END
    FROM v WHERE jobs.id = v.id
"""


def _chunks(items: Sequence[T]) -> Iterator[Sequence[T]]:
    """`items` in as few chunks of at most _CHUNK as possible, of equal size
    (one statement each: see _CHUNK)."""
    if not items:
        return
    count = -(-len(items) // _CHUNK)
    size = -(-len(items) // count)
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _values(rows: int, row: str) -> str:
    return ", ".join([row] * rows)


#: OR IGNORE: a job id is only ever inserted twice when a writer process
#: died after committing it and its batch is written again (the row there
#: already holds the same job).
#: Unmatched events as one JSON array of [seq, id, name, source, received_at, body].
#: received_at travels as text with 17 significant digits ('!' lifts
#: SQLite's default limit of 16), which gives back the exact double (as a
#: JSON number it would be printed with 15); bodies are JSON already.
_UNMATCHED = """
    SELECT json_group_array(json_array(
        seq, event_id, name, source, printf('%!.17g', received_at), json(CAST(body AS TEXT))))
    FROM (SELECT * FROM events WHERE matched = 0 AND seq > ? ORDER BY seq LIMIT ?)
"""

_INSERT_JOB = (
    "INSERT OR IGNORE INTO jobs (id, event_seq, rule, state, next_action, attempts, errors, "
    "last_error, created_at, updated_at, context, firing_key) VALUES "
)
_JOB_ROW = "(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"


def _apply_outcome(row: list[Any], outcome: OutcomeRow) -> None:
    """`_ACTION_FINISHED` on a row of `_INSERT_JOB` columns not written yet
    (the same rules, in Python)."""
    counted, next_action, attempts, error, now, dead, last, _ = _finished_args(outcome)
    row[6] += counted
    row[4] = next_action
    row[5] = attempts
    if error is not None:
        row[7] = error
    row[9] = now
    if dead:
        row[3] = "dead"
    elif not last:
        row[3] = "pending"
    else:
        row[3] = "failed" if row[6] > 0 else "done"


def _finished_args(outcome: OutcomeRow) -> tuple[Any, ...]:
    """Parameters of `_ACTION_FINISHED` for one outcome."""
    job_id, index, last_index, error, attempts, continue_on_error, now = outcome
    failed = error is not None
    dead = failed and not continue_on_error
    return (
        int(failed and not dead),
        index if dead else index + 1,
        attempts,
        error,
        now,
        dead,
        index >= last_index,
        job_id,
    )


#: How long another process's write may block ours (dlq commands, replay).
BUSY_TIMEOUT_MS = 10_000


class JournalDB:
    """The journal's tables on one sqlite3 connection (synchronous).

    Not thread-safe by itself: `Journal` makes sure one thread at a time uses it.
    """

    def __init__(self, conn: sqlite3.Connection, path: Path) -> None:
        self.conn = conn
        self.path = path
        self.last_seq = 0
        self.refresh_last_seq()

    def refresh_last_seq(self) -> None:
        """Re-read the newest seq (after another connection appended events)."""
        self.last_seq = self.conn.execute("SELECT COALESCE(MAX(seq), 0) FROM events").fetchone()[0]

    @classmethod
    def open(cls, state_dir: Path, *, create: bool = True) -> JournalDB:
        """Open (and create or migrate) the journal in `state_dir`."""
        if create:
            ensure_state_dir(state_dir)
        db = state_dir / DB_NAME
        if not db.exists():
            if not create:
                raise JournalError(
                    f"no journal at {db} (the daemon has not run with this state_dir)"
                )
            try:
                create_private(db)
            except OSError as exc:
                raise JournalError(f"cannot create the journal {db}: {exc.strerror}") from None
        try:
            conn = sqlite3.connect(
                db, isolation_level=None, check_same_thread=False, timeout=BUSY_TIMEOUT_MS / 1000
            )
        except sqlite3.Error as exc:
            raise JournalError(
                f"cannot open the journal {db}: {exc}. {recovery_hint(db)}"
            ) from None
        try:
            return cls._prepare(conn, db)
        except BaseException:
            conn.close()
            raise

    @classmethod
    def connect(cls, db: Path) -> JournalDB:
        """Another connection to a journal `open` has already checked and migrated."""
        conn = sqlite3.connect(
            db, isolation_level=None, check_same_thread=False, timeout=BUSY_TIMEOUT_MS / 1000
        )
        conn.execute("PRAGMA synchronous = NORMAL")  # per connection; WAL is in the file
        return cls(conn, db)

    @classmethod
    def open_reader(cls, db: Path) -> JournalDB:
        """A read-only connection to a journal `open` has already checked."""
        conn = sqlite3.connect(
            f"file:{db}?mode=ro", uri=True, isolation_level=None,
            check_same_thread=False, timeout=BUSY_TIMEOUT_MS / 1000,
        )  # fmt: skip
        return cls(conn, db)

    @classmethod
    def _prepare(cls, conn: sqlite3.Connection, db: Path) -> JournalDB:
        try:
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise JournalError(
                    f"the journal {db} has schema version {version}, written by a newer zoomrules "
                    f"(this one knows versions up to {SCHEMA_VERSION}). Fix: run the newer "
                    f"zoomrules again, or restore a backup taken before the upgrade."
                )
            if version and conn.execute("PRAGMA quick_check").fetchone()[0] != "ok":
                raise sqlite3.DatabaseError("integrity check failed")
            # WAL: readers (dlq, journal stats) never block the daemon's writer.
            # synchronous=NORMAL: a commit survives the process being killed
            # (SIGKILL, OOM); only an OS crash or power loss can lose the last
            # few milliseconds of commits.
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA synchronous = NORMAL")
            migrate(conn)
        except sqlite3.OperationalError as exc:
            if "readonly" in str(exc) or "unable to open" in str(exc):
                raise JournalError(
                    f"the journal {db} is not writable ({exc}). Fix: give the daemon's user "
                    f"ownership of {db.parent} and its files (chown -R USER {db.parent})."
                ) from None
            raise JournalError(f"cannot use the journal {db}: {exc}. {recovery_hint(db)}") from None
        except sqlite3.DatabaseError as exc:
            raise JournalError(
                f"the journal {db} is damaged or not a zoomrules journal ({exc}). {recovery_hint(db)}"
            ) from None
        for suffix in ("-wal", "-shm"):
            with contextlib.suppress(FileNotFoundError):
                Path(f"{db}{suffix}").chmod(0o600)
        return cls(conn, db)

    def close(self) -> None:
        self.conn.close()

    @contextlib.contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        self.conn.execute("BEGIN IMMEDIATE")
        last_seq = self.last_seq
        try:
            yield self.conn
        except BaseException:
            # SQLite has already rolled back after some errors (an I/O error,
            # a full disk): then there is nothing left to roll back.
            with contextlib.suppress(sqlite3.Error):
                self.conn.execute("ROLLBACK")
            self.last_seq = last_seq  # the appends it counted are gone
            raise
        self.conn.execute("COMMIT")

    # -- events ---------------------------------------------------------------

    def append_event(self, event: Event, dedup_window: float) -> tuple[int, int] | None:
        """Store `event`; None if the same event was stored within `dedup_window`.

        Returns (seq of the previously stored event, seq of this one): the
        consumer uses the pair to know that no stored event lies between.
        """
        return self.append_events([event], dedup_window)[0]

    def append_events(
        self, events: Sequence[Event], dedup_window: float
    ) -> list[tuple[int, int] | None]:
        """`append_event` for each of `events` in order, in a few statements."""
        return self.append_rows([event_row(event) for event in events], dedup_window)

    def append_rows(
        self, rows: Sequence[EventRow], dedup_window: float
    ) -> list[tuple[int, int] | None]:
        """`append_events` for events already turned into rows (`event_row`).

        One SELECT finds the latest stored row of every id in the batch, one
        INSERT stores the new events. Must run inside a transaction
        (`BEGIN IMMEDIATE`): holding the write lock, the AUTOINCREMENT seqs
        of the inserted rows are consecutive, ending at last_insert_rowid().
        """
        stored, _ = with_ids(rows)
        latest = self._latest_seen({row[0] for row in stored})
        new_rows: list[StoredRow] = []
        #: Per event: its index among the inserted rows, or None if a duplicate.
        slots: list[int | None] = []
        #: Duplicates: a stored seq, or -1 - the index of a row inserted now.
        duplicates: list[int] = []
        for row in stored:
            event_id, received_at = row[0], row[3]
            seen = latest.get(event_id)
            if seen is not None and received_at - seen[1] < dedup_window:
                duplicates.append(seen[0])
                slots.append(None)
                continue
            latest[event_id] = (-1 - len(new_rows), received_at)
            slots.append(len(new_rows))
            new_rows.append(row)
        first = self._insert_events(new_rows)
        if duplicates:
            self.conn.executemany(
                "UPDATE events SET duplicates = duplicates + 1 WHERE seq = ?",
                [(seq if seq > 0 else first + (-1 - seq),) for seq in duplicates],
            )
        results: list[tuple[int, int] | None] = []
        for slot in slots:
            if slot is None:
                results.append(None)
                continue
            seq = first + slot
            results.append((self.last_seq, seq))
            self.last_seq = seq
        return results

    def _latest_seen(self, ids: set[str]) -> dict[str, tuple[int, float]]:
        """event_id -> (seq, received_at) of its latest stored row, for the `ids` stored."""
        latest: dict[str, tuple[int, float]] = {}
        for chunk in _chunks(list(ids)):
            # A bare column next to MAX() comes from the row holding the max.
            for event_id, seq, received_at in self.conn.execute(
                "SELECT event_id, MAX(seq), received_at FROM events "
                f"WHERE event_id IN ({','.join('?' * len(chunk))}) GROUP BY event_id",
                chunk,
            ):
                latest[event_id] = (seq, received_at)
        return latest

    def _insert_events(self, rows: Sequence[EventRow]) -> int:
        """Insert `rows`; returns the seq of the first (the others follow it)."""
        if not rows:
            return 0
        for chunk in _chunks(rows):
            self.conn.execute(
                "INSERT INTO events (event_id, name, source, received_at, body) VALUES "
                + _values(len(chunk), "(?, ?, ?, ?, ?)"),
                [value for row in chunk for value in row],
            )
        return self._last_rowid() - len(rows) + 1

    def _last_rowid(self) -> int:
        # cursor.lastrowid is not updated by executemany().
        rowid: int = self.conn.execute("SELECT last_insert_rowid()").fetchone()[0]
        return rowid

    def seen_recently(self, event_id: str, now: float, window: float) -> bool:
        row = self.conn.execute(
            "SELECT 1 FROM events WHERE event_id = ? AND received_at > ? LIMIT 1",
            (event_id, now - window),
        ).fetchone()
        return row is not None

    def record_seen(self, event: Event) -> None:
        """Store an event handled outside the daemon (replay) as already matched."""
        self.conn.execute(
            "INSERT INTO events (event_id, name, source, received_at, body, matched) "
            "VALUES (?, ?, ?, ?, ?, 1)",
            (event.id, event.name, event.source, event.received_at, orjson.dumps(event.body)),
        )

    def record_dead_letter(
        self,
        event: Event,
        rule: str,
        next_action: int,
        attempts: int,
        error: str,
        errors: int,
        now: float,
        job_id: int | None = None,
    ) -> int:
        """A job run outside the daemon (replay) that failed for good, stored
        as the daemon stores a dead letter (see `_finished_args`), on the
        newest stored row of its event (the event is stored as seen first
        if there is none). Returns the job's id.

        Numbered `MAX(id) + 1` unless `job_id` is given: safe only inside a
        transaction and while no daemon holds the journal, since the daemon
        numbers its jobs in memory from the newest id it read at start.
        """
        (seq,) = self.conn.execute(
            "SELECT MAX(seq) FROM events WHERE event_id = ?", (event.id,)
        ).fetchone()
        if seq is None:
            self.record_seen(event)
            seq = self._last_rowid()
        if job_id is None:
            job_id = self.max_job_id() + 1
        self.conn.execute(
            "INSERT INTO jobs (id, event_seq, rule, state, next_action, attempts, errors, "
            "last_error, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (job_id, seq, rule, DEAD, next_action, attempts, errors, error, now, now),
        )
        return job_id

    def unmatched(self, after_seq: int, limit: int) -> list[StoredEvent]:
        """Committed, unmatched events after `after_seq`, oldest first.

        SQLite builds the whole answer as one JSON array: fetching row by
        row would release and re-take the GIL once per row, each time
        waiting for the daemon's busy event loop (measured: ~80 us a row).
        """
        return stored_events(self.unmatched_json(after_seq, limit))

    def unmatched_json(self, after_seq: int, limit: int) -> str:
        """`unmatched` as one JSON text (see `stored_events`).

        Every stored body is JSON that orjson accepted, which SQLite's JSON
        functions accept too (they keep numbers and escapes as written).
        """
        (text,) = self.conn.execute(_UNMATCHED, (after_seq, limit)).fetchone()
        return text or "[]"

    # -- jobs -----------------------------------------------------------------

    def record_jobs(
        self,
        firings: Sequence[tuple[int, Sequence[Any]]],
        now: float,
        state: Sequence[StateChange] = (),
    ) -> list[int]:
        """Mark events matched and add their jobs as pending, numbered after
        the newest job, and apply `state`; returns the job ids in order. (The
        daemon numbers its jobs itself, see `SqliteJournal.add_jobs`.)"""
        first_id = self.max_job_id() + 1
        self.record_jobs_and_outcomes([(firings, now, first_id, state)], ())
        return list(range(first_id, first_id + sum(len(rules) for _, rules in firings)))

    def record_jobs_and_outcomes(
        self,
        batches: Sequence[JobsRow],
        outcomes: Sequence[OutcomeRow],
    ) -> None:
        """Mark events matched and add their jobs as pending, each batch
        (firings, now, first job id) numbered from its first id; then record
        `outcomes` (no ActionOutcome built per outcome: the writer process's
        usual work).

        An outcome of a job inserted here is folded into the inserted row
        (the job is stored as it ends up, instead of inserted as pending and
        then updated): in one transaction nobody can see the difference,
        and it saves the update statement for the usual case of an action
        that finishes before its job's row was written.
        """
        seqs: list[int] = []
        rows: dict[int, list[Any]] = {}
        for firings, now, first_id, _ in batches:
            job_id = first_id
            for seq, rules in firings:
                seqs.append(seq)
                for rule in rules:
                    # The columns of _INSERT_JOB, in order; a keyed job (a
                    # temporal rule's firing) brings its key and context.
                    name, key, context = (rule, None, None) if rule.__class__ is str else rule
                    rows[job_id] = [
                        job_id, seq, name, "pending", 0, 0, 0, None, now, now, context, key
                    ]  # fmt: skip
                    job_id += 1
        later: list[OutcomeRow] = []
        for outcome in outcomes:
            row = rows.get(outcome[0])
            if row is None:
                later.append(outcome)
            else:
                _apply_outcome(row, outcome)
        self._mark_matched(seqs)
        for chunk in _chunks(list(rows.values())):
            self.conn.execute(
                _INSERT_JOB + _values(len(chunk), _JOB_ROW),
                [value for row in chunk for value in row],
            )
        if later:
            self.outcomes_finished(later)
        for _, now, _, state in batches:
            if state:
                self.apply_state(state, now)

    # -- the engine's state between events --------------------------------------

    def apply_state(self, changes: Sequence[StateChange], now: float) -> None:
        """Apply `StateChange`s in order (see engine.journal.store): each run
        of changes of one kind in as few statements as it takes (the same
        correlation twice in a run: the later wins, as in order)."""
        start = 0
        while start < len(changes):
            kind = changes[start][0]
            end = start
            while end < len(changes) and changes[end][0] == kind:
                end += 1
            run = changes[start:end]
            if kind == OPENED:
                self._upsert_correlations(run, now)
            elif kind == CLOSED:
                self._close_correlations(run)
            elif kind == THROTTLED:
                self._throttle_windows(run)
            else:
                raise ValueError(f"unknown state change {kind!r}")
            start = end

    def _upsert_correlations(self, run: Sequence[StateChange], now: float) -> None:
        for chunk in _chunks(run):
            self.conn.execute(
                _UPSERT_CORRELATIONS.format(
                    values=_values(len(chunk), "(?, ?, ?, ?, ?, ?, ?, ?, ?)")
                ),
                [value for change in chunk for value in (*change[1:9], now)],
            )

    def _close_correlations(self, run: Sequence[StateChange]) -> None:
        for chunk in _chunks(run):
            # Through a join: `(rule, key) IN (VALUES ...)` would scan the table.
            self.conn.execute(
                "DELETE FROM correlations WHERE id IN (SELECT c.id FROM (VALUES "
                + _values(len(chunk), "(?, ?)")
                + ") AS v JOIN correlations c ON c.rule = v.column1 AND c.key = v.column2)",
                [value for change in chunk for value in change[1:3]],
            )

    def _throttle_windows(self, run: Sequence[StateChange]) -> None:
        for _, rule, key, expires_at, hits in run:
            if hits == b"[]":
                self.conn.execute(
                    "DELETE FROM throttle_windows WHERE rule = ? AND key = ?", (rule, key)
                )
            else:
                self.conn.execute(
                    "INSERT OR REPLACE INTO throttle_windows (rule, key, hits, expires_at) "
                    "VALUES (?, ?, ?, ?)",
                    (rule, key, hits, expires_at),
                )

    def load_state(self, now: float) -> EngineState:
        """Every open correlation (with the events it holds), and every
        throttle window not expired at `now`."""
        # In the order they were last changed: a rule's oldest comes first
        # (and goes first at its `max_open`).
        correlations = self._with_events(
            self.conn.execute(
                f"SELECT {_CORRELATION_COLUMNS} FROM correlations ORDER BY updated_at, id"
            ).fetchall()
        )
        throttles = [
            ThrottleRow(rule, key, tuple(orjson.loads(hits)))
            for rule, key, hits in self.conn.execute(
                "SELECT rule, key, hits FROM throttle_windows WHERE expires_at > ?", (now,)
            )
        ]
        return EngineState(correlations, throttles)

    def correlations(self, rule: str | None = None, limit: int = 1000) -> list[CorrelationRow]:
        where, args = ("WHERE rule = ?", (rule,)) if rule is not None else ("", ())
        return self._with_events(
            self.conn.execute(
                f"SELECT {_CORRELATION_COLUMNS} FROM correlations {where} "
                "ORDER BY deadline LIMIT ?",
                (*args, limit),
            ).fetchall()
        )

    def _with_events(self, rows: Sequence[tuple[Any, ...]]) -> list[CorrelationRow]:
        """Correlation rows with the events they hold (`CorrelationRow.events`):
        those it names only (`[event time, seq, id]`: its opening event,
        which retention keeps for it) read from `events`; an event no longer
        there is left out."""
        seqs = {held[1] for row in rows for held in orjson.loads(row[7]) if len(held) == 3}
        stored: dict[int, list[Any]] = {}
        for chunk in _chunks(sorted(seqs)):
            for seq, event_id, name, source, received_at, body in self.conn.execute(
                "SELECT seq, event_id, name, source, received_at, body FROM events "
                f"WHERE seq IN ({','.join('?' * len(chunk))})",
                chunk,
            ):
                stored[seq] = [event_id, name, received_at, source, orjson.Fragment(body)]
        return [
            CorrelationRow(
                rule,
                key,
                definition,
                form,
                seq,
                deadline,
                bool(gap),
                orjson.dumps(
                    [
                        entry if len(entry) > 3 else [*entry[:2], *stored[entry[1]]]
                        for entry in orjson.loads(held)
                        if len(entry) > 3 or entry[1] in stored
                    ]
                ),
            )  # fmt: skip
            for rule, key, definition, form, seq, deadline, gap, held in rows
        ]

    def cancel_correlations(self, items: Sequence[tuple[str, str]], *, at_once: bool) -> int:
        """Delete the correlations (`at_once`: no daemon runs) or mark them
        for the daemon to close; how many there were."""
        sql = (
            "DELETE FROM correlations WHERE rule = ? AND key = ?"
            if at_once
            else "UPDATE correlations SET cancelled = 1 WHERE rule = ? AND key = ?"
        )
        return sum(self.conn.execute(sql, item).rowcount for item in items)

    def claim_cancelled(self) -> list[tuple[str, str]]:
        """Correlations marked cancelled; unmarked (the caller closes them)."""
        found = self.conn.execute(
            "SELECT rule, key FROM correlations WHERE cancelled = 1"
        ).fetchall()
        if found:
            self.conn.execute("UPDATE correlations SET cancelled = 0 WHERE cancelled = 1")
        return [(rule, key) for rule, key in found]

    def _mark_matched(self, seqs: Sequence[int]) -> None:
        for chunk in _chunks(seqs):
            self.conn.execute(
                f"UPDATE events SET matched = 1 WHERE seq IN ({','.join('?' * len(chunk))})", chunk
            )

    def action_finished(self, outcome: ActionOutcome, now: float) -> None:
        self.outcomes_finished([(*outcome, now)])

    def outcomes_finished(self, outcomes: Sequence[OutcomeRow]) -> None:
        """Record each outcome (`OutcomeRow`) in order, a chunk of jobs per statement.

        A job appears at most once per chunk: UPDATE ... FROM would apply
        only one of two rows for the same job, in no defined order.
        """
        chunk: list[tuple[Any, ...]] = []
        ids: set[int] = set()
        for outcome in outcomes:
            job_id = outcome[0]
            if job_id in ids or len(chunk) == _CHUNK:
                self._update_jobs(chunk)
                chunk, ids = [], set()
            chunk.append(_finished_args(outcome))
            ids.add(job_id)
        if chunk:
            self._update_jobs(chunk)

    def _update_jobs(self, rows: Sequence[tuple[Any, ...]]) -> None:
        self.conn.execute(
            _ACTION_FINISHED.format(values=_values(len(rows), "(?, ?, ?, ?, ?, ?, ?, ?)")),
            [value for row in rows for value in row],
        )

    def mark_dead(self, job_id: int, error: str, now: float) -> None:
        self.conn.execute(
            "UPDATE jobs SET state = 'dead', last_error = ?, updated_at = ? WHERE id = ?",
            (error, now, job_id),
        )

    def jobs(
        self,
        states: Sequence[str],
        *,
        after_id: int = 0,
        max_id: int | None = None,
        limit: int = 1000,
        ids: Sequence[int] | None = None,
    ) -> list[JobRow]:
        where = [f"j.state IN ({','.join('?' * len(states))})", "j.id > ?"]
        args: list[Any] = [*states, after_id]
        if max_id is not None:
            where.append("j.id <= ?")
            args.append(max_id)
        if ids is not None:
            where.append(f"j.id IN ({','.join('?' * len(ids))})")
            args.extend(ids)
        rows = self.conn.execute(
            f"SELECT {_JOB_COLUMNS} FROM jobs j JOIN events e ON e.seq = j.event_seq "
            f"WHERE {' AND '.join(where)} ORDER BY j.id LIMIT ?",
            (*args, limit),
        ).fetchall()
        return [job_from_row(row) for row in rows]

    def job(self, job_id: int) -> JobRow | None:
        found = self.jobs(JOB_STATES, ids=[job_id], limit=1)
        return found[0] if found else None

    def max_job_id(self) -> int:
        newest: int = self.conn.execute("SELECT COALESCE(MAX(id), 0) FROM jobs").fetchone()[0]
        return newest

    def set_state(
        self, ids: Sequence[int], state: str, from_states: Sequence[str], now: float
    ) -> int:
        """Move the jobs `ids` that are in one of `from_states` to `state`; returns how many."""
        if not ids:
            return 0
        cursor = self.conn.execute(
            f"UPDATE jobs SET state = ?, updated_at = ? WHERE id IN ({','.join('?' * len(ids))}) "
            f"AND state IN ({','.join('?' * len(from_states))})",
            (state, now, *ids, *from_states),
        )
        return cursor.rowcount

    def requeue_retries(self, now: float) -> int:
        """Jobs re-queued while no daemon ran become plain pending; returns the max job id."""
        with self.transaction():
            self.conn.execute(
                "UPDATE jobs SET state = ?, updated_at = ? WHERE state = ?", (PENDING, now, RETRY)
            )
        return self.max_job_id()

    def retry_now(self, ids: Sequence[int], now: float) -> list[JobRow]:
        """Dead (or re-queued) jobs `ids` made pending, for the caller to run."""
        self.set_state(ids, PENDING, [DEAD, RETRY], now)
        return self.jobs([PENDING], ids=ids, limit=len(ids) or 1)

    def claim_retries(self, now: float, limit: int = 1000) -> list[JobRow]:
        """Jobs re-queued by `dlq retry`, moved to pending for this process to run."""
        rows = self.jobs([RETRY], limit=limit)
        self.set_state([row.id for row in rows], PENDING, [RETRY], now)
        return rows

    def delete_jobs(self, ids: Sequence[int], states: Sequence[str]) -> int:
        if not ids:
            return 0
        cursor = self.conn.execute(
            f"DELETE FROM jobs WHERE id IN ({','.join('?' * len(ids))}) "
            f"AND state IN ({','.join('?' * len(states))})",
            (*ids, *states),
        )
        return cursor.rowcount

    def dead_before(self, cutoff: float) -> list[int]:
        rows = self.conn.execute(
            "SELECT id FROM jobs WHERE state = 'dead' AND updated_at < ?", (cutoff,)
        ).fetchall()
        return [row[0] for row in rows]

    # -- marks ----------------------------------------------------------------

    def read_mark(self, name: str) -> float | None:
        row = self.conn.execute("SELECT value FROM marks WHERE name = ?", (name,)).fetchone()
        return None if row is None else float(row[0])

    def write_mark(self, name: str, value: float, now: float) -> None:
        self.conn.execute(
            "INSERT INTO marks (name, value, updated_at) VALUES (?, ?, ?) "
            "ON CONFLICT(name) DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at",
            (name, value, now),
        )

    def marks(self) -> dict[str, float]:
        return dict(self.conn.execute("SELECT name, value FROM marks ORDER BY name").fetchall())

    # -- retention and stats --------------------------------------------------

    def purge_expired(
        self, now: float, retention: float, keep_events: float, chunk: int = 5000
    ) -> int:
        """Delete one chunk of finished jobs and old events; returns rows deleted."""
        conn = self.conn
        cutoff = now - retention
        jobs = conn.execute(
            "DELETE FROM jobs WHERE id IN (SELECT id FROM jobs WHERE state IN ('done', 'failed') "
            "AND updated_at < ? LIMIT ?)",
            (cutoff, chunk),
        ).rowcount
        # Events stay while a job still needs them (pending, dead letters) or
        # an open correlation may fire on them, and for the dedup window,
        # whichever is longer.
        events = conn.execute(
            "DELETE FROM events WHERE seq IN (SELECT seq FROM events e WHERE matched = 1 "
            "AND received_at < ? AND NOT EXISTS (SELECT 1 FROM jobs j WHERE j.event_seq = e.seq) "
            "AND NOT EXISTS (SELECT 1 FROM correlations c WHERE c.seq = e.seq) LIMIT ?)",
            (now - max(retention, keep_events), chunk),
        ).rowcount
        # Throttle windows whose last firing is older than their `per`.
        windows = conn.execute(
            "DELETE FROM throttle_windows WHERE (rule, key) IN (SELECT rule, key "
            "FROM throttle_windows WHERE expires_at < ? LIMIT ?)",
            (now, chunk),
        ).rowcount
        return jobs + events + windows

    def stats(self) -> dict[str, Any]:
        conn = self.conn
        counts = dict.fromkeys(JOB_STATES, 0)
        counts.update(conn.execute("SELECT state, COUNT(*) FROM jobs GROUP BY state").fetchall())
        events, unmatched, duplicates, oldest = conn.execute(
            "SELECT COUNT(*), COALESCE(SUM(matched = 0), 0), COALESCE(SUM(duplicates), 0), "
            "MIN(received_at) FROM events"
        ).fetchone()
        sizes = self.file_sizes()
        (correlations,) = conn.execute("SELECT COUNT(*) FROM correlations").fetchone()
        return {
            "path": str(self.path),
            "schema_version": SCHEMA_VERSION,
            "correlations": correlations,
            "events": events,
            "events_unmatched": unmatched,
            "duplicates_dropped": duplicates,
            "oldest_event_at": oldest,
            "jobs": counts,
            "marks": self.marks(),
            "bytes": sum(sizes.values()),
            "files": sizes,
        }

    def file_sizes(self) -> dict[str, int]:
        """Bytes of the database's files: `db`, its `-wal` and `-shm`."""
        return {
            suffix or "db": _size(Path(f"{self.path}{suffix}")) for suffix in ("", "-wal", "-shm")
        }


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0
