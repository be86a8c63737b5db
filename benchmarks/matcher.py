"""Matcher throughput: compiled vs interpreted vs naive, in one run.

1,000 rules over 50 event names (exact names and globs, realistic
conditions including filters over participant lists), events drawn from
Zoom's examples. Prints events/s for

- the engine's matcher with the compiled evaluator (the default),
- the same indexed matcher with jmespath's interpreter,
- the indexed matcher with jmespath's interpreter evaluating each candidate
  rule's condition in turn (no work shared across rules: the matcher as it
  was before `engine/prefilter.py`),
- a naive baseline: every rule's `jmespath.search` on every event,

and the ratios; then the time to load and compile 10,000 rules (as
`zoomrules check` does). Writes the figures to benchmarks/RESULTS.md.

    python benchmarks/matcher.py [--events 100000] [--rules 1000]

The naive baseline and the interpreter are measured on a slice of the
events (they are 10-1000x slower); rates are per event either way.
"""

from __future__ import annotations

import argparse
import fnmatch
import sys
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jmespath

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._results import write_section  # noqa: E402
from benchmarks.workload import choose_names, events, rules_toml  # noqa: E402
from engine.events import Event  # noqa: E402
from engine.expressions import _functions_class  # noqa: E402
from engine.hookspecs import ActionContext, ActionType, Param, hookimpl  # noqa: E402
from engine.loader import LoadedRules, load_rules  # noqa: E402


class NoopPlugin:
    """A `noop` action type so the rule files need no real action."""

    @hookimpl
    def zoomrules_action_types(self) -> list[ActionType]:
        async def run(params: Mapping[str, Any], ctx: ActionContext) -> None:
            return None

        return [ActionType("noop", run, [Param("note", str)])]


def load(text: str, evaluator: str) -> LoadedRules:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "rules.toml"
        path.write_text(f'version = 1\n[engine]\nevaluator = "{evaluator}"\n\n' + text)
        return load_rules([path], extra_plugins=[NoopPlugin()])


def time_matcher(loaded: LoadedRules, evs: list[Event]) -> tuple[float, int]:
    matcher = loaded.matcher
    fired = 0
    start = time.perf_counter()
    for event in evs:
        if matcher.candidates(event.name):
            fired += len(matcher.match(event.name, event.root()))
    return len(evs) / (time.perf_counter() - start), fired


def time_rule_by_rule(loaded: LoadedRules, evs: list[Event]) -> tuple[float, int]:
    """The indexed matcher as it was before rules shared per-event work:
    each candidate rule's own condition, in order (honouring `stop`)."""
    matcher = loaded.matcher
    fired = 0
    start = time.perf_counter()
    for event in evs:
        candidates = matcher.candidates(event.name)
        if not candidates:
            continue
        root = event.root()
        for rule in candidates:
            if rule.condition is not None:
                try:
                    value = rule.condition(root)
                except Exception:  # noqa: BLE001 - counted as not firing, like the matcher
                    continue
                if not value and not (value == 0 and value is not False):
                    continue
            fired += 1
            if rule.spec.stop:
                break
    return len(evs) / (time.perf_counter() - start), fired


def time_naive(loaded: LoadedRules, evs: list[Event]) -> tuple[float, int]:
    """Every rule's `jmespath.search` on every event, then its `on` check: no index."""
    options = jmespath.Options(
        custom_functions=_functions_class(loaded.registry.functions.values())()
    )
    rules = [(r.spec.on, r.spec.when) for r in loaded.rules]
    fired = 0
    start = time.perf_counter()
    for event in evs:
        root = event.root()
        for on, when in rules:
            try:
                value = jmespath.search(when, root, options) if when else True
            except jmespath.exceptions.JMESPathError:
                continue
            if value not in (None, False, "", [], {}) and any(
                fnmatch.fnmatchcase(event.name, p) for p in on
            ):
                fired += 1
    return len(evs) / (time.perf_counter() - start), fired


def time_load(count: int, names: list[str]) -> float:
    text = rules_toml(count, names, seed=3, unique=True)
    start = time.perf_counter()
    load(text, "compiled")
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--rules", type=int, default=1_000)
    parser.add_argument(
        "--slow-events", type=int, default=5_000, help="events for interpreter/naive"
    )
    parser.add_argument("--no-write", action="store_true", help="do not update RESULTS.md")
    args = parser.parse_args()

    names = choose_names(50)
    text = rules_toml(args.rules, names)
    bodies = events(args.events, names)
    evs = [Event.from_body(b, source="bench") for b in bodies]
    slow = evs[: args.slow_events]
    compiled, interpreted = load(text, "compiled"), load(text, "interpreter")

    time_matcher(compiled, evs[:2000])  # warm the candidate cache
    compiled_rate, compiled_fired = time_matcher(compiled, evs)
    interp_rate, interp_fired = time_matcher(interpreted, slow)
    naive_rate, naive_fired = time_naive(compiled, slow)
    by_rule_rate, by_rule_fired = time_rule_by_rule(interpreted, slow)
    _, check_fired = time_matcher(compiled, slow)
    if not (check_fired == interp_fired == by_rule_fired):
        raise SystemExit(
            f"matchers disagree: compiled {check_fired}, interpreted {interp_fired}, "
            f"interpreted rule by rule {by_rule_fired} firings"
        )
    # The same rule count without list filters: what the matcher itself costs
    # when conditions are simple comparisons and string functions.
    simple_text = rules_toml(args.rules, names, filters=False)
    simple_compiled, simple_interp = load(simple_text, "compiled"), load(simple_text, "interpreter")
    time_matcher(simple_compiled, evs[:2000])
    simple_rate, _ = time_matcher(simple_compiled, evs)
    simple_interp_rate, _ = time_matcher(simple_interp, slow)
    load_seconds = time_load(10_000, names)

    lines = [
        f"{args.rules} rules over {len(names)} event names; {args.events} events "
        f"(interpreter and naive: first {len(slow)})",
        "",
        "| matcher | events/s | vs naive | vs interpreted |",
        "| --- | ---: | ---: | ---: |",
        f"| compiled, indexed (default) | {compiled_rate:,.0f} | {compiled_rate / naive_rate:,.1f}x | {compiled_rate / interp_rate:,.1f}x |",
        f"| interpreted, indexed | {interp_rate:,.0f} | {interp_rate / naive_rate:,.1f}x | 1.0x |",
        f"| interpreted, indexed, rule by rule (no shared work) | {by_rule_rate:,.0f} | {by_rule_rate / naive_rate:,.1f}x | {by_rule_rate / interp_rate:,.2f}x |",
        f"| naive (every rule, jmespath.search) | {naive_rate:,.0f} | 1.0x | |",
        "",
        "Without the list-filter shapes (comparisons and string functions only):",
        "",
        "| matcher | events/s | vs interpreted |",
        "| --- | ---: | ---: |",
        f"| compiled, indexed | {simple_rate:,.0f} | {simple_rate / simple_interp_rate:,.1f}x |",
        f"| interpreted, indexed | {simple_interp_rate:,.0f} | 1.0x |",
        "",
        f"Compiled vs interpreted, the same matcher: {compiled_rate / interp_rate:,.1f}x; "
        f"vs the interpreted matcher evaluating rule by rule (before shared work): "
        f"{compiled_rate / by_rule_rate:,.1f}x.",
        f"Firings: compiled {compiled_fired} over all events; compiled and interpreted agree on the slice ({interp_fired}); naive {naive_fired}.",
        f"Load + compile 10,000 rules: {load_seconds:.2f} s.",
    ]
    report = "\n".join(lines)
    print(report)
    if not args.no_write:
        write_section("Matcher", report)


if __name__ == "__main__":
    main()
