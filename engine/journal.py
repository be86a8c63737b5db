"""The journal: durable state in one SQLite database (WAL) under `[engine] state_dir`.

Zoom never redelivers what a WebSocket client missed, so once an event has
been read from the socket this file is the only copy. It holds:

- `events`: every event read (body, id, when), `matched` once its jobs exist;
- `jobs`: one row per (event, rule) firing: `pending` until its actions end,
  then `done`, `failed` (a `continue_on_error` action failed) or `dead`
  (an action failed for good: a dead letter); `retry` marks a dead letter
  re-queued by `zoomrules dlq retry`. `next_action` is where a resumed job
  starts (actions before it already succeeded).

`JournalDB` is the synchronous store (used directly by the `dlq` and
`journal` commands); `Journal` wraps it for the daemon: ONE connection, used
by one writer task that batches every operation queued while the previous
commit ran (group commit), so the journal does not cap throughput.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import sqlite3
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, NamedTuple, TypeVar

import anyio
import orjson
from anyio.abc import TaskStatus

from engine.config import EngineConfig
from engine.errors import JournalBusy, JournalError
from engine.events import Event
from engine.events import event_id as identify

if TYPE_CHECKING:
    from engine.journal_writer import WriterProcess

log = logging.getLogger("zoomrules.journal")
T = TypeVar("T")

DB_NAME = "journal.db"
LOCK_NAME = "journal.lock"
#: The schema this code writes; `MIGRATIONS[n]` brings a database from n-1 to n.
SCHEMA_VERSION = 2
#: States of a job row.
PENDING, RETRY, DONE, FAILED, DEAD = "pending", "retry", "done", "failed", "dead"
JOB_STATES = (PENDING, RETRY, DONE, FAILED, DEAD)
#: How long another process's write may block ours (dlq commands, replay).
BUSY_TIMEOUT_MS = 10_000


# --------------------------------------------------------------------------
# schema and migrations


def _v1(conn: sqlite3.Connection) -> None:
    # Statement by statement: executescript() would commit the migration's
    # transaction half-way.
    _script(
        conn,
        """
        CREATE TABLE events (
            seq         INTEGER PRIMARY KEY AUTOINCREMENT,
            event_id    TEXT    NOT NULL,
            name        TEXT    NOT NULL,
            source      TEXT    NOT NULL,
            received_at REAL    NOT NULL,
            body        BLOB    NOT NULL,
            matched     INTEGER NOT NULL DEFAULT 0
        );
        CREATE INDEX events_by_event_id ON events(event_id);
        CREATE INDEX events_unmatched ON events(seq) WHERE matched = 0;
        CREATE TABLE jobs (
            id          INTEGER PRIMARY KEY AUTOINCREMENT,
            event_seq   INTEGER NOT NULL REFERENCES events(seq),
            rule        TEXT    NOT NULL,
            state       TEXT    NOT NULL,
            next_action INTEGER NOT NULL DEFAULT 0,
            attempts    INTEGER NOT NULL DEFAULT 0,
            last_error  TEXT,
            created_at  REAL    NOT NULL,
            updated_at  REAL    NOT NULL
        );
        CREATE INDEX jobs_by_state ON jobs(state, updated_at);
        CREATE INDEX jobs_by_event ON jobs(event_seq);
        """,
    )


def _script(conn: sqlite3.Connection, script: str) -> None:
    for statement in script.split(";"):
        if statement.strip():
            conn.execute(statement)


def _v2(conn: sqlite3.Connection) -> None:
    # v2: count failed continue_on_error actions (so a finished job can be
    # told apart as `failed`) and duplicate deliveries of each event.
    conn.execute("ALTER TABLE jobs ADD COLUMN errors INTEGER NOT NULL DEFAULT 0")
    conn.execute("ALTER TABLE events ADD COLUMN duplicates INTEGER NOT NULL DEFAULT 0")


MIGRATIONS: dict[int, Callable[[sqlite3.Connection], None]] = {1: _v1, 2: _v2}


def migrate(conn: sqlite3.Connection, target: int = SCHEMA_VERSION) -> int:
    """Apply the missing migrations, each in its own transaction; returns the old version."""
    current = conn.execute("PRAGMA user_version").fetchone()[0]
    for version in range(current + 1, target + 1):
        conn.execute("BEGIN IMMEDIATE")
        try:
            MIGRATIONS[version](conn)
            conn.execute(f"PRAGMA user_version = {version}")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")
        if current:
            log.info("journal: migrated the schema from version %d to %d", version - 1, version)
    return current


# --------------------------------------------------------------------------
# rows


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

    def as_dict(self) -> dict[str, Any]:
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
        }


class ActionOutcome(NamedTuple):
    """What the dispatcher reports after one action of a journaled job."""

    job_id: int
    index: int
    last_index: int
    error: str | None
    attempts: int
    continue_on_error: bool


_JOB_COLUMNS = (
    "j.id, j.event_seq, j.rule, j.state, j.next_action, j.attempts, j.errors, j.last_error, "
    "j.created_at, j.updated_at, e.event_id, e.name, e.source, e.received_at, e.body"
)


#: An event as the `events` table stores it: (event_id, name, source, received_at, body).
#: The event loop leaves the id None when it has not been computed yet and
#: the body is the event's JSON as received: the writer computes it
#: (`with_ids`).
EventRow = tuple[str | None, str, str, float, bytes]
#: An action outcome as queued and sent to the writer: the fields of
#: `ActionOutcome`, then when it was recorded.
OutcomeRow = tuple[int, int, int, str | None, int, bool, float]
#: New jobs as queued: (firings, when, first job id), see `Journal.queue_jobs`.
JobsRow = tuple[Sequence[tuple[int, Sequence[str]]], float, int]


def event_row(event: Event) -> EventRow:
    raw = event.raw
    if raw is None:
        return (event.id, event.name, event.source, event.received_at, orjson.dumps(event.body))
    # The JSON as received (no second encoding on the event loop; it decodes
    # to the same body), and the id only if already known: hashing the
    # canonical JSON is done where the row is stored, in the writer process,
    # and the id comes back with the commit (`with_ids`, `Event.settle_id`).
    return (event.known_id, event.name, event.source, event.received_at, raw)


def with_ids(rows: Sequence[EventRow]) -> tuple[Sequence[EventRow], list[str] | None]:
    """`rows` with every id filled in, and all their ids in order (None if
    none was missing).

    A missing id is computed from the row's body, the JSON the event was
    decoded from: the same id `Event.id` gives (the event came through
    `Event.from_json`, which only leaves an id to compute when it cannot
    fail).
    """
    if all(row[0] is not None for row in rows):
        return rows, None
    filled = [
        row if row[0] is not None else (identify(orjson.loads(row[4])), *row[1:]) for row in rows
    ]
    return filled, [row[0] for row in filled]  # type: ignore[misc]


def stored_events(unmatched_json: str) -> list[StoredEvent]:
    """Decode `JournalDB.unmatched_json`."""
    rows = sorted(orjson.loads(unmatched_json))
    return [
        StoredEvent(seq, Event(name, body, event_id, float(received_at), source))
        for seq, event_id, name, source, received_at, body in rows
    ]


def _event(row: Sequence[Any]) -> Event:
    event_id, name, source, received_at, body = row
    return Event(
        name=name, body=orjson.loads(body), id=event_id, received_at=received_at, source=source
    )


def _job(row: Sequence[Any]) -> JobRow:
    return JobRow(*row[:10], event=_event(row[10:]))  # type: ignore[misc]


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
    "last_error, created_at, updated_at) VALUES "
)


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


# --------------------------------------------------------------------------
# opening: directory, permissions, corruption, schema version


def _recovery(db: Path) -> str:
    return (
        f"To recover: stop zoomrules, move the damaged file aside "
        f"(mv {db} {db}.broken; also any {db.name}-wal and {db.name}-shm next to it) and start "
        f"again with an empty journal. Pending jobs and dead letters in the old file are not "
        f"run; `sqlite3 {db}.broken .recover | sqlite3 {db}` may salvage them."
    )


def ensure_state_dir(state_dir: Path) -> None:
    """Create `state_dir` owner-only (0700); raise JournalError if it is unusable."""
    hint = (
        f"Fix: create it for the daemon's user (install -d -m 0700 -o USER {state_dir}) or point "
        f"[engine] state_dir / ZOOMRULES_STATE_DIR at a writable directory."
    )
    try:
        if not state_dir.is_dir():
            state_dir.mkdir(mode=0o700, parents=True)
            state_dir.chmod(0o700)  # mkdir's mode is filtered by the umask
    except OSError as exc:
        raise JournalError(
            f"cannot create the state directory {state_dir}: {exc.strerror}. {hint}"
        ) from None
    if not os.access(state_dir, os.W_OK | os.X_OK):
        raise JournalError(f"the state directory {state_dir} is not writable. {hint}")


def _create_private(path: Path) -> None:
    """Create `path` as 0600 before SQLite does (it would use the umask)."""
    fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o600)
    os.close(fd)
    path.chmod(0o600)


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
                _create_private(db)
            except OSError as exc:
                raise JournalError(f"cannot create the journal {db}: {exc.strerror}") from None
        try:
            conn = sqlite3.connect(
                db, isolation_level=None, check_same_thread=False, timeout=BUSY_TIMEOUT_MS / 1000
            )
        except sqlite3.Error as exc:
            raise JournalError(f"cannot open the journal {db}: {exc}. {_recovery(db)}") from None
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
            raise JournalError(f"cannot use the journal {db}: {exc}. {_recovery(db)}") from None
        except sqlite3.DatabaseError as exc:
            raise JournalError(
                f"the journal {db} is damaged or not a zoomrules journal ({exc}). {_recovery(db)}"
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
        rows, _ = with_ids(rows)
        latest = self._latest_seen({row[0] for row in rows})
        new_rows: list[EventRow] = []
        #: Per event: its index among the inserted rows, or None if a duplicate.
        slots: list[int | None] = []
        #: Duplicates: a stored seq, or -1 - the index of a row inserted now.
        duplicates: list[int] = []
        for row in rows:
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

    def record_jobs(self, firings: Sequence[tuple[int, Sequence[str]]], now: float) -> list[int]:
        """Mark events matched and add their jobs as pending, numbered after
        the newest job; returns the job ids in order. (The daemon numbers its
        jobs itself, see `Journal.queue_jobs`.)"""
        first_id = self.max_job_id() + 1
        self.record_jobs_and_outcomes([(firings, now, first_id)], ())
        return list(range(first_id, first_id + sum(len(rules) for _, rules in firings)))

    def record_jobs_and_outcomes(
        self,
        batches: Sequence[tuple[Sequence[tuple[int, Sequence[str]]], float, int]],
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
        for firings, now, first_id in batches:
            job_id = first_id
            for seq, rules in firings:
                seqs.append(seq)
                for rule in rules:
                    # The columns of _INSERT_JOB, in order.
                    rows[job_id] = [job_id, seq, rule, "pending", 0, 0, 0, None, now, now]
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
                _INSERT_JOB + _values(len(chunk), "(?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"),
                [value for row in chunk for value in row],
            )
        if later:
            self.outcomes_finished(later)

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
        return [_job(row) for row in rows]

    def job(self, job_id: int) -> JobRow | None:
        found = self.jobs(JOB_STATES, ids=[job_id], limit=1)
        return found[0] if found else None

    def max_job_id(self) -> int:
        return self.conn.execute("SELECT COALESCE(MAX(id), 0) FROM jobs").fetchone()[0]

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
        # Events stay while a job still needs them (pending, dead letters) and
        # for the dedup window, whichever is longer.
        events = conn.execute(
            "DELETE FROM events WHERE seq IN (SELECT seq FROM events e WHERE matched = 1 "
            "AND received_at < ? AND NOT EXISTS (SELECT 1 FROM jobs j WHERE j.event_seq = e.seq) "
            "LIMIT ?)",
            (now - max(retention, keep_events), chunk),
        ).rowcount
        return jobs + events

    def stats(self) -> dict[str, Any]:
        conn = self.conn
        counts = dict.fromkeys(JOB_STATES, 0)
        counts.update(conn.execute("SELECT state, COUNT(*) FROM jobs GROUP BY state").fetchall())
        events, unmatched, duplicates, oldest = conn.execute(
            "SELECT COUNT(*), COALESCE(SUM(matched = 0), 0), COALESCE(SUM(duplicates), 0), "
            "MIN(received_at) FROM events"
        ).fetchone()
        sizes = {
            suffix or "db": _size(Path(f"{self.path}{suffix}")) for suffix in ("", "-wal", "-shm")
        }
        return {
            "path": str(self.path),
            "schema_version": SCHEMA_VERSION,
            "events": events,
            "events_unmatched": unmatched,
            "duplicates_dropped": duplicates,
            "oldest_event_at": oldest,
            "jobs": counts,
            "bytes": sum(sizes.values()),
            "files": sizes,
        }


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


# --------------------------------------------------------------------------
# the daemon's lock


@contextlib.contextmanager
def exclusive_lock(state_dir: Path, *, wait: bool = False) -> Iterator[bool]:
    """Hold the journal's lock file; yields False (without waiting) if another process has it.

    The running daemon holds it for its lifetime; the kernel releases it if
    the daemon dies, so a crash never leaves a stale lock behind.
    """
    path = state_dir / LOCK_NAME
    fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except OSError as exc:
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise
            yield False
            return
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        yield True
    finally:
        os.close(fd)


def lock_holder(state_dir: Path) -> str:
    try:
        return (state_dir / LOCK_NAME).read_text().strip() or "?"
    except OSError:
        return "?"


# --------------------------------------------------------------------------
# applying a batch of operations (in the writer process or thread)

#: How long a stopping journal waits for its writer process's last answers.
_WRITER_STOP_TIMEOUT = 30.0

#: Kinds of queued ops; see `apply_batch` for how a batch of them runs.
#: _CALL: fn(db); _APPEND: an EventRow; _FINISHED: an OutcomeRow;
#: _JOBS: (firings, when, first job id), see `Journal.queue_jobs`.
_CALL, _APPEND, _FINISHED, _JOBS = 0, 1, 2, 3
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
    except Exception:  # noqa: BLE001 - isolate the failing op below
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
    - Jobs (`_JOBS`) and outcomes (`_FINISHED`) keep their order with
      respect to calls, which may read or change jobs. Between two calls,
      all new jobs are inserted before all outcomes are applied: an outcome
      is always queued after its job's insert, so this keeps every job's
      own order.
    """
    appends = [i for i, (kind, _) in enumerate(ops) if kind == _APPEND]
    if appends:
        stored = db.append_rows([ops[i][1] for i in appends], dedup_window)
        for i, result in zip(appends, stored, strict=True):
            results[i] = result
    jobs: list[Any] = []
    finished: list[Any] = []
    for i, (kind, arg) in enumerate(ops):
        if kind == _JOBS:
            jobs.append(arg)
        elif kind == _FINISHED:
            finished.append(arg)
        elif kind == _CALL:
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
SegmentAnswer = tuple[
    tuple[int, int] | list[tuple[int, int] | None],
    list[tuple[int, str]] | None,
    list[str] | None,
]


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
            return stored[0], None, ids
        return stored, None, ids
    except Exception:  # noqa: BLE001 - isolate the failing op below
        log.warning(
            "journal: a batch of %d failed; retrying one by one",
            len(rows) + len(jobs) + len(finished),
        )
    ops: list[WireOp] = [(_APPEND, row) for row in rows]
    ops.extend((_JOBS, job) for job in jobs)
    ops.extend((_FINISHED, outcome) for outcome in finished)
    results = _one_by_one(db, ops, dedup_window)
    errors = [
        (index, f"{type(error).__name__}: {error}")
        for index, (_, error) in enumerate(results)
        if error is not None
    ]
    return [result for result, _ in results[: len(rows)]], errors or None, ids


# --------------------------------------------------------------------------
# the async side: one writer task, group commit


@dataclass(slots=True)
class _Op:
    """A call (`_CALL`: a function of the database) queued for the writer."""

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

    __slots__ = ("bytes", "carried", "events", "finished", "job_counts", "jobs", "rows", "size")

    def __init__(self) -> None:
        self.events: list[Event] = []
        self.jobs: list[JobsRow] = []
        #: How many jobs each entry of `jobs` numbers.
        self.job_counts: list[int] = []
        #: The first entries of `jobs` were carried here from the segment
        #: before (`Journal._carry`): they are not carried again.
        self.carried = 0
        self.finished: list[OutcomeRow] = []
        #: Ops queued in it (an append, a `queue_jobs` call, an outcome: one each).
        self.size = 0
        #: `events` as stored (`event_row`).
        self.rows: list[EventRow] = []
        #: The size of their JSON bodies.
        self.bytes = 0


@dataclass
class JournalCounters:
    appended: int = 0
    duplicates: int = 0
    commits: int = 0
    ops: int = 0
    write_errors: int = 0
    #: Batches of new jobs held back one segment to meet their outcomes (`_carry`).
    carried: int = 0


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


class Journal:
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
        # A plain deque, not a memory object stream: queuing an op is then a
        # list append with no task switch (a stream send cost ~40 us here).
        self._queue: deque[_Segment | _Op] = deque()
        #: The segment new appends, jobs and outcomes go to: the queue's last
        #: entry, until the writer takes it or a call is queued behind it.
        self._open: _Segment | None = None
        #: Ops in `_queue` (what `queue_size` bounds).
        self._queued = 0
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

    # -- writer ----------------------------------------------------------------

    async def run(self, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """The writer: returns once `close()` was called and every queued op is committed."""
        # Read once, before any job can be queued: the consumer's first batch
        # then starts its jobs at once instead of waiting (as a call) behind
        # every append already sent to the writer.
        self._next_job_id = (
            await anyio.to_thread.run_sync(self.db.max_job_id, limiter=self._limiter) + 1
        )
        if self._writer == "process":
            self._process = await self._start_process()
        async with anyio.create_task_group() as tg:
            if self._process is not None:
                tg.start_soon(self._receive_answers)
            task_status.started()
            try:
                while True:
                    calls, entries = await self._collect()
                    if not calls and not entries:
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
        # Imported here: the writer process module builds on this one.
        from engine.errors import JournalWriterLost
        from engine.journal_writer import WriterProcess

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
            if self._closed:
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
        for op in calls:
            await self._run_call(op)
        for entry in entries:
            if isinstance(entry, _Segment):
                await self._send(entry)
            else:
                await self._run_call(entry)

    async def _run_call(self, op: _Op) -> None:
        # If a writer process was lost, what it had in flight goes first.
        await self._wait_answered()
        results = await anyio.to_thread.run_sync(
            apply_batch, self.db, [(op.kind, op.arg)], self.config.dedup_window,
            limiter=self._limiter,
        )  # fmt: skip
        ((op.result, op.error),) = results
        self.counters.commits += 1
        self.counters.ops += 1
        if op.error is not None:
            self.counters.write_errors += 1
            if op.done is None:
                log.error("journal: write failed: %s", op.error)
        if op.done is not None:
            op.done.set()

    async def _write_in_thread(self, segment: _Segment) -> None:
        answer = await anyio.to_thread.run_sync(
            apply_segment, self.db, segment.rows, segment.jobs, segment.finished,
            self.config.dedup_window, limiter=self._limiter,
        )  # fmt: skip
        self._finish(segment, answer)

    async def _send(self, segment: _Segment) -> None:
        while len(self._in_flight) >= self.max_in_flight:
            await self._answered_event().wait()
        if self._process is None:  # writing from a thread, or lost while we waited
            # After `_writer_lost` has rewritten what was in flight: order matters.
            await self._wait_answered()
            await self._write_in_thread(segment)
            return
        from engine.errors import JournalWriterLost

        self._in_flight.append(segment)
        self._sent.set()
        # If it is gone, `_receive_answers` finds out too and rewrites what is in flight.
        with contextlib.suppress(JournalWriterLost):
            await self._process.send(
                segment.rows, segment.jobs, segment.finished, self.config.dedup_window
            )

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
        from engine.errors import JournalWriterLost

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
        """A committed segment: count it, log its failures, hand its new events on."""
        stored, errors, ids = answer
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
        else:
            self._finish_one_by_one(segment, stored, errors)
            count = sum(result is not None for result in stored)
        if count:
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
                    log.info("duplicate of event %s (%s) dropped", event.id, event.name)
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
            if self._queued < self._queue_size:
                return
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
        op = _Op(_CALL, fn, done=anyio.Event())
        await self._put_call(op)
        assert op.done is not None
        await op.done.wait()
        if op.error is not None:
            raise op.error
        return op.result

    # -- operations --------------------------------------------------------------

    async def append(self, event: Event) -> None:
        """Queue `event` for the journal (waits only while the queue is full)."""
        if self._closed or self._queued >= self._queue_size:
            await self._room()
        row = event_row(event)  # here, so a bad event fails its caller, not the writer
        # `_segment()` and `_added()`, inlined: this runs for every event.
        segment = self._open
        if segment is None or segment.size >= self.max_batch:
            segment = self._segment()
        segment.events.append(event)
        segment.rows.append(row)
        segment.bytes += len(row[4])
        segment.size += 1
        self._queued += 1
        if self._lingering and self._queued >= self.max_batch:
            self._urgent.set()
        if self._writer_waiting:
            self._work.set()

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
        conn = sqlite3.connect(
            f"file:{self.db.path}?mode=ro", uri=True, isolation_level=None,
            check_same_thread=False, timeout=BUSY_TIMEOUT_MS / 1000,
        )  # fmt: skip
        return JournalDB(conn, self.db.path)

    def close_reader(self) -> None:
        if self._reader is not None:
            self._reader.close()
            self._reader = None

    async def queue_jobs(self, firings: Sequence[tuple[int, Sequence[str]]]) -> list[int]:
        """Queue the jobs' `pending` rows without waiting for their commit.

        The ids are handed out here (this process is the journal's only
        writer: the state-directory lock), so the jobs can start at once.
        Ordering keeps this safe: the writer commits ops in queue order (a
        segment's jobs before its outcomes), so a job's `pending` row always
        commits before its outcome; and if the process dies before that
        commit, the event is still unmatched in the journal, so the next
        start matches it again and runs its jobs (at least once).

        `firings` travels to the writer process as it is: (seq, rule names)
        pairs of ints and strings, in lists or tuples.
        """
        count = sum(len(rules) for _, rules in firings)
        if self._next_job_id is None:
            raise RuntimeError("the journal is not running")
        first, self._next_job_id = self._next_job_id, self._next_job_id + count
        if self._closed or self._queued >= self._queue_size:
            await self._room()
        segment = self._segment()
        segment.jobs.append((firings, time.time(), first))
        segment.job_counts.append(count)
        self._added(segment)
        return list(range(first, first + count))

    async def action_finished(self, outcome: ActionOutcome) -> None:
        await self.record_outcome(*outcome)

    async def record_outcome(
        self,
        job_id: int,
        index: int,
        last_index: int,
        error: str | None,
        attempts: int,
        continue_on_error: bool,
    ) -> None:
        """`action_finished(ActionOutcome(...))` without building the ActionOutcome."""
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
        await self._put_call(_Op(_CALL, lambda db: db.mark_dead(job_id, error, now)))


@asynccontextmanager
async def open_journal(config: EngineConfig, **options: Any) -> AsyncIterator[Journal]:
    """Lock, open and run the journal for the block; flushes everything on exit.

    Raises JournalError (with the recovery step) when it cannot be used.
    """
    state_dir = config.state_dir
    ensure_state_dir(state_dir)
    with exclusive_lock(state_dir) as locked:
        if not locked:
            raise JournalBusy(
                f"another zoomrules process (pid {lock_holder(state_dir)}) is using the journal in "
                f"{state_dir}; two daemons must not share a state directory"
            )
        db = await anyio.to_thread.run_sync(lambda: JournalDB.open(state_dir))
        journal = Journal(db, config, **options)
        try:
            async with anyio.create_task_group() as tg:
                await tg.start(journal.run)
                try:
                    yield journal
                finally:
                    with anyio.CancelScope(shield=True):
                        await journal.close()
        finally:
            journal.close_reader()
            db.close()
