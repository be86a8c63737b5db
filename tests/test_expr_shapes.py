"""Expressions of one shape share a parse and generated code: exactly.

`engine.expr.shapes` builds the tree and search function of a text from
a template made from another text of the same shape (differing only in its
literals). Everything it gives must be what compiling the text alone gives:

1. its scanner finds the literals where jmespath's lexer does, with the same
   values, and leaves every text it cannot read exactly to jmespath;
2. over the compliance suite and generated expressions, each text and its
   variants with other literals compile, through one compiler (so later
   variants come from a template), to jmespath's own tree, the same generated
   code with the same constants, the same results and the same errors as
   through a fresh compiler.
"""

from __future__ import annotations

import json
import random
import warnings
from typing import Any

import jmespath
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from jmespath import exceptions
from jmespath.lexer import Lexer

from engine.errors import ExpressionError
from engine.expr.compiler import ExpressionCompiler
from engine.expr.functions import BUILTIN_FUNCTIONS
from engine.expr.shapes import literal_class, scan
from engine.plugin import JMESPathFunction
from tests.test_expr_codegen import (
    COMPLIANCE_CASES,
    DOCUMENTS,
    GARBAGE,
    HYPOTHESIS_FUNCTIONS,
    TREES,
    outcome,
    same_outcome,
)

# The compliance suite has literals in jmespath's deprecated form on purpose.
pytestmark = pytest.mark.filterwarnings("ignore::PendingDeprecationWarning")

FUNCTIONS: list[JMESPathFunction] = list(HYPOTHESIS_FUNCTIONS.values())
EXPRESSIONS = [case.values[1]["expression"] for case in COMPLIANCE_CASES]

# Other literals of each class (by delimiter and `literal_class`), to make
# texts of the same shape.
RAW_STRINGS = ["'a'", "'b c'", "'it\\'s'", "''", "'\\\\'", "'x'", "'joined'"]
JSON_BY_CLASS: dict[Any, list[str]] = {
    str: ['`"x"`', '`"y z"`', '`""`', '`"a\\`b"`', '` "pad" `'],
    (int, False): ["`2`", "`-7`", "`123456789012345678901`", "`300`"],
    (int, True): ["`0`", "`1`"],
    (float, False): ["`2.5`", "`-0.25`", "`1e3`"],
    (float, True): ["`1.0`", "`0.0`", "`-0.0`"],
    list: ["`[]`", '`[1, "a"]`', "`[[0]]`"],
    dict: ["`{}`", '`{"a": 1}`', '`{"b": [true]}`'],
    None: ["`null`"],
    True: ["`true`"],
    False: ["`false`"],
}


def lex(text: str) -> list[dict[str, Any]] | None:
    """jmespath's tokens, or None if its lexer fails or warns."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        try:
            return list(Lexer().tokenize(text))
        except (exceptions.JMESPathError, PendingDeprecationWarning, RecursionError):
            return None


def literal_spans(text: str, tokens: list[dict[str, Any]]) -> list[tuple[int, int, Any]]:
    """(start, end, value) of each literal token in `text`.

    jmespath's lexer puts the token's length in `end` for literals, one short
    when the literal closes the text (its position stops at the last
    character); a literal that ends one character early is followed by a
    character other than its delimiter, or the lexer would have failed.
    """
    spans = []
    for t in tokens:
        if t["type"] == "literal":
            start, end = t["start"], t["start"] + t["end"]
            if end == len(text) - 1 and text[-1] == text[start]:
                end = len(text)
            spans.append((start, end, t["value"]))
    return spans


def variants(text: str, rng: random.Random, count: int) -> list[str]:
    """`text` with its literals replaced by others of the same kind and
    class (so: the same shape), and now and then of another class."""
    tokens = lex(text)
    if tokens is None:
        return []
    spans = literal_spans(text, tokens)
    if not spans:
        return []
    out = []
    for _ in range(count):
        parts, pos = [], 0
        for start, end, value in spans:
            parts.append(text[pos:start])
            if text[start] == "'":
                parts.append(rng.choice(RAW_STRINGS))
            else:
                pool = JSON_BY_CLASS[literal_class(value)]
                if rng.random() < 0.15:
                    pool = rng.choice(list(JSON_BY_CLASS.values()))
                parts.append(rng.choice(pool))
            pos = end
        parts.append(text[pos:])
        out.append("".join(parts))
    return out


# ---------------------------------------------------------------------------
# 1. The scanner reads literals as jmespath's lexer does.


def check_scan(text: str) -> None:
    tokens = lex(text)
    scanned = scan(text)
    if tokens is None:
        # jmespath fails (such a text never makes a template) or warns: a
        # literal in the deprecated form, which the scanner must not read.
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                list(Lexer().tokenize(text))
            except (exceptions.JMESPathError, RecursionError):
                return
        assert caught and scanned is None, (text, scanned)
        return
    spans = literal_spans(text, tokens)
    if scanned is None:
        assert not spans, (text, spans)
        return
    assert len(scanned.values) == len(spans), (text, scanned, spans)
    pos = 0
    for j, (start, end, value) in enumerate(spans):
        assert scanned.key[2 * j] == text[pos:start], (text, j)
        assert scanned.key[2 * j + 1] == (text[start], literal_class(value)), (text, j)
        assert repr(scanned.values[j]) == repr(value), (text, j)
        assert type(scanned.values[j]) is type(value)
        pos = end
    assert scanned.key[-1] == text[pos:]


def test_scan_matches_jmespath_lexer_on_the_compliance_suite() -> None:
    for text in EXPRESSIONS:
        check_scan(text)


@pytest.mark.parametrize(
    "text",
    [
        "a == 'x'",
        "a == 'it\\'s' && b == `\"q\\`uote\"`",
        "\"it's\" == 'a'",  # a quote inside a quoted identifier is no literal
        '"a\\"b" == `1`',
        "'a\\\\' == b",
        "a == '",  # unterminated: jmespath's error
        "a == `{`",  # invalid JSON: jmespath reads it in the deprecated form
        "a == `foo`",  # the deprecated unquoted form: jmespath's warning
        'a == `"x` || `1',  # invalid JSON, then unterminated: an error
        "a == '\\",
        '`[1, {"a": null}]` == a',
        "a == `  2  `",
        "a == `01`",  # not JSON: the deprecated form, a string
        "a == `0` || a == `-0` || a == `10`",
        "a == `\u00b2`",  # a digit to Python, not to JSON
        "a == `\u0663`",  # an int to Python, not to JSON
        "a == `" + "9" * 5000 + "`",  # longer than Python reads as an int
        "a[?b == 'x'].[c, 'd']",  # the tree puts the later literal first
        "a = 'x'",
        "'x'",
    ],
)
def test_scan_matches_jmespath_lexer(text: str) -> None:
    check_scan(text)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(text=st.one_of(TREES, GARBAGE, st.text(alphabet="ab'`\"\\ =.[]{}:,01-", max_size=16)))
def test_scan_matches_jmespath_lexer_on_generated_text(text: str) -> None:
    check_scan(text)


# ---------------------------------------------------------------------------
# 2. Same shape, same result as compiling alone.


def _constants(search: Any) -> dict[str, Any]:
    """The data a generated search function reads from its namespace."""
    names = search.__jmespath_source__.split()
    out = {}
    for name, value in search.__globals__.items():
        if name.startswith("_k") and any(name in token for token in names):
            out[name] = value
    return out


def _same_constants(a: dict[str, Any], b: dict[str, Any]) -> bool:
    if a.keys() != b.keys():
        return False
    for name, x in a.items():
        y = b[name]
        if type(x).__name__ == "_Expression":
            if type(y) is not type(x) or repr(x.expression) != repr(y.expression):
                return False
            continue
        if callable(x) or callable(y):
            if type(x) is not type(y):
                return False
            continue
        if repr(x) != repr(y) or type(x) is not type(y):
            return False
    return True


def _guard(compiler: ExpressionCompiler, text: str) -> Any:
    guard = compiler.guard(text)
    if guard is None:
        return None
    values = sorted(repr(v) + type(v).__name__ for v in guard.values)
    return guard.key, values, guard.exact


class Checker:
    """Compiles texts through one shared compiler per evaluator and checks
    each against a fresh compiler and jmespath."""

    def __init__(self) -> None:
        self.shared = {
            ev: ExpressionCompiler(FUNCTIONS, evaluator=ev)  # type: ignore[arg-type]
            for ev in ("compiled", "interpreter")
        }

    @property
    def hits(self) -> int:
        return sum(c._shapes.hits for c in self.shared.values())

    def check(self, text: str, docs: list[Any]) -> None:
        for evaluator, shared in self.shared.items():
            fresh = ExpressionCompiler(FUNCTIONS, evaluator=evaluator)  # type: ignore[arg-type]
            try:
                expected = fresh.compile(text)
            except ExpressionError as exc:
                with pytest.raises(ExpressionError) as got:
                    shared.compile(text)
                assert str(got.value) == str(exc), text
                continue
            search = shared.compile(text)
            assert repr(shared._trees[text]) == repr(jmespath.compile(text).parsed), text
            assert _guard(shared, text) == _guard(fresh, text), text
            if evaluator == "compiled" and hasattr(expected, "__jmespath_source__"):
                assert search.__jmespath_source__ == expected.__jmespath_source__, text
                assert _same_constants(_constants(search), _constants(expected)), text
            for doc in docs:
                ref = outcome(lambda _t, s=expected: s, text, doc)  # noqa: B023
                got = outcome(lambda _t, s=search: s, text, doc)  # noqa: B023
                assert same_outcome(got, ref), (evaluator, text, doc, got, ref)


def _docs_for(text: str, given_doc: Any) -> list[Any]:
    """The case's document, plus documents where the literals are the values."""
    docs = [given_doc]
    tokens = lex(text) or []
    for _, _, value in literal_spans(text, tokens):
        docs.append({name: value for name in ("a", "b", "foo", "bar", "c")})
        docs.append({"a": [{"b": value, "c": value}], "foo": {"bar": value}})
    return docs[:6]


def test_shapes_agree_over_the_compliance_suite() -> None:
    rng = random.Random(6)
    checker = Checker()
    with_literals = 0
    for case in COMPLIANCE_CASES:
        given_doc, spec = case.values
        text = spec["expression"]
        others = variants(text, rng, 5)
        with_literals += bool(others)
        for variant in [text, *others]:
            checker.check(variant, _docs_for(variant, given_doc))
    # The checks above mean something only if templates served many texts
    # (two evaluators: at least one text per expression with literals each).
    assert checker.hits > 2 * with_literals, (checker.hits, with_literals)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(text=TREES, doc=DOCUMENTS, seed=st.integers(0, 2**16))
def test_shapes_agree_on_generated_expressions(text: str, doc: Any, seed: int) -> None:
    checker = Checker()
    for variant in [text, *variants(text, random.Random(seed), 5)]:
        checker.check(variant, [doc, *_docs_for(variant, doc)[1:]])


def test_rule_conditions_of_one_shape() -> None:
    """The shapes a rule file repeats: each served by a template, each exact."""
    checker = Checker()
    shapes = [
        "payload.object.topic == '{s}'",
        "payload.object.id == '{s}' || payload.object.id == `{n}`",
        "length(payload.object.participants[?email_domain(email) == '{s}'] || `[]`) > `{n}`",
        "(event_ts > `{n}` && payload.account_id) && event_ts != `{n}`",
        "a == `{n}` && b == `{n}`",  # equal small ints: one object for two literals
        "a == '{s}' || b == '{s}'",
    ]
    values = [("x", 0), ("x", 1), ("Board meeting", 2), ("y", 85746065432), ("", 7), ("x", 7)]
    for shape in shapes:
        for s, n in values:
            text = shape.format(s=s, n=n)
            doc = {
                "a": n,
                "b": n if s else s,
                "event_ts": 3,
                "payload": {
                    "account_id": "acc",
                    "object": {
                        "topic": s,
                        "id": n,
                        "participants": [{"email": f"p@{s}"}] * 3,
                    },
                },
            }
            checker.check(text, [doc, {}, None])
    assert checker.hits >= len(shapes) * 2


def test_shapes_calling_a_pure_function_get_templates() -> None:
    """A pure function's result cache is a constant of the generated code that
    depends on the function only, so it does not stop a shape's template."""
    compiler = ExpressionCompiler(BUILTIN_FUNCTIONS)
    for domain in ["a.com", "b.com", "c.com", "d.com", "e.com"]:
        compiler.compile(f"email_domain(payload.object.participant.email) == '{domain}'")
        compiler.compile(f"lower(payload.object.topic) == '{domain}' && event_ts")
    assert compiler._shapes.hits == 2 * 3  # each shape: learnt on its second text


@pytest.mark.parametrize(
    ("shape", "values"),
    [
        # One object for two literals (small ints, one-character strings):
        # a template made from such a text could not tell them apart.
        ("a == `{}` && b == `{}`", [(2, 2), (3, 3), (4, 5), (6, 7), (8, 9)]),
        ("a == '{}' || b == '{}'", [("x", "x"), ("y", "y"), ("p", "q"), ("r", "s"), ("t", "u")]),
        # The tree holds the later literal first.
        ("a[?b == '{}'].[c, '{}']", [("x", "y"), ("p", "q"), ("r", "s"), ("t", "u")]),
        ("a[?b == `{}`].{{k: `{}`}}", [(10, 20), (30, 40), (50, 60), (70, 80)]),
    ],
)
def test_literals_are_told_apart(shape: str, values: list[tuple[Any, Any]]) -> None:
    checker = Checker()
    for first, second in values:
        text = shape.format(first, second)
        docs = [
            {"a": first, "b": second},
            {"a": first, "b": first},
            {"a": [{"b": first, "c": 0}, {"b": second, "c": 1}]},
        ]
        checker.check(text, docs)
    assert checker.hits >= 2


def test_texts_jmespath_reads_otherwise_are_left_to_it() -> None:
    compiler = ExpressionCompiler(FUNCTIONS)
    for i in range(3):
        compiler.compile(f"a == `{i + 2}`")
    # Same shape as far as a naive scan goes, but jmespath reads these its own way.
    with pytest.warns(PendingDeprecationWarning):
        assert compiler.compile("a == `foo`")({"a": "foo"}) is True
    for broken in ('a == `"`', "a == `5", "a == `5` ||", "a == `5`]"):
        with pytest.raises(ExpressionError) as got:
            compiler.compile(broken)
        with pytest.raises(ExpressionError) as alone:
            ExpressionCompiler(FUNCTIONS).compile(broken)
        assert str(got.value) == str(alone.value)


def test_a_literal_json_value_is_not_shared_between_texts() -> None:
    compiler = ExpressionCompiler(FUNCTIONS)
    searches = [compiler.compile(f'a == `[{i}, "{i}"]`') for i in range(4)]
    assert compiler._shapes.hits == 2
    for i, search in enumerate(searches):
        assert search({"a": [i, str(i)]}) is True
        assert search({"a": json.loads(f'[{i + 1}, "{i}"]')}) is False
