"""Why an event fires the rules it fires: each rule's decision, rendered actions.

What `zoomrules test` prints (one event, or the cases of `--cases`), what
`engine.testing` hands rule and plugin authors, and (later) what the status
page shows: no side effects, no counters, no throttle windows touched.

A rule skipped because its condition is false or failed carries a `trace`
(engine.trace): the value of each `&&` / `||` part of the condition and of
the operands of each comparison and function call, so the reader sees which
part decided.
"""

from __future__ import annotations

from typing import Any

from engine.durations import format_duration
from engine.events import META_KEY, Event
from engine.expr.templates import Template
from engine.loader import LoadedRules
from engine.matcher import Decision
from engine.ruleset import CompiledAction, CompiledRule
from engine.trace import Tracer

__all__ = [
    "TRACED_REASONS",
    "condition_trace",
    "evaluate",
    "opening",
    "render_action",
    "render_firing",
]


def _materialise(value: Any, root: dict[str, Any]) -> Any:
    """Render raw (plugin-rendered) parameters plainly, for display."""
    if isinstance(value, Template):
        return value.render(root)
    if isinstance(value, list):
        return [_materialise(v, root) for v in value]
    if isinstance(value, dict):
        return {k: _materialise(v, root) for k, v in value.items()}
    return value


def render_action(action: CompiledAction, root: dict[str, Any]) -> dict[str, Any]:
    try:
        params = {k: _materialise(v, root) for k, v in action.render(root).items()}
    except Exception as exc:  # noqa: BLE001 - shown to the user, never raised
        return {"type": action.spec.type, "params": None, "error": f"{type(exc).__name__}: {exc}"}
    return {"type": action.spec.type, "params": params}


#: Skip reasons whose entry carries the condition's trace.
TRACED_REASONS = ("condition", "error")


def render_firing(
    rule: CompiledRule, event: Event, context: dict[str, Any] | None = None
) -> dict[str, Any]:
    """A firing as `zoomrules test` shows it: the rule and its actions'
    parameters rendered as the dispatcher would render them (a temporal
    rule's firing with its `context` under `zoomrules`)."""
    meta = {**event.metadata(), **(context or {})}
    meta.update(rule=rule.name, results=[], previous=None)
    action_root = {**event.body, META_KEY: meta}
    return {"rule": rule.name, "actions": [render_action(a, action_root) for a in rule.actions]}


def opening(rule: CompiledRule, root: dict[str, Any]) -> dict[str, Any]:
    """What a temporal rule matching its opening event does (instead of firing)."""
    correlation = rule.correlation
    assert correlation is not None
    spec = correlation.spec
    key: Any = None
    error: str | None = None
    try:
        key = correlation.key(root)
    except Exception as exc:  # noqa: BLE001 - shown to the user, never raised
        error = f"{type(exc).__name__}: {exc}"
    follow, within = " or ".join(spec.follow_on), format_duration(spec.within)
    effect = {
        "absence": f"fires at the deadline unless {follow} comes within {within}",
        "sequence": f"fires if {follow} comes within {within}",
        "count": f"counts towards {spec.times} within {within}",
    }[spec.form]
    item: dict[str, Any] = {"rule": rule.name, "form": spec.form, "key": key, "effect": effect}
    if error is not None:
        item["error"] = error
    elif key is None:
        item["effect"] = "nothing: the key is null for this event"
    return item


def evaluate(loaded: LoadedRules, event: Event, *, trace: bool = True) -> dict[str, Any]:
    """The `--json` document: fired rules with rendered actions, temporal rules
    the event opens (or counts towards) a correlation of, skipped rules with
    reasons (and, when the condition decided, its trace unless `trace=False`)."""
    root = event.root()
    decisions: list[Decision] = loaded.matcher.explain(event.name, root)
    fired, opens, skipped = [], [], []
    tracer: Tracer | None = None
    for decision in decisions:
        if decision.fired and decision.rule.correlation is not None:
            opens.append(opening(decision.rule, root))
            continue
        if decision.fired:
            fired.append(render_firing(decision.rule, event))
            continue
        item: dict[str, Any] = {
            "rule": decision.rule.name,
            "reason": decision.reason,
            "detail": decision.detail,
        }
        if trace and decision.reason in TRACED_REASONS:
            tracer = tracer or Tracer(loaded.registry.functions)
            traced = condition_trace(loaded, decision.rule, root, tracer)
            if traced is not None:
                item["trace"] = traced
        skipped.append(item)
    document = {"event": event.name, "fired": fired, "skipped": skipped}
    if opens:
        document["opens"] = opens
    return document


def condition_trace(
    loaded: LoadedRules, rule: CompiledRule, root: dict[str, Any], tracer: Tracer | None = None
) -> dict[str, Any] | None:
    """The trace of `rule`'s condition on `root` (None: the rule has no condition)."""
    tree = loaded.compiler.tree(rule.spec.when) if rule.spec.when else None
    if tree is None:
        return None
    try:
        return (tracer or Tracer(loaded.registry.functions)).trace(tree, root)
    except RecursionError:  # a condition the compiler walked, but only just
        return None
