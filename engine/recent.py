"""The last events matched and what became of them: what the status page explains.

Recording has to cost next to nothing: the pipeline matches thousands of
events a second with compiled plans, which tell which rules fired and
nothing about the others. So an entry keeps only what that fast path
knows: the event (immutable), the rules it was matched with (a reload
does not change what an entry is explained against), the rules that
matched and those that fired once throttled; and, as the dispatcher
reports them, how each fired rule's actions ended. Why the other
candidates did not fire (a false condition and its operands, an error,
`stop`) is worked out only when someone looks (`engine.event_report`), by
evaluating those rules again against the stored event.

What each event costs here is one tuple in a deque, and each action one
small record: about 1% of the daemon's time per event (docs/performance.md).
"""

from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING, NamedTuple

if TYPE_CHECKING:
    from engine.dispatch import Job
    from engine.errors import ActionFailed
    from engine.events import Event
    from engine.loader import LoadedRules
    from engine.ruleset import CompiledRule

__all__ = ["ActionResult", "Outcomes", "RecentEvents", "Seen"]


class ActionResult(NamedTuple):
    """How one action of a fired rule ended (after its retries)."""

    #: None: it succeeded.
    error: str | None
    attempts: int
    #: The job's id in the journal (its dead letter's id if it failed), if journaled.
    job_id: int | None


#: An event's action outcomes: (rule name, action index) -> how it ended.
Outcomes = dict[tuple[str, int], ActionResult]


class Seen(NamedTuple):
    """One event as the pipeline matched it."""

    event: Event
    rules: LoadedRules
    #: The rules whose condition held, in file order (honouring `stop`).
    matched: list[CompiledRule]
    #: Of those, the ones not throttled: each became a job.
    fired: list[CompiledRule]


#: `Outcomes` as `record` keeps them: (error, attempts, job id) tuples.
_Recorded = dict[tuple[str, int], tuple[str | None, int, int | None]]
#: Outcomes of this many times `size` events are held before those of
#: events no longer kept are dropped.
_FORGET_AFTER = 4


class RecentEvents:
    """The last `size` events matched, with their actions' outcomes.

    The pipeline calls `add` for every event, the dispatcher `record` after
    every action; both run on the event loop. Readers take a `snapshot`.
    """

    def __init__(self, size: int) -> None:
        if size < 1:
            raise ValueError("RecentEvents needs room for at least one event")
        self.size = size
        #: (event, rules, matched, fired), oldest first: a plain tuple is
        #: the cheapest record to make per event.
        self._entries: deque[tuple[Event, LoadedRules, list[CompiledRule], list[CompiledRule]]]
        self._entries = deque(maxlen=size)
        #: id(event) -> the event and its outcomes, as plain tuples (made
        #: `ActionResult`s by `snapshot`). Holding the event keeps its id
        #: from being given to another while it is here.
        self._outcomes: dict[int, tuple[Event, _Recorded]] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def add(
        self,
        event: Event,
        rules: LoadedRules,
        matched: list[CompiledRule],
        fired: list[CompiledRule],
    ) -> None:
        """Record an event just matched (the oldest kept goes when full)."""
        self._entries.append((event, rules, matched, fired))

    def record(self, job: Job, index: int, error: ActionFailed | None, attempts: int) -> None:
        """Record how action `index` of `job` ended (the dispatcher's `recorder`)."""
        outcomes = self._outcomes
        found = outcomes.get(id(job.event))
        if found is None:
            if len(outcomes) >= _FORGET_AFTER * self.size:
                self._forget()
                outcomes = self._outcomes
            found = outcomes[id(job.event)] = (job.event, {})
        found[1][job.rule.name, index] = (None if error is None else str(error), attempts, job.id)

    def _forget(self) -> None:
        """Drop the outcomes of events no longer kept (now and then: at most
        `size` are kept, so this runs once per `(_FORGET_AFTER - 1) * size`
        new events at most)."""
        kept = {id(entry[0]) for entry in self._entries}
        self._outcomes = {key: found for key, found in self._outcomes.items() if key in kept}

    def snapshot(self) -> list[tuple[Seen, Outcomes]]:
        """The entries, newest first, each with a copy of its outcomes so far
        (safe to read in a worker thread while the daemon goes on)."""
        out = []
        for entry in reversed(self._entries):
            found = self._outcomes.get(id(entry[0]))
            results = found[1].items() if found is not None else ()
            out.append((Seen(*entry), {key: ActionResult(*value) for key, value in results}))
        return out
