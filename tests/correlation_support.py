"""Helpers for the tests of temporal rules: a clock the test moves, rule
files, and Zoom's example events with the fields a correlation looks at."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
from conftest import example, write_rules

from engine.dispatch import Dispatcher
from engine.events import Event
from engine.journal.sqlite.batches import OP_CALL
from engine.journal.sqlite.store import SqliteJournal, _Op, open_store
from engine.journal_feed import JournalFeed
from engine.loader import LoadedRules, load_rules
from engine.pipeline import Pipeline
from engine.plugin import ActionContext, ActionType, Param, hookimpl
from engine.testing import open_test_services

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


# -- the journal feed on a real SQLite journal, with the test's clock ------------


class Recorder:
    """A `record` action type: keeps what each firing rendered (`value`,
    default the whole `zoomrules` metadata), and can hold firings back."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []
        self.changed = anyio.Event()
        self.hold = False
        self.released = anyio.Event()

    async def record(self, params: Mapping[str, Any], ctx: ActionContext) -> None:
        if self.hold:
            await self.released.wait()
        self.calls.append((ctx.rule, params["value"]))
        changed, self.changed = self.changed, anyio.Event()
        changed.set()

    async def wait_calls(self, count: int, timeout: float = 10.0) -> list[tuple[str, Any]]:
        with anyio.fail_after(timeout):
            while len(self.calls) < count:
                await self.changed.wait()
        return self.calls

    @hookimpl
    def zoomrules_action_types(self) -> list[ActionType]:
        return [ActionType("record", self.record, [Param("value", default="{{ zoomrules }}")])]


RECORD = '\n  [[rule.action]]\n  type = "record"\n'


def load_recorded(
    tmp_path: Path, text: str, recorder: Recorder, name: str = "rules.toml"
) -> LoadedRules:
    """Rules whose actions are `record`, with the journal in tmp_path/state."""
    state = f'[engine]\nstate_dir = "{tmp_path / "state"}"\n'
    return load_rules(
        [write_rules(tmp_path, state + text.replace("version = 1", ""), name)],
        env={},
        extra_plugins=[recorder],
    )


class RunningFeed:
    """A journal feed on a real SQLite journal: what the daemon runs between
    its sources and its dispatcher, with the test's clock."""

    def __init__(self, store: SqliteJournal, feed: JournalFeed) -> None:
        self.store = store
        self.feed = feed

    async def send(self, *events: Event) -> None:
        for event in events:
            await self.store.append(event)

    def _quiet(self) -> bool:
        store, feed = self.store, self.feed
        return (
            not store._queue
            and not store._in_flight
            and store._taken >= store._committed
            and feed._waiting
            and feed.pipeline.dispatcher.in_flight == 0
        )

    async def settled(self) -> None:
        """Every event sent so far matched, every job started so far done,
        and all of it committed."""
        with anyio.fail_after(10):
            while not self._quiet():  # noqa: ASYNC110 - three parts report no event
                await anyio.sleep(0.002)
            # A write queued behind everything else: once it ran, all before it is committed.
            ran: list[bool] = []
            await self.store._put_call(_Op(OP_CALL, lambda db: ran.append(True)))
            while not ran:  # noqa: ASYNC110 - it runs in the writer's thread
                await anyio.sleep(0.002)


@asynccontextmanager
async def running_feed(
    loaded: LoadedRules, clock: ManualClock, *, hold_absences: bool = False
) -> AsyncIterator[RunningFeed]:
    """The feed for the block; on leaving it, stops as the daemon does
    (what is journaled is matched, running jobs end)."""
    engine = loaded.config.engine
    async with (
        open_test_services(config=loaded.config) as services,
        open_store(engine, writer="thread") as store,
    ):
        dispatcher = Dispatcher(services, max_concurrency=8, backoff=0.001, backoff_cap=0.001)
        pipeline = Pipeline(loaded, dispatcher)
        feed = JournalFeed(store, pipeline, clock=clock, hold_absences=hold_absences)
        dispatcher.observer = feed.observer
        async with anyio.create_task_group() as tg:
            await tg.start(dispatcher.run)
            await tg.start(feed.run)
            yield RunningFeed(store, feed)
            with anyio.fail_after(10):
                await feed.wait_drained()
            tg.cancel_scope.cancel()
