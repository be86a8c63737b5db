"""Event -> matcher -> throttle -> jobs: the engine's one-way data flow."""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from engine.dispatch import Dispatcher, Job
from engine.events import Event
from engine.expr.templates import to_text
from engine.loader import LoadedRules
from engine.logs import LogLimiter, shorten
from engine.ruleset import CompiledRule
from engine.throttle import Throttle

log = logging.getLogger("zoomrules.pipeline")


@dataclass
class PipelineStats:
    events: int = 0
    events_by_name: Counter[str] = field(default_factory=Counter)
    throttled: Counter[str] = field(default_factory=Counter)
    throttle_key_errors: Counter[str] = field(default_factory=Counter)


class Pipeline:
    """Matches each event and hands the resulting jobs to the dispatcher.

    `rules` may be swapped at any time (SIGHUP reload); an event already
    being matched finishes with the rules it started with.
    """

    def __init__(self, rules: LoadedRules, dispatcher: Dispatcher) -> None:
        self.rules = rules
        self.dispatcher = dispatcher
        self.stats = PipelineStats()
        #: Per-event lines that a flood could repeat are rate-limited.
        self._logs = LogLimiter(log)

    def replace_rules(self, rules: LoadedRules) -> None:
        # Keep throttle windows of rules that survive a reload, so a reload
        # does not reset rate limits.
        for name, throttle in self.rules.throttles.items():
            fresh = rules.throttles.get(name)
            if fresh is not None and (fresh.limit, fresh.per) == (throttle.limit, throttle.per):
                rules.throttles[name] = throttle
        self.rules = rules

    def select(self, event: Event) -> list[CompiledRule]:
        """The rules that fire for `event` after throttling."""
        rules = self.rules
        self.stats.events += 1
        self.stats.events_by_name[event.name] += 1
        if not rules.matcher.candidates(event.name):
            return []
        fired = rules.matcher.match_event(event)
        if not fired or not rules.throttles:
            return fired
        root = event.root()
        return [
            rule
            for rule in fired
            if self._allowed(rule, event, root, rules.throttles.get(rule.name))
        ]

    def _allowed(
        self, rule: CompiledRule, event: Event, root: dict[str, Any], throttle: Throttle | None
    ) -> bool:
        if throttle is None or rule.throttle_key is None:
            return True
        try:
            key = rule.throttle_key(root)
        except Exception as exc:  # noqa: BLE001 - a bad key must not drop the firing silently
            self.stats.throttle_key_errors[rule.name] += 1
            self._logs.log(
                logging.WARNING,
                ("key failed", rule.name),
                "throttle key of rule %r failed on %s: %s; not throttled",
                rule.name, event.name, shorten(str(exc)),
            )  # fmt: skip
            return True
        if throttle.allow(key):
            return True
        self.stats.throttled[rule.name] += 1
        self._logs.log(
            logging.INFO,
            ("throttled", rule.name),
            "rule %r throttled for key %r",
            rule.name, shorten(to_text(key), 100),
            extra={"rule": rule.name, "event": event.name},
        )  # fmt: skip
        return False

    async def handle(self, event: Event) -> int:
        """Match `event` and submit its jobs (waits while the dispatcher is full)."""
        fired = self.select(event)
        for rule in fired:
            await self.dispatcher.submit(Job(event, rule))
        return len(fired)
