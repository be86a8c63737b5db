"""How events and dead letters are written in the cluster's streams.

An event is a message on `<name>.events.in` whose data is the event's JSON
as received and whose headers say the rest: `Nats-Msg-Id` (the event's id,
by which the stream drops duplicates), `Zr-Source` and `Zr-Received-At`.
A dead letter (or a re-queued one) is one JSON document holding the job and
its event, so `zoomrules dlq` needs nothing else to show or run it.
"""

from __future__ import annotations

import hashlib
import time
from typing import Any

import orjson

from engine.events import Event
from engine.journal.store import DEAD, RETRY, JobRow

SOURCE = "Zr-Source"
RECEIVED_AT = "Zr-Received-At"
MSG_ID = "Nats-Msg-Id"

#: Job ids: the event's stream sequence times this, plus the job's place
#: among the event's firings (so an event may fire at most this many rules).
JOBS_PER_EVENT = 1000


def job_id(seq: int, index: int) -> int:
    return seq * JOBS_PER_EVENT + index


def firing_job_id(seq: int, rule: str) -> int:
    """A temporal rule's firing's job id: on the event it fires on, in the
    upper half of the event's ids (its ordinary jobs take the lower), the
    same on whichever node queues it."""
    slot = int(hashlib.sha256(rule.encode()).hexdigest()[:8], 16) % (JOBS_PER_EVENT // 2)
    return job_id(seq, JOBS_PER_EVENT // 2 + slot)


def event_message(event: Event) -> tuple[bytes, dict[str, str]]:
    data = event.raw if event.raw is not None else orjson.dumps(event.body)
    headers = {MSG_ID: event.id, SOURCE: event.source, RECEIVED_AT: repr(event.received_at)}
    return data, headers


def event_from_message(data: bytes, headers: dict[str, str] | None) -> Event:
    headers = headers or {}
    body = orjson.loads(data)
    return Event(
        name=body["event"],
        body=body,
        id=headers.get(MSG_ID),
        received_at=float(headers.get(RECEIVED_AT, time.time())),
        source=headers.get(SOURCE, "cluster"),
        raw=data,
    )


def dead_letter(
    job: int,
    event_seq: int,
    event: Event,
    rule: str,
    next_action: int,
    attempts: int,
    errors: int,
    error: str | None,
    created_at: float,
    state: str = DEAD,
    context: dict[str, Any] | None = None,
) -> bytes:
    """A job and its event as one document; `context`: a temporal rule's
    firing's (`KeyedJob`), what its actions see under `zoomrules`."""
    now = time.time()
    extra = {} if context is None else {"context": context}
    return orjson.dumps(
        {
            **extra,
            "id": job,
            "event_seq": event_seq,
            "rule": rule,
            "state": state,
            "next_action": next_action,
            "attempts": attempts,
            "errors": errors,
            "last_error": error,
            "created_at": created_at,
            "updated_at": now,
            "event": {
                "name": event.name,
                "id": event.id,
                "source": event.source,
                "received_at": event.received_at,
                "body": event.body,
            },
        }
    )


def job_from_document(data: bytes, *, state: str | None = None) -> JobRow:
    doc: dict[str, Any] = orjson.loads(data)
    stored = doc["event"]
    event = Event(
        name=stored["name"],
        body=stored["body"],
        id=stored["id"],
        received_at=float(stored["received_at"]),
        source=stored["source"],
    )
    return JobRow(
        id=int(doc["id"]),
        event_seq=int(doc["event_seq"]),
        rule=doc["rule"],
        state=state or doc.get("state", DEAD),
        next_action=int(doc["next_action"]),
        attempts=int(doc["attempts"]),
        errors=int(doc.get("errors", 0)),
        last_error=doc.get("last_error"),
        created_at=float(doc["created_at"]),
        updated_at=float(doc["updated_at"]),
        event=event,
        context=doc.get("context"),
    )


def requeued(data: bytes) -> bytes:
    """A dead letter's document as re-queued (`retry`)."""
    doc = orjson.loads(data)
    doc["state"] = RETRY
    doc["updated_at"] = time.time()
    return orjson.dumps(doc)
