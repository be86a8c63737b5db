"""`regex_match` on RE2: linear time, RE2's syntax, bounded cost, and
`zoomrules check` reporting literal patterns RE2 cannot compile."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
from conftest import example, run_cli, write_rules
from jmespath import exceptions

from engine.errors import ConfigError
from engine.events import Event
from engine.expr.compiler import ExpressionCompiler
from engine.expr.functions import BUILTIN_FUNCTIONS, REGEX_COST_LIMIT
from engine.loader import load_rules


@pytest.fixture(params=["compiled", "interpreter"])
def compiler(request: pytest.FixtureRequest) -> ExpressionCompiler:
    return ExpressionCompiler(BUILTIN_FUNCTIONS, request.param)


def search(compiler: ExpressionCompiler, expr: str, doc: Any) -> Any:
    return compiler.compile(expr)(doc)


def test_a_pattern_backtracking_exponentially_in_python_returns_at_once(
    compiler: ExpressionCompiler,
) -> None:
    # Python's re takes seconds for 28 a's (and doubles with each one more:
    # 65 s for 32); RE2 is linear in the subject.
    for subject in ["a" * 28 + "!", "a" * 32 + "!", "a" * 200_000 + "!"]:
        started = time.perf_counter()
        assert search(compiler, "regex_match(s, '^(a+)+$')", {"s": subject}) is False
        assert search(compiler, "regex_match(s, '^(a|aa)+!$')", {"s": subject}) is True
        assert time.perf_counter() - started < 0.5, len(subject)


@pytest.mark.parametrize(
    ("pattern", "subject", "expected"),
    [
        ("(?i)^sev ?[12]\\b", "SEV1: payments down", True),
        ("payments", "SEV1: payments down", True),  # a search, not a full match
        ("^payments", "SEV1: payments down", False),
        ("(?i)CAFÉ", "café au lait", True),  # Unicode case folding
        ("^.{4}$", "日本語!", True),  # characters, not bytes
        ("(?P<word>\\w+)@", "riley@example.com", True),
        ("\\bsync\\z", "weekly sync", True),
        # RE2's `$` is the end of the text, not also before a final newline.
        ("sync$", "weekly sync\n", False),
        ("(?m)sync$", "weekly sync\n", True),
        # \d, \w, \s and \b are ASCII in RE2 (Unicode classes: \p{...}).
        ("^\\d$", "\u0663", False),
        ("^\\p{Nd}$", "\u0663", True),
    ],
)
def test_re2_semantics(
    compiler: ExpressionCompiler, pattern: str, subject: str, expected: bool
) -> None:
    assert search(compiler, "regex_match(s, p)", {"s": subject, "p": pattern}) is expected


@pytest.mark.parametrize(
    ("pattern", "message"),
    [
        ("(?=x)a", "invalid perl operator: (?="),  # lookahead
        ("(?<!x)a", "invalid perl operator"),  # lookbehind
        ("(a)\\1", "invalid escape sequence: \\1"),  # backreference
        ("a\\Z", "invalid escape sequence: \\Z"),  # Python's \Z is RE2's \z
        ("a++", "bad repetition operator"),  # possessive
        ("(?>a)", "invalid perl operator"),  # atomic group
        ("(", "missing )"),
        ("(a{100}){100}", "invalid repetition size"),  # nested repetitions over 1,000
        ("|".join(f"w{i}x" for i in range(40_000)), "pattern too large"),  # REGEX_MAX_MEM
    ],
)
def test_what_re2_refuses_is_an_error_of_that_evaluation(
    compiler: ExpressionCompiler, pattern: str, message: str
) -> None:
    with pytest.raises(exceptions.JMESPathError) as info:
        search(compiler, "regex_match(s, p)", {"s": "a", "p": pattern})
    assert "invalid pattern" in str(info.value) and message in str(info.value)


def test_the_cost_of_a_call_is_bounded(compiler: ExpressionCompiler) -> None:
    big = "|".join(f"w{i}x" for i in range(500))  # about 1,000 RE2 instructions
    subject = "a" * (REGEX_COST_LIMIT // 500)
    with pytest.raises(exceptions.JMESPathError, match="too long for pattern"):
        search(compiler, "regex_match(s, p)", {"s": subject, "p": big})
    # A small pattern takes subjects as long as any event can hold.
    assert search(compiler, "regex_match(s, 'a$')", {"s": "a" * 4_000_000}) is True


RULES = """
[[rule]]
name = "lookahead"
on = ["meeting.started"]
when = "regex_match(payload.object.topic, '(?=Board)B') || regex_match(payload.object.topic, 'x')"

  [[rule.action]]
  type = "log"
  path = "/tmp/zoomrules-{{ regex_match(payload.object.topic, '(\\\\w)\\\\1') }}.log"

[[rule]]
name = "dynamic"
on = ["meeting.started"]
when = "regex_match(payload.object.topic, payload.object.uuid)"
throttle = { limit = 5, per = "1m", key = "regex_match(payload.object.id, 'a++')" }

  [[rule.action]]
  type = "shell"
  command = ["echo", "{{ regex_match(payload.object.topic, '(?i)board\\\\Z') }}", "{{ payload.object.topic }}"]

[[rule]]
name = "fine"
on = ["meeting.started"]
when = "regex_match(payload.object.topic, '^(a+)+$') || regex_match(payload.object.topic, `\\"(?i)^board\\"`)"

  [[rule.action]]
  type = "log"
"""


def test_check_reports_every_literal_pattern_re2_cannot_compile(tmp_path: Path) -> None:
    path = write_rules(tmp_path, RULES)
    with pytest.raises(ConfigError) as info:
        load_rules([path], env={})
    found = [(p.file, p.line, p.where, p.key, p.message) for p in info.value.problems]
    lines = path.read_text().splitlines()

    def line_of(text: str) -> int:
        return next(n for n, line in enumerate(lines, 1) if text in line)

    expected = [
        (line_of("(?=Board)"), "rule 'lookahead'", "when", "'(?=Board)B'", "invalid perl operator"),
        (line_of("path ="), "rule 'lookahead'", "action[1].path", "'(\\\\w)\\\\1'", "\\1"),
        (line_of("throttle ="), "rule 'dynamic'", "throttle.key", "'a++'", "bad repetition"),
        (line_of("command ="), "rule 'dynamic'", "action[1].command", "board\\\\Z", "\\Z"),
    ]
    assert len(found) == len(expected), found
    for (file, line, where, key, message), (want_line, want_where, want_key, *texts) in zip(
        found, expected, strict=True
    ):
        assert (file, line, where, key) == (path, want_line, want_where, want_key)
        assert "regex_match(): invalid pattern" in message and "RE2" in message
        assert all(text in message for text in texts), (message, texts)
    # The rule with valid and event-supplied patterns is fine.
    assert not any(where == "rule 'fine'" for _, _, where, _, _ in found)


def test_zoomrules_check_prints_them(tmp_path: Path) -> None:
    path = write_rules(tmp_path, RULES)
    result = run_cli("check", "-c", path)
    assert result.returncode == 2, result.stdout + result.stderr
    assert f"{path}:4: rule 'lookahead', key 'when': regex_match(): invalid pattern" in (
        result.stderr
    )


def test_a_pattern_from_the_event_that_re2_refuses_is_a_counted_rule_error(
    tmp_path: Path,
) -> None:
    rules = """
    [[rule]]
    name = "dynamic"
    on = ["meeting.started"]
    when = "regex_match(payload.object.topic, payload.object.uuid)"
      [[rule.action]]
      type = "log"

    [[rule]]
    name = "next"
    on = ["meeting.started"]
      [[rule.action]]
      type = "log"
    """
    for evaluator in ("compiled", "interpreter"):
        text = f'[engine]\nevaluator = "{evaluator}"\n' + rules
        loaded = load_rules([write_rules(tmp_path, text)], env={})
        body = example("meeting.started")
        body["payload"]["object"]["uuid"] = "(?=lookahead)"
        event = Event.from_body(body, source="test")
        assert [r.name for r in loaded.matcher.match_event(event)] == ["next"]
        assert loaded.matcher.errors == {"dynamic": 1}
