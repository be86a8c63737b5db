"""How the journal batches its work: segments, their answers, the in-memory window.

Appends, new jobs and action outcomes queued one after another form a
segment, committed as one batch by the writer (a real process unless the
test says otherwise, on a real SQLite journal). Nothing here sleeps: every
wait is for the journal's own signals, or for the journal to close (which
commits everything queued).
"""

from __future__ import annotations

import io
import logging
import marshal
import sqlite3
from pathlib import Path
from typing import Any

import anyio
import orjson
import pytest
from test_journal_support import meeting_events

from engine.config import EngineConfig
from engine.events import Event, event_id
from engine.journal.sqlite.batches import apply_segment
from engine.journal.sqlite.db import JournalDB
from engine.journal.sqlite.rows import OutcomeRow, event_row
from engine.journal.sqlite.store import SqliteJournal, open_store
from engine.journal.sqlite.writer import serve


def _events(count: int, start: int = 0) -> list[Event]:
    return [Event.from_body(body, source="test") for body in meeting_events(count, start=start)]


def _received(count: int, start: int = 0) -> list[Event]:
    """Events as the listener makes them: from their JSON text, ids not yet computed."""
    return [
        Event.from_json(orjson.dumps(body), source="test")
        for body in meeting_events(count, start=start)
    ]


async def _committed(journal: SqliteJournal, count: int) -> None:
    """Until `count` appends were answered (stored or dropped as duplicates)."""
    with anyio.fail_after(60):  # a safety net, not a measurement
        while True:
            signal = journal.changed
            counters = journal.counters
            if counters.appended + counters.duplicates >= count:
                return
            await signal.wait()


def _jobs(state_dir: Path) -> dict[int, tuple[str, int, int, str | None]]:
    conn = sqlite3.connect(state_dir / "journal.db")
    try:
        rows = conn.execute("SELECT id, state, next_action, attempts, last_error FROM jobs")
        return {row[0]: row[1:] for row in rows}
    finally:
        conn.close()


def _events_stored(state_dir: Path) -> list[tuple[int, str, int]]:
    conn = sqlite3.connect(state_dir / "journal.db")
    try:
        return conn.execute("SELECT seq, event_id, matched FROM events ORDER BY seq").fetchall()
    finally:
        conn.close()


# -- the writer's side: apply_segment and the process protocol ----------------


def _outcome(job_id: int, now: float = 1.0, error: str | None = None) -> OutcomeRow:
    return (job_id, 0, 0, error, 1, False, now)


def test_a_segment_all_stored_is_answered_with_its_first_seq(tmp_path: Path) -> None:
    db = JournalDB.open(tmp_path)
    try:
        rows = [event_row(event) for event in _events(3)]
        answer = apply_segment(db, rows, [], [], 600.0)
        assert answer == ((0, 1), None, None)  # ids known: none computed
        # The next segment continues from the last seq; its jobs and the
        # outcomes of some of them land in the same batch.
        more = [event_row(event) for event in _events(2, start=3)]
        jobs = [([(1, ["a"]), (2, ["b"]), (3, [])], 2.0, 1, ())]
        answer = apply_segment(db, more, jobs, [_outcome(1), _outcome(2, error="x")], 600.0)
        assert answer == ((3, 4), None, None)
    finally:
        db.close()
    assert _jobs(tmp_path) == {1: ("done", 1, 1, None), 2: ("dead", 0, 1, "x")}
    assert [matched for _, _, matched in _events_stored(tmp_path)] == [1, 1, 1, 0, 0]


def test_a_duplicate_in_a_segment_is_answered_event_by_event(tmp_path: Path) -> None:
    db = JournalDB.open(tmp_path)
    try:
        a, b = (event_row(event) for event in _events(2))
        stored, errors, _ = apply_segment(db, [a, b, a], [], [], 600.0)
    finally:
        db.close()
    assert (stored, errors) == ([(0, 1), (1, 2), None], None)


def test_a_failing_op_fails_alone_and_is_reported_by_position(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="zoomrules.journal")
    db = JournalDB.open(tmp_path)
    try:
        good, other = (event_row(event) for event in _events(2))
        bad = ("bad-id", *good[1:4], None)  # body is NOT NULL: its INSERT fails
        jobs = [([(1, ["rule"])], 1.0, 1, ())]
        stored, errors, _ = apply_segment(db, [good, bad, other], jobs, [_outcome(1)], 600.0)  # type: ignore[list-item]
    finally:
        db.close()
    assert stored == [(0, 1), None, (1, 2)]
    assert errors is not None and [position for position, _ in errors] == [1]
    assert "IntegrityError" in errors[0][1]
    assert "retrying one by one" in caplog.text
    # The rest committed, each in its own transaction, in the segment's order.
    assert _jobs(tmp_path) == {1: ("done", 1, 1, None)}
    assert len(_events_stored(tmp_path)) == 2


def _message(data: Any) -> bytes:
    payload = marshal.dumps(data)
    return len(payload).to_bytes(8, "big") + payload


def _answers(out: bytes) -> list[Any]:
    answers, view = [], memoryview(out)
    while view:
        length = int.from_bytes(view[:8], "big")
        answers.append(marshal.loads(view[8 : 8 + length]))
        view = view[8 + length :]
    return answers


def test_the_writer_process_loop_answers_each_segment_in_order(tmp_path: Path) -> None:
    JournalDB.open(tmp_path / "state").close()
    first, second = ([event_row(event)] for event in _events(2))
    inbox = io.BytesIO(
        _message((first, [], [], 600.0))
        + _message((first, [], [], 600.0))  # the same event again: a duplicate
        + _message((second, [([(1, ["r"])], 1.0, 1, ())], [_outcome(1)], 600.0))
    )
    out = io.BytesIO()
    serve(tmp_path / "state" / "journal.db", inbox, out)
    assert _answers(out.getvalue()) == [
        "ready",
        ((0, 1), None, None),
        ([None], None, None),
        ((1, 2), None, None),
    ]
    assert _jobs(tmp_path / "state") == {1: ("done", 1, 1, None)}


def test_the_writer_computes_the_ids_the_event_loop_left_to_it(tmp_path: Path) -> None:
    """From the stored JSON, the very ids `Event.id` gives; duplicates still found."""
    events = _received(3)
    rows = [event_row(event) for event in events]
    assert [row[0] for row in rows] == [None, None, None]
    expected = [event_id(event.body) for event in events]
    again = event_row(_received(1)[0])  # the first event, delivered twice
    db = JournalDB.open(tmp_path)
    try:
        stored, errors, ids = apply_segment(db, [*rows, again], [], [], 600.0)
    finally:
        db.close()
    assert (stored, errors) == ([(0, 1), (1, 2), (2, 3), None], None)
    assert ids == [*expected, expected[0]]
    assert [stored_id for _, stored_id, _ in _events_stored(tmp_path)] == expected


# -- the daemon's side: SqliteJournal -------------------------------------------------


@pytest.mark.anyio
@pytest.mark.parametrize("writer", ["process", "thread"])
async def test_segments_split_at_max_batch_and_commit_everything_in_order(
    writer: str, tmp_path: Path
) -> None:
    config = EngineConfig(state_dir=tmp_path / "state")
    count = 300
    async with open_store(config, writer=writer, max_batch=16, queue_size=40) as journal:
        for event in _events(count):
            await journal.append(event)  # waits whenever 40 ops are queued
        await _committed(journal, count)
        seqs, events = journal.take_hot(0, count)
        assert seqs == list(range(1, count + 1))
        ids = [job for job, _ in await journal.add_jobs([(seq, ["rule"]) for seq in seqs])]
        for job_id in ids:
            # Each outcome is queued after its job's pending row: whether
            # in the same segment or a later one, the row is written first.
            await journal.record_outcome(job_id, 0, 0, None, 1, False)
        commits = journal.counters.commits
    # Appends alone took at least count / max_batch segments.
    assert commits >= count // 16
    assert journal.counters.write_errors == 0
    assert set(_jobs(tmp_path / "state").values()) == {("done", 1, 1, None)}
    stored = _events_stored(tmp_path / "state")
    assert [event_id for _, event_id, _ in stored] == [event.id for event in events]
    assert all(matched for _, _, matched in stored)


@pytest.mark.anyio
@pytest.mark.parametrize("writer", ["process", "thread"])
async def test_a_call_keeps_its_place_between_outcomes(writer: str, tmp_path: Path) -> None:
    """`mark_dead` (a call nobody waits for) closes the segment before it:
    what was queued before it commits before it, what comes after, after."""
    config = EngineConfig(state_dir=tmp_path / "state")
    async with open_store(config, writer=writer) as journal:
        for event in _events(2):
            await journal.append(event)
        await _committed(journal, 2)
        seqs, _ = journal.take_hot(0, 10)
        (first, _), (second, _) = await journal.add_jobs([(seq, ["rule"]) for seq in seqs])
        # first: done, then marked dead -> dead; second: marked dead, then done -> done.
        await journal.record_outcome(first, 0, 0, None, 1, False)
        await journal.mark_dead(first, "rule gone")
        await journal.mark_dead(second, "rule gone")
        await journal.record_outcome(second, 0, 0, None, 1, False)
    jobs = _jobs(tmp_path / "state")
    assert jobs[first][0] == "dead"
    assert jobs[second][0] == "done"


@pytest.mark.anyio
async def test_a_waited_call_jumps_the_queue_but_not_what_was_sent(tmp_path: Path) -> None:
    config = EngineConfig(state_dir=tmp_path / "state")
    async with open_store(config) as journal:
        for event in _events(5):
            await journal.append(event)
        await _committed(journal, 5)
        # Queued, not yet taken by the writer (nothing yielded since): a
        # waited-for call runs ahead of them.
        for event in _events(5, start=5):
            await journal.append(event)
        stored = await journal.call(
            lambda db: db.conn.execute("SELECT COUNT(*) FROM events").fetchone()[0]
        )
        assert stored == 5
        await _committed(journal, 10)
        stored = await journal.call(
            lambda db: db.conn.execute("SELECT COUNT(*) FROM events").fetchone()[0]
        )
        assert stored == 10


@pytest.mark.anyio
async def test_a_duplicate_splits_the_window_and_is_counted(tmp_path: Path) -> None:
    config = EngineConfig(state_dir=tmp_path / "state")
    a, b, c = _events(3)
    async with open_store(config) as journal:
        for event in (a, b, a, c):  # one segment, with a duplicate inside
            await journal.append(event)
        await _committed(journal, 4)
        assert journal.counters.duplicates == 1
        assert journal.counters.appended == 3
        assert journal.take_hot(0, 10) == ([1, 2, 3], [a, b, c])
        assert journal.take_hot(3, 10) == ([], [])


@pytest.mark.anyio
async def test_the_window_hands_out_runs_in_pieces_and_skips_what_was_read_back(
    tmp_path: Path,
) -> None:
    config = EngineConfig(state_dir=tmp_path / "state")
    events = _events(10)
    async with open_store(config) as journal:
        for event in events[:6]:  # one segment: one run of seqs 1-6
            await journal.append(event)
        await _committed(journal, 6)
        for event in events[6:]:  # another run: 7-10
            await journal.append(event)
        await _committed(journal, 10)
        # A limit cuts a run; the next take goes on from there and across runs.
        assert journal.take_hot(0, 4) == ([1, 2, 3, 4], events[:4])
        assert journal.take_hot(4, 4) == ([5, 6, 7, 8], events[4:8])
        # Not the next one (seq 9 follows 8, not 7): nothing from memory.
        assert journal.take_hot(7, 4) == ([], [])
        # The consumer read 9 back from disk: the window goes on after it.
        assert journal.take_hot(9, 4) == ([10], events[9:])
        assert journal.take_hot(10, 4) == ([], [])
        assert journal._hot_count == 0 and journal._hot_bytes == 0


@pytest.mark.anyio
async def test_a_run_beyond_the_window_is_read_back_from_disk(tmp_path: Path) -> None:
    config = EngineConfig(state_dir=tmp_path / "state")
    events = _events(8)
    async with open_store(config, hot_window=5) as journal:
        for event in events[:3]:  # fits: kept in memory
            await journal.append(event)
        await _committed(journal, 3)
        for event in events[3:]:  # 3 + 5 > 5: not kept
            await journal.append(event)
        await _committed(journal, 8)
        assert journal.take_hot(0, 10) == ([1, 2, 3], events[:3])
        assert journal.take_hot(3, 10) == ([], [])
        back = await journal.unmatched(3, 10)
        assert [(stored.seq, stored.event.id) for stored in back] == [
            (seq, event.id) for seq, event in zip(range(4, 9), events[3:], strict=True)
        ]


@pytest.mark.anyio
@pytest.mark.parametrize("writer", ["process", "thread"])
async def test_new_jobs_are_carried_one_segment_to_meet_their_outcomes(
    writer: str, tmp_path: Path
) -> None:
    config = EngineConfig(state_dir=tmp_path / "state")
    async with open_store(config, writer=writer) as journal:
        for event in _events(3):
            await journal.append(event)
        await _committed(journal, 3)
        seqs, _ = journal.take_hot(0, 10)
        (first, _), (second, _), (third, _) = await journal.add_jobs(
            [(seq, ["rule"]) for seq in seqs]
        )
        await journal.record_outcome(first, 0, 0, None, 1, False)  # one has ended already
        # The writer takes the segment (waited for through the event in it):
        # the jobs, two of them still running, go on to the next segment,
        # with the outcome of the first.
        for event in _events(1, start=3):
            await journal.append(event)
        await _committed(journal, 4)
        assert journal.counters.carried == 1
        await journal.record_outcome(second, 0, 0, None, 1, False)
        await journal.record_outcome(third, 0, 0, "boom", 2, False)
    jobs = _jobs(tmp_path / "state")
    assert jobs == {
        first: ("done", 1, 1, None),
        second: ("done", 1, 1, None),
        third: ("dead", 0, 2, "boom"),
    }
    assert [matched for _, _, matched in _events_stored(tmp_path / "state")] == [1, 1, 1, 0]


@pytest.mark.anyio
@pytest.mark.parametrize("writer", ["process", "thread"])
async def test_committed_events_come_back_with_their_ids_known(writer: str, tmp_path: Path) -> None:
    """Computed by the writer and settled on the events before the consumer
    sees them: matching and jobs read them without hashing on the event loop."""
    config = EngineConfig(state_dir=tmp_path / "state")
    events = _received(5)
    async with open_store(config, writer=writer) as journal:
        for event in events:
            await journal.append(event)
        await _committed(journal, 5)
        _, hot = journal.take_hot(0, 10)
    # Nothing here read `.id` (comparing events would): known means settled.
    assert [event.known_id for event in hot] == [event_id(event.body) for event in events]
    assert all(back is event for back, event in zip(hot, events, strict=True))
    stored = _events_stored(tmp_path / "state")
    assert [stored_id for _, stored_id, _ in stored] == [event.known_id for event in events]
