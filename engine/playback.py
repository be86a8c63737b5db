"""Playing a sequence of events through the rules on the events' own clock,
with no side effects: what fires at each event, and what temporal rules
fire at their deadlines between them (`zoomrules test --cases`).

Each event is evaluated as `zoomrules test` evaluates it (engine.explain);
temporal rules (engine.correlate) carry their correlations from one event
to the next, and their deadlines fall at their own moments, by the events'
`event_ts` (`Timeline`). After the last event the clock runs on to `until`
(by default until every deadline has fallen).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from engine.correlate import Firing, Timeline, fired_at
from engine.events import Event
from engine.explain import evaluate, render_firing
from engine.loader import LoadedRules

__all__ = ["Moment", "Played", "play"]


@dataclass(frozen=True)
class Moment:
    """One firing and when it was made."""

    rule: str
    #: Epoch seconds, on the events' clock.
    at: float
    #: The event it fired on, by its number in the sequence (from 1); None:
    #: a deadline between events (or after the last).
    event: int | None
    #: Its actions, rendered (`engine.explain.render_firing`).
    rendered: dict[str, Any]
    #: The event it fired on (for an absence, the opening event).
    on: Event


@dataclass
class Played:
    """What a sequence did."""

    #: Per event, the `zoomrules test` document, its `fired` including the
    #: temporal rules the event completed.
    results: list[dict[str, Any]] = field(default_factory=list)
    #: Every firing in the order made.
    moments: list[Moment] = field(default_factory=list)
    #: Correlations still open at the end (`until` came first), per rule.
    still_open: dict[str, int] = field(default_factory=dict)

    def fired_on(self, index: int) -> list[str]:
        """Rules fired on event `index` (from 1), in order."""
        return [item["rule"] for item in self.results[index - 1]["fired"]]

    @property
    def timed(self) -> list[Moment]:
        """The firings made at a deadline rather than on an event."""
        return [moment for moment in self.moments if moment.event is None]


def play(loaded: LoadedRules, events: Sequence[Event], *, until: float | None = None) -> Played:
    """Play `events` in order; after the last, the clock runs to `until`
    (epoch seconds; None: until every deadline has fallen)."""
    timeline = Timeline(loaded.rules)
    played = Played()

    def timed(firings: list[Firing]) -> None:
        for firing in firings:
            rendered = render_firing(firing.rule, firing.event, firing.context)
            played.moments.append(
                Moment(firing.rule.name, fired_at(firing), None, rendered, firing.event)
            )

    for index, event in enumerate(events, start=1):
        timed(timeline.before(event))
        result = evaluate(loaded, event)
        for firing in timeline.observe(event, loaded.matcher.match_event(event)):
            if firing.context is None:
                rendered = next(
                    item for item in result["fired"] if item["rule"] == firing.rule.name
                )
            else:
                rendered = render_firing(firing.rule, event, firing.context)
                result["fired"].append(rendered)
            played.moments.append(
                Moment(firing.rule.name, fired_at(firing), index, rendered, event)
            )
        played.results.append(result)
    timed(timeline.advance(math.inf if until is None else until))
    played.still_open = timeline.correlations.open_counts()
    return played
