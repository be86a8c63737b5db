"""An event kept by `engine.recent`, explained: each candidate rule's verdict, each action's outcome.

What the pipeline recorded says which rules fired and which were
throttled; why each other candidate did not fire is found here, the way
`zoomrules test` finds it (`Matcher.explain`, and `engine.explain`'s
operand traces for a false condition), by evaluating those rules again
against the stored event with the rules it was matched with. That costs
far more than matching did, so it is done only for the events shown, when
the status page is asked for, in a worker thread.

Everything taken from the event, an error or a rule is made fit to show
(`engine.redact`): masked as the logs mask it, with the values of fields
named like credentials (`password`, `download_token`, ...) replaced whole.
Rendered action parameters are never shown: templates may put secrets in.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from engine.explain import TRACED_REASONS, condition_trace
from engine.loader import LoadedRules
from engine.logs import shorten
from engine.matcher import Decision
from engine.recent import Outcomes, Seen
from engine.redact import MASK, is_secret_field, mask_fields, mask_text
from engine.ruleset import CompiledRule
from engine.trace import Tracer, trace_lines

__all__ = ["ActionReport", "EventReport", "RuleReport", "explain_seen"]

#: What became of a candidate rule: it fired; it matched but was throttled;
#: or why it did not (engine.matcher's reasons); "rechecked": it did not
#: fire then, but its condition holds now (it reads the time, or state).
Verdict = Literal["fired", "throttled", "condition", "error", "stopped", "disabled", "rechecked"]
#: An action of a fired rule: ok, failed for good, not finished yet, not
#: run (an action before it failed), or run before this node had the job
#: (taken over half-done from another node of the cluster).
ActionState = Literal["ok", "failed", "pending", "not run", "ran before"]

#: Longest text shown for a value taken from an event.
_SHOWN = 120


@dataclass(frozen=True)
class ActionReport:
    index: int
    type: str
    state: ActionState
    attempts: int = 0
    error: str | None = None
    #: Its job's id in the journal (a failed one's dead letter id).
    job_id: int | None = None


@dataclass(frozen=True)
class RuleReport:
    rule: str
    verdict: Verdict
    detail: str = ""
    #: The condition's trace, one line a part or operand (`engine.trace.trace_lines`).
    trace: tuple[str, ...] = ()
    actions: tuple[ActionReport, ...] = ()


@dataclass(frozen=True)
class EventReport:
    name: str
    event_id: str
    source: str
    received_at: float
    #: The meeting's or webinar's topic, when the event has one.
    topic: str | None
    #: Every rule whose `on` matches the event, in file order.
    rules: tuple[RuleReport, ...]


class _Explainer:
    """Explains events, sharing a tracer per set of rules."""

    def __init__(self) -> None:
        self._tracers: dict[int, tuple[LoadedRules, Tracer]] = {}

    def tracer(self, rules: LoadedRules) -> Tracer:
        found = self._tracers.get(id(rules))
        if found is None:
            found = self._tracers[id(rules)] = (rules, Tracer(rules.registry.functions))
        return found[1]

    def event(self, seen: Seen, outcomes: Outcomes) -> EventReport:
        event, rules = seen.event, seen.rules
        root = event.root()
        matcher = rules.matcher
        decisions = matcher.explain(event.name, root, matcher.rules_on(event.name))
        fired = {rule.name for rule in seen.fired}
        matched = {rule.name for rule in seen.matched}
        reports = []
        for decision in decisions:
            name = decision.rule.name
            if name in fired:
                reports.append(RuleReport(name, "fired", actions=_actions(decision.rule, outcomes)))
            elif name in matched:
                reports.append(RuleReport(name, "throttled", _throttle(decision.rule)))
            else:
                reports.append(self._skipped(rules, decision, root))
        return EventReport(
            name=_text(event.name),
            event_id=event.id,
            source=_text(event.source),
            received_at=event.received_at,
            topic=_topic(event.body),
            rules=tuple(reports),
        )

    def _skipped(self, rules: LoadedRules, decision: Decision, root: dict[str, Any]) -> RuleReport:
        rule = decision.rule
        if decision.fired:
            return RuleReport(
                rule.name, "rechecked",
                "did not fire then; its condition holds when evaluated again now "
                "(it depends on the time or on something that changed)",
            )  # fmt: skip
        assert decision.reason is not None and decision.reason != "event"
        traced = None
        if decision.reason in TRACED_REASONS:
            traced = condition_trace(rules, rule, root, self.tracer(rules))
        lines = tuple(trace_lines(_masked_trace(traced))) if traced is not None else ()
        return RuleReport(rule.name, decision.reason, _detail(decision, traced), lines)


def explain_seen(entries: list[tuple[Seen, Outcomes]]) -> list[EventReport]:
    """Reports of `RecentEvents.snapshot()`'s entries, in the same order."""
    explainer = _Explainer()
    return [explainer.event(seen, outcomes) for seen, outcomes in entries]


def _actions(rule: CompiledRule, outcomes: Outcomes) -> tuple[ActionReport, ...]:
    reports: list[ActionReport] = []
    stopped = False
    last_known = max((i for name, i in outcomes if name == rule.name), default=-1)
    for index, action in enumerate(rule.actions):
        kind = _text(action.spec.type)
        result = outcomes.get((rule.name, index))
        if result is not None:
            error = None if result.error is None else mask_text(result.error)
            failed = error is not None
            reports.append(
                ActionReport(
                    index, kind, "failed" if failed else "ok", result.attempts, error, result.job_id
                )
            )
            stopped = stopped or (failed and not action.spec.continue_on_error)
        elif stopped:
            reports.append(ActionReport(index, kind, "not run"))
        elif index < last_known:
            reports.append(ActionReport(index, kind, "ran before"))
        else:
            reports.append(ActionReport(index, kind, "pending"))
    return tuple(reports)


def _throttle(rule: CompiledRule) -> str:
    throttle = rule.spec.throttle
    if throttle is None:  # a rule's throttle went away in a reload since
        return "throttled"
    return (
        f"at most {throttle.limit} per {throttle.per:g}s for each "
        f"{mask_text(throttle.key)}; this window was full"
    )


def _detail(decision: Decision, traced: dict[str, Any] | None) -> str:
    """The decision's reason as text. A false condition's value is left to
    its trace (the detail's copy of it would not be masked by field name);
    the whole condition is said above a trace of its `&&` / `||` parts."""
    if decision.reason == "condition":
        if traced is None:
            return "its condition is false"
        when = " ".join((decision.rule.spec.when or "").split())
        return f"when = {mask_text(when)}" if "parts" in traced else ""
    if decision.reason == "error" and is_secret_field(decision.rule.spec.when or ""):
        # JMESPath's errors quote the value they could not use.
        return "its condition failed (not shown: it reads a field named like a credential)"
    return mask_text(decision.detail)


def _masked_trace(node: dict[str, Any]) -> dict[str, Any]:
    """A trace (engine.trace) whose values and errors are fit to show: the
    values of expressions reading a field named like a credential masked whole."""
    expr = str(node.get("expr", ""))
    secret = is_secret_field(expr)
    out: dict[str, Any] = {**node, "expr": mask_text(expr)}
    if "value" in node:
        out["value"] = mask_fields(node["value"], secret)
    if "error" in node:
        # JMESPath's errors quote the value they could not use.
        out["error"] = MASK if secret else mask_text(str(node["error"]))
    for key in ("operands", "parts"):
        if key in node:
            out[key] = [_masked_trace(child) for child in node[key]]
    return out


def _topic(body: Mapping[str, Any]) -> str | None:
    payload = body.get("payload")
    target = payload.get("object") if isinstance(payload, dict) else None
    topic = target.get("topic") if isinstance(target, dict) else None
    return _text(topic) if isinstance(topic, str) else None


def _text(value: str) -> str:
    return shorten(mask_text(value), _SHOWN)
