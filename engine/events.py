"""The Event value: one Zoom event as the engine sees it."""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field
from typing import Any

import orjson

#: Reserved top-level key under which engine metadata is visible to
#: conditions and templates (`zoomrules.event_id`, `zoomrules.rule`, ...).
#: Zoom event objects never carry this key.
META_KEY = "zoomrules"


class InvalidEvent(ValueError):
    """Input that is not a Zoom event object (says what is wrong)."""


def canonical_json(body: Any) -> bytes:
    """Key-sorted compact JSON: the same event always gives the same bytes."""
    return orjson.dumps(body, option=orjson.OPT_SORT_KEYS)


def event_id(body: dict[str, Any]) -> str:
    """Stable id of an event: a hash of its canonical content.

    Two deliveries of the same event (a redelivery, two overlapping
    subscriptions, a replayed file) get the same id, so it serves as an
    idempotency key for external systems.
    """
    return hashlib.sha256(canonical_json(body)).hexdigest()[:32]


@dataclass(frozen=True, slots=True)
class Event:
    """A validated Zoom event object plus where and when we got it."""

    name: str
    body: dict[str, Any]
    id: str
    received_at: float
    source: str
    #: The event's JSON as received, when it came as text (the journal
    #: stores it as is rather than encoding `body` again).
    raw: bytes | None = field(default=None, compare=False, repr=False)

    @classmethod
    def from_body(
        cls,
        body: Any,
        *,
        source: str,
        received_at: float | None = None,
        raw: bytes | None = None,
    ) -> Event:
        """Validate a decoded event object and wrap it.

        Raises InvalidEvent when `body` is not an object with a string
        `event` name. `raw` is the JSON `body` was decoded from, if any.
        """
        if not isinstance(body, dict):
            raise InvalidEvent(f"event must be a JSON object, got {type(body).__name__}")
        name = body.get("event")
        if not isinstance(name, str) or not name:
            raise InvalidEvent("event object has no string 'event' name")
        if META_KEY in body:
            raise InvalidEvent(f"event object uses the reserved key {META_KEY!r}")
        try:
            identity = event_id(body)
        except orjson.JSONEncodeError as exc:  # nested deeper than orjson encodes
            raise InvalidEvent(f"event cannot be encoded: {exc}") from None
        # Positional: a frozen dataclass's keyword call costs 1 µs more per event.
        received_at = time.time() if received_at is None else received_at
        return cls(name, body, identity, received_at, source, raw)

    @classmethod
    def from_json(cls, data: str | bytes, *, source: str) -> Event:
        """Decode JSON text holding one event object."""
        try:
            body = orjson.loads(data)
        except orjson.JSONDecodeError as exc:
            raise InvalidEvent(f"invalid JSON: {exc}") from None
        raw = data.encode() if isinstance(data, str) else bytes(data)
        return cls.from_body(body, source=source, raw=raw)

    def metadata(self) -> dict[str, Any]:
        """Engine metadata exposed under META_KEY (rule-independent part)."""
        return {
            "event_id": self.id,
            "received_at": self.received_at,
            "source": self.source,
        }

    def root(self) -> dict[str, Any]:
        """The document conditions are evaluated against: the event plus metadata."""
        return {**self.body, META_KEY: self.metadata()}
