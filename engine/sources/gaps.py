"""Connection gaps: when a source could not deliver, made visible as an event.

Zoom delivers events only over an open connection, and never again what it
sent while none was open. `ConnectionGaps` keeps, for each source, the last
moment it was known connected: in memory while the process runs, and as a
mark (`alive:<source name>`, in `Marks`: the journal) that survives a
restart, a crash included. When a source's connection is up again after
longer than `threshold` without one, `up` hands the source a `Gap`, and the
source emits it through its sink as an ordinary event (`gap_event`:
`zoomrules.connection_gap`, journaled, deduplicated and matched like
Zoom's own), so that rules can alert or catch up with Zoom's REST API.

"Known connected" is what the source can vouch for: a frame received (an
event, a heartbeat answer) or a close handshake completed with Zoom (whoever
started it). A connection that dies without one (a reset, silence until
the heartbeat watchdog gives up) was last known connected at its last
frame, so a gap may start up to one heartbeat interval before the
connection really stopped delivering, never after.

The mark is written at most every `mark_every` seconds while connected,
and at once when a connection comes up or goes down (`run`), and once more
when the daemon stops (`flush`). While a gap event has not been handed to
the sink yet (the journal may be full), the mark is not moved past the
gap's start: if the process dies first, the next start finds the gap again.

In a cluster the node running temporal rules is not the one holding the
connections, and a quiet connection's mark moves on only once per heartbeat
answer. So there (`live_every` set) the holder also writes `up:<source
name>` = now every `live_every` seconds while a connection is up and no gap
event is held: every event received before it is with the journal (what
`complete_until` says here), published after those events like any mark.
"""

from __future__ import annotations

import logging
import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import anyio

from engine.events import CONNECTION_GAP, Event
from engine.logs import LogLimiter
from engine.sources.base import Marks

__all__ = [
    "LIVE_EVERY",
    "LIVE_PREFIX",
    "MARK_EVERY",
    "MARK_PREFIX",
    "ConnectionGaps",
    "Gap",
    "MemoryMarks",
    "gap_event",
    "mark_interval",
]

log = logging.getLogger("zoomrules.gaps")

#: A source's mark is `alive:<source name>` (e.g. `alive:zoom:default`).
MARK_PREFIX = "alive:"
#: In a cluster: `up:<source name>`, the last moment one of its connections
#: was up with every event received until then handed to the journal.
LIVE_PREFIX = "up:"
#: ... written this often while connected: how late an absence's deadline
#: falls at most, in a cluster, for want of it (with the correlator's look).
LIVE_EVERY = 1.0
#: Longest time between two writes of a connected source's mark.
MARK_EVERY = 5.0
#: ... and the shortest (a fast heartbeat must not mean a write per heartbeat).
_MARK_EVERY_MIN = 0.5
#: Gaps remembered for `gaps_since`.
_GAPS_KEPT = 1024


def mark_interval(heartbeat_interval: float) -> float:
    """How often to write the marks of sources with this heartbeat.

    A quiet connection's "last known connected" moves on once per heartbeat
    answer, so writing more often than the heartbeat only helps while events
    flow: every heartbeat, between 0.5 s and `MARK_EVERY`.
    """
    return min(MARK_EVERY, max(_MARK_EVERY_MIN, heartbeat_interval))


class MemoryMarks:
    """`Marks` kept in memory: with the journal off, gaps within one run
    are still found, but nothing is remembered across a restart."""

    def __init__(self) -> None:
        self.values: dict[str, float] = {}

    async def read_mark(self, name: str) -> float | None:
        return self.values.get(name)

    async def write_mark(self, name: str, value: float) -> None:
        self.values[name] = value


@dataclass(frozen=True)
class Gap:
    """A time a source had no connection, from its last moment known
    connected (`start`) to the moment it was up again (`end`), epoch seconds."""

    source: str
    start: float
    end: float
    #: Why, in one short line ("connection lost: closed with code 1006").
    cause: str

    @property
    def seconds(self) -> float:
        """The gap's length, to the millisecond (as the event gives it)."""
        return (_ms(self.end) - _ms(self.start)) / 1000


def gap_event(gap: Gap, *, subscription: str, account_id: str | None = None) -> Event:
    """The `zoomrules.connection_gap` event of `gap`.

    Its body depends on the gap alone (`event_ts` is the gap's end, the
    moment the event is emitted): two gaps never have the same id, and the
    same gap emitted twice has the same one (the journal drops the second).
    """
    payload: dict[str, Any] = {
        "subscription": subscription,
        "source": gap.source,
        "start_time": _iso(gap.start),
        "end_time": _iso(gap.end),
        "seconds": gap.seconds,
        "cause": gap.cause,
    }
    if account_id:
        payload["account_id"] = account_id
    body = {"event": CONNECTION_GAP, "event_ts": _ms(gap.end), "payload": payload}
    return Event.from_body(body, source=gap.source, received_at=gap.end)


def _ms(epoch: float) -> int:
    return round(epoch * 1000)


def _iso(epoch: float) -> str:
    """`2026-12-05T14:00:00.123Z`: UTC, to the millisecond."""
    moment = datetime.fromtimestamp(_ms(epoch) / 1000, UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


#: Returns the last moment (epoch seconds) one live connection was known connected.
Probe = Callable[[], float]


@dataclass
class _Tracked:
    """What is known of one source's connectedness."""

    #: The last moment it was known connected while no connection is up
    #: (epoch seconds); None if never (no mark: the first start).
    last_alive: float | None = None
    #: Whether `last_alive` was seen by this process (else read from the mark).
    seen_here: bool = False
    #: Why its last connection in this process ended.
    loss: str = ""
    #: Its live connections (more than one while a reload replaces one).
    links: dict[int, Probe] = field(default_factory=dict)
    #: The mark's value as last written (or read).
    written: float | None = None
    #: Gap events not yet handed to the sink: the mark stays where it is.
    held: int = 0
    #: When its `up:` mark was last written (time.time()).
    live_written: float | None = None


class ConnectionGaps:
    """The last moment each source was known connected, and the gaps between.

    Shared by every source of the daemon (across reloads: a reload that
    replaces a connection brings the new one up before the old one goes,
    which is no gap). `threshold` (seconds; None: never) is the shortest
    gap reported; both it and `mark_every` may change while it runs.
    """

    def __init__(
        self,
        marks: Marks,
        *,
        threshold: float | None = 10.0,
        mark_every: float = MARK_EVERY,
        live_every: float | None = None,
        started_at: float | None = None,
    ) -> None:
        self.marks = marks
        self.threshold = threshold
        self.mark_every = mark_every
        #: How often to write `up:` marks (None: not at all, as outside a cluster).
        self.live_every = live_every
        #: When this process started looking: a mark older than this was
        #: written before it ran.
        self.started_at = time.time() if started_at is None else started_at
        self._tracked: dict[str, _Tracked] = {}
        self._wake = anyio.Event()
        self._logs = LogLimiter(log)
        #: The gaps `up` reported, newest last (for `gaps_since`).
        self._reported: deque[Gap] = deque(maxlen=_GAPS_KEPT)

    # -- what the sources report -------------------------------------------------

    async def load(self, source: str) -> None:
        """Read the source's mark: when a source starts, before it connects.

        A mark newer than what this process knows was written by another
        process that held the connection meanwhile (a cluster's other
        member): the gap, if any, starts there. While one of its
        connections is up, what this process knows is the newest.
        """
        tracked = self._tracked.setdefault(source, _Tracked())
        try:
            value = await self.marks.read_mark(MARK_PREFIX + source)
        except Exception as exc:  # noqa: BLE001 - no mark: no gap, but never no connection
            log.warning("%s: cannot read when it was last connected (%s)", source, exc)
            return
        if value is None or tracked.links:
            return
        if tracked.last_alive is None or _ms(value) > _ms(tracked.last_alive):
            tracked.last_alive = value
            tracked.written = value
            tracked.seen_here = False

    def up(
        self,
        source: str,
        link: object,
        probe: Probe,
        *,
        now: float,
        failures: int = 0,
        last_failure: str = "",
    ) -> Gap | None:
        """A connection of `source` is up (`link` names it until `down`;
        `probe` says when it was last known connected). Returns the gap it
        ends, if one as long as the threshold; then call `handed_over` once
        its event is with the sink. `failures` attempts to connect failed
        since the last connection ended (or the source started), the last
        one because of `last_failure`."""
        tracked = self._tracked.setdefault(source, _Tracked())
        gap = None
        start = tracked.last_alive
        if not tracked.links and start is not None and self._long_enough(now - start):
            gap = Gap(source, start, now, self._cause(tracked, failures, last_failure))
            tracked.held += 1
            self._reported.append(gap)
        tracked.links[id(link)] = probe
        tracked.last_alive = max(now, start or now)
        tracked.seen_here = True
        tracked.loss = ""
        self._wake.set()
        return gap

    def handed_over(self, source: str) -> None:
        """The event of a gap `up` returned is with the sink (or lost for
        good): the mark may move past the gap's start."""
        tracked = self._tracked[source]
        tracked.held = max(0, tracked.held - 1)
        self._wake.set()

    def down(self, source: str, link: object, *, alive_until: float, reason: str) -> None:
        """A connection `up` reported has ended; it was last known connected
        at `alive_until` (epoch seconds), and ended because of `reason`."""
        tracked = self._tracked.get(source)
        if tracked is None or tracked.links.pop(id(link), None) is None:
            return
        current = tracked.last_alive
        tracked.last_alive = alive_until if current is None else max(current, alive_until)
        if not tracked.links:
            tracked.loss = reason
        self._wake.set()

    def _long_enough(self, seconds: float) -> bool:
        threshold = self.threshold
        return threshold is not None and seconds > 0 and seconds >= threshold

    def _cause(self, tracked: _Tracked, failures: int, last_failure: str) -> str:
        if tracked.seen_here:
            cause = f"connection lost: {tracked.loss or 'no reason given'}"
        elif tracked.last_alive is not None and tracked.last_alive < self.started_at:
            cause = "zoomrules was not running"
        else:
            # Written by another process while this one ran (a cluster's
            # other member): it held the connection until then.
            cause = "connected from another zoomrules process until then"
        if failures:
            attempts = "attempt" if failures == 1 else "attempts"
            cause += f"; then {failures} failed {attempts} to connect (last: {last_failure})"
        return cause

    def last_alive(self, source: str) -> float | None:
        """When `source` was last known connected (now, while it is)."""
        tracked = self._tracked.get(source)
        if tracked is None:
            return None
        return self._current(tracked)

    # -- what the engine asks (temporal rules: engine.correlate.StreamWatch) ------

    def complete_until(self) -> float | None:
        """Every event that happened before this moment reached the sink,
        or the gap that lost it was reported: now while every source is
        connected (and has handed over its gap event); else the earliest
        moment one of them was last known connected. None before any
        source has started, or while one has never been connected."""
        if not self._tracked:
            return None
        now = time.time()
        until = math.inf
        for tracked in self._tracked.values():
            if tracked.links and not tracked.held:
                continue
            if tracked.last_alive is None:
                return None
            until = min(until, tracked.last_alive)
        return min(until, now)

    def gaps_since(self, after: float) -> list[tuple[float, float]]:
        """(start, end) of the gaps reported by `up` that ended after `after`."""
        return [(gap.start, gap.end) for gap in self._reported if gap.end > after]

    @staticmethod
    def _current(tracked: _Tracked) -> float | None:
        if tracked.links:
            return max(probe() for probe in tracked.links.values())
        return tracked.last_alive

    # -- keeping the marks -------------------------------------------------------

    async def run(self) -> None:
        """Write the marks until cancelled: every `mark_every` seconds while a
        source is connected, at once after a connection came up or went down."""
        while True:
            every = self.mark_every
            if self.live_every is not None:
                every = min(every, self.live_every)
            with anyio.move_on_after(every):
                await self._wake.wait()
            if self._wake.is_set():
                self._wake = anyio.Event()
            await self.flush()

    async def flush(self) -> None:
        """Write every mark that moved on since last written (the daemon's
        last call when it stops, once its sources have)."""
        for source, tracked in list(self._tracked.items()):
            value = self._current(tracked)
            if tracked.held or value is None or not math.isfinite(value):
                continue
            if tracked.written is not None and _ms(value) <= _ms(tracked.written):
                continue
            if await self._write(MARK_PREFIX + source, value, "when it was last connected"):
                tracked.written = value
        if self.live_every is not None:
            await self._write_live(self.live_every)

    async def _write_live(self, every: float) -> None:
        now = time.time()
        for source, tracked in list(self._tracked.items()):
            # A held gap event is not in the journal yet: nothing after its
            # start may be vouched for.
            if not tracked.links or tracked.held:
                continue
            if tracked.live_written is not None and now - tracked.live_written < every * 0.9:
                continue
            if await self._write(LIVE_PREFIX + source, now, "that it is connected"):
                tracked.live_written = now

    async def _write(self, name: str, value: float, what: str) -> bool:
        try:
            await self.marks.write_mark(name, value)
        except Exception as exc:  # noqa: BLE001 - a mark is worth a line, not the daemon
            source = name.split(":", 1)[1]
            self._logs.log(logging.WARNING, "write", "%s: cannot record %s (%s)", source, what, exc)
            return False
        return True
