"""Helpers for the tests of temporal rules: a clock the test moves, rule
files, and Zoom's example events with the fields a correlation looks at."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anyio
from conftest import example, write_rules

from engine.events import Event
from engine.loader import LoadedRules, load_rules

#: 2026-02-05T17:00:00Z, the corpus's meeting start, in epoch seconds.
T0 = 1770310800.0

#: A log action: temporal rules need one to load; nothing here runs it.
LOG = '\n  [[rule.action]]\n  type = "log"\n'


class ManualClock:
    """Epoch seconds that move when the test says so (`engine.timers.Clock`)."""

    def __init__(self, now: float = T0) -> None:
        self.current = now
        self._moved = anyio.Event()

    def now(self) -> float:
        return self.current

    def advance(self, seconds: float) -> None:
        self.set(self.current + seconds)

    def set(self, when: float) -> None:
        self.current = when
        moved, self._moved = self._moved, anyio.Event()
        moved.set()

    async def sleep_until(self, when: float) -> None:
        while self.current < when:
            await self._moved.wait()


def load(tmp_path: Path, text: str, name: str = "rules.toml") -> LoadedRules:
    return load_rules([write_rules(tmp_path, text, name)], env={})


def at(ms_after_t0: float) -> int:
    """An `event_ts` (milliseconds) this long after T0."""
    return round(T0 * 1000 + ms_after_t0)


def zoom_event(
    name: str,
    event_ts: int,
    *,
    received_at: float | None = None,
    source: str = "test",
    **object_fields: Any,
) -> Event:
    """The corpus example of `name`, at `event_ts`, with `payload.object` fields set."""
    body = example(name)
    body["event_ts"] = event_ts
    obj = body["payload"]["object"]
    for field, value in object_fields.items():
        if field == "participant":
            obj["participant"] = {**obj.get("participant", {}), **value}
        else:
            obj[field] = value
    arrived = event_ts / 1000 if received_at is None else received_at
    return Event.from_body(body, source=source, received_at=arrived)


def started(uuid: str, ms: float, **fields: Any) -> Event:
    return zoom_event("meeting.started", at(ms), uuid=uuid, **fields)


def joined(uuid: str, ms: float, participant_id: str = "someone", **fields: Any) -> Event:
    return zoom_event(
        "meeting.participant_joined",
        at(ms),
        uuid=uuid,
        participant={"id": participant_id},
        **fields,
    )


def ended(uuid: str, ms: float, **fields: Any) -> Event:
    return zoom_event("meeting.ended", at(ms), uuid=uuid, **fields)


def gap_event(start: float, end: float, source: str = "zoom:default") -> Event:
    """A `zoomrules.connection_gap` event as the sources emit it."""
    from engine.sources.gaps import Gap, gap_event

    return gap_event(Gap(source, start, end, "test"), subscription="default")
