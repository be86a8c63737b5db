"""One generated function per event name's rules (engine.expr.plans).

The plan must give exactly what evaluating each rule's condition with
jmespath's interpreter, in turn, gives: the rules that fire, in order,
honouring `stop`, and for each rule that raises, the same error (class and
message). Sharing must also really happen: a pure sub-expression used by
several rules is evaluated once per event, a filter group is built once.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jmespath
import pytest
from conftest import _corpus, write_rules
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.events import Event
from engine.expr.codegen import functions_instance
from engine.expr.compiler import is_truthy
from engine.expr.functions import BUILTIN_FUNCTIONS
from engine.expr.plans import PlanStep, compile_plan
from engine.loader import load_rules
from engine.plugin import JMESPathFunction

Outcome = tuple[list[str], list[tuple[str, str, str]]]


class Text(str):
    """A string of another class than `str`."""


class Items(list):  # type: ignore[type-arg]
    """A list of another class than `list` (filters take it as a list)."""


class Getter:
    """Not a dict, but with `.get`: jmespath reads its fields all the same."""

    def get(self, key: str) -> Any:
        return {
            "b": {"c": "x", "d": 2},
            "e": "E",
            "status": "joined",
            "email": "g@vip.example.com",
        }.get(key)


class Calls:
    """Pure and impure test functions that count their calls."""

    def __init__(self) -> None:
        self.count: Counter[str] = Counter()

    def functions(self) -> dict[str, JMESPathFunction]:
        def key_of(value: Any) -> Any:
            self.count["key_of"] += 1
            return value

        def impure(value: Any) -> Any:
            self.count["impure"] += 1
            return value

        def picky(value: Any) -> Any:
            # Raises on anything but a string, like a strict plugin function.
            self.count["picky"] += 1
            if not isinstance(value, str):
                raise ValueError(f"picky wants a string, got {value!r}")
            return value.lower()

        def shout(value: Any) -> Any:
            # A str subclass: equal to 'ANN', but not of a class grouping knows.
            return Text(value.upper()) if isinstance(value, str) else value

        extra = [
            JMESPathFunction("shout", shout, [{"types": []}], pure=True),
            JMESPathFunction("key_of", key_of, [{"types": []}], pure=True),
            JMESPathFunction("impure", impure, [{"types": []}]),
            JMESPathFunction("picky", picky, [{"types": []}], pure=True),
        ]
        return {fn.name: fn for fn in [*BUILTIN_FUNCTIONS, *extra]}


def reference(
    texts: Sequence[str | None], stops: Sequence[bool], document: Any, functions: dict
) -> Outcome:
    """Each condition with jmespath's interpreter, in turn."""
    options = jmespath.Options(custom_functions=functions_instance(functions))
    fired: list[str] = []
    errors: list[tuple[str, str, str]] = []
    for index, (text, stop) in enumerate(zip(texts, stops, strict=True)):
        name = f"r{index}"
        if text is not None:
            try:
                value = jmespath.compile(text).search(document, options)
            except Exception as exc:  # noqa: BLE001
                errors.append((name, type(exc).__name__, str(exc)))
                continue
            if not is_truthy(value):
                continue
        fired.append(name)
        if stop:
            break
    return fired, errors


def planned(
    texts: Sequence[str | None], stops: Sequence[bool], document: Any, functions: dict
) -> Outcome:
    errors: list[tuple[str, str, str]] = []

    def on_error(item: Any, context: Any, exc: Exception) -> None:
        assert context == "ctx"
        errors.append((item, type(exc).__name__, str(exc)))

    steps = [
        PlanStep(
            f"r{index}", jmespath.compile(text).parsed if text is not None else None, None, stop
        )
        for index, (text, stop) in enumerate(zip(texts, stops, strict=True))
    ]
    plan = compile_plan(steps, functions, on_error)
    return plan(document, "ctx"), errors


PEOPLE = [
    {"email": "a@example.com", "status": "joined", "name": "Ann"},
    {"email": "b@vip.example.com", "status": "left", "name": "Bob"},
    None,
    {"email": "c@example.com", "status": "joined", "name": 7},
    {"email": 12, "status": "joined"},
    {"status": ["joined"], "email": "d@example.com"},
    {"email": "e@vip.example.com", "status": "joined", "name": "Eve"},
    "not an object",
    {"email": "f@example.com", "status": 2, "name": "Fay"},
]

#: Conditions sharing sub-expressions and filter groups, with errors
#: (lower() of a number, picky() of a non-string) at different elements.
CONDITIONS = [
    "people[?status == 'joined']",
    "people[?status == 'joined' && ends_with(email, '@example.com')]",
    "people[?status == 'left' && ends_with(email, '@vip.example.com')]",
    "people[?'joined' == status].name",
    "people[?status == 'joined' && lower(name) == 'ann']",
    "people[?status == `2`]",
    "length(people[?email_domain(email) == 'example.com'] || `[]`) > `2`",
    "people[?email_domain(email) == 'vip.example.com'].name",
    "people[?email_domain(email) == 'vip.example.com' && name == 'Eve' && status]",
    "people[?picky(name) == 'ann']",
    "people[?picky(name) == 'eve' && email]",
    "people[?to_string(@) == 'null']",
    "people[?to_string(@) == '\"not an object\"'] | [0]",
    "people[?key_of(email) == 'a@example.com']",
    "people[?shout(name) == 'ANN']",
    "people[?shout(name) == 'EVE' && status]",
    "people[?key_of(email) == 'e@vip.example.com' && status == 'joined']",
    "people[?impure(status) == 'joined']",
    "people[?impure(status) == 'left']",
    "topic == 'Board' || lower(topic) == 'board'",
    "lower(topic) == 'board' && length(people) > `3`",
    "lower(topic)",
    "contains(lower(topic), 'oar')",
    "count > `2` && count < `10`",
    "count > `2` || topic > `1`",
    "people[0].email == 'a@example.com'",
    "people[?status == 'joined'] | length(@) == `4`",
    # Only tested (a whole condition): may stop at the first element that passes.
    "people[?status == 'joined' && starts_with(email, 'c')]",
    "people[?'joined' == status && contains(email, 'vip')]",
    "people[?status == 'left' && ends_with(email, 'm')]",
    "people[?status == 'joined' && ends_with(email, '@example.com')] | length(@)",
    "!people[?status == 'joined' && ends_with(email, '@vip.example.com')]",
    "people[?status == 'joined' && ends_with(email, 'm')].name",
    "people[?length(@) == `2` && ends_with(email, 'm')]",
    "sort_by(people[?status == 'joined' && email_domain(email) == 'example.com'], &email)[0].name",
    "people[*].status",
    # Decided at compile time for an event without the list (see
    # _without_list): true, false, raising (no shortcut), reading more.
    "people[?name == 'Ann'] == `null`",
    "length(people[?email_domain(email) == 'example.com'] || `[1]`) == `1`",
    "length(people[?status == 'left']) == `0`",
    "sort_by(people[?status == 'joined'], &name)",
    "not_null(people[?status == 'left'], topic)",
    "people[?status == 'joined'] || people",
    # Literals of every class (inlined in the plan's code, or not).
    'count == `5.5` || count < `-3` || count == `1e400` || topic == `"\\u00e9\'\\\\"`',
    "topic == 'it\\'s' || count > `1e400` || count == `[5]` || count == `{\"a\": 1}`",
    None,
]

DOCUMENTS: list[Any] = [
    {"topic": "Board", "count": 5, "people": PEOPLE},
    {"topic": 5, "count": "x", "people": PEOPLE[:2]},
    {"topic": "Board", "people": "not a list"},
    {"topic": "board", "count": 3, "people": [None, None]},
    {"people": [{"email": "a@example.com", "status": "joined", "name": "Ann"}] * 3},
    {"people": [{"name": "x", "status": "joined", "email": {"not": "hashable"}}]},
    {
        "people": [
            {"email": "c@vip.example.com", "status": "joined"},
            {"email": "a@example.com", "status": "joined"},
            {"email": "b@example.com", "status": "left"},
            {"email": None, "status": "lurking"},
            "not an object",
            None,
        ]
    },
    {"people": [{"email": "c@example.com", "status": "joined"}, {"status": "joined"}]},
    {"people": [{"email": "c@example.com", "status": "joined"}, ["status", "joined"]]},
    {"people": Items(PEOPLE)},
    {"count": 5.5, "topic": "it's"},
    {"count": float("inf"), "topic": "\u00e9'\\"},
    {"count": -4, "topic": [5]},
    {"people": {"status": "joined", "email": "a@example.com"}, "topic": "Board"},
    {"people": 0, "topic": ["Board"]},
    {},
    [],
    None,
]


@pytest.mark.parametrize("document", DOCUMENTS)
@pytest.mark.parametrize("stop_at", [None, 3, 9])
def test_plan_equals_each_condition_in_turn(document: Any, stop_at: int | None) -> None:
    functions = Calls().functions()
    texts = CONDITIONS * 2  # every condition shared with its twin
    stops = [index == stop_at for index in range(len(texts))]
    assert planned(texts, stops, document, functions) == reference(
        texts, stops, document, functions
    )


def test_the_corpus_events_too() -> None:
    functions = Calls().functions()
    texts = [
        "payload.object.topic == 'My Personal Meeting Room'",
        "lower(payload.object.topic) == 'my personal meeting room'",
        "lower(payload.object.id) == 'x'",
        "payload.object.participants[?user_name == 'x']",
        "payload.object.participants[?user_name == 'y' && email]",
        "payload.object.recording_files[?file_type == 'MP4'].file_size",
        "payload.object.recording_files[?file_type == 'M4A' && file_size > `1`]",
        "starts_with(event, 'meeting.') && payload.object.uuid",
    ]
    stops = [False] * len(texts)
    fired_any = 0
    for body in _corpus().values():
        expected = reference(texts, stops, body, functions)
        assert planned(texts, stops, body, functions) == expected, body.get("event")
        fired_any += bool(expected[0])
    assert fired_any


def test_a_pure_sub_expression_is_evaluated_once_per_event() -> None:
    calls = Calls()
    functions = calls.functions()
    texts = [
        "key_of(topic) == 'a'",
        "key_of(topic) == 'Board' && count",
        "contains(key_of(topic), 'oa')",
        "impure(topic) == 'a'",
        "impure(topic) == 'Board'",
    ]
    fired, errors = planned(texts, [False] * 5, {"topic": "Board", "count": 1}, functions)
    assert (fired, errors) == (["r1", "r2", "r4"], [])
    assert calls.count == {"key_of": 1, "impure": 2}


def test_a_repeated_condition_is_shared_whole_not_part_by_part() -> None:
    """The parts of a shared condition are computed once, through it: they
    get no slot of their own, unless something else uses them too."""
    calls = Calls()
    functions = calls.functions()
    repeated = "length(people[?key_of(email) == 'x'] || `[]`) > `0` && lower(topic) == 'a'"
    texts = [repeated, repeated, "lower(topic) == 'b'", "lower(topic) == 'a'"]
    steps = [PlanStep(t, jmespath.compile(t).parsed, None, False) for t in texts]
    source = compile_plan(steps, functions, print).__jmespath_source__  # type: ignore[attr-defined]
    # The condition, and lower(topic) used outside it; people (read eagerly).
    assert set(re.findall(r"\bm\d+\b", source)) == {"m0", "m1", "m2"}
    document = {"people": [{"email": "x"}], "topic": "A"}
    plan = compile_plan(steps, functions, print)
    calls.count.clear()  # compiling evaluated the group key on null, once
    assert plan(document, "ctx") == [texts[0], texts[1], texts[3]]
    assert calls.count["key_of"] == 1


def test_filters_on_the_same_key_share_one_pass_over_the_list() -> None:
    calls = Calls()
    functions = calls.functions()
    people = [{"email": f"p{i}@x{i % 3}.com", "domain": f"x{i % 3}.com"} for i in range(30)]
    texts = [f"people[?key_of(@).domain == 'x{d}.com']" for d in range(3)]
    texts.append("people[?key_of(@).domain == 'x1.com' && ends_with(email, '1@x1.com')]")
    steps = [
        PlanStep(f"r{i}", jmespath.compile(t).parsed, None, False) for i, t in enumerate(texts)
    ]
    plan = compile_plan(steps, functions, print)
    calls.count.clear()  # compiling evaluated the group key on null, once
    assert plan({"people": people}, "ctx") == ["r0", "r1", "r2", "r3"]
    assert calls.count["key_of"] == len(people)


@pytest.mark.parametrize(
    "key", ["key_of(email)", "to_string(@)", "picky(name)", "shout(name)", "name", "@"]
)
def test_a_bucket_without_null_elements_is_copied_whole(key: str) -> None:
    """`list[?key == lit]` is its bucket less null elements; when the key of
    null is no string or number (computed once, when compiling), no null is
    ever bucketed and the bucket is copied as it is."""
    functions = Calls().functions()
    texts = [f"people[?{key} == 'null']", f"people[?{key} == 'Ann'] | length(@)"] * 2
    for people in ([None, {"name": "Ann", "email": "null"}, "null", None], [None], []):
        document = {"people": people}
        expected = reference(texts, [False] * 4, document, functions)
        assert planned(texts, [False] * 4, document, functions) == expected, people


@pytest.mark.parametrize(
    "people", [None, "text", 0, {"status": "joined"}, Items([{"status": "joined"}]), []]
)
def test_a_condition_on_a_list_alone_is_decided_when_compiling_for_an_event_without_it(
    people: Any,
) -> None:
    """Filters over an absent list give null, so a condition reading the
    event only through them has an outcome known in advance: the plan only
    checks that the list is absent. Not where that outcome raises (the rule
    reports the error at run time) or the condition reads anything else."""
    functions = Calls().functions()
    texts = [
        "people[?status == 'joined']",  # false without the list
        "!(people[?status == 'joined' && ends_with(email, 'm')])",  # true
        "length(people[?key_of(email) == 'a'] || `[]`) == `0`",  # true
        "length(people[?status == 'joined'])",  # raises without the list
        "people[?status == 'joined'] || topic",  # reads more
        "people[?impure(status) == 'joined'] == `null`",  # impure: not decided
    ] * 2
    steps = [PlanStep(t, jmespath.compile(t).parsed, None, False) for t in texts]
    source = compile_plan(steps, functions, print).__jmespath_source__  # type: ignore[attr-defined]
    assert source.count("if not l") == 6  # the first three, twice
    document = {"people": people, "topic": "T"}
    stops = [False] * len(texts)
    outcome = planned(texts, stops, document, functions)
    assert outcome == reference(texts, stops, document, functions)
    if not isinstance(people, list):
        assert [error[0] for error in outcome[1]] == ["r3", "r9"]


class Touchy:
    """A value (of a document built in code) whose `==` raises."""

    def __eq__(self, other: object) -> bool:
        raise ValueError("no comparing me")

    __hash__ = None  # type: ignore[assignment]


def test_a_shared_sub_expression_calling_no_function_raises_again_at_each_use() -> None:
    """`a == 'x' || b` calls no function: shared with no error kept, it is
    computed anew while unset, so each rule still gets its own error."""
    functions = Calls().functions()
    texts = ["a == 'x' || b", "b", "a == 'x' || b", "!(a == 'x' || b)"]
    steps = [PlanStep(t, jmespath.compile(t).parsed, None, False) for t in texts]
    source = compile_plan(steps, functions, print).__jmespath_source__  # type: ignore[attr-defined]
    assert "_Raised" not in source  # no error kept
    for document in ({"a": Touchy(), "b": 1}, {"a": "x"}, {"a": "y", "b": 0}):
        outcome = planned(texts, [False] * 4, document, functions)
        assert outcome == reference(texts, [False] * 4, document, functions)
    assert planned(texts, [False] * 4, {"a": Touchy(), "b": 1}, functions) == (
        ["r1"],
        [(f"r{i}", "ValueError", "no comparing me") for i in (0, 2, 3)],
    )


def test_a_shared_call_that_raises_is_not_called_again() -> None:
    """A sub-expression that calls a function keeps its error: one call per event."""
    calls = Calls()
    functions = calls.functions()
    texts = ["picky(topic) == 'a'", "picky(topic) == 'b' || count", "picky(topic)"]
    plan = compile_plan(
        [PlanStep(t, jmespath.compile(t).parsed, None, False) for t in texts], functions, print
    )
    plan({"topic": 5, "count": 1}, "ctx")
    assert calls.count["picky"] == 1
    assert planned(texts, [False] * 3, {"topic": 5}, functions) == reference(
        texts, [False] * 3, {"topic": 5}, functions
    )


@pytest.mark.parametrize(
    "a",
    [
        None,
        "text",
        [{"b": 1}],
        {"b": None},
        {"b": "text"},
        {"b": [{"c": "x"}]},
        {"b": {"c": "x", "d": 2, "f": {"g": 1}}, "e": "E"},
        {"b": {"c": "y"}},
        Getter(),
        {"b": Getter()},
    ],
)
def test_runs_of_fields_start_from_the_beginning_they_share(a: Any) -> None:
    """`a` and `a.b` are read once, at the top; `a.b.c`, `a.b.f.g`, `a.e`
    start from them, and give what walking from the event's root gives."""
    functions = Calls().functions()
    texts = [
        "a.b.c == 'x'",
        "a.b.d",
        "a.b.f.g == `1`",
        "a.e == 'E' || a.b.c",
        "length(a.b.c) == `1`",
        "a.b.c == 'x' && a.b.d == `2`",
        "a.b",
    ]
    steps = [PlanStep(t, jmespath.compile(t).parsed, None, False) for t in texts]
    source = compile_plan(steps, functions, print).__jmespath_source__  # type: ignore[attr-defined]
    assert source.count(".get('b'") == 1  # a.b read once, every run starting from it
    document = {"a": a}
    stops = [False] * len(texts)
    assert planned(texts, stops, document, functions) == reference(
        texts, stops, document, functions
    )


def test_strings_and_numbers_are_constants_of_the_plan_code() -> None:
    functions = Calls().functions()
    texts = ["topic == 'it\\'s' || count == `5.5`", "count == `1e400` || count == `-3`"] * 2
    steps = [PlanStep(t, jmespath.compile(t).parsed, None, False) for t in texts]
    source = compile_plan(steps, functions, print).__jmespath_source__  # type: ignore[attr-defined]
    assert '== "it\'s"' in source and "== 5.5" in source and "== -3" in source
    assert "inf" not in source  # not a Python literal: a named constant


def test_a_group_key_that_raises_gives_each_rule_its_own_first_error() -> None:
    """The grouping pass meets the key's error at element 3, but the
    interpreter meets another error first in one rule (its rest, at element 0)."""
    functions = Calls().functions()
    people = [{"name": "Ann", "email": 5}, {"name": "Bob"}, {"name": "Cy"}, {"name": 4}]
    texts = [
        "people[?picky(name) == 'ann' && ends_with(email, 'x')]",
        "people[?picky(name) == 'bob']",
    ]
    outcome = planned(texts, [False, False], {"people": people}, functions)
    assert outcome == reference(texts, [False, False], {"people": people}, functions)
    assert [error[1] for error in outcome[1]] == ["JMESPathTypeError", "ValueError"]


@pytest.mark.parametrize("shape", ["single", "direct", "bucketed"])
def test_a_tested_string_filter_stops_at_the_first_element_that_passes(shape: str) -> None:
    """`list[?key == lit && ends_with(field, 'text')]` as a whole condition only
    needs to know whether some element passes: the plan gathers the field's
    strings once per key literal and scans them, stopping at the first hit;
    where a value is not a string it evaluates the full filter, which raises
    where the interpreter does (a match before the bad element changes
    nothing). The strings come straight from the list when only such tests
    use the key, even for a single such filter, else from the key's buckets
    (`bucketed`: a rule also uses the filtered list itself)."""
    functions = Calls().functions()
    texts = [
        "people[?status == 'joined' && ends_with(email, '@example.com')]",
        "people[?status == 'joined' && starts_with(email, 'b')]",
        "people[?status == 'joined' && contains(email, 'vip')]",
        "people[?status == 'left' && contains(email, 'vip')]",
    ]
    if shape == "direct":
        texts.append("people[?status == `2` && contains(email, 'vip')]")
    if shape == "bucketed":
        texts.append("people[?status == 'joined'].email")
    if shape == "single":
        texts = texts[:1]
    steps = [PlanStep(t, jmespath.compile(t).parsed, None, False) for t in texts]
    source = compile_plan(steps, functions, print).__jmespath_source__  # type: ignore[attr-defined]
    gathered = set(re.findall(r"(s\d+) = (?:_strings|_gather\d+)\(", source))
    # One list per key literal and field: 'joined', 'left'.
    assert len(gathered) == {"single": 1, "direct": 3, "bucketed": 2}[shape]
    bucketed = shape == "bucketed"
    assert ("_group" in source, "_gather" in source) == (bucketed, not bucketed)
    good = [{"email": "a@example.com", "status": "joined"}] * 2
    for document in (
        {"people": good},
        {"people": [*good, {"email": "b@vip.example.com", "status": "joined"}]},
        {"people": [*good, {"email": 5, "status": "joined"}]},  # raises after the first hit
        {"people": [*good, {"status": "joined"}]},
        {"people": [*good, ["status", "joined"], {"email": "c", "status": ["joined"]}]},
        {"people": [*good, {"email": "b@vip.example.com", "status": {"joined": 1}}]},
        {"people": [{"email": "b@x", "status": "left"}, {"email": None, "status": "left"}]},
        {"people": [*good, None, "joined", {"email": "b@vip.example.com", "status": "left"}]},
        # Not dicts, but with fields (jmespath reads them through `.get`).
        {"people": [Getter(), *good]},
        {"people": [*good, Getter()]},
        {"people": [Getter(), {"email": "b@vip.example.com", "status": "joined"}]},
        {"people": [{"email": "b@vip.example.com", "status": Text("joined")}]},
        {"people": [{"email": "b@vip.example.com", "status": 2.0}, {"status": True}]},
        {"people": []},
        {"people": "not a list"},
        {},
    ):
        expected = reference(texts, [False] * len(texts), document, functions)
        assert planned(texts, [False] * len(texts), document, functions) == expected, document


def test_a_tested_string_filter_on_a_key_that_raises_evaluates_the_filter_alone() -> None:
    """The key raises (or has a class grouping does not know) at some element:
    each filter is evaluated on its own, so each rule reports its first error."""
    functions = Calls().functions()
    texts = [
        "people[?picky(name) == 'ann' && ends_with(email, 'x')]",
        "people[?picky(name) == 'ann' && ends_with(email, '.com')]",
        "people[?shout(name) == 'ANN' && ends_with(email, '.com')]",
        "people[?shout(name) == 'BOB' && ends_with(email, '.com')]",
    ]
    for people in (
        [{"name": "Ann", "email": "a@x.com"}, {"name": 4, "email": "b@x.com"}],
        [{"name": "Ann", "email": 5}, {"name": 4}],
        [{"name": "Bob", "email": "b@x.com"}, {"name": "Ann", "email": "a@x.com"}],
    ):
        document = {"people": people}
        expected = reference(texts, [False] * 4, document, functions)
        assert planned(texts, [False] * 4, document, functions) == expected, people


def test_a_custom_function_named_like_a_string_test_is_called_as_itself() -> None:
    functions = Calls().functions()

    def not_ends_with(subject: Any, suffix: Any) -> bool:
        return not subject.endswith(suffix)

    functions["ends_with"] = JMESPathFunction(
        "ends_with", not_ends_with, [{"types": ["string"]}] * 2, pure=True
    )
    texts = ["people[?status == 'joined' && ends_with(email, 'x')]"] * 2
    document = {
        "people": [{"email": "a@x", "status": "joined"}, {"email": "b@x", "status": "joined"}]
    }
    expected = reference(texts, [False, False], document, functions)
    assert expected == ([], [])
    assert planned(texts, [False, False], document, functions) == expected


def test_a_rule_set_too_deep_for_python_still_matches(tmp_path: Path) -> None:
    """Python cannot compile the plan; the matcher evaluates rule by rule."""
    deep = "payload" + ".b" * 3000 + " == 'x'"
    rules = []
    for index, when in enumerate([deep, "payload.object.topic == 'Board'", deep]):
        rules.append(
            f'[[rule]]\nname = "r{index}"\non = ["meeting.started"]\nwhen = "{when}"\n'
            '  [[rule.action]]\n  type = "log"\n'
        )
    loaded = load_rules([write_rules(tmp_path, "\n".join(rules))], env={})
    event = Event.from_body(
        {"event": "meeting.started", "payload": {"object": {"topic": "Board"}}}, source="test"
    )
    assert [rule.name for rule in loaded.matcher.match(event.name, event.root())] == ["r1"]


# A property test: random rule lists from the pool above, random documents.

_element = st.one_of(
    st.none(),
    st.text(max_size=3),
    st.integers(-2, 3),
    st.fixed_dictionaries(
        {},
        optional={
            "email": st.sampled_from(["a@example.com", "b@vip.example.com", 3, None, ""]),
            "status": st.sampled_from(["joined", "left", 2, True, None]),
            "name": st.sampled_from(["Ann", "ann", "Eve", 0, None]),
        },
    ),
)
_documents = st.fixed_dictionaries(
    {},
    optional={
        "people": st.one_of(st.lists(_element, max_size=8), st.none(), st.text(max_size=2)),
        "topic": st.sampled_from(["Board", "board", 5, None, ["Board"]]),
        "count": st.sampled_from([0, 1, 3, 5.5, "5", None, False]),
    },
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    texts=st.lists(st.sampled_from(CONDITIONS), min_size=1, max_size=12),
    stop_at=st.integers(-1, 12),
    document=_documents,
)
def test_plans_agree_with_the_interpreter(
    texts: list[str | None], stop_at: int, document: Any
) -> None:
    functions = Calls().functions()
    stops = [index == stop_at for index in range(len(texts))]
    assert planned(texts, stops, document, functions) == reference(
        texts, stops, document, functions
    )


ROOT_READERS = [
    "zoomrules.source == 'test'",
    "contains(keys(@), 'zoomrules')",
    "length(@) > `2`",
    "*.event_id | [0] != null",
    "[@][0].zoomrules.event_id",
    "@.zoomrules",
]


@pytest.mark.parametrize("reader", [None, *ROOT_READERS])
def test_the_event_body_stands_in_for_the_root_only_when_nothing_else_is_read(
    reader: str | None, tmp_path: Path
) -> None:
    whens = [
        "payload.object.topic == 'My Personal Meeting Room'",
        "starts_with(event, 'meeting.')",
        "payload.object.participants[?user_name == 'x']",
        "zoomrules_like == `null`",  # a field that only looks like the metadata
    ]
    if reader is not None:
        whens.insert(2, reader)
    rules = [
        f'[[rule]]\nname = "r{index}"\non = ["*"]\nwhen = """{when}"""\n'
        '  [[rule.action]]\n  type = "log"\n'
        for index, when in enumerate(whens)
    ]
    loaded = load_rules([write_rules(tmp_path, "\n".join(rules))], env={})
    matcher = loaded.matcher
    fired_reader = 0
    for body in _corpus().values():
        event = Event.from_body(body, source="test")
        expected = [rule.name for rule in matcher.match(event.name, event.root())]
        assert [rule.name for rule in matcher.match_event(event)] == expected
        fired_reader += "r2" in expected
    assert matcher._entry("meeting.started").whole_body is (reader is None)
    if reader is not None:
        assert fired_reader  # the reader really sees the metadata
