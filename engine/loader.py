"""From rule files to a ready matcher: read, discover plugins, compile, check."""

from __future__ import annotations

import gc
import json
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from pathlib import Path

from engine.config import Config, read_config
from engine.errors import ConfigError, PluginError
from engine.expr.compiler import ExpressionCompiler
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
) -> LoadedRules:
    """Load rule files; raises ConfigError listing every problem found.

    Nothing else escapes: a rule set that exhausts Python's recursion limit
    or memory, or trips a bug, is reported as a problem too, so neither
    `check` nor a reload (which keeps the old rules) can crash on a file.
    """
    try:
        with _collector_paused():
            return _load_rules(paths, env, extra_plugins, entry_points)
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
) -> LoadedRules:
    config, problems = read_config(paths, env)
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
    problems.sort(key=lambda p: (str(p.file), p.line or 0))
    if problems:
        raise ConfigError(problems)
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
        warnings=catalogue_warnings(rules),
    )


@cache
def zoom_event_names() -> frozenset[str]:
    """Event names in Zoom's catalogue (generated from the shared corpus)."""
    text = resources.files("engine").joinpath("data/zoom_events.json").read_text()
    return frozenset(json.loads(text)["events"])


def catalogue_warnings(rules: Sequence[CompiledRule]) -> list[Problem]:
    """An `on` name or glob that matches no known Zoom event is probably a typo."""
    import fnmatch

    known = zoom_event_names()
    warnings = []
    for rule in rules:
        for pattern in rule.spec.on:
            if is_glob(pattern):
                if any(fnmatch.fnmatchcase(name, pattern) for name in known):
                    continue
                message = f"glob {pattern!r} matches no event in Zoom's catalogue"
            elif pattern in known:
                continue
            else:
                message = (
                    f"{pattern!r} is not an event in Zoom's catalogue{did_you_mean(pattern, known)}"
                )
            warnings.append(Problem(rule.spec.file, rule.spec.line, rule.spec.where, "on", message))
    return warnings
