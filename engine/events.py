"""The Event value: one Zoom event as the engine sees it."""

from __future__ import annotations

import fnmatch
import hashlib
import time
from collections.abc import Sequence
from typing import Any

import orjson

from engine.errors import InvalidEvent

#: Reserved top-level key under which engine metadata is visible to
#: conditions and templates (`zoomrules.event_id`, `zoomrules.rule`, ...).
#: Zoom event objects never carry this key.
META_KEY = "zoomrules"

#: The event zoomrules emits itself when a subscription could not deliver
#: for a while (see `engine.sources.gaps`): `payload.subscription`,
#: `payload.start_time`, `payload.end_time`, `payload.seconds`, `payload.cause`.
CONNECTION_GAP = "zoomrules.connection_gap"
#: Names of the events the engine emits itself (not in Zoom's catalogue,
#: still known to `zoomrules check`).
ENGINE_EVENTS: frozenset[str] = frozenset({CONNECTION_GAP})


def canonical_json(body: Any) -> bytes:
    """Key-sorted compact JSON: the same event always gives the same bytes."""
    return orjson.dumps(body, option=orjson.OPT_SORT_KEYS)


#: Fields Zoom varies between deliveries of one occurrence, by event-name
#: glob: two deliveries of one `recording.completed` have been seen to differ
#: in `download_token` alone. `[engine] per_delivery_fields` adds to these.
DEFAULT_PER_DELIVERY: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("recording.*", ("download_token",)),
)

PerDelivery = Sequence[tuple[str, Sequence[str]]]


class _Identity:
    """Which fields each event name leaves out of its id (cached per name)."""

    def __init__(self, per_delivery: PerDelivery) -> None:
        self.per_delivery = tuple((glob, tuple(paths)) for glob, paths in per_delivery)
        self._by_name: dict[str, tuple[tuple[str, ...], ...]] = {}

    def fields(self, name: object) -> tuple[tuple[str, ...], ...]:
        if not isinstance(name, str):
            return ()
        found = self._by_name.get(name)
        if found is None:
            found = tuple(
                tuple(path.split("."))
                for glob, paths in self.per_delivery
                if fnmatch.fnmatchcase(name, glob)
                for path in paths
            )
            if len(self._by_name) >= 4096:
                self._by_name.clear()
            self._by_name[name] = found
        return found


_identity = _Identity(DEFAULT_PER_DELIVERY)


def set_per_delivery_fields(per_delivery: PerDelivery) -> None:
    """Which fields ids leave out, process-wide (from `[engine] per_delivery_fields`)."""
    global _identity
    _identity = _Identity(per_delivery)


def per_delivery_fields() -> tuple[tuple[str, tuple[str, ...]], ...]:
    """The fields ids leave out now (for the journal's writer process)."""
    return _identity.per_delivery


def event_id(body: dict[str, Any]) -> str:
    """Stable id of an event: a hash of its canonical content, without the
    fields Zoom varies between deliveries of one occurrence.

    Two deliveries of the same occurrence (a redelivery, two subscriptions
    with the same events, a webhook beside the WebSocket, a replayed file)
    get the same id, so it is the key duplicates are found by and an
    idempotency key for external systems. An event without per-delivery
    fields is hashed whole, as it always was.
    """
    fields = _identity.fields(body.get("event"))
    if fields:
        body = _without(body, fields)
    return hashlib.sha256(canonical_json(body)).hexdigest()[:32]


def _without(body: dict[str, Any], paths: tuple[tuple[str, ...], ...]) -> dict[str, Any]:
    """`body` without the fields at `paths` (copying only the tables on the way)."""
    out = dict(body)
    for path in paths:
        table = out
        for key in path[:-1]:
            inner = table.get(key)
            if not isinstance(inner, dict):
                break
            table[key] = table = dict(inner)
        else:
            table.pop(path[-1], None)
    return out


#: orjson encodes containers nested at most this deep; a body nested deeper
#: has no canonical JSON, hence no id.
_ENCODABLE_DEPTH = 254


class Event:
    """A validated Zoom event object plus where and when we got it.

    Immutable. `id` is computed from `body` when first read: hashing the
    canonical JSON is about half the cost of decoding an event, and with
    the journal off an event that fires no rule never needs its id.
    """

    __slots__ = ("name", "body", "_id", "received_at", "source", "raw")

    name: str
    body: dict[str, Any]
    _id: str | None
    received_at: float
    source: str
    #: The event's JSON as received, when it came as text (the journal
    #: stores it as is rather than encoding `body` again).
    raw: bytes | None

    def __init__(
        self,
        name: str,
        body: dict[str, Any],
        id: str | None,  # noqa: A002 - the public name of the attribute
        received_at: float,
        source: str,
        raw: bytes | None = None,
    ) -> None:
        """Wrap an already validated event; `id=None` computes it from `body` when read.

        Only pass `None` for a body known to have canonical JSON (see
        `from_json`): reading a lazily computed id must not fail.
        """
        setattr_ = object.__setattr__
        setattr_(self, "name", name)
        setattr_(self, "body", body)
        setattr_(self, "_id", id)
        setattr_(self, "received_at", received_at)
        setattr_(self, "source", source)
        setattr_(self, "raw", raw)

    @property
    def id(self) -> str:
        """Stable id of the event (see `event_id`)."""
        identity = self._id
        if identity is None:
            identity = event_id(self.body)
            object.__setattr__(self, "_id", identity)
        return identity

    @property
    def known_id(self) -> str | None:
        """The id if it was given or has been computed, else None (nothing is computed)."""
        return self._id

    def settle_id(self, identity: str) -> None:
        """Take the id as computed elsewhere from this event's `raw` text.

        The journal's writer process computes the ids of the events it
        stores, on the other core; the event loop then need not. Ignored
        when the id is already known.
        """
        if self._id is None:
            object.__setattr__(self, "_id", identity)

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError(f"Event is immutable: cannot set {name!r}")

    def __delattr__(self, name: str) -> None:
        raise AttributeError(f"Event is immutable: cannot delete {name!r}")

    def __reduce__(self) -> tuple[type[Event], tuple[Any, ...]]:
        # Pickle and copy through __init__: __setattr__ refuses.
        return Event, (self.name, self.body, self._id, self.received_at, self.source, self.raw)

    def _key(self) -> tuple[Any, ...]:
        return (self.name, self.body, self.id, self.received_at, self.source)

    def __eq__(self, other: object) -> bool:
        # `raw` is left out: the same event may have come as text or as an object.
        if other.__class__ is not self.__class__:
            return NotImplemented
        assert isinstance(other, Event)
        return self._key() == other._key()

    __hash__ = None  # type: ignore[assignment]  # the body is a mutable dict

    def __repr__(self) -> str:
        return (
            f"Event(name={self.name!r}, body={self.body!r}, id={self.id!r}, "
            f"received_at={self.received_at!r}, source={self.source!r})"
        )

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
        `event` name, or is nested too deeply to have an id. `raw` is the
        JSON `body` was decoded from, if any.
        """
        name = _checked_name(body)
        identity = _identity_now(body)
        received_at = time.time() if received_at is None else received_at
        return cls(name, body, identity, received_at, source, raw)

    @classmethod
    def from_json(cls, data: str | bytes, *, source: str) -> Event:
        """Decode JSON text holding one event object (raises InvalidEvent)."""
        try:
            body = orjson.loads(data)
        except orjson.JSONDecodeError as exc:
            raise InvalidEvent(f"invalid JSON: {exc}") from None
        name = _checked_name(body)
        raw = data.encode() if isinstance(data, str) else bytes(data)
        # Nesting is at most the number of opening brackets: only a body
        # with more of them than orjson nests may fail to encode, and only
        # such a body is encoded now, so that it is rejected here rather
        # than when its id is first read. Every other id waits until read.
        identity = None
        if raw.count(b"[") + raw.count(b"{") > _ENCODABLE_DEPTH:
            identity = _identity_now(body)
        return cls(name, body, identity, time.time(), source, raw)

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


def _checked_name(body: Any) -> str:
    """The event name of a decoded event object (raises InvalidEvent)."""
    if not isinstance(body, dict):
        raise InvalidEvent(f"event must be a JSON object, got {type(body).__name__}")
    name = body.get("event")
    if not isinstance(name, str) or not name:
        raise InvalidEvent("event object has no string 'event' name")
    if META_KEY in body:
        raise InvalidEvent(f"event object uses the reserved key {META_KEY!r}")
    return name


def _identity_now(body: dict[str, Any]) -> str:
    try:
        return event_id(body)
    except orjson.JSONEncodeError as exc:  # nested deeper than orjson encodes
        raise InvalidEvent(f"event cannot be encoded: {exc}") from None
