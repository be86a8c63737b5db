"""The daemon's running event sources: started together, replaced one by one on reload.

Each source runs in a cancel scope of its own inside one task group, so a
reload can stop the sources whose settings changed and start their
replacements without touching the others. A replacement is started first
and the source it replaces is stopped once the new one is up: for a Zoom
subscription the new connection takes over from the old at Zoom's end
(Zoom keeps one connection per subscription), so no event falls between
the two. If the new one cannot come up (say, the new credentials are
refused), the old one keeps running.

Credentials refused at start-up end the daemon (nothing would ever be
received); refused for a source added or changed by a reload, they are
logged and the daemon goes on with what it has.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

import anyio
from anyio.abc import TaskGroup

from engine.errors import AuthError
from engine.sources.base import EventSink, EventSource

log = logging.getLogger("zoomrules.daemon")

#: How long a replacement may take to come up before the old source is
#: kept and the replacement given up (it keeps being logged as it retries).
REPLACE_TIMEOUT = 60.0


@dataclass
class _Running:
    source: EventSource
    scope: anyio.CancelScope = field(default_factory=anyio.CancelScope)
    #: Set when its task has ended (stopped, or credentials refused).
    ended: anyio.Event = field(default_factory=anyio.Event)


@dataclass(frozen=True)
class SourceChanges:
    """What a `replace` did, by source name: started, being replaced (the
    replacement logs whether it came up), stopped."""

    started: tuple[str, ...] = ()
    replacing: tuple[str, ...] = ()
    stopped: tuple[str, ...] = ()


class SourceSet:
    """Sources feeding one sink, inside the task group `run` provides."""

    def __init__(self, sink: EventSink) -> None:
        self.sink = sink
        self._running: dict[str, _Running] = {}
        self._tasks: TaskGroup | None = None
        #: Credentials refused at start-up: the daemon's reason to stop.
        self.failure: AuthError | None = None

    @property
    def sources(self) -> list[EventSource]:
        return [running.source for running in self._running.values()]

    async def run(self, sources: Sequence[EventSource], stop: anyio.Event) -> AuthError | None:
        """Run `sources` until `stop` is set or one's credentials are refused;
        returns that refusal, if any."""
        async with anyio.create_task_group() as tg:
            self._tasks = tg
            for source in sources:
                self._start(source, fatal=True)
            tg.start_soon(_cancel_on, stop, tg)
        self._tasks = None
        return self.failure

    def _start(self, source: EventSource, *, fatal: bool) -> _Running:
        assert self._tasks is not None, "SourceSet.run() is not running"
        running = _Running(source)
        self._running[source.name] = running
        self._tasks.start_soon(self._run_one, running, fatal)
        return running

    async def _run_one(self, running: _Running, fatal: bool) -> None:
        source = running.source
        try:
            with running.scope:
                try:
                    await source.run(self.sink)
                except AuthError as exc:
                    # Which source, what Zoom said, what to check: one line.
                    failure = AuthError(f"{source.name}: {exc}")
                    if fatal:
                        self.failure = failure
                        log.critical("%s", failure)
                        assert self._tasks is not None
                        self._tasks.cancel_scope.cancel()
                    else:
                        log.error("%s; not connected until the credentials are fixed", failure)
        finally:
            running.ended.set()
            if self._running.get(source.name) is running:
                del self._running[source.name]

    async def replace(self, sources: Sequence[EventSource]) -> SourceChanges:
        """Make the running sources `sources`: start new names, stop names gone,
        and replace those whose `settings` changed (new first, see above)."""
        assert self._tasks is not None, "SourceSet.run() is not running"
        wanted = {source.name: source for source in sources}
        started, replacing, stopped = [], [], []
        for name in list(self._running):
            if name not in wanted:
                self._running.pop(name).scope.cancel()
                stopped.append(name)
        for name, source in wanted.items():
            current = self._running.get(name)
            if current is None:
                self._start(source, fatal=False)
                started.append(name)
            elif current.source.settings != source.settings:
                self._tasks.start_soon(self._swap, current, source)
                replacing.append(name)
        return SourceChanges(tuple(started), tuple(replacing), tuple(stopped))

    async def _swap(self, old: _Running, source: EventSource) -> None:
        """Start `source`; once it is up, stop `old` (which it replaces)."""
        assert self._tasks is not None
        new = _Running(source)
        self._tasks.start_soon(self._run_one, new, False)
        with anyio.move_on_after(REPLACE_TIMEOUT):
            async with anyio.create_task_group() as race:
                race.start_soon(_first, source.wait_up, race)
                race.start_soon(_first, new.ended.wait, race)
        if not new.ended.is_set() and source.health().up:
            self._running[source.name] = new
            old.scope.cancel()
            log.info("%s: reconnected with its new settings", source.name)
            return
        new.scope.cancel()
        log.error("%s: its new settings did not connect; keeping the old connection", source.name)


async def _first(wait: Callable[[], Awaitable[object]], race: TaskGroup) -> None:
    await wait()
    race.cancel_scope.cancel()


async def _cancel_on(event: anyio.Event, tg: TaskGroup) -> None:
    await event.wait()
    tg.cancel_scope.cancel()
