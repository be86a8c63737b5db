"""The SQLite journal while its storage refuses writes: nothing dropped, nothing reordered.

The refusal is injected below the journal's own code: the database's
`append_rows` (the first statement of every segment) raises the error SQLite
raises for a full disk, a given number of times. The process writer's path
is tested for real, with a file-size limit, in test_full_disk.py.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import anyio
import orjson
import pytest
from test_journal_support import meeting_events

from engine.config import EngineConfig
from engine.events import Event
from engine.journal.sqlite.batches import storage_failure
from engine.journal.sqlite.db import JournalDB
from engine.journal.sqlite.store import open_store

pytestmark = pytest.mark.anyio


def _disk_full() -> sqlite3.OperationalError:
    error = sqlite3.OperationalError("database or disk is full")
    error.sqlite_errorcode = 13  # type: ignore[attr-defined]  # SQLITE_FULL
    error.sqlite_errorname = "SQLITE_FULL"  # type: ignore[attr-defined]
    return error


def test_storage_failures_are_told_apart_from_bad_operations() -> None:
    assert storage_failure(_disk_full())
    io = sqlite3.OperationalError("disk I/O error")
    io.sqlite_errorcode = 778  # type: ignore[attr-defined]  # SQLITE_IOERR_WRITE
    assert storage_failure(io)
    constraint = sqlite3.IntegrityError("UNIQUE constraint failed")
    constraint.sqlite_errorcode = 2067  # type: ignore[attr-defined]  # SQLITE_CONSTRAINT_UNIQUE
    assert not storage_failure(constraint)
    assert not storage_failure(ValueError("not sqlite"))


class Refusing:
    """Makes `JournalDB.append_rows` refuse `times` times, counting its calls."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, times: int) -> None:
        self.left = times
        self.calls = 0
        original = JournalDB.append_rows

        def append_rows(db: JournalDB, *args: Any, **kwargs: Any) -> Any:
            self.calls += 1
            if self.left > 0:
                self.left -= 1
                raise _disk_full()
            return original(db, *args, **kwargs)

        monkeypatch.setattr(JournalDB, "append_rows", append_rows)


async def _committed(journal: Any, count: int, timeout: float = 30) -> list[Event]:
    taken: list[Event] = []
    with anyio.fail_after(timeout):
        while len(taken) < count:
            _, events = await journal.take_events(count)
            if not events:
                await journal.wait_for_events()
            taken.extend(events)
    return taken


async def test_refused_writes_are_kept_and_written_again_in_order(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    events = [Event.from_body(body, source="test") for body in meeting_events(300)]
    async with open_store(
        EngineConfig(state_dir=tmp_path), writer="thread", max_batch=16
    ) as journal:
        for event in events[:10]:
            await journal.append(event)
        assert [e.id for e in await _committed(journal, 10)] == [e.id for e in events[:10]]

        refusing = Refusing(monkeypatch, times=5)
        for event in events[10:]:
            await journal.append(event)
        taken = await _committed(journal, 290)
        assert journal.health().ok
    # Every event, in the order read, none twice.
    assert [e.id for e in taken] == [e.id for e in events[10:]]
    assert refusing.left == 0 and refusing.calls > 5
    assert journal.counters.appended == 300 and journal.counters.unwritten == 0
    assert "cannot write" in caplog.text and "writing again" in caplog.text
    assert "write failed" not in caplog.text
    with _open(tmp_path) as db:
        seqs = [row[0] for row in db.conn.execute("SELECT event_id FROM events ORDER BY seq")]
    assert seqs == [e.id for e in events]


class _open:  # noqa: N801 - a context manager read like a function
    def __init__(self, state: Path) -> None:
        self.db = JournalDB.open(state, create=False)

    def __enter__(self) -> JournalDB:
        return self.db

    def __exit__(self, *exc: object) -> None:
        self.db.close()


async def test_intake_stops_at_the_memory_bound_while_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`append` waits (the socket is not read) once `journal_buffer` is held."""
    events = [Event.from_body(body, source="test") for body in meeting_events(200)]
    size = len(orjson.dumps(events[0].body))
    engine = EngineConfig(state_dir=tmp_path, journal_buffer=20 * size)
    async with open_store(engine, writer="thread") as journal:
        refusing = Refusing(monkeypatch, times=10**9)
        appended = 0
        with anyio.move_on_after(3) as scope:
            for event in events:
                await journal.append(event)
                appended += 1
        assert scope.cancelled_caught, "append never waited"
        assert appended < 60
        health = journal.health()
        assert not health.ok and "intake stopped" in health.detail
        refusing.left = 0  # space returns
        taken = await _committed(journal, appended)
        assert [e.id for e in taken] == [e.id for e in events[:appended]]
        assert journal.health().ok
