"""The event-source interface: where events come from before the journal.

A source delivers Zoom events to a sink (the journal's `append`, or the
pipeline directly) until cancelled. The daemon runs every configured source
side by side and reads their health and counters for logs, readiness and
metrics; it never needs to know what kind of source it runs. What a source
must remember across restarts it keeps in `Marks`, which the engine hands
it (the journal, behind this interface).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from engine.events import Event

__all__ = [
    "EVENT_NAMES_KEPT",
    "OTHER_EVENTS",
    "EventSink",
    "EventSource",
    "IntakeCheck",
    "IntakeHealth",
    "Marks",
    "SourceHealth",
    "count_event",
]

#: How many distinct event names a source counts apart. Names come from
#: outside (Zoom, whoever posts to a webhook): past this many, the rest are
#: counted together as `OTHER_EVENTS`, so a flood of made-up names cannot
#: grow a source's counters without bound. Zoom's catalogue has a few
#: hundred names.
EVENT_NAMES_KEPT = 1000
OTHER_EVENTS = "other"

#: Where a source hands each event: returns once the event is accepted
#: (journaled, or matched and queued); waits while the engine is full, which
#: is the backpressure a source passes on (e.g. by not reading its socket).
EventSink = Callable[["Event"], Awaitable[object]]


def count_event(counts: Counter[str], name: str) -> None:
    """Count an event of `name` in a source's `events_by_name` (bounded, see `EVENT_NAMES_KEPT`)."""
    if name in counts or len(counts) < EVENT_NAMES_KEPT:
        counts[name] += 1
    else:
        counts[OTHER_EVENTS] += 1


class IntakeHealth(Protocol):
    """Whether the engine takes events right now, and why not if not
    (`JournalStore.health()` gives one: the journal writes, or it cannot)."""

    @property
    def ok(self) -> bool: ...

    @property
    def detail(self) -> str: ...


#: Asks the engine's intake (the journal) whether it takes events now: a
#: source that can tell its sender to come back later (a webhook: 503, and
#: Zoom retries) does so rather than hold events nothing can store.
IntakeCheck = Callable[[], IntakeHealth]


class Marks(Protocol):
    """Named timestamps that outlive the process: what a source remembers
    across restarts (when it was last known connected, see
    `engine.sources.gaps`).

    The journal's store is one (`JournalStore.read_mark` / `write_mark`);
    without a journal, `engine.sources.gaps.MemoryMarks` keeps them for the
    process's life only. Handed to sources by the engine: a source never
    opens the journal itself.
    """

    async def read_mark(self, name: str) -> float | None:
        """The epoch seconds last written under `name`, or None."""
        ...

    async def write_mark(self, name: str, value: float) -> None:
        """Set `name` to `value` (epoch seconds); returns once queued."""
        ...


@dataclass(frozen=True)
class SourceHealth:
    """Whether a source is delivering, since when, and why not if not."""

    #: Connected (or listening) and able to deliver events.
    up: bool
    #: When it last came up (`up`) or went down, epoch seconds; None if never.
    since: float | None
    #: One line for logs and status pages ("connected", the last close reason).
    detail: str
    #: Not delivering here because another node of the cluster does (it holds
    #: the subscription's lease): healthy for the cluster.
    elsewhere: bool = False
    #: Not run by this node (a cluster's node without the lease): it stands
    #: by, whether or not another node runs it (`elsewhere`).
    standby: bool = False


class EventSource(Protocol):
    """One stream of Zoom events (a WebSocket subscription, a webhook endpoint, ...)."""

    #: Unique among the daemon's sources; events carry it as `zoomrules.source`.
    name: str

    @property
    def stats(self) -> Any:
        """Counters of this source (a dataclass of its own kind), for stats and metrics.

        `/metrics` (`engine.metrics`) reads two fields when the dataclass has
        them: `events_by_name` (a Counter, kept with `count_event`) and
        `malformed` (a Counter of rejected input by a reason of the source's
        own, a fixed set)."""
        ...

    #: What it was built from (comparable): after a reload, a source of the
    #: same name whose settings differ replaces the running one.
    settings: object

    def health(self) -> SourceHealth:
        """Whether the source delivers right now."""
        ...

    async def wait_up(self) -> None:
        """Return once the source delivers (at once if it already does)."""
        ...

    async def run(self, sink: EventSink) -> None:
        """Deliver events to `sink` until cancelled.

        Returns or raises only when it cannot go on: `AuthError` (credentials
        refused: retrying cannot help) ends the daemon. Anything transient
        (a dropped connection, a malformed frame) is handled inside.
        """
        ...
