"""Deciding which rules fire for an event.

Rules are indexed by exact event name; rules with a glob in `on` sit in a
separate list. For each event name we compute once (and cache) the enabled
rules that can apply, in file order, so an event only evaluates the
conditions of rules that can fire on it.

Per event, work is shared across those rules: rules with the same condition
text share one evaluation (the compiler hands them the same function), and
rules whose condition starts with an equality test on the same expression
(engine.expr.guards) share one evaluation of that expression, after which each
such rule costs one set lookup. Both are exact: file order, `stop`, results
and reported errors are those of evaluating every rule in turn.
"""

from __future__ import annotations

import fnmatch
import logging
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from engine.events import META_KEY, Event
from engine.expr.compiler import ExpressionCompiler, is_truthy
from engine.expr.plans import (
    PlanFunction,
    PlanStep,
    Raised,
    compile_plan,
    reads_only_fields,
)
from engine.ruleset import CompiledRule

log = logging.getLogger("zoomrules.matcher")

_GLOB_CHARS = frozenset("*?[")
#: Bound on the per-name cache; Zoom has a few hundred event names, so this
#: only matters if someone feeds us random names.
_CACHE_LIMIT = 4096

#: How many condition failures per rule are logged before sampling starts.
_LOGGED_ERRORS = 5

SkipReason = Literal["disabled", "event", "condition", "error", "stopped"]


def is_glob(pattern: str) -> bool:
    return not _GLOB_CHARS.isdisjoint(pattern)


@dataclass(frozen=True, slots=True)
class _Step:
    """One candidate rule in an event name's plan."""

    rule: CompiledRule
    #: Index of the rule's condition in the per-event results (-1: none).
    condition: int
    #: Index of its guard's value in the per-event guard values (-1: none).
    guard: int
    values: frozenset[Any]
    #: The guard alone decides the condition.
    exact: bool


@dataclass(frozen=True, slots=True)
class _Plan:
    steps: tuple[_Step, ...]
    conditions: tuple[Callable[[Any], Any], ...]
    guards: tuple[Callable[[Any], Any], ...]
    #: The whole plan as one generated function (engine.expr.plans), when
    #: the compiled evaluator is in use; then `steps` are not used.
    compiled: PlanFunction | None = None
    #: `compiled` reads only the event's own fields: give it the body.
    body_will_do: bool = False


#: Marks a per-event slot not evaluated yet.
_UNSET: Any = object()


def _plan(rules: Sequence[CompiledRule]) -> _Plan:
    condition_slots: dict[Any, int] = {}
    conditions: list[Callable[[Any], Any]] = []
    guard_slots: dict[Any, int] = {}
    guards: list[Callable[[Any], Any]] = []
    steps = []
    for rule in rules:
        condition = guard = -1
        if rule.condition is not None:
            # The compiler hands rules with the same text the same function.
            condition = _slot(condition_slots, conditions, id(rule.condition), rule.condition)
        values: frozenset[Any] = frozenset()
        exact = False
        if rule.guard is not None:
            guard = _slot(guard_slots, guards, rule.guard.key, rule.guard.search)
            values, exact = rule.guard.values, rule.guard.exact
        steps.append(_Step(rule, condition, guard, values, exact))
    return _Plan(tuple(steps), tuple(conditions), tuple(guards))


def _slot(slots: dict[Any, int], items: list[Any], key: Any, item: Any) -> int:
    """The index of `key`'s item in `items`, appending `item` the first time."""
    index = slots.setdefault(key, len(items))
    if index == len(items):
        items.append(item)
    return index


@dataclass(frozen=True)
class Decision:
    """Why a rule did or did not fire (for `zoomrules test`)."""

    rule: CompiledRule
    fired: bool
    reason: SkipReason | None = None
    detail: str = ""


class Matcher:
    """Matches events against `rules`.

    With `compiler` (the one that compiled the rules) using the compiled
    evaluator, each event name's rules are compiled into one function that
    shares work across them (engine.expr.plans); otherwise, and where
    Python cannot compile that function, conditions are evaluated in turn,
    sharing identical conditions and (interpreter evaluator) equality guards.
    """

    def __init__(
        self, rules: Sequence[CompiledRule], compiler: ExpressionCompiler | None = None
    ) -> None:
        self.rules = tuple(rules)
        self._compiler = compiler if compiler and compiler.evaluator == "compiled" else None
        self._exact: dict[str, list[CompiledRule]] = {}
        self._globs: list[tuple[CompiledRule, tuple[str, ...]]] = []
        for rule in self.rules:
            if not rule.spec.enabled:
                continue
            patterns = tuple(p for p in rule.spec.on if is_glob(p))
            if patterns:
                self._globs.append((rule, patterns))
            for name in rule.spec.on:
                if not is_glob(name):
                    self._exact.setdefault(name, []).append(rule)
        self._candidates: dict[str, tuple[CompiledRule, ...]] = {}
        self._plans: dict[str, _Plan] = {}
        #: Run-time expression errors per rule name.
        self.errors: Counter[str] = Counter()

    def candidates(self, event_name: str) -> tuple[CompiledRule, ...]:
        """Enabled rules whose `on` matches `event_name`, in file order."""
        found = self._candidates.get(event_name)
        if found is None:
            found = self._compute_candidates(event_name)
            if len(self._candidates) >= _CACHE_LIMIT:
                self._candidates.clear()
            self._candidates[event_name] = found
        return found

    def _plan_for(self, event_name: str) -> _Plan:
        plan = self._plans.get(event_name)
        if plan is None:
            candidates = self.candidates(event_name)
            compiled = self._compile_plan(candidates)
            # A compiled plan needs no steps to evaluate in turn.
            plan = _Plan((), (), (), *compiled) if compiled else _plan(candidates)
            if len(self._plans) >= _CACHE_LIMIT:
                self._plans.clear()
            self._plans[event_name] = plan
        return plan

    def _compile_plan(self, rules: Sequence[CompiledRule]) -> tuple[PlanFunction, bool] | None:
        compiler = self._compiler
        if compiler is None or not rules:
            return None
        steps = [
            PlanStep(
                rule,
                compiler.tree(rule.spec.when) if rule.condition and rule.spec.when else None,
                rule.condition,
                rule.spec.stop,
            )
            for rule in rules
        ]
        try:
            plan = compile_plan(steps, compiler.functions, self._runtime_error)
        except (SyntaxError, RecursionError, MemoryError) as exc:
            # Python's own limits on a pathological rule set: evaluate in turn.
            log.debug("plan of %d rules not compiled (%s); evaluating in turn", len(rules), exc)
            return None
        return plan, reads_only_fields(steps, META_KEY)

    def _compute_candidates(self, event_name: str) -> tuple[CompiledRule, ...]:
        chosen = {id(rule): rule for rule in self._exact.get(event_name, ())}
        for rule, patterns in self._globs:
            if any(fnmatch.fnmatchcase(event_name, p) for p in patterns):
                chosen[id(rule)] = rule
        return tuple(sorted(chosen.values(), key=lambda r: r.spec.index))

    def match_event(self, event: Event) -> list[CompiledRule]:
        """`match` for an event, building its root document only if a
        condition reads more of it than the event's own fields."""
        plan = self._plan_for(event.name)
        if plan.compiled is not None and plan.body_will_do:
            return plan.compiled(event.body, event.name)
        return self.match(event.name, event.root())

    def match(self, event_name: str, root: Any) -> list[CompiledRule]:
        """The rules that fire for one event, in file order, honouring `stop`."""
        plan = self._plan_for(event_name)
        if plan.compiled is not None:
            return plan.compiled(root, event_name)
        results = [_UNSET] * len(plan.conditions)
        guard_values = [_UNSET] * len(plan.guards)
        fired: list[CompiledRule] = []
        for step in plan.steps:
            if step.guard >= 0:
                value = guard_values[step.guard]
                if value is _UNSET:
                    try:
                        value = plan.guards[step.guard](root)
                    except Exception as exc:  # noqa: BLE001 - reported per rule below
                        value = Raised(exc)
                    guard_values[step.guard] = value
                if value.__class__ is not Raised:
                    try:
                        hit = value in step.values
                    except TypeError:  # a list or object equals no string or number
                        hit = False
                    if not hit:
                        continue
                    if step.exact:
                        fired.append(step.rule)
                        if step.rule.spec.stop:
                            break
                        continue
                # A guard that raised: evaluate the rule as usual, which
                # raises the same error and reports it for this rule.
            if step.condition >= 0:
                value = results[step.condition]
                if value is _UNSET:
                    # Inlined rather than a helper call: this is the hot loop.
                    try:
                        value = plan.conditions[step.condition](root)
                    except Exception as exc:  # noqa: BLE001 - one bad rule must not stop the others
                        value = Raised(exc)
                    results[step.condition] = value
                if value.__class__ is Raised:
                    self._runtime_error(step.rule, event_name, value.error)
                    continue
                # JMESPath truthiness inlined (hot loop): like Python's,
                # except that 0 is true.
                if not value and not (value == 0 and value is not False):
                    continue
            fired.append(step.rule)
            if step.rule.spec.stop:
                break
        return fired

    def _runtime_error(self, rule: CompiledRule, event_name: str, exc: Exception) -> None:
        count = self.errors[rule.name] = self.errors[rule.name] + 1
        # A condition that fails on every event of some shape would flood the
        # log; the first failures and then every 1000th are enough to see it.
        if count <= _LOGGED_ERRORS or count % 1000 == 0:
            log.warning(
                "condition of rule %r failed on %s (%d failures so far): %s",
                rule.name,
                event_name,
                count,
                exc,
                extra={"rule": rule.name, "event": event_name, "error_count": count},
            )

    def explain(self, event_name: str, root: Any) -> list[Decision]:
        """Every rule with the reason it fires or not (no side effects, no counters)."""
        decisions = []
        stopped_by: str | None = None
        for rule in self.rules:
            decision = self._decide(rule, event_name, root)
            if decision.fired and stopped_by is not None:
                decision = Decision(
                    rule, False, "stopped", f"rule {stopped_by!r} fired with stop = true"
                )
            elif decision.fired and rule.spec.stop:
                stopped_by = rule.name
            decisions.append(decision)
        return decisions

    def _decide(self, rule: CompiledRule, event_name: str, root: Any) -> Decision:
        if not rule.spec.enabled:
            return Decision(rule, False, "disabled", "enabled = false")
        if not any(fnmatch.fnmatchcase(event_name, p) for p in rule.spec.on):
            return Decision(
                rule, False, "event", f"{event_name} does not match {list(rule.spec.on)}"
            )
        if rule.condition is None:
            return Decision(rule, True)
        try:
            value = rule.condition(root)
        except Exception as exc:  # noqa: BLE001
            return Decision(rule, False, "error", f"{type(exc).__name__}: {exc}")
        if not is_truthy(value):
            return Decision(
                rule,
                False,
                "condition",
                f"when = {' '.join((rule.spec.when or '').split())!r} gave {value!r}",
            )
        return Decision(rule, True)
