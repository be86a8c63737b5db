"""Why an event fires the rules it fires: each rule's decision, rendered actions.

What `zoomrules test` prints, what `engine.testing` hands rule and plugin
authors, and (later) what the status page shows: no side effects, no
counters, no throttle windows touched.
"""

from __future__ import annotations

from typing import Any

from engine.events import META_KEY, Event
from engine.expr.templates import Template
from engine.loader import LoadedRules
from engine.matcher import Decision
from engine.ruleset import CompiledAction

__all__ = ["evaluate", "render_action"]


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


def evaluate(loaded: LoadedRules, event: Event) -> dict[str, Any]:
    """The `--json` document: fired rules with rendered actions, skipped rules with reasons."""
    decisions: list[Decision] = loaded.matcher.explain(event.name, event.root())
    fired, skipped = [], []
    for decision in decisions:
        if decision.fired:
            meta = {**event.metadata(), "rule": decision.rule.name, "results": [], "previous": None}
            root = {**event.body, META_KEY: meta}
            actions = [render_action(a, root) for a in decision.rule.actions]
            fired.append({"rule": decision.rule.name, "actions": actions})
        else:
            skipped.append(
                {"rule": decision.rule.name, "reason": decision.reason, "detail": decision.detail}
            )
    return {"event": event.name, "fired": fired, "skipped": skipped}
