"""Matcher throughput: compiled vs interpreted vs naive, in one run.

1,000 rules over 50 event names (exact names and globs, realistic
conditions including filters over participant lists), events drawn from
Zoom's examples. Prints events/s for

- the engine's matcher with the compiled evaluator (the default),
- the same before its plans are compiled: the daemon evaluates the
  conditions in turn meanwhile (`Matcher.matching`), while they are
  compiled off its event loop,
- the same indexed matcher with jmespath's interpreter,
- the indexed matcher with jmespath's interpreter evaluating each candidate
  rule's condition in turn (no work shared across rules: the matcher as it
  was before `engine/expr/guards.py`),
- a naive baseline: every rule's `jmespath.search` on every event,

and the ratios; then the time to load and compile 10,000 rules (as
`zoomrules check` does), in this process and as the whole `zoomrules check`
command in a new process. Writes the figures to benchmarks/RESULTS.md.

    python benchmarks/matcher.py [--events 100000] [--rules 1000]

The naive baseline and the interpreter are measured on a slice of the
events (they are 10-1000x slower); rates are per event either way.
"""

from __future__ import annotations

import argparse
import compileall
import dataclasses
import fnmatch
import math
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jmespath

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._results import write_section  # noqa: E402
from benchmarks.workload import LOG_ACTION, choose_names, events, rules_toml  # noqa: E402
from engine.events import Event  # noqa: E402
from engine.expr.codegen import functions_instance  # noqa: E402
from engine.loader import LoadedRules, load_rules  # noqa: E402
from engine.matcher import Matcher  # noqa: E402
from engine.plugin import ActionContext, ActionType, Param, hookimpl  # noqa: E402


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


#: A way of matching: (events, rules) -> firings over those events.
Runner = Callable[[LoadedRules, Sequence[Event]], int]


def run_matcher(loaded: LoadedRules, evs: Sequence[Event]) -> int:
    matcher = loaded.matcher
    fired = 0
    for event in evs:
        if matcher.candidates(event.name):  # as the daemon's pipeline does
            fired += len(matcher.match_event(event))
    return fired


def run_in_turn(loaded: LoadedRules, evs: Sequence[Event]) -> int:
    """The daemon's matching before a plan is compiled (`loaded.matcher`
    must be one that is never asked to compile)."""
    matcher = loaded.matcher
    fired = 0
    for event in evs:
        found = matcher.matching(event)
        if not isinstance(found, list):
            found.run(math.inf)
            found = found.fired
        fired += len(found)
    return fired


def run_rule_by_rule(loaded: LoadedRules, evs: Sequence[Event]) -> int:
    """The indexed matcher as it was before rules shared per-event work:
    each candidate rule's own condition, in order (honouring `stop`)."""
    matcher = loaded.matcher
    fired = 0
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
    return fired


@dataclass
class Contender:
    """One matcher in an interleaved measurement."""

    label: str
    run: Runner
    loaded: LoadedRules
    events: Sequence[Event]
    #: Events per block: a block of each contender in turn, so that all of
    #: them see the same machine (this box's speed drifts by up to 2x).
    block: int
    seconds: float = 0.0
    done: int = 0
    fired: int = 0

    @property
    def rate(self) -> float:
        return self.done / self.seconds


def interleaved(contenders: list[Contender], passes: int = 1) -> None:
    """Run every contender over its events `passes` times, block by block in turn."""
    for contender in contenders:
        contender.run(contender.loaded, contender.events[: contender.block])  # warm caches
    positions = [0] * len(contenders)
    total = [len(c.events) * passes for c in contenders]
    while any(c.done < t for c, t in zip(contenders, total, strict=True)):
        for i, contender in enumerate(contenders):
            if contender.done >= total[i]:
                continue
            start = positions[i]
            chunk = contender.events[start : start + contender.block]
            began = time.perf_counter()
            fired = contender.run(contender.loaded, chunk)
            contender.seconds += time.perf_counter() - began
            contender.done += len(chunk)
            if contender.done <= len(contender.events):
                contender.fired += fired
            positions[i] = (start + len(chunk)) % len(contender.events)


def run_naive(loaded: LoadedRules, evs: Sequence[Event]) -> int:
    """Every rule's `jmespath.search` on every event, then its `on` check: no index."""
    options = jmespath.Options(custom_functions=functions_instance(loaded.registry.functions))
    rules = [(r.spec.on, r.spec.when) for r in loaded.rules]
    fired = 0
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
    return fired


def time_load(count: int, names: list[str], runs: int = 3) -> list[float]:
    """Seconds for each of `runs` loads of the same file (a fresh compiler each)."""
    text = rules_toml(count, names, seed=3, unique=True)
    seconds = []
    for _ in range(runs):
        start = time.perf_counter()
        load(text, "compiled")
        seconds.append(time.perf_counter() - start)
    return seconds


def time_plans(loaded: LoadedRules, names: list[str]) -> tuple[float, float, int]:
    """Compiling each event name's rules into one function, as the first
    event of each name does: (total seconds, worst seconds, most rules)."""
    matcher = Matcher(loaded.rules, loaded.compiler)  # no plans yet
    total = worst = 0.0
    for name in names:
        start = time.perf_counter()
        matcher.match(name, {})
        took = time.perf_counter() - start
        total, worst = total + took, max(worst, took)
    return total, worst, max(len(matcher.candidates(name)) for name in names)


def time_check_command(count: int, names: list[str], runs: int = 3) -> list[float]:
    """Seconds for each of `runs` runs of `zoomrules check` on the file of
    `time_load` (with a built-in action), each a new process: Python's start
    and the imports included. The project's modules are byte-compiled first,
    as installing it does (without, each run compiles them: 0.1-0.2 s more)."""
    root = Path(__file__).resolve().parents[1]
    for package in ("engine", "plugins"):
        compileall.compile_dir(root / package, quiet=1)
    script = Path(sys.executable).with_name("zoomrules")
    command = [str(script)] if script.exists() else [sys.executable, "-m", "engine.cli"]
    text = rules_toml(count, names, seed=3, unique=True, action=LOG_ACTION)
    seconds = []
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "rules.toml"
        path.write_text("version = 1\n\n" + text)
        for _ in range(runs):
            start = time.perf_counter()
            done = subprocess.run(
                [*command, "check", "-c", str(path)], capture_output=True, text=True, cwd=root
            )
            seconds.append(time.perf_counter() - start)
            if done.returncode != 0 or f"OK: {count} rules" not in done.stdout:
                raise SystemExit(f"zoomrules check failed:\n{done.stdout}{done.stderr}")
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--rules", type=int, default=1_000)
    parser.add_argument(
        "--slow-events", type=int, default=5_000, help="events for interpreter/naive"
    )
    parser.add_argument(
        "--naive-events", type=int, default=500, help="events for the naive baseline"
    )
    parser.add_argument("--no-write", action="store_true", help="do not update RESULTS.md")
    args = parser.parse_args()

    names = choose_names(50)
    text = rules_toml(args.rules, names)
    bodies = events(args.events, names)
    evs = [Event.from_body(b, source="bench") for b in bodies]
    slow = evs[: args.slow_events]
    compiled, interpreted = load(text, "compiled"), load(text, "interpreter")

    # Never asked to compile: matches in turn (as the daemon does meanwhile).
    not_yet = dataclasses.replace(compiled, matcher=Matcher(compiled.rules, compiled.compiler))
    # Blocks sized so each contender's block takes a similar time.
    fast, interp, by_rule, in_turn = (
        Contender("compiled", run_matcher, compiled, evs, 2000),
        Contender("interpreted", run_matcher, interpreted, slow, 100),
        Contender("interpreted rule by rule", run_rule_by_rule, interpreted, slow, 60),
        Contender("compiled, in turn", run_in_turn, not_yet, slow, 400),
    )
    interleaved([fast, interp, by_rule, in_turn])
    naive_events = slow[: args.naive_events]
    naive_start = time.perf_counter()
    naive_fired = run_naive(compiled, naive_events)
    naive_rate = len(naive_events) / (time.perf_counter() - naive_start)
    check_fired = run_matcher(compiled, slow)
    check_naive = run_matcher(compiled, naive_events)
    agree = check_fired == interp.fired == by_rule.fired == in_turn.fired
    if not agree or naive_fired != check_naive:
        raise SystemExit(
            f"matchers disagree: compiled {check_fired}, interpreted {interp.fired}, "
            f"interpreted rule by rule {by_rule.fired}, compiled in turn {in_turn.fired} "
            "firings; on the naive slice "
            f"naive {naive_fired}, compiled {check_naive}"
        )
    compiled_rate, interp_rate, by_rule_rate = fast.rate, interp.rate, by_rule.rate
    in_turn_rate = in_turn.rate
    compiled_fired, interp_fired = fast.fired, interp.fired
    # The same rule count without list filters: what the matcher itself costs
    # when conditions are simple comparisons and string functions.
    simple_text = rules_toml(args.rules, names, filters=False)
    simple_fast, simple_interp = (
        Contender("compiled", run_matcher, load(simple_text, "compiled"), evs, 4000),
        Contender("interpreted", run_matcher, load(simple_text, "interpreter"), slow, 250),
    )
    interleaved([simple_fast, simple_interp])
    simple_rate, simple_interp_rate = simple_fast.rate, simple_interp.rate
    load_runs = time_load(10_000, names)
    plans = [
        time_plans(compiled, names),
        time_plans(load(rules_toml(10_000, names, seed=3, unique=True), "compiled"), names),
    ]
    check_runs = time_check_command(10_000, names)

    lines = [
        f"{args.rules} rules over {len(names)} event names; {args.events} events "
        f"(interpreted: the first {len(slow)}, naive: the first {len(naive_events)}); "
        "the matchers run in turn, a block of events each, so all see the same machine",
        "",
        "| matcher | events/s | vs naive | vs interpreted |",
        "| --- | ---: | ---: | ---: |",
        f"| compiled, indexed (default) | {compiled_rate:,.0f} | {compiled_rate / naive_rate:,.1f}x | {compiled_rate / interp_rate:,.1f}x |",
        f"| interpreted, indexed | {interp_rate:,.0f} | {interp_rate / naive_rate:,.1f}x | 1.0x |",
        f"| interpreted, indexed, rule by rule (no shared work) | {by_rule_rate:,.0f} | {by_rule_rate / naive_rate:,.1f}x | {by_rule_rate / interp_rate:,.2f}x |",
        f"| compiled, before its plans are (in turn) | {in_turn_rate:,.0f} | {in_turn_rate / naive_rate:,.1f}x | {in_turn_rate / interp_rate:,.1f}x |",
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
        f"Firings: compiled {compiled_fired} over all events; compiled and interpreted agree on the slice ({interp_fired}); naive {naive_fired} on its slice, as compiled.",
        f"Load + compile 10,000 rules: {statistics.median(load_runs):.2f} s "
        f"(median of {len(load_runs)} loads: {', '.join(f'{t:.2f}' for t in load_runs)} s).",
        *(
            f"Compiling the rules of each of the {len(names)} event names into one function "
            f"(once, at the first event of each name), {count:,} rules: {total:.2f} s in all, "
            f"{worst * 1000:.0f} ms for the largest ({most} rules)."
            for count, (total, worst, most) in zip((args.rules, 10_000), plans, strict=True)
        ),
        f"`zoomrules check` on that file, the whole command in a new process: "
        f"{statistics.median(check_runs):.2f} s "
        f"(median of {len(check_runs)} runs: {', '.join(f'{t:.2f}' for t in check_runs)} s).",
    ]
    report = "\n".join(lines)
    print(report)
    if not args.no_write:
        write_section("Matcher", report)


if __name__ == "__main__":
    main()
