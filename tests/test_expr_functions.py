"""The engine's JMESPath functions, in both evaluators, with examples and errors."""

from __future__ import annotations

import time
from typing import Any

import pytest
from conftest import example
from jmespath import exceptions

from engine.errors import ExpressionError
from engine.expr.compiler import ExpressionCompiler
from engine.expr.functions import BUILTIN_FUNCTIONS


@pytest.fixture(params=["compiled", "interpreter"])
def compiler(request: pytest.FixtureRequest) -> ExpressionCompiler:
    return ExpressionCompiler(BUILTIN_FUNCTIONS, request.param)


def search(compiler: ExpressionCompiler, expr: str, doc: Any = None) -> Any:
    return compiler.compile(expr)({} if doc is None else doc)


DOC = {
    "name": "  Riley Park  ",
    "email": "Riley.Park@Sub.Example.COM",
    "topic": "SEV1: payments down",
    "csv": "a,b,,c",
    "n": 42,
    "list": ["x"],
    "when": "2026-02-05T17:02:00Z",
}


@pytest.mark.parametrize(
    ("expr", "expected"),
    [
        ("lower(email)", "riley.park@sub.example.com"),
        ("upper(topic)", "SEV1: PAYMENTS DOWN"),
        ("trim(name)", "Riley Park"),
        ("trim('')", ""),
        ("split(csv, ',')", ["a", "b", "", "c"]),
        ("split(topic, ': ')", ["SEV1", "payments down"]),
        ("split('abc', '|')", ["abc"]),
        ("regex_match(topic, '(?i)^sev ?[12]\\b')", True),
        ("regex_match(topic, 'payments')", True),  # search, not a full match
        ("regex_match(topic, '^payments')", False),
        ("glob_match(topic, 'SEV1:*')", True),
        ("glob_match(topic, 'sev1:*')", False),  # case-sensitive
        ("glob_match(topic, 'SEV1')", False),  # the whole subject must match
        ("glob_match('meeting.ended', 'meeting.*')", True),
        ("to_epoch(when)", 1770310920.0),
        ("to_epoch('2026-02-05T17:02:00+01:00')", 1770307320.0),
        ("to_epoch('2026-02-05T17:02:00')", 1770310920.0),  # naive = UTC
        ("to_epoch('2026-02-05T17:02:00.500Z')", 1770310920.5),
        ("email_domain(email)", "sub.example.com"),
        ("email_domain('a@b@c.org')", "c.org"),
        ("email_domain('no-at-sign')", None),
        ("email_domain(n)", None),
        ("email_domain(missing)", None),
        ("email_domain(list)", None),
        ("email_domain('trailing@')", None),
        # combined with the standard functions
        ("length(split(csv, ','))", 4),
        ("contains(['example.com'], email_domain('x@EXAMPLE.com'))", True),
    ],
)
def test_function_examples(compiler: ExpressionCompiler, expr: str, expected: Any) -> None:
    assert search(compiler, expr, DOC) == expected


def test_now_is_epoch_seconds(compiler: ExpressionCompiler) -> None:
    before = time.time()
    value = search(compiler, "now()")
    after = time.time()
    assert isinstance(value, float)
    assert before <= value <= after


def test_now_compared_with_event_time(compiler: ExpressionCompiler) -> None:
    # "older than an hour" without arithmetic: compare two function results.
    event = example("meeting.participant_joined")
    expr = "to_epoch(payload.object.participant.join_time) < now()"
    assert search(compiler, expr, event) is True


@pytest.mark.parametrize(
    "expr",
    [
        "lower(n)",
        "upper(list)",
        "trim(missing)",
        "split(n, ',')",
        "split(csv, `1`)",
        "regex_match(n, 'x')",
        "regex_match(topic, n)",
        "glob_match(list, '*')",
        "to_epoch(n)",
    ],
)
def test_string_functions_reject_non_strings(compiler: ExpressionCompiler, expr: str) -> None:
    with pytest.raises(exceptions.JMESPathTypeError) as info:
        search(compiler, expr, DOC)
    assert "invalid type" in str(info.value)


@pytest.mark.parametrize(
    ("expr", "message"),
    [
        ("split(csv, '')", "separator must not be empty"),
        ("regex_match(topic, '([unclosed')", "invalid pattern"),
        ("to_epoch('yesterday')", "not an ISO 8601 time"),
    ],
)
def test_bad_values_raise_jmespath_errors(
    compiler: ExpressionCompiler, expr: str, message: str
) -> None:
    with pytest.raises(exceptions.JMESPathError, match=message):
        search(compiler, expr, DOC)


@pytest.mark.parametrize(
    ("expr", "message"),
    [
        ("lower(email, topic)", "lower"),
        ("now(`1`)", "now"),
        ("split(csv)", "split"),
    ],
)
def test_wrong_argument_count(compiler: ExpressionCompiler, expr: str, message: str) -> None:
    with pytest.raises((exceptions.ArityError, ExpressionError), match=message):
        search(compiler, expr, DOC)


def test_unknown_function_is_a_compile_error(compiler: ExpressionCompiler) -> None:
    with pytest.raises(ExpressionError, match=r"unknown function: domain_of\(\)"):
        compiler.compile("domain_of(email)")


def test_functions_unavailable_without_registration() -> None:
    with pytest.raises(ExpressionError, match=r"unknown function: lower\(\)"):
        ExpressionCompiler((), "interpreter").compile("lower(email)")


def _documented_conditions() -> list[str]:
    """Every one-line `when = "..."` in docs/jmespath.md, as TOML reads it."""
    import re
    import tomllib
    from pathlib import Path

    text = (Path(__file__).parent.parent / "docs" / "jmespath.md").read_text()
    out = []
    for line in text.splitlines():
        match = re.match(r'^when = ("[^"].*")(\s+#.*)?$', line.strip())
        if match:
            out.append(tomllib.loads(f"when = {match.group(1)}")["when"])
    return out


def test_documented_conditions_compile(compiler: ExpressionCompiler) -> None:
    conditions = _documented_conditions()
    assert len(conditions) > 20
    for condition in conditions:
        compiler.compile(condition)


@pytest.mark.parametrize(
    ("name", "expr", "expected"),
    [
        (
            "meeting.participant_joined",
            "email_domain(payload.object.participant.email)",
            "example.com",
        ),
        (
            "recording.completed",
            "length(payload.object.recording_files[?file_size > `40000000`]) > `0`",
            True,
        ),
        (
            "recording.completed",
            "max(payload.object.recording_files[*].file_size) > `500000000`",
            False,
        ),
        ("team_chat.channel_message_posted", "length(payload.object.files || `[]`) > `0`", True),
        ("phone.callee_missed", "starts_with(payload.object.caller.phone_number, '+1415')", True),
        (
            "meeting.participant_joined",
            "to_epoch(payload.object.participant.join_time) > to_epoch(payload.object.start_time)",
            True,
        ),
    ],
)
def test_documented_examples_on_real_events(
    compiler: ExpressionCompiler, name: str, expr: str, expected: Any
) -> None:
    assert search(compiler, expr, example(name)) == expected
