"""Deciding which rules fire for an event.

Rules are indexed by exact event name; rules with a glob in `on` sit in a
separate list, grouped by their patterns. For each event name we compute
once the enabled rules that can apply, in file order (its *candidates*), so
an event only evaluates the conditions of rules that can fire on it. Names
with the same candidates share everything prepared for them: with `on =
["meeting.*"]` rules, every `meeting.` name is one set of candidates.

Per event, work is shared across those rules: rules with the same condition
text share one evaluation (the compiler hands them the same function), and
rules whose condition starts with an equality test on the same expression
(engine.expr.guards) share one evaluation of that expression, after which each
such rule costs one set lookup. Both are exact: file order, `stop`, results
and reported errors are those of evaluating every rule in turn.

With the compiled evaluator, a set of candidates is compiled into generated
functions (engine.expr.plans): one, or for a large set several *parts* of
at most `LARGE_PLAN_SOURCE` characters of source each, one after the other
in file order (a rule with `stop` that fires ends the event's matching in
its part), up to `COMPILED_RULES_PER_SET` rules; the rules after those are
evaluated in turn.

Preparing candidates costs time (compiling: about half a millisecond per
rule). `match` and `match_event` prepare them at once, on the caller's
thread, the first time. The daemon uses `matching` instead, which never
prepares anything: candidates not prepared yet are evaluated in turn (exact,
slower), by a `Matching` that runs in slices so that the caller can let its
event loop run in between; the preparation is handed out, a part at a time,
by `plan_work` to a task that runs it off the event loop (engine.pipeline),
and each part is swapped in as soon as it is ready.
"""

from __future__ import annotations

import fnmatch
import logging
import math
import time
from collections import Counter, OrderedDict, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from types import CodeType
from typing import Any, Literal

from engine.events import META_KEY, Event
from engine.expr.compiler import ExpressionCompiler, is_truthy
from engine.expr.plans import (
    PlanFunction,
    PlanSource,
    PlanStep,
    Raised,
    generate_plan,
    reads_only_fields,
)
from engine.ruleset import CompiledRule

log = logging.getLogger("zoomrules.matcher")

_GLOB_CHARS = frozenset("*?[")

#: Event names whose candidates are remembered, the least recently used
#: forgotten first; Zoom has a few hundred event names, so this only matters
#: if something sends random names.
NAMES_CACHED = 4096
#: Generated source that may be compiled in a thread of the daemon, in
#: characters. Python's compile() takes about 0.33 us per character here and
#: holds the interpreter lock all along, so a plan compiled in a worker
#: thread stops the event loop for that long: 64,000 characters (60-100
#: rules of the benchmark's shapes) is about 20 ms on a quiet machine. A
#: larger source is compiled in a child process (engine.pipeline), or, when
#: there is none, cut into parts of this size.
PLAN_SOURCE_LIMIT = 64_000
#: Generated source of one compiled function at most (about 1,000 rules of
#: the benchmark's shapes; compile() takes 0.35 s for it, in the child
#: process; loading what it gives takes the daemon 3 ms). A set of
#: candidates is compiled in as few parts as this allows: rules share work
#: only within a part.
LARGE_PLAN_SOURCE = 1_000_000
#: Rules of one set of candidates compiled at most; the ones after them are
#: evaluated in turn. Compiled code costs about 4 KB per rule.
COMPILED_RULES_PER_SET = 5_000
#: Compiled rules in all the sets remembered at once (about 200 MB at
#: most); past it, new sets are evaluated in turn until names are forgotten.
COMPILED_RULES_TOTAL = 50_000
#: Rules evaluated in turn between two looks at the clock (`Matching.run`).
IN_TURN_SLICE = 128
#: Characters of generated source per rule, guessed before the first part
#: (on the high side: a part found too large is generated again, smaller).
_GUESSED_RULE_SOURCE = 1_000

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
    """Candidates evaluated in turn, sharing conditions and guards."""

    steps: tuple[_Step, ...]
    conditions: tuple[Callable[[Any], Any], ...]
    guards: tuple[Callable[[Any], Any], ...]


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


@dataclass(frozen=True, slots=True)
class _Part:
    """Candidates `start` to `end` (exclusive) as one generated function;
    `function` None: evaluated in turn (Python could not compile them)."""

    function: PlanFunction | None
    start: int
    end: int
    #: `function` reads only the event's own fields: give it the body.
    body_will_do: bool = False


class _Candidates:
    """One set of candidate rules (shared by the names that have it) and
    what has been prepared for evaluating it."""

    __slots__ = (
        "rules",
        "key",
        "names",
        "parts",
        "compiled",
        "target",
        "whole",
        "whole_body",
        "turn",
        "done",
        "queued",
        "dropped",
        "max_part",
    )

    def __init__(
        self, rules: tuple[CompiledRule, ...], key: tuple[int, ...], target: int, steps: bool
    ) -> None:
        self.rules = rules
        self.key = key
        #: Remembered event names with these candidates.
        self.names = 0
        #: Compiled parts, in order, covering rules[:compiled].
        self.parts: tuple[_Part, ...] = ()
        self.compiled = 0
        #: How many rules are to be compiled (0 with the interpreter evaluator).
        self.target = target
        #: parts[0].function when it covers every rule: the fast path.
        self.whole: PlanFunction | None = None
        self.whole_body = False
        #: Every rule's step, for evaluating in turn with shared guards
        #: (the interpreter evaluator, `steps`); None: evaluated plainly.
        self.turn: _Plan | None = None
        #: Nothing more to prepare.
        self.done = not rules or not (target or steps)
        #: Waiting for `plan_work`.
        self.queued = False
        #: Forgotten (no remembered name has these candidates any more).
        self.dropped = False
        #: Rules in a part at most (halved when Python cannot compile one).
        self.max_part = COMPILED_RULES_PER_SET

    def add_part(self, part: _Part) -> None:
        self.parts = (*self.parts, part)
        self.compiled = part.end
        if part.start == 0 and part.end == len(self.rules) and part.function is not None:
            self.whole, self.whole_body = part.function, part.body_will_do
        self.done = self.compiled >= self.target


@dataclass(frozen=True)
class Decision:
    """Why a rule did or did not fire (for `zoomrules test`)."""

    rule: CompiledRule
    fired: bool
    reason: SkipReason | None = None
    detail: str = ""


@dataclass
class MatcherStats:
    #: Events matched (at least partly) by evaluating candidates in turn
    #: because they were not compiled yet (`Matcher.matching`).
    events_in_turn: int = 0
    #: Generated functions compiled, and the rules in them (all sets).
    parts_compiled: int = 0
    rules_compiled: int = 0
    #: Rules that could not be compiled into a function (evaluated in turn).
    rules_not_compiled: int = 0


class UncompiledPart:
    """A part whose source is too large to compile in a thread of the
    daemon: `compile(source, filename, "exec")` elsewhere, then `finish`."""

    __slots__ = ("plan", "start", "end", "body_will_do")

    def __init__(self, plan: PlanSource, start: int, end: int, body_will_do: bool) -> None:
        self.plan = plan
        self.start = start
        self.end = end
        self.body_will_do = body_will_do

    @property
    def source(self) -> str:
        return self.plan.source

    @property
    def filename(self) -> str:
        return self.plan.filename

    def finish(self, code: CodeType) -> _Part:
        """The part, from the code compile() gave for `source`."""
        return _Part(self.plan.build(code), self.start, self.end, self.body_will_do)


PlanResult = _Part | _Plan | UncompiledPart


class PlanWork:
    """One piece of preparation: `run(limit)` in any thread, then
    `install()` (or `failed()`) on the thread that matches."""

    __slots__ = ("matcher", "entry", "start")

    def __init__(self, matcher: Matcher, entry: _Candidates, start: int) -> None:
        self.matcher = matcher
        self.entry = entry
        self.start = start

    def run(self, limit: int) -> PlanResult | None:
        """The next part, its source at most `limit` characters (compiled
        here when at most PLAN_SOURCE_LIMIT), or the in-turn plan; None if
        that failed (a bug)."""
        try:
            return self.matcher._prepare(self.entry, self.start, limit, build=False)
        except Exception:  # a bug: evaluate the rest in turn rather than stop matching
            log.exception("compiling the plan of %d rules failed", len(self.entry.rules))
            return None

    def install(self, result: _Part | _Plan | None) -> None:
        """Swap `result` in (None: evaluate the rest in turn from now on)."""
        if result is None:
            if not self.entry.dropped:
                self.matcher._give_up(self.entry)
            return
        self.matcher._install(self.entry, self.start, result)

    def failed(self, part: UncompiledPart, error: BaseException) -> None:
        """compile() refused `part` (SyntaxError, RecursionError, MemoryError)."""
        self.matcher._not_compiled(self.entry, part, error)


class Matcher:
    """Matches events against `rules`.

    With `compiler` (the one that compiled the rules) using the compiled
    evaluator, each event name's rules are compiled into generated functions
    that share work across them (engine.expr.plans); otherwise, and where
    Python cannot compile such a function, conditions are evaluated in turn,
    sharing identical conditions and (interpreter evaluator) equality guards.
    """

    def __init__(
        self, rules: Sequence[CompiledRule], compiler: ExpressionCompiler | None = None
    ) -> None:
        self.rules = tuple(rules)
        self._compiler = compiler if compiler and compiler.evaluator == "compiled" else None
        #: Positions in `rules` of the enabled rules, by exact event name
        #: and, for glob rules, by their patterns.
        self._exact: dict[str, list[int]] = {}
        globs: dict[tuple[str, ...], list[int]] = {}
        #: Positions of the disabled rules (only explaining looks at them).
        self._disabled: list[int] = []
        for position, rule in enumerate(self.rules):
            if not rule.spec.enabled:
                self._disabled.append(position)
                continue
            patterns = tuple(p for p in rule.spec.on if is_glob(p))
            if patterns:
                globs.setdefault(patterns, []).append(position)
            for name in rule.spec.on:
                if not is_glob(name):
                    self._exact.setdefault(name, []).append(position)
        self._globs = list(globs.items())
        self._order = [rule.spec.index for rule in self.rules]
        self._in_order = all(a < b for a, b in zip(self._order, self._order[1:], strict=False))
        #: Event name -> its candidates, least recently used first.
        self._names: OrderedDict[str, _Candidates] = OrderedDict()
        #: Candidates by the positions of their rules: names share them.
        self._sets: dict[tuple[int, ...], _Candidates] = {}
        #: Candidates waiting for `plan_work`.
        self._wanted: deque[_Candidates] = deque()
        self._compiled_total = 0
        #: Generated characters per compiled rule, as last seen.
        self._source_per_rule = _GUESSED_RULE_SOURCE
        self.stats = MatcherStats()
        #: Run-time expression errors per rule name.
        self.errors: Counter[str] = Counter()

    # -- candidates -----------------------------------------------------------

    def candidates(self, event_name: str) -> tuple[CompiledRule, ...]:
        """Enabled rules whose `on` matches `event_name`, in file order."""
        entry = self._names.get(event_name)
        if entry is None:
            entry = self._admit(event_name)
        return entry.rules

    def rules_on(self, event_name: str) -> list[CompiledRule]:
        """Every rule whose `on` matches `event_name`, disabled ones included,
        in file order, leaving the candidates' cache as it is (for
        explaining an event without disturbing the matching of the next)."""
        positions = [*self._positions(event_name)]
        for position in self._disabled:
            if any(fnmatch.fnmatchcase(event_name, p) for p in self.rules[position].spec.on):
                positions.append(position)
        positions.sort(key=self._order.__getitem__)
        return [self.rules[position] for position in positions]

    def _admit(self, event_name: str) -> _Candidates:
        key = self._positions(event_name)
        entry = self._sets.get(key)
        if entry is None:
            rules = tuple(map(self.rules.__getitem__, key))
            compiled = self._compiler is not None
            target = min(len(rules), COMPILED_RULES_PER_SET) if compiled else 0
            entry = self._sets[key] = _Candidates(rules, key, target, not compiled)
        entry.names += 1
        names = self._names
        names[event_name] = entry
        if len(names) > NAMES_CACHED:
            _, forgotten = names.popitem(last=False)
            forgotten.names -= 1
            if forgotten.names == 0:
                self._drop(forgotten)
        return entry

    def _drop(self, entry: _Candidates) -> None:
        entry.dropped = True
        del self._sets[entry.key]
        self._compiled_total -= entry.compiled
        entry.parts, entry.whole, entry.turn = (), None, None

    def _positions(self, event_name: str) -> tuple[int, ...]:
        """Positions in `rules` of `event_name`'s candidates, in file order."""
        exact = self._exact.get(event_name, ())
        groups = [
            group
            for patterns, group in self._globs
            if any(fnmatch.fnmatchcase(event_name, p) for p in patterns)
        ]
        if not groups or (not exact and len(groups) == 1):
            found: Sequence[int] = groups[0] if groups else exact
            if self._in_order:
                return tuple(found)
        else:
            merged = set(exact)
            for group in groups:
                merged.update(group)
            found = list(merged)
        return tuple(sorted(found, key=self._order.__getitem__))

    def _entry(self, event_name: str) -> _Candidates:
        entry = self._names.get(event_name)
        if entry is None:
            return self._admit(event_name)
        self._names.move_to_end(event_name)
        return entry

    # -- matching -------------------------------------------------------------

    def match_event(self, event: Event) -> list[CompiledRule]:
        """`match` for an event, building its root document only if a
        condition reads more of it than the event's own fields."""
        name = event.name
        entry = self._names.get(name)
        if entry is None:
            entry = self._admit(name)
        else:
            self._names.move_to_end(name)
        whole = entry.whole
        if whole is None and not entry.done:
            self.prepare(entry)
            whole = entry.whole
        if whole is not None:
            return whole(event.body if entry.whole_body else event.root(), name)
        if not entry.rules:
            return []
        matching = Matching(self, entry, name, event, None)
        matching.run(math.inf)
        return matching.fired

    def match(self, event_name: str, root: Any) -> list[CompiledRule]:
        """The rules that fire for one event, in file order, honouring `stop`."""
        entry = self._entry(event_name)
        if not entry.done:
            self.prepare(entry)
        whole = entry.whole
        if whole is not None:
            return whole(root, event_name)
        matching = Matching(self, entry, event_name, None, root)
        matching.run(math.inf)
        return matching.fired

    def matching(self, event: Event) -> list[CompiledRule] | Matching:
        """What fires for `event` when its candidates are prepared (as
        `match_event`); otherwise a `Matching` to run in slices, evaluating
        in turn what is not prepared yet, which never prepares anything on
        the caller's thread: the preparation is queued for `plan_work`."""
        name = event.name
        entry = self._names.get(name)
        if entry is None:
            entry = self._admit(name)
        else:
            self._names.move_to_end(name)
        whole = entry.whole
        if whole is not None:
            return whole(event.body if entry.whole_body else event.root(), name)
        if not entry.rules:
            return []
        if not entry.done:
            self.stats.events_in_turn += 1
            if not entry.queued:
                entry.queued = True
                self._wanted.append(entry)
        return Matching(self, entry, name, event, None)

    # -- preparing --------------------------------------------------------------

    @property
    def wants_work(self) -> bool:
        """Candidates are waiting to be prepared (see `plan_work`)."""
        return bool(self._wanted)

    def plan_work(self) -> PlanWork | None:
        """The next piece of preparation `matching` queued, if any."""
        wanted = self._wanted
        while wanted:
            entry = wanted[0]
            if not entry.dropped and not entry.done:
                if self._compiled_total < COMPILED_RULES_TOTAL or entry.target == 0:
                    return PlanWork(self, entry, entry.compiled)
                self._give_up(entry)
            entry.queued = False
            wanted.popleft()
        return None

    def prepare(self, entry: _Candidates) -> None:
        """Prepare `entry` completely, here and now."""
        while not entry.done and not entry.dropped:
            if entry.target and self._compiled_total >= COMPILED_RULES_TOTAL:
                self._give_up(entry)
                break
            start = entry.compiled
            result = self._prepare(entry, start, LARGE_PLAN_SOURCE, build=True)
            assert not isinstance(result, UncompiledPart)
            self._install(entry, start, result)

    def _give_up(self, entry: _Candidates) -> None:
        """Compile no more of `entry`: the rest is evaluated in turn."""
        log.debug(
            "%d compiled rules in all; %d rules evaluated in turn",
            self._compiled_total,
            len(entry.rules) - entry.compiled,
        )
        entry.target = entry.compiled
        entry.done = True

    def _prepare(self, entry: _Candidates, start: int, limit: int, *, build: bool) -> PlanResult:
        """The next part of `entry`, from rule `start`, its source at most
        `limit` characters (compiled if `build` or it is at most
        PLAN_SOURCE_LIMIT), or, with the interpreter evaluator, its plan.

        Reads `entry` and the rules only, so it may run in any thread (the
        caller installs the result with `_install`)."""
        compiler = self._compiler
        if compiler is None or not entry.target:
            return _plan(entry.rules)
        rules = entry.rules
        per_rule = max(1, self._source_per_rule)
        end = min(entry.target, start + entry.max_part, start + max(1, limit // per_rule))
        while True:
            steps = [
                PlanStep(
                    rule,
                    compiler.tree(rule.spec.when) if rule.condition and rule.spec.when else None,
                    rule.condition,
                    rule.spec.stop,
                )
                for rule in rules[start:end]
            ]
            count = end - start
            try:
                generated = generate_plan(steps, compiler.functions, self._runtime_error)
                size = len(generated.source)
                self._source_per_rule = max(1, size // count)
                if size > limit:
                    if count > 1:
                        end = start + max(1, min(count // 2, limit * count // size))
                        continue
                    # One rule of pathological size: compiling it would hold
                    # the interpreter too long; its own function will do.
                    return _Part(None, start, end)
                body_will_do = reads_only_fields(steps, META_KEY)
                if not build and size > PLAN_SOURCE_LIMIT:
                    return UncompiledPart(generated, start, end, body_will_do)
                function = generated.build()
            except (SyntaxError, RecursionError, MemoryError) as exc:
                # Python's own limits on a pathological rule: halve the part,
                # down to that rule alone, which is then evaluated in turn.
                if count > 1:
                    end = start + count // 2
                    continue
                log.debug("rule %r not compiled (%s); evaluated in turn", rules[start].name, exc)
                return _Part(None, start, end)
            return _Part(function, start, end, body_will_do)

    def _not_compiled(self, entry: _Candidates, part: UncompiledPart, error: BaseException) -> None:
        count = part.end - part.start
        if count > 1:
            entry.max_part = count // 2  # and try again, smaller
            return
        log.debug(
            "rule %r not compiled (%s); evaluated in turn", entry.rules[part.start].name, error
        )
        self._install(entry, part.start, _Part(None, part.start, part.end))

    def _install(self, entry: _Candidates, start: int, result: PlanResult) -> None:
        if entry.dropped:
            return
        if isinstance(result, _Plan):
            entry.turn, entry.done = result, True
            return
        assert isinstance(result, _Part), "UncompiledPart.finish() first"
        if start != entry.compiled or entry.compiled >= entry.target:
            return  # prepared meanwhile by `prepare`
        entry.add_part(result)
        count = result.end - result.start
        self._compiled_total += count
        if result.function is None:
            self.stats.rules_not_compiled += count
        else:
            self.stats.parts_compiled += 1
            self.stats.rules_compiled += count

    # -- evaluating in turn -----------------------------------------------------

    def _in_turn(
        self,
        rules: tuple[CompiledRule, ...],
        start: int,
        end: int,
        root: Any,
        event_name: str,
        results: dict[Any, Any],
        fired: list[CompiledRule],
    ) -> bool:
        """Evaluate `rules[start:end]` in turn; True if a rule with `stop` fired.

        Rules with the same condition (the same function) share its result
        through `results`."""
        for rule in rules[start:end]:
            condition = rule.condition
            if condition is not None:
                value = results.get(condition, _UNSET)
                if value is _UNSET:
                    try:
                        value = condition(root)
                    except Exception as exc:  # noqa: BLE001 - one bad rule must not stop the others
                        value = Raised(exc)
                    results[condition] = value
                if value.__class__ is Raised:
                    self._runtime_error(rule, event_name, value.error)
                    continue
                if not value and not (value == 0 and value is not False):
                    continue
            fired.append(rule)
            if rule.spec.stop:
                return True
        return False

    def _steps_in_turn(
        self,
        plan: _Plan,
        start: int,
        end: int,
        root: Any,
        event_name: str,
        results: list[Any],
        guard_values: list[Any],
        fired: list[CompiledRule],
    ) -> bool:
        """`_in_turn` with the shared equality guards of `plan`."""
        for step in plan.steps[start:end]:
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
                            return True
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
                return True
        return False

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

    # -- explaining -------------------------------------------------------------

    def explain(
        self, event_name: str, root: Any, rules: Sequence[CompiledRule] | None = None
    ) -> list[Decision]:
        """Every rule (or only `rules`, in file order: at least the event's
        candidates, for `stop` to be right) with the reason it fires or not
        (no side effects, no counters)."""
        decisions = []
        stopped_by: str | None = None
        for rule in self.rules if rules is None else rules:
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


class Matching:
    """One event's matching in slices: call `run(deadline)` until it returns
    True; `fired` then holds the rules that fire, as `Matcher.match` gives
    them. Compiled parts run whole; rules evaluated in turn are looked at
    `IN_TURN_SLICE` at a time, and `run` returns False once the clock
    (`time.perf_counter`) has passed `deadline`, to be called again."""

    __slots__ = (
        "fired",
        "_matcher",
        "_entry",
        "_name",
        "_event",
        "_root",
        "_parts",
        "_turn",
        "_index",
        "_position",
        "_results",
        "_slots",
        "_done",
    )

    def __init__(
        self,
        matcher: Matcher,
        entry: _Candidates,
        name: str,
        event: Event | None,
        root: Any,
    ) -> None:
        self.fired: list[CompiledRule] = []
        self._matcher = matcher
        self._entry = entry
        self._name = name
        self._event = event
        self._root = root if event is None else _UNSET
        # What is prepared now: parts swapped in later are for later events.
        self._parts = entry.parts
        self._turn = entry.turn
        self._index = 0
        self._position = 0
        self._results: dict[Any, Any] = {}
        self._slots: tuple[list[Any], list[Any]] | None = None
        self._done = False

    def _document(self, body_will_do: bool) -> Any:
        event = self._event
        if event is None:
            return self._root
        if body_will_do:
            return event.body
        if self._root is _UNSET:
            self._root = event.root()
        return self._root

    def run(self, deadline: float) -> bool:
        if self._done:
            return True
        fired, name = self.fired, self._name
        clock = time.perf_counter
        parts = self._parts
        rules = self._entry.rules
        while self._index < len(parts):
            part = parts[self._index]
            if part.function is not None:
                found = part.function(self._document(part.body_will_do), name)
                self._index += 1
                self._position = part.end
                if found:
                    fired.extend(found)
                    # A plan returns at once when a rule with `stop` fires.
                    if found[-1].spec.stop:
                        return self._finish()
            else:
                end = min(part.end, self._position + IN_TURN_SLICE)
                if self._evaluate(rules, end):
                    return self._finish()
                if self._position >= part.end:
                    self._index += 1
            if clock() > deadline:
                return False
        while self._position < len(rules):
            if self._evaluate(rules, min(len(rules), self._position + IN_TURN_SLICE)):
                return self._finish()
            if clock() > deadline and self._position < len(rules):
                return False
        return self._finish()

    def _evaluate(self, rules: tuple[CompiledRule, ...], end: int) -> bool:
        """Evaluate in turn up to rule `end`; True if a rule with `stop` fired."""
        start, self._position = self._position, end
        root = self._document(False)
        turn = self._turn
        if turn is None:
            return self._matcher._in_turn(
                rules, start, end, root, self._name, self._results, self.fired
            )
        if self._slots is None:
            self._slots = ([_UNSET] * len(turn.conditions), [_UNSET] * len(turn.guards))
        results, guards = self._slots
        return self._matcher._steps_in_turn(
            turn, start, end, root, self._name, results, guards, self.fired
        )

    def _finish(self) -> bool:
        self._done = True
        return True
