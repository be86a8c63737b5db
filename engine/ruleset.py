"""Compiling checked rule specs into runnable rules.

Every expression (conditions, throttle keys, templates) is compiled once
here, and every action's parameters are checked against what its action
type declares, so `zoomrules check` rejects a bad rule before anything runs.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from engine.config import COMMON_ACTION_KEYS, ActionSpec, Config, CorrelationSpec, RuleSpec
from engine.errors import ExpressionError, ParamTypeError
from engine.expr.compiler import ExpressionCompiler, Guard, Search
from engine.expr.templates import (
    Constant,
    Renderer,
    Template,
    compile_value,
    has_template,
    template_expressions,
    to_text,
)
from engine.hookspecs import ActionType, Param
from engine.problems import Problem, did_you_mean
from engine.registry import Registry

_JSON_TYPE_NAMES = {
    str: "string",
    int: "integer",
    float: "number",
    bool: "boolean",
    list: "list",
    dict: "table",
}


@dataclass(frozen=True)
class CompiledAction:
    spec: ActionSpec
    action_type: ActionType
    renderers: Mapping[str, Renderer]
    raw: Mapping[str, Any]
    #: Parameters whose declared type must be re-checked after rendering.
    typed_after_render: Mapping[str, Param]

    def render(self, root: Any) -> dict[str, Any]:
        """Rendered parameters for one firing (raw params passed compiled)."""
        params = {name: node.render(root) for name, node in self.renderers.items()}
        for name, param in self.typed_after_render.items():
            value = params.get(name)
            if value is not None and not _type_ok(value, param.type):
                raise ParamTypeError(
                    f"parameter '{name}' rendered to {to_text(value)!r}, "
                    f"expected {_type_label(param.type)}"
                )
        params.update(self.raw)
        return params


@dataclass(frozen=True)
class CompiledCorrelation:
    """A temporal rule's expressions, compiled (engine.correlate runs them)."""

    spec: CorrelationSpec
    #: The correlation key of the opening event, and of the follow-up event.
    key: Search
    follow_key: Search
    #: The follow-up's condition (it sees the opening event as `zoomrules.start`).
    follow_when: Search | None
    #: What open correlations were made by: two rules (or two loads of one)
    #: with the same definition share them (a reload keeps them).
    definition: str

    @property
    def form(self) -> str:
        return self.spec.form


def correlation_definition(rule: RuleSpec) -> str:
    """A digest of what a temporal rule's open correlations mean: its opening
    event (`on`, `when`), its key, its form and window. Not its actions, its
    grace, its limit or its gap choice: those apply to correlations already
    open as well."""
    spec = rule.correlation
    assert spec is not None
    meaning = [
        rule.on, rule.when, spec.form, spec.key, spec.within, spec.follow_on,
        spec.follow_when, spec.follow_key, spec.times,
    ]  # fmt: skip
    return hashlib.sha256(orjson.dumps(meaning)).hexdigest()[:16]


@dataclass(frozen=True)
class CompiledRule:
    spec: RuleSpec
    condition: Search | None
    throttle_key: Search | None
    actions: tuple[CompiledAction, ...]
    #: The equality test the condition starts with, when the matcher can
    #: share it across rules (engine.expr.guards; with the interpreter
    #: evaluator only); None otherwise.
    guard: Guard | None = None
    #: Set for a temporal rule: its matches open or feed correlations
    #: (engine.correlate) instead of firing.
    correlation: CompiledCorrelation | None = None

    @property
    def name(self) -> str:
        return self.spec.name


def compile_rules(
    config: Config, registry: Registry, compiler: ExpressionCompiler
) -> tuple[list[CompiledRule], list[Problem]]:
    problems: list[Problem] = []
    checked: _CheckedParams = {}
    rules = [_compile_rule(spec, registry, compiler, problems, checked) for spec in config.rules]
    return rules, problems


#: What checking and compiling one action's parameters gave (renderers, raw
#: parameters, parameters typed after rendering), by action type and
#: parameters (see `_params_key`), for parameters that passed every check.
_CheckedParams = dict[tuple[Any, ...], tuple[dict[str, Renderer], dict[str, Any], dict[str, Param]]]


def _params_key(spec: ActionSpec) -> tuple[Any, ...] | None:
    """The key under which actions with these parameters share their checks
    and compiled parameters: the type, and each parameter's name, class and
    value. Only strings, integers and booleans: a value equal to another is
    then the same value (unlike 0.0 and -0.0, or a list holding them). None
    when a parameter's `${VAR}` was missing (that action is reported apart)."""
    if spec.unresolved or spec.placeholders:
        return None
    key: list[Any] = [spec.type]
    for name, value in spec.params.items():
        cls = value.__class__
        if cls is not str and cls is not int and cls is not bool:
            return None
        key.append((name, cls, value))
    return tuple(key)


def _compile_rule(
    spec: RuleSpec,
    registry: Registry,
    compiler: ExpressionCompiler,
    problems: list[Problem],
    checked: _CheckedParams,
) -> CompiledRule:
    def report(key: str | None, message: str, line: int | None = None) -> None:
        exact = spec.key_line(key) if key else None
        problems.append(Problem(spec.file, exact or line or spec.line, spec.where, key, message))

    condition = _compile_expr(spec.when, "when", compiler, report)
    throttle_key = _compile_expr(
        spec.throttle.key if spec.throttle else None, "throttle.key", compiler, report
    )
    actions = []
    for action in spec.actions:
        compiled = _compile_action(action, registry, compiler, report, checked)
        if compiled is not None:
            actions.append(compiled)
    # Guards serve the matcher's rule-by-rule loop. With the compiled
    # evaluator the matcher compiles each event name's rules into one
    # function that shares this work itself, so finding them would only
    # slow loading (a loop without guards is as exact, only slower).
    guard = (
        compiler.guard(spec.when)
        if condition is not None and spec.when and compiler.evaluator == "interpreter"
        else None
    )
    correlation = _compile_correlation(spec, compiler, report)
    return CompiledRule(spec, condition, throttle_key, tuple(actions), guard, correlation)


def _compile_correlation(
    spec: RuleSpec, compiler: ExpressionCompiler, report: Any
) -> CompiledCorrelation | None:
    form = spec.correlation
    if form is None:
        return None
    key = _compile_expr(form.key, "key", compiler, report)
    follow_key = (
        _compile_expr(form.follow_key, f"{form.table}.key", compiler, report)
        if form.follow_key
        else key
    )
    follow_when = _compile_expr(form.follow_when, f"{form.table}.when", compiler, report)
    if key is None or follow_key is None or (form.follow_when and follow_when is None):
        return None  # reported (or the key was missing: reported by the config checker)
    return CompiledCorrelation(form, key, follow_key, follow_when, correlation_definition(spec))


def _compile_expr(
    text: str | None, key: str, compiler: ExpressionCompiler, report: Any
) -> Search | None:
    if not text:
        return None
    try:
        search = compiler.compile(text)
    except ExpressionError as exc:
        report(key, str(exc))
        return None
    problems = compiler.problems(text)
    for message in problems:
        report(key, message)
    return None if problems else search


def _compile_action(
    spec: ActionSpec,
    registry: Registry,
    compiler: ExpressionCompiler,
    report: Any,
    checked: _CheckedParams | None = None,
) -> CompiledAction | None:
    prefix = f"action[{spec.index + 1}]."
    if not spec.type:
        return None  # already reported by the config checker
    action_type = registry.actions.get(spec.type)
    if action_type is None:
        hint = did_you_mean(spec.type, registry.actions)
        known = ", ".join(sorted(registry.actions))
        report(
            f"{prefix}type", f"unknown action type {spec.type!r}{hint}; known: {known}", spec.line
        )
        return None
    # Many actions of a large file have the same parameters (the same
    # message, the same URL): those are checked and compiled once per
    # `checked` (one per load; without it, every action on its own).
    key = _params_key(spec) if checked is not None else None
    done = checked.get(key) if checked is not None and key is not None else None
    if done is not None:
        renderers, raw, typed_after = done
    else:
        compiled = _check_params(spec, action_type, compiler, report)
        if compiled is None:
            return None
        renderers, raw, typed_after = compiled
        if checked is not None and key is not None:
            checked[key] = compiled
    # A plugin's own check runs for every action, as it always did; not on
    # placeholders for unset variables (their values are not known).
    if action_type.validate is not None and not spec.placeholders:
        ok = True
        for message in action_type.validate(spec.params):
            report(prefix.rstrip("."), message, spec.line)
            ok = False
        if not ok:
            return None
    return CompiledAction(spec, action_type, renderers, raw, typed_after)


def _check_params(
    spec: ActionSpec, action_type: ActionType, compiler: ExpressionCompiler, report: Any
) -> tuple[dict[str, Renderer], dict[str, Any], dict[str, Param]] | None:
    """Check `spec`'s parameters against what `action_type` declares and
    compile them; None (every problem reported) when one is wrong."""
    prefix = f"action[{spec.index + 1}]."
    declared = {p.name: p for p in action_type.params}
    ok = True
    for key in spec.params:
        if key not in declared:
            hint = did_you_mean(key, list(declared) + list(COMMON_ACTION_KEYS))
            report(
                f"{prefix}{key}",
                f"unknown parameter for action type {spec.type!r}{hint}",
                spec.line,
            )
            ok = False
    renderers: dict[str, Renderer] = {}
    raw: dict[str, Any] = {}
    typed_after: dict[str, Param] = {}
    for name, param in declared.items():
        if name not in spec.params:
            if param.required:
                report(
                    f"{prefix}{name}",
                    f"missing required parameter of action type {spec.type!r}",
                    spec.line,
                )
                ok = False
            elif param.default is not None:
                renderers[name] = compile_value(param.default, compiler)
            continue
        value = spec.params[name]
        if name in spec.unresolved:
            ok = False  # its missing ${VAR} is already reported
            continue
        if name in spec.placeholders:
            # `${VAR}` kept as the value while checking without it (warned).
            renderers[name] = Constant(value)
            continue
        problem = _check_param(value, param)
        if problem:
            report(f"{prefix}{name}", problem, spec.line)
            ok = False
            continue
        try:
            compiled = compile_raw(value, compiler) if param.raw else compile_value(value, compiler)
        except ExpressionError as exc:
            report(f"{prefix}{name}", str(exc), spec.line)
            ok = False
            continue
        if not isinstance(compiled, Constant):
            for text in template_expressions(compiled):
                for message in compiler.problems(text):
                    report(f"{prefix}{name}", f"in template {{{{ {text} }}}}: {message}", spec.line)
                    ok = False
        if param.raw:
            raw[name] = compiled
        else:
            renderers[name] = compiled
        if isinstance(value, str) and has_template(value) and not _type_ok(value, param.type):
            typed_after[name] = param
    if not ok:
        return None
    return renderers, raw, typed_after


def compile_raw(value: Any, compiler: ExpressionCompiler) -> Any:
    """Raw parameters: every string becomes a Template (even without `{{`),
    lists and tables keep their shape, so the plugin renders each piece
    itself (e.g. with shell quoting)."""
    if isinstance(value, str):
        return Template(value, compiler)
    if isinstance(value, list):
        return [compile_raw(v, compiler) for v in value]
    if isinstance(value, dict):
        return {k: compile_raw(v, compiler) for k, v in value.items()}
    return value


def _check_param(value: Any, param: Param) -> str | None:
    templated = isinstance(value, str) and has_template(value)
    if not templated and not _type_ok(value, param.type):
        got = _JSON_TYPE_NAMES.get(type(value), type(value).__name__)
        return f"must be {_type_label(param.type)}, got {got} {value!r}"
    if param.choices is not None and not templated and value not in param.choices:
        options = ", ".join(repr(c) for c in param.choices)
        return f"must be one of {options}, got {value!r}"
    return None


def _types(expected: type | tuple[type, ...]) -> tuple[type, ...]:
    return expected if isinstance(expected, tuple) else (expected,)


def _type_ok(value: Any, expected: type | tuple[type, ...]) -> bool:
    types = _types(expected)
    if isinstance(value, bool):
        return bool in types
    if isinstance(value, int) and float in types:
        return True
    return isinstance(value, types)


def param_type_names(expected: type | tuple[type, ...]) -> list[str]:
    """How a declared parameter type reads in messages and `zoomrules plugins`."""
    return [_JSON_TYPE_NAMES.get(t, t.__name__) for t in _types(expected)]


def _type_label(expected: type | tuple[type, ...]) -> str:
    names = param_type_names(expected)
    return " or ".join(f"a {n}" if n != "integer" else "an integer" for n in names)
