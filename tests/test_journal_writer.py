"""The journal's writer: a separate process by default, a thread as the fallback.

Whatever happens to the writer process (killed mid-batch, signalled), every
appended event and every job outcome ends up committed exactly once.
"""

from __future__ import annotations

import io
import logging
import marshal
import os
import signal
import sqlite3
import sys
from pathlib import Path

import anyio
import psutil
import pytest
from test_journal_support import meeting_events

from engine.config import EngineConfig
from engine.errors import InvalidEvent
from engine.events import Event
from engine.journal.sqlite.db import JournalDB
from engine.journal.sqlite.rows import event_row
from engine.journal.sqlite.store import SqliteJournal, open_store
from engine.journal.sqlite.writer import serve
from engine.journal.store import ActionOutcome

EVENTS = 3000


def _events(count: int) -> list[Event]:
    return [Event.from_body(body, source="test") for body in meeting_events(count)]


async def _until(predicate, timeout: float = 30) -> None:  # type: ignore[no-untyped-def]
    with anyio.fail_after(timeout):
        while not predicate():  # noqa: ASYNC110 - the journal's counters have no event
            await anyio.sleep(0.01)


async def _append_all(journal: SqliteJournal, events: list[Event], at: int, disturb) -> None:  # type: ignore[no-untyped-def]
    for index, event in enumerate(events):
        await journal.append(event)
        if index == at:
            disturb()


async def _record_jobs(journal: SqliteJournal, at: int, disturb) -> list[int]:  # type: ignore[no-untyped-def]
    """A job per stored event, then its outcome; `disturb` half-way through."""
    seqs: list[int] = await journal.call(
        lambda db: [row[0] for row in db.conn.execute("SELECT seq FROM events ORDER BY seq")]
    )
    ids = [job for job, _ in await journal.add_jobs([(seq, ["rule"]) for seq in seqs])]
    for index, job_id in enumerate(ids):
        await journal.record_outcome(*ActionOutcome(job_id, 0, 0, None, 1, False))
        if index == at:
            disturb()
    return ids


def _stored(state_dir: Path) -> tuple[int, int, list[tuple[str, int]]]:
    conn = sqlite3.connect(state_dir / "journal.db")
    try:
        events = conn.execute("SELECT COUNT(*) FROM events").fetchone()[0]
        distinct = conn.execute("SELECT COUNT(DISTINCT event_id) FROM events").fetchone()[0]
        states = conn.execute("SELECT state, COUNT(*) FROM jobs GROUP BY state").fetchall()
    finally:
        conn.close()
    return events, distinct, states


@pytest.mark.anyio
@pytest.mark.parametrize("writer", ["process", "thread"])
async def test_everything_queued_is_committed(writer: str, tmp_path: Path) -> None:
    config = EngineConfig(state_dir=tmp_path / "state")
    async with open_store(config, writer=writer) as journal:
        assert (journal.writer_pid is not None) == (writer == "process")
        await _append_all(journal, _events(EVENTS), -1, lambda: None)
        await _until(lambda: journal.counters.appended == EVENTS)
        await _record_jobs(journal, -1, lambda: None)
    assert _stored(tmp_path / "state") == (EVENTS, EVENTS, [("done", EVENTS)])


@pytest.mark.anyio
@pytest.mark.parametrize("kill_during", ["appends", "jobs"])
async def test_a_killed_writer_process_loses_nothing(
    kill_during: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    config = EngineConfig(state_dir=tmp_path / "state")
    caplog.set_level(logging.ERROR, logger="zoomrules.journal")
    async with open_store(config) as journal:
        pid = journal.writer_pid
        assert pid is not None

        def kill_writer() -> None:
            os.kill(pid, signal.SIGKILL)

        appends_at = EVENTS // 2 if kill_during == "appends" else -1
        await _append_all(journal, _events(EVENTS), appends_at, kill_writer)
        await _until(lambda: journal.counters.appended + journal.counters.duplicates == EVENTS)
        await _record_jobs(journal, EVENTS // 3 if kill_during == "jobs" else -1, kill_writer)
        # No new process: the journal goes on from a thread.
        await _until(lambda: journal.writer_pid is None)
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == "zombie"
    assert "writing from a thread of the daemon from now on" in caplog.text
    # Each event stored once (one the dead process had committed counts as
    # a duplicate of itself when written again), every job done.
    assert _stored(tmp_path / "state") == (EVENTS, EVENTS, [("done", EVENTS)])


@pytest.mark.anyio
async def test_signals_for_the_daemon_do_not_stop_the_writer(tmp_path: Path) -> None:
    """systemd signals the whole service; Ctrl-C the terminal's process group."""
    config = EngineConfig(state_dir=tmp_path / "state")
    async with open_store(config) as journal:
        pid = journal.writer_pid
        assert pid is not None
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            os.kill(pid, sig)
        await _append_all(journal, _events(500), -1, lambda: None)
        await _until(lambda: journal.counters.appended == 500)
        assert journal.writer_pid == pid and psutil.Process(pid).status() != "zombie"
    # Closing the journal ends it.
    await _until(lambda: not psutil.pid_exists(pid) or psutil.Process(pid).status() == "zombie")
    assert _stored(tmp_path / "state")[:2] == (500, 500)


@pytest.mark.anyio
@pytest.mark.parametrize("python", ["/nonexistent/python3", "/bin/false"])
async def test_no_writer_process_means_a_thread_writer(
    python: str, tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A writer that cannot start, or dies before it is ready: the journal still works."""
    config = EngineConfig(state_dir=tmp_path / "state")
    monkeypatch.setattr(sys, "executable", python)
    caplog.set_level(logging.WARNING, logger="zoomrules.journal")
    async with open_store(config) as journal:
        assert journal.writer_pid is None
        await _append_all(journal, _events(100), -1, lambda: None)
        await _until(lambda: journal.counters.appended == 100)
    assert "writing from a thread of the daemon instead" in caplog.text
    assert _stored(tmp_path / "state")[:2] == (100, 100)


def test_events_read_back_are_the_events_appended(tmp_path: Path) -> None:
    """Read-back goes through SQLite's JSON functions: nothing may change on the way."""
    texts = [
        '{"event": "meeting.started", "payload": {"n": 1180591620717411303424, "f": 0.1}}',
        '{"event": "meeting.ended", "a": 1, "a": 2, "s": "\\u00e9\\ud83d\\ude00\\u0000"}',
        '{"event": "x.y", "big": 123456789012345678901234567890.5, "e": 1E5, "z": -0}',
        '{"event": "deep", "d": ' + "[" * 200 + "]" * 200 + "}",
    ]
    events = [Event.from_json(text, source=f"s{i}") for i, text in enumerate(texts)] + [
        Event.from_body({"event": "no.raw", "k": [1, {"x": None}]}, source="body")
    ]
    # received_at with every digit a double has.
    events = [
        Event(e.name, e.body, e.id, 1764281234.1234567 + i / 3, e.source, e.raw)
        for i, e in enumerate(events)
    ]
    db = JournalDB.open(tmp_path / "state")
    try:
        with db.transaction():
            db.append_events(events, 0)
        back = db.unmatched(0, 100)
    finally:
        db.close()
    assert [stored.event for stored in back] == events  # name, body, id, received_at, source
    assert [stored.seq for stored in back] == [1, 2, 3, 4, 5]


def test_an_event_nested_too_deeply_to_encode_is_invalid() -> None:
    """Not a crash of the listener: an InvalidEvent, which it counts and skips."""
    text = '{"event": "deep", "d": ' + "[" * 400 + "]" * 400 + "}"
    with pytest.raises(InvalidEvent, match="cannot be encoded"):
        Event.from_json(text, source="test")


@pytest.mark.anyio
async def test_the_writer_process_ends_with_the_journal_even_on_an_error(tmp_path: Path) -> None:
    config = EngineConfig(state_dir=tmp_path / "state")
    pid: int | None = None
    # Well under the 30 s a stopping journal gives a writer that does not answer.
    with anyio.fail_after(10), pytest.raises(BaseException) as raised:  # noqa: PT011
        async with open_store(config) as journal:
            pid = journal.writer_pid
            await _append_all(journal, _events(300), -1, lambda: None)
            raise RuntimeError("the daemon failed")  # arrives in an ExceptionGroup
    assert "the daemon failed" in repr(raised.value)
    assert pid is not None
    await _until(lambda: not psutil.pid_exists(pid) or psutil.Process(pid).status() == "zombie")


def test_the_writer_stops_quietly_when_the_daemon_goes_mid_message(tmp_path: Path) -> None:
    """A daemon killed half-way through sending a batch: no traceback, no write."""
    JournalDB.open(tmp_path / "state").close()
    event = Event.from_body(meeting_events(1)[0], source="test")
    data = marshal.dumps(([event_row(event)], [], [], 0.0))
    truncated = len(data).to_bytes(8, "big") + data[: len(data) // 2]
    out = io.BytesIO()
    serve(tmp_path / "state" / "journal.db", io.BytesIO(truncated), out)
    assert out.getvalue().endswith(marshal.dumps("ready"))
    assert _stored(tmp_path / "state")[:2] == (0, 0)
