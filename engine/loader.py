"""From rule files to a ready matcher: read, discover plugins, compile, check."""

from __future__ import annotations

import gc
import json
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from pathlib import Path

from engine.config import Config, MissingEnv, RuleSpec, read_config
from engine.errors import ConfigError, PluginError
from engine.events import ENGINE_EVENTS, set_per_delivery_fields
from engine.expr.compiler import ExpressionCompiler
from engine.hookspecs import ConfigIssue
from engine.matcher import Matcher, is_glob
from engine.problems import Problem, did_you_mean
from engine.registry import Registry, load_registry
from engine.ruleset import CompiledRule, compile_rules
from engine.throttle import Throttle


@dataclass
class LoadedRules:
    """A checked configuration with everything compiled."""

    config: Config
    registry: Registry
    compiler: ExpressionCompiler
    rules: list[CompiledRule]
    matcher: Matcher
    throttles: dict[str, Throttle] = field(default_factory=dict)
    warnings: list[Problem] = field(default_factory=list)


def load_rules(
    paths: Sequence[str | Path],
    *,
    env: Mapping[str, str] | None = None,
    extra_plugins: Iterable[object] = (),
    entry_points: bool = True,
    missing_env: MissingEnv = "error",
    set_identity: bool = True,
) -> LoadedRules:
    """Load rule files; raises ConfigError listing every problem found.

    `set_identity` makes the files' `[engine] per_delivery_fields` the
    process's (what event ids leave out). A reload does not: ids must not
    change under a running journal (they take effect at the next start).

    `missing_env="placeholder"` checks files whose `${VAR}`s are not all
    set (`check`, `test`: CI has no production secrets): each unset one is
    a warning, and its key keeps `${VAR}` as its value.

    Nothing else escapes: a rule set that exhausts Python's recursion limit
    or memory, or trips a bug, is reported as a problem too, so neither
    `check` nor a reload (which keeps the old rules) can crash on a file.
    """
    try:
        with _collector_paused():
            loaded = _load_rules(paths, env, extra_plugins, entry_points, missing_env)
            if set_identity:
                set_per_delivery_fields(loaded.config.engine.per_delivery_fields)
            return loaded
    except ConfigError:
        raise
    except (RecursionError, MemoryError) as exc:
        what = "nested too deeply" if isinstance(exc, RecursionError) else "too large"
        raise ConfigError([_whole_load_problem(paths, f"the rule set is {what} to load")]) from None
    except Exception as exc:  # noqa: BLE001 - reported as a problem, never a traceback
        raise ConfigError(
            [_whole_load_problem(paths, f"loading failed: {type(exc).__name__}: {exc}")]
        ) from exc


def _whole_load_problem(paths: Sequence[str | Path], message: str) -> Problem:
    files = [str(p) for p in paths]
    return Problem(
        Path(files[0]) if len(files) == 1 else None, None, ", ".join(files), None, message
    )


@contextmanager
def _collector_paused() -> Iterator[None]:
    """Python's cyclic garbage collector off while loading.

    Loading creates objects by the hundred thousand (the TOML tables, rule
    specs, trees, generated functions) and keeps nearly all of them, so
    every collection triggered on the way scans a growing heap and frees
    next to nothing: a third of the time to load 10,000 rules. Reference
    counting still frees everything else at once. Afterwards the survivors
    go straight to the oldest generation (`freeze` then `unfreeze`, unless
    someone froze objects before), so the young collections that follow do
    not scan them all again (another 0.2-0.4 s); the next full collection
    looks at them, cycles and all, as it would have anyway.
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if gc.get_freeze_count() == 0:
            gc.freeze()
            gc.unfreeze()
        if enabled:
            gc.enable()


def _load_rules(
    paths: Sequence[str | Path],
    env: Mapping[str, str] | None,
    extra_plugins: Iterable[object],
    entry_points: bool,
    missing_env: MissingEnv,
) -> LoadedRules:
    config, problems = read_config(paths, env, missing_env=missing_env)
    try:
        registry = load_registry(
            config.engine.plugins, entry_points=entry_points, extra=extra_plugins
        )
    except PluginError as exc:
        raise ConfigError(
            [*problems, Problem(None, None, "[engine] plugins", None, str(exc))]
        ) from None
    compiler = ExpressionCompiler(registry.functions.values(), config.engine.evaluator)  # type: ignore[arg-type]
    rules, compile_problems = compile_rules(config, registry, compiler)
    problems.extend(compile_problems)
    plugin_warnings: list[Problem] = []
    if not problems:
        # Checks across the whole configuration, once every part is valid.
        for issue, problem in _plugin_issues(registry, config):
            (plugin_warnings if issue.warning else problems).append(problem)
    problems.sort(key=lambda p: (str(p.file), p.line or 0))
    if problems:
        raise ConfigError(problems, [*config.warnings, *plugin_warnings])
    throttles = {
        rule.name: Throttle(rule.spec.throttle.limit, rule.spec.throttle.per)
        for rule in rules
        if rule.spec.throttle is not None
    }
    return LoadedRules(
        config=config,
        registry=registry,
        compiler=compiler,
        rules=rules,
        matcher=Matcher(rules, compiler),
        throttles=throttles,
        warnings=[*config.warnings, *plugin_warnings, *catalogue_warnings(rules)],
    )


def _plugin_issues(registry: Registry, config: Config) -> list[tuple[ConfigIssue, Problem]]:
    """What the plugins' `zoomrules_check_config` found, placed in the files."""
    try:
        found = registry.manager.hook.zoomrules_check_config(config=config)
    except Exception as exc:  # noqa: BLE001 - a broken plugin check is a problem, not a crash
        message = f"a plugin's configuration check failed: {type(exc).__name__}: {exc}"
        return [(ConfigIssue(message), Problem(None, None, "[engine] plugins", None, message))]
    specs = {rule.name: rule for rule in config.rules}
    placed = []
    for issues in found:
        for issue in issues or ():
            placed.append((issue, _place(issue, specs, config)))
    return placed


_TRAILING_INDEX = re.compile(r"\[\d+\]$")


def _place(issue: ConfigIssue, specs: dict[str, RuleSpec], config: Config) -> Problem:
    rule = specs.get(issue.rule) if issue.rule is not None else None
    if rule is not None:
        actions = rule.actions
        action = (
            actions[issue.action]
            if issue.action is not None and issue.action < len(actions)
            else None
        )
        key = issue.key
        if action is not None:
            key = f"action[{action.index + 1}]" + (f".{issue.key}" if issue.key else "")
        # The key's own line ("to" for "to[1]"), else its action's, else the rule's.
        exact = rule.key_line(_TRAILING_INDEX.sub("", key)) if key else None
        line = exact or (action.line if action is not None else None) or rule.line
        return Problem(rule.file, line, rule.where, key, issue.message)
    if issue.notifier is not None:
        file, line = config.notifier_where(issue.notifier)
        return Problem(file, line, "[notifiers]", issue.notifier, issue.message)
    return Problem(None, None, "configuration", issue.key, issue.message)


@cache
def zoom_event_names() -> frozenset[str]:
    """Event names in Zoom's catalogue (generated from the shared corpus)."""
    text = resources.files("engine").joinpath("data/zoom_events.json").read_text()
    return frozenset(json.loads(text)["events"])


@cache
def known_event_names() -> frozenset[str]:
    """What an `on` may name: Zoom's catalogue and the engine's own events
    (`zoomrules.connection_gap`)."""
    return zoom_event_names() | ENGINE_EVENTS


def catalogue_warnings(rules: Sequence[CompiledRule]) -> list[Problem]:
    """An `on` name or glob that matches no known event (Zoom's, or one the
    engine emits) is probably a typo."""
    import fnmatch

    known = known_event_names()
    warnings = []
    for rule in rules:
        form = rule.spec.correlation
        patterns = [(pattern, "on") for pattern in rule.spec.on]
        if form is not None:
            patterns.extend((pattern, f"{form.table}.on") for pattern in form.follow_on)
        for pattern, key in patterns:
            if is_glob(pattern):
                if any(fnmatch.fnmatchcase(name, pattern) for name in known):
                    continue
                message = f"glob {pattern!r} matches no event in Zoom's catalogue"
            elif pattern in known:
                continue
            else:
                where = (
                    "an event zoomrules emits"
                    if pattern.startswith("zoomrules.")
                    else "an event in Zoom's catalogue"
                )
                message = f"{pattern!r} is not {where}{did_you_mean(pattern, known)}"
            line = (rule.spec.key_line(key) if key != "on" else None) or rule.spec.line
            warnings.append(Problem(rule.spec.file, line, rule.spec.where, key, message))
    return warnings
