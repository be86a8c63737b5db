"""Shared per-event work in the matcher: equality guards and shared conditions.

The matcher must give exactly what evaluating every candidate rule in turn
gives (fired rules, order, `stop`, errors reported per rule), only cheaper.
"""

from __future__ import annotations

import itertools
from collections import Counter
from pathlib import Path
from typing import Any

import jmespath
import pytest
from conftest import _corpus, write_rules

from engine.events import Event
from engine.expr.compiler import is_truthy
from engine.expr.guards import find_guard
from engine.loader import LoadedRules, load_rules
from engine.matcher import Matcher
from engine.plugin import JMESPathFunction, hookimpl


def guard_of(text: str, pure: frozenset[str] = frozenset({"lower", "email_domain"})):
    builtins = set(jmespath.functions.Functions.FUNCTION_TABLE)
    return find_guard(jmespath.compile(text).parsed, lambda n: n in pure or n in builtins)


@pytest.mark.parametrize(
    ("text", "values", "exact"),
    [
        ("payload.object.topic == 'x'", {"x"}, True),
        ("'x' == payload.object.topic", {"x"}, True),
        ("payload.object.id == '85' || payload.object.id == `85`", {"85", 85}, True),
        ("a == 'x' || a == 'y' || a == 'z'", {"x", "y", "z"}, True),
        ("a == `2.5` && b", {2.5}, False),
        ("a == 'x' && b && c", {"x"}, False),
        ("(a == 'x' || a == 'y') && b", {"x", "y"}, False),
        ("lower(a) == 'x' && !contains(a, 'y')", {"x"}, False),
        ("length(a) == `3`", {3}, True),
    ],
)
def test_guards_found(text: str, values: set[Any], exact: bool) -> None:
    shape = guard_of(text)
    assert shape is not None
    assert shape.values == values and shape.exact is exact


@pytest.mark.parametrize(
    "text",
    [
        "a == `1`",  # 1 equals true in Python, not in JMESPath
        "a == `0`",
        "a == `true`",
        "a == `null`",
        "a == `[1, 2]`",
        "a == b",
        "a != 'x'",
        "b && a == 'x'",  # not the first test evaluated
        "a == 'x' || b == 'y'",  # two different expressions
        "a == 'x' || b",
        "now() == `5`",  # not pure
        "my_fn(a) == 'x'",  # a plugin function not declared pure
        "`3` == `3`",
    ],
)
def test_no_guard_where_skipping_could_change_anything(text: str) -> None:
    assert guard_of(text) is None


class CallCounter:
    """A plugin with a pure and an impure function that count their calls."""

    def __init__(self) -> None:
        self.calls: Counter[str] = Counter()

    @hookimpl
    def zoomrules_jmespath_functions(self) -> list[JMESPathFunction]:
        def pure_topic(value: Any) -> Any:
            self.calls["pure_topic"] += 1
            return value

        def impure_topic(value: Any) -> Any:
            self.calls["impure_topic"] += 1
            return value

        return [
            JMESPathFunction("pure_topic", pure_topic, [{"types": []}], pure=True),
            JMESPathFunction("impure_topic", impure_topic, [{"types": []}]),
        ]


@pytest.mark.parametrize("evaluator", ["compiled", "interpreter"])
def test_a_pure_test_is_evaluated_once_per_event(evaluator: str, tmp_path: Path) -> None:
    topics = ["a", "b", "Weekly sync", "c"]
    rules = [f'[engine]\nevaluator = "{evaluator}"\n']
    for fn, topic in itertools.product(["pure_topic", "impure_topic"], topics):
        rules.append(
            f'[[rule]]\nname = "{fn}-{topic}"\non = ["meeting.started"]\n'
            f"when = \"{fn}(payload.object.topic) == '{topic}'\"\n"
            '  [[rule.action]]\n  type = "log"\n'
        )
    counter = CallCounter()
    loaded = load_rules([write_rules(tmp_path, "\n".join(rules))], env={}, extra_plugins=[counter])
    body = _corpus()["meeting.started"]
    body = {**body, "payload": {**body["payload"], "object": {"topic": "Weekly sync"}}}
    event = Event.from_body(body, source="test")
    fired = loaded.matcher.match(event.name, event.root())
    assert [r.name for r in fired] == ["pure_topic-Weekly sync", "impure_topic-Weekly sync"]
    assert counter.calls == {"pure_topic": 1, "impure_topic": len(topics)}


# Conditions over the corpus: guarded ones (several per tested expression,
# with hits and misses), guards that raise on some events (lower() of a
# number), conditions shared by text, unguarded ones, and `stop`.
CONDITIONS = [
    "payload.object.topic == 'My Personal Meeting Room'",
    "payload.object.topic == 'Weekly sync'",
    "payload.object.topic == 'My Personal Meeting Room' && payload.object.type == `4`",
    "lower(payload.object.topic) == 'my personal meeting room' || lower(payload.object.topic) == 'x'",
    "lower(payload.object.host_id) == 'x'",
    "lower(payload.object.id) == 'abc' && payload.account_id",
    "payload.object.id == `85746065432` || payload.object.id == '85746065432'",
    "payload.object.type == `2`",
    "payload.object.type == `8` && payload.object.topic",
    "payload.operator == 'admin@example.com'",
    "length(payload.object.participants) == `3`",
    "payload.object.participant.user_name == 'Jill Chill' && contains(payload.object.participant.email, '@')",
    "starts_with(event, 'meeting.')",
    "payload.object.type == `2`",
    "event_ts > `0`",
    "`null`",
]


def rule_file(directory: Path, evaluator: str, stop_every: int) -> Path:
    rules = [f'[engine]\nevaluator = "{evaluator}"\n']
    for index, (when, on) in enumerate(
        itertools.product(CONDITIONS, ["meeting.*", "*", "recording.completed"])
    ):
        stop = "stop = true\n" if stop_every and index % stop_every == stop_every - 1 else ""
        rules.append(
            f'[[rule]]\nname = "r{index}"\non = ["{on}"]\nwhen = """{when}"""\n{stop}'
            '  [[rule.action]]\n  type = "log"\n'
        )
    return write_rules(directory, "\n".join(rules), name=f"rules-{evaluator}-{stop_every}.toml")


def one_by_one(matcher: Matcher, event: Event) -> tuple[list[str], Counter[str]]:
    """The reference: every candidate's own condition, in order."""
    fired: list[str] = []
    errors: Counter[str] = Counter()
    root = event.root()
    for rule in matcher.candidates(event.name):
        if rule.condition is not None:
            try:
                value = rule.condition(root)
            except Exception:  # noqa: BLE001
                errors[rule.name] += 1
                continue
            if not is_truthy(value):
                continue
        fired.append(rule.name)
        if rule.spec.stop:
            break
    return fired, errors


def corpus_events() -> list[Event]:
    events = []
    for body in _corpus().values():
        events.append(Event.from_body(body, source="test"))
        obj = body.get("payload", {}).get("object")
        if isinstance(obj, dict):
            # The same event with values that make other guards hit or raise.
            for variant in (
                {"topic": "Weekly sync", "type": 8, "host_id": 12},
                {"id": 85746065432, "participants": [1, 2, 3]},
                {"topic": ["a list"], "id": "ABC"},
            ):
                changed = {**body, "payload": {**body["payload"], "object": {**obj, **variant}}}
                events.append(Event.from_body(changed, source="test"))
    return events


@pytest.mark.parametrize("stop_every", [0, 7])
@pytest.mark.parametrize("evaluator", ["compiled", "interpreter"])
def test_matching_equals_evaluating_every_rule(
    evaluator: str, stop_every: int, tmp_path: Path
) -> None:
    loaded: LoadedRules = load_rules([rule_file(tmp_path, evaluator, stop_every)], env={})
    matcher = loaded.matcher
    if evaluator == "interpreter":
        assert sum(rule.guard is not None for rule in loaded.rules) >= 20
    else:  # one generated function per event name does the sharing
        entry = matcher._entry("meeting.started")
        matcher.prepare(entry)
        assert entry.whole is not None
    expected_errors: Counter[str] = Counter()
    fired_total = 0
    for event in corpus_events():
        fired, errors = one_by_one(matcher, event)
        expected_errors.update(errors)
        assert [r.name for r in matcher.match(event.name, event.root())] == fired, event.name
        fired_total += len(fired)
    assert matcher.errors == expected_errors
    assert expected_errors and fired_total  # the corpus exercises both
