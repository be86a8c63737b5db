"""The SQLite journal's schema and its migrations.

`MIGRATIONS[n]` brings a database from version n-1 to n (kept in
`PRAGMA user_version`); each runs in its own transaction.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Callable

log = logging.getLogger("zoomrules.journal")

#: The schema this code writes; `MIGRATIONS[n]` brings a database from n-1 to n.
SCHEMA_VERSION = 4


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


def _v3(conn: sqlite3.Connection) -> None:
    # v3: marks, a name -> epoch seconds map the engine keeps across restarts
    # (`JournalStore.read_mark` / `write_mark`: when each subscription was
    # last known connected, for the connection-gap event).
    conn.execute(
        "CREATE TABLE marks (name TEXT PRIMARY KEY, value REAL NOT NULL, "
        "updated_at REAL NOT NULL) WITHOUT ROWID"
    )


def _v4(conn: sqlite3.Connection) -> None:
    # v4: the engine's state between events. Temporal rules' open
    # correlations (engine.correlate) with their deadlines, naming the events
    # they hold (`held`: [event time, seq, id], the opening event first; the
    # events stay in `events` while a correlation holds them), and throttle
    # windows; both changed in the transaction that records the jobs of the
    # same events. A temporal rule's firing is a job with a key of its own
    # (rule, correlation key, opening event: one job per firing) and the
    # metadata its actions see (the opening event, lateness, gaps).
    _script(
        conn,
        """
        ALTER TABLE jobs ADD COLUMN context BLOB;
        ALTER TABLE jobs ADD COLUMN firing_key TEXT;
        CREATE UNIQUE INDEX jobs_by_firing ON jobs(firing_key) WHERE firing_key IS NOT NULL;
        CREATE TABLE correlations (
            id          INTEGER PRIMARY KEY,
            rule        TEXT    NOT NULL,
            key         TEXT    NOT NULL,
            definition  TEXT    NOT NULL,
            form        TEXT    NOT NULL,
            seq         INTEGER,
            deadline    REAL    NOT NULL,
            gap         INTEGER NOT NULL DEFAULT 0,
            held        BLOB    NOT NULL,
            cancelled   INTEGER NOT NULL DEFAULT 0,
            updated_at  REAL    NOT NULL,
            UNIQUE (rule, key)
        );
        CREATE INDEX correlations_by_seq ON correlations(seq);
        CREATE TABLE throttle_windows (
            rule        TEXT    NOT NULL,
            key         TEXT    NOT NULL,
            hits        BLOB    NOT NULL,
            expires_at  REAL    NOT NULL,
            PRIMARY KEY (rule, key)
        ) WITHOUT ROWID
        """,
    )


MIGRATIONS: dict[int, Callable[[sqlite3.Connection], None]] = {
    1: _v1,
    2: _v2,
    3: _v3,
    4: _v4,
}


def migrate(conn: sqlite3.Connection, target: int = SCHEMA_VERSION) -> int:
    """Apply the missing migrations, each in its own transaction; returns the old version."""
    current: int = conn.execute("PRAGMA user_version").fetchone()[0]
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
