"""The last events matched and what became of them: what the status page explains.

Recording has to cost next to nothing: the pipeline matches thousands of
events a second with compiled plans, which tell which rules fired and
nothing about the others. So an entry keeps only what that fast path
knows: the event (immutable), the rules it was matched with (a reload
does not change what an entry is explained against), the rules that
matched and those that fired once throttled; and, as the dispatcher
reports them, how each fired rule's actions ended. Why the other
candidates did not fire (a false condition and its operands, an error,
`stop`) is worked out only when someone looks (`engine.status`), by
evaluating those rules again against the stored event.
"""

from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING, NamedTuple

if TYPE_CHECKING:
    from engine.dispatch import ActionObserver, Job
    from engine.errors import ActionFailed
    from engine.events import Event
    from engine.loader import LoadedRules
    from engine.ruleset import CompiledRule

__all__ = ["ActionResult", "RecentEvents", "Seen"]


class ActionResult(NamedTuple):
    """How one action of a fired rule ended (after its retries)."""

    #: None: it succeeded.
    error: str | None
    attempts: int
    #: The job's id in the journal (its dead letter's id if it failed), if journaled.
    job_id: int | None


class Seen:
    """One event as the pipeline matched it."""

    __slots__ = ("event", "rules", "matched", "fired", "outcomes")

    def __init__(
        self,
        event: Event,
        rules: LoadedRules,
        matched: list[CompiledRule],
        fired: list[CompiledRule],
    ) -> None:
        self.event = event
        self.rules = rules
        #: The rules whose condition held, in file order (honouring `stop`).
        self.matched = matched
        #: Of those, the ones not throttled: each became a job.
        self.fired = fired
        #: (rule name, action index) -> how it ended; None until an action ends.
        self.outcomes: dict[tuple[str, int], ActionResult] | None = None


class RecentEvents:
    """The last `size` events matched, oldest first, with their actions' outcomes.

    `add` is called by the pipeline for every event; `observer` wraps the
    dispatcher's observer to record outcomes of the jobs of events still
    kept. Both run on the event loop; readers take a `snapshot`.
    """

    def __init__(self, size: int) -> None:
        if size < 1:
            raise ValueError("RecentEvents needs room for at least one event")
        self.size = size
        self._entries: deque[Seen] = deque()
        #: id(event) -> its entry, for the outcomes of its jobs. An entry
        #: holds its event, so no other live event can have that id.
        self._by_event: dict[int, Seen] = {}

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
        entries, by_event = self._entries, self._by_event
        if len(entries) >= self.size:
            old = entries.popleft()
            key = id(old.event)
            if by_event.get(key) is old:
                del by_event[key]
        seen = Seen(event, rules, matched, fired)
        entries.append(seen)
        by_event[id(event)] = seen

    def observer(self, inner: ActionObserver | None) -> ActionObserver:
        """An observer for the dispatcher that records each action's outcome
        into its event's entry (if still kept), then calls `inner`."""
        by_event = self._by_event

        async def observe(job: Job, index: int, error: ActionFailed | None, attempts: int) -> None:
            seen = by_event.get(id(job.event))
            if seen is not None:
                outcomes = seen.outcomes
                if outcomes is None:
                    outcomes = seen.outcomes = {}
                message = None if error is None else str(error)
                outcomes[job.rule.name, index] = ActionResult(message, attempts, job.id)
            if inner is not None:
                await inner(job, index, error, attempts)

        return observe

    def snapshot(self) -> list[tuple[Seen, dict[tuple[str, int], ActionResult]]]:
        """The entries, newest first, each with a copy of its outcomes so far
        (safe to read in a worker thread while the daemon goes on)."""
        return [(seen, dict(seen.outcomes or {})) for seen in reversed(self._entries)]
