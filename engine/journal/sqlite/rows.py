"""Rows of the SQLite journal as they travel: to the writer, and back as events and jobs.

Plain tuples of strings, numbers and bytes, because they cross to the
writer process with `marshal` (see `engine.journal.sqlite.writer`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, cast

import orjson

from engine.events import Event
from engine.events import event_id as identify
from engine.journal.store import JobRow, StoredEvent

#: An event as the `events` table stores it: (event_id, name, source, received_at, body).
#: The event loop leaves the id None when it has not been computed yet and
#: the body is the event's JSON as received: the writer computes it
#: (`with_ids`).
EventRow = tuple[str | None, str, str, float, bytes]
#: An action outcome as queued and sent to the writer: the fields of
#: `ActionOutcome`, then when it was recorded.
OutcomeRow = tuple[int, int, int, str | None, int, bool, float]
#: New jobs as queued: (firings, when, first job id, state changes), see
#: `SqliteJournal.add_jobs`; firings name rules or are keyed jobs
#: (`engine.journal.store.KeyedJob`), state changes are `StateChange`s.
JobsRow = tuple[Sequence[tuple[int, Sequence[Any]]], float, int, Sequence[tuple[Any, ...]]]


def event_row(event: Event) -> EventRow:
    """How `event` is stored."""
    raw = event.raw
    if raw is None:
        return (event.id, event.name, event.source, event.received_at, orjson.dumps(event.body))
    # The JSON as received (no second encoding on the event loop; it decodes
    # to the same body), and the id only if already known: hashing the
    # canonical JSON is done where the row is stored, in the writer process,
    # and the id comes back with the commit (`with_ids`, `Event.settle_id`).
    return (event.known_id, event.name, event.source, event.received_at, raw)


#: An event row whose id is known: as the `events` table stores it.
StoredRow = tuple[str, str, str, float, bytes]


def with_ids(rows: Sequence[EventRow]) -> tuple[Sequence[StoredRow], list[str] | None]:
    """`rows` with every id filled in, and all their ids in order (None if
    none was missing).

    A missing id is computed from the row's body, the JSON the event was
    decoded from: the same id `Event.id` gives (the event came through
    `Event.from_json`, which only leaves an id to compute when it cannot
    fail).
    """
    if all(row[0] is not None for row in rows):
        return cast(Sequence[StoredRow], rows), None
    filled: list[StoredRow] = [
        (row[0] if row[0] is not None else identify(orjson.loads(row[4])), *row[1:]) for row in rows
    ]
    return filled, [row[0] for row in filled]


def stored_events(unmatched_json: str) -> list[StoredEvent]:
    """Decode `JournalDB.unmatched_json`."""
    rows = sorted(orjson.loads(unmatched_json))
    return [
        StoredEvent(seq, Event(name, body, event_id, float(received_at), source))
        for seq, event_id, name, source, received_at, body in rows
    ]


def event_from_row(row: Sequence[Any]) -> Event:
    """The event of `events` columns (event_id, name, source, received_at, body)."""
    event_id, name, source, received_at, body = row
    return Event(
        name=name, body=orjson.loads(body), id=event_id, received_at=received_at, source=source
    )


def job_from_row(row: Sequence[Any]) -> JobRow:
    """The job of a row of `JournalDB.JOB_COLUMNS`."""
    context = None if row[10] is None else orjson.loads(row[10])
    return JobRow(*row[:10], event=event_from_row(row[11:]), context=context)  # type: ignore[misc]
