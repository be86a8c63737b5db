"""`JournalAdmin.record_dead_letter`: how `replay` keeps a failed job as a dead letter."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import anyio
import pytest
from conftest import example

from engine.config import EngineConfig
from engine.events import Event
from engine.journal import DEAD, open_journal, open_journal_admin
from engine.journal.sqlite.db import JournalDB
from engine.journal.sqlite.files import DB_NAME, exclusive_lock


def _journal(tmp_path: Path) -> None:
    JournalDB.open(tmp_path / "state").close()  # the daemon's first start creates it


def _engine(tmp_path: Path) -> EngineConfig:
    return EngineConfig(state_dir=tmp_path / "state")


def _event(n: int) -> Event:
    body: dict[str, Any] = example("meeting.ended")
    body["payload"]["object"]["id"] = f"m-{n}"
    return Event.from_body(body, source="replay:test")


@pytest.mark.anyio
async def test_record_dead_letter_stores_the_shape_dlq_retry_expects(tmp_path: Path) -> None:
    _journal(tmp_path)
    engine = _engine(tmp_path)
    seen, unseen = _event(1), _event(2)
    async with open_journal_admin(engine) as admin:
        assert await admin.record_seen(seen)
        first = await admin.record_dead_letter(seen, "archive", 1, 3, "HTTP 503", errors=1)
        # An event not recorded as seen yet is stored with its dead letter.
        second = await admin.record_dead_letter(unseen, "archive", 0, 1, "boom")
        assert (first, second) == (1, 2)
        row = await admin.job(1)
        assert row is not None
        assert (row.rule, row.state, row.next_action, row.attempts, row.errors, row.last_error) == (
            "archive", DEAD, 1, 3, 1, "HTTP 503",
        )  # fmt: skip
        assert row.event.id == seen.id and row.event.body == seen.body
        assert [r.id for r in await admin.dead_letters(10)] == [1, 2]
        assert await admin.seen_recently(unseen.id, unseen.received_at, 60)
        with exclusive_lock(tmp_path / "state") as locked:  # a daemon holds the journal
            assert locked
            assert await admin.record_dead_letter(_event(3), "archive", 0, 1, "x") is None
    conn = sqlite3.connect(tmp_path / "state" / DB_NAME)
    try:
        # The event recorded as seen is used, not stored again; both count as matched.
        assert conn.execute("SELECT COUNT(*), SUM(matched) FROM events").fetchone() == (2, 2)
    finally:
        conn.close()
    # The process that runs jobs picks them up as any dead letter.
    async with open_journal(engine, writer="thread", tidy=False) as store:
        rows = await store.retry_now([1, 2])
        assert [(r.id, r.next_action, r.state) for r in rows] == [
            (1, 1, "pending"),
            (2, 0, "pending"),
        ]


@pytest.mark.anyio
async def test_the_daemons_store_numbers_dead_letters_with_its_own_jobs(tmp_path: Path) -> None:
    async with open_journal(_engine(tmp_path), writer="thread", tidy=False) as store:
        event = _event(1)
        await store.append(event)
        with anyio.fail_after(30):  # a safety net, not a measurement
            while not (seqs := (await store.take_events(10))[0]):
                await store.wait_for_events()
        assert await store.add_jobs([(seqs[0], ["a"])]) == [(1, 0)]
        assert await store.record_dead_letter(event, "a", 0, 2, "down") == 2
        row = await store.job(2)
        assert row is not None and row.state == DEAD and row.event_seq == seqs[0]
