"""The compiled JMESPath evaluator must behave exactly like the `jmespath` package.

1. The official compliance suite (every `result`/`error` case), checked
   against both the suite's expected answer (through the reference package)
   and the reference package itself (through the compiled evaluator).
2. A hypothesis property test over generated expressions and documents
   (random JSON and real Zoom event examples).
3. The engine's own functions, compiled vs interpreted.
"""

from __future__ import annotations

import collections
import copy
import json
import re
from collections.abc import Callable, Mapping
from typing import Any

import jmespath
import pytest
from conftest import COMPLIANCE_DIR, CORPUS_DIR
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from jmespath import exceptions

from engine.expr.codegen import compile_expression, functions_instance
from engine.expr.compiler import ExpressionCompiler
from engine.expr.functions import BUILTIN_FUNCTIONS
from engine.plugin import JMESPathFunction

ENGINE_FUNCTIONS: dict[str, JMESPathFunction] = {fn.name: fn for fn in BUILTIN_FUNCTIONS}

Outcome = tuple[Any, ...]


# ---------------------------------------------------------------------------
# Outcomes: ("ok", value) or ("error", phase, kind).


def error_kind(exc: BaseException) -> str:
    """The compliance suite's error kind for a jmespath exception."""
    # ArityError subclasses ParseError, so it must be tested first.
    if isinstance(exc, exceptions.ArityError):
        return "invalid-arity"
    if isinstance(exc, (exceptions.ParseError, exceptions.EmptyExpressionError)):
        return "syntax"
    if isinstance(exc, exceptions.JMESPathTypeError):
        return "invalid-type"
    if isinstance(exc, exceptions.UnknownFunctionError):
        return "unknown-function"
    if isinstance(exc, ValueError):  # JMESPathError, and Python's "slice step cannot be zero"
        return "invalid-value"
    return f"python:{type(exc).__name__}"  # e.g. TypeError for `1` < 'a'


def outcome(compile_: Callable[[str], Callable[[Any], Any]], text: str, doc: Any) -> Outcome:
    try:
        search = compile_(text)
    except Exception as exc:
        return ("error", "compile", error_kind(exc))
    try:
        return ("ok", search(doc))
    except Exception as exc:
        return ("error", "search", error_kind(exc))


def reference(functions: Mapping[str, JMESPathFunction] = {}) -> Callable[[str], Any]:
    """The reference evaluator, with custom functions as engine.expr.compiler adds them."""
    options = jmespath.Options(custom_functions=functions_instance(functions))

    def compile_(text: str) -> Callable[[Any], Any]:
        parsed = jmespath.compile(text)
        return lambda doc: parsed.search(doc, options)

    return compile_


def compiled(functions: Mapping[str, JMESPathFunction] = {}) -> Callable[[str], Any]:
    return lambda text: compile_expression(text, functions)


_EXPREF_REPR = re.compile(r"<[\w.]*_Expression object at 0x[0-9a-f]+>")


def same(a: Any, b: Any, strict: bool) -> bool:
    """JSON equality where true != 1; `strict` also requires identical number
    types and key order (compiled vs reference must be indistinguishable)."""
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    if type(a).__name__ == "_Expression" and type(b).__name__ == "_Expression":
        return a.expression == b.expression
    if isinstance(a, list) or isinstance(b, list):
        return (
            isinstance(a, list)
            and isinstance(b, list)
            and len(a) == len(b)
            and all(same(x, y, strict) for x, y in zip(a, b, strict=True))
        )
    if isinstance(a, dict) or isinstance(b, dict):
        if not (isinstance(a, dict) and isinstance(b, dict)):
            return False
        keys_match = list(a) == list(b) if strict else set(a) == set(b)
        return keys_match and all(same(a[k], b[k], strict) for k in a)
    if isinstance(a, str) and isinstance(b, str):
        # to_string(&expr) embeds an object address; only the shape can match.
        return _EXPREF_REPR.sub("<expref>", a) == _EXPREF_REPR.sub("<expref>", b)
    if strict and type(a) is not type(b):
        return False
    return a == b


def same_outcome(a: Outcome, b: Outcome, strict: bool = True) -> bool:
    if a[0] != b[0]:
        return False
    if a[0] == "ok":
        return same(a[1], b[1], strict)
    return a == b


# ---------------------------------------------------------------------------
# 1. The compliance suite.


def _compliance_cases() -> list[Any]:
    cases = []
    for path in sorted(COMPLIANCE_DIR.glob("*.json")):
        if path.name == "schema.json":
            continue
        for g, group in enumerate(json.loads(path.read_text())):
            for c, case in enumerate(group["cases"]):
                if "result" not in case and "error" not in case:
                    continue  # bench-only cases
                cases.append(pytest.param(group["given"], case, id=f"{path.stem}-{g}-{c}"))
    return cases


COMPLIANCE_CASES = _compliance_cases()


def test_compliance_suite_is_present() -> None:
    assert len(COMPLIANCE_CASES) > 800, f"compliance data not found under {COMPLIANCE_DIR}"


@pytest.mark.parametrize(("given", "case"), COMPLIANCE_CASES)
def test_compliance(given: Any, case: dict[str, Any]) -> None:
    text = case["expression"]
    original = copy.deepcopy(given)
    expected = reference()
    ref = outcome(expected, text, given)
    # The reference must agree with the suite, so a misread case fails here.
    if "error" in case:
        assert ref[0] == "error" and ref[2] == case["error"], (ref, case)
    else:
        assert ref[0] == "ok" and same(ref[1], case["result"], strict=False), (ref, case)
    got = outcome(compiled(), text, given)
    assert same_outcome(got, ref), (text, got, ref)
    assert given == original  # documents are never mutated
    if got[1] != "compile":
        # Only Python's nested-block limit may send an expression to the
        # interpreter fallback; everything else must run generated code.
        generated = hasattr(compile_expression(text), "__jmespath_source__")
        assert generated or text.count("[*]") >= 20, text


# ---------------------------------------------------------------------------
# 2. Property test: generated expressions and documents.

NAMES = [
    "a",
    "b",
    "foo",
    "bar",
    "payload",
    "object",
    "participant",
    "participants",
    "email",
    "user_name",
    "id",
    "status",
    "event",
    "topic",
    "type",
    "duration",
    "host_id",
]
IDENTIFIERS = st.sampled_from(NAMES) | st.sampled_from(['"a b"', '"foo"', '"1"'])
LITERALS = st.sampled_from(
    [
        "`1`",
        "`0`",
        "`-1`",
        "`2.5`",
        "`true`",
        "`false`",
        "`null`",
        '`"x"`',
        '`""`',
        "`[]`",
        "`{}`",
        "`[1, 2]`",
        '`{"a": 1}`',
        "'joined'",
        "'@vip.example.com'",
        "'meeting.participant_joined'",
        "''",
        "'a,b'",
        "'2026-02-05T17:00:00Z'",
    ]
)
FUNCTION_NAMES = sorted(jmespath.functions.Functions.FUNCTION_TABLE) + sorted(
    name for name in ENGINE_FUNCTIONS if name != "now"
)
HYPOTHESIS_FUNCTIONS = {n: f for n, f in ENGINE_FUNCTIONS.items() if n != "now"}
SLICES = st.sampled_from(["0:1", "::-1", "1:", ":2", "-1:", "::2", "::0", ":"])


def _extend(inner: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    pair = st.tuples(inner, inner)
    return st.one_of(
        st.builds("{}.{}".format, inner, IDENTIFIERS),
        st.builds("{}[{}]".format, inner, st.integers(-3, 3)),
        st.builds("{}[{}]".format, inner, SLICES),
        st.builds("{}[*]".format, inner),
        st.builds("{}.*".format, inner),
        st.builds("{}[]".format, inner),
        pair.map(lambda p: f"{p[0]}[?{p[1]}]"),
        st.builds(
            "{} {} {}".format, inner, st.sampled_from(["==", "!=", "<", "<=", ">", ">="]), inner
        ),
        pair.map(lambda p: f"{p[0]} && {p[1]}"),
        pair.map(lambda p: f"{p[0]} || {p[1]}"),
        st.builds("!{}".format, inner),
        st.builds("({})".format, inner),
        pair.map(lambda p: f"[{p[0]}, {p[1]}]"),
        pair.map(lambda p: f'{{k: {p[0]}, "k 2": {p[1]}}}'),
        pair.map(lambda p: f"{p[0]} | {p[1]}"),
        pair.map(lambda p: f"{p[0]}.{p[1]}"),  # often a syntax error, on purpose
        st.builds(
            lambda name, args: f"{name}({', '.join(args)})",
            st.sampled_from(FUNCTION_NAMES),
            st.lists(inner | inner.map("&{}".format), max_size=3),
        ),
    )


ZOOM_PATHS = st.sampled_from(
    [
        "event",
        "event_ts",
        "payload.account_id",
        "payload.object.id",
        "payload.object.topic",
        "payload.object.participant",
        "payload.object.participant.email",
        "payload.object.participant.user_name",
        "payload.object.participants",
        "payload.object.start_time",
        "payload.object.duration",
        "payload.operator",
    ]
)
# Junk made of JMESPath's own characters: mostly syntax errors, some valid.
GARBAGE = st.text(alphabet="ab.[]*?&|!@`'(),{}:=<>- 01", max_size=12)
TREES = st.recursive(
    st.one_of(IDENTIFIERS, ZOOM_PATHS, LITERALS, st.sampled_from(["@", "*", "[*]"])),
    _extend,
    max_leaves=8,
)
EXPRESSIONS = st.one_of(TREES, TREES, TREES, GARBAGE)  # one draw in four is junk


def _zoom_examples() -> list[Any]:
    examples = []
    for path in sorted(CORPUS_DIR.glob("*.json")):
        events = json.loads(path.read_text()).get("events")
        if isinstance(events, dict):
            examples.extend(e["example"] for e in events.values() if "example" in e)
    return examples


ZOOM_EXAMPLES = _zoom_examples()

JSON_SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-3, 3),
    st.floats(-3, 3, allow_nan=False),
    st.sampled_from(["", "x", "joined", "a@vip.example.com", "A b", "2026-02-05T17:00:00Z"]),
)
JSON_DOCS = st.recursive(
    JSON_SCALARS,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.sampled_from(NAMES), inner, max_size=4)
    ),
    max_leaves=20,
)
DOCUMENTS = JSON_DOCS | (st.sampled_from(ZOOM_EXAMPLES) if ZOOM_EXAMPLES else JSON_DOCS)


def test_zoom_examples_are_present() -> None:
    assert len(ZOOM_EXAMPLES) > 100, f"Zoom examples not found under {CORPUS_DIR}"


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(text=EXPRESSIONS, doc=DOCUMENTS)
def test_compiled_agrees_with_interpreter(text: str, doc: Any) -> None:
    original = copy.deepcopy(doc)
    ref = outcome(reference(HYPOTHESIS_FUNCTIONS), text, doc)
    got = outcome(compiled(HYPOTHESIS_FUNCTIONS), text, doc)
    assert same_outcome(got, ref), (text, got, ref)
    assert doc == original
    if got[1] != "compile":  # small expressions never need the interpreter fallback
        assert hasattr(compile_expression(text, HYPOTHESIS_FUNCTIONS), "__jmespath_source__")


# A few hand-picked expressions on the quirks hypothesis might rarely hit.
QUIRKS = [
    ("a == `0`", {"a": False}),
    ("a == `1`", {"a": True}),
    ("a != `false`", {"a": 0}),
    ("a == b", {"a": [0], "b": [False]}),
    ("a < b", {"a": 1, "b": "x"}),
    ("a < b", {"a": "a", "b": "b"}),
    ("a < `true`", {"a": 1}),
    ("!a", {"a": 0}),
    ("!a", {"a": 0.0}),
    ("!a", {"a": []}),
    ("a || b", {"a": 0, "b": 1}),
    ("a && b", {"a": "", "b": 1}),
    ("a[?b]", {"a": [{"b": 0}, {"b": ""}, {"b": []}, {"b": {}}, {"b": False}]}),
    ("a[::0]", {"a": [1]}),
    ("a[::0]", {"a": "x"}),
    ("contains(a, `1`)", {"a": "abc"}),
    ("contains(a, `false`)", {"a": [0]}),
    ("merge(a, `1`)", {"a": {}}),
    ("length(a)", {"a": True}),
    ("abs(a)", {"a": True}),
    ("max(a)", {"a": [1, "a"]}),
    ("sort_by(a, &b)", {"a": [{"b": 1}, {"b": "x"}]}),
    ("min_by(a, &b)", {"a": [{"b": True}]}),
    ("map(&b, a)", {"a": [{"b": 1}, 2]}),
    ("a.length(@)", {}),
    ("a.[b]", {}),
    ("a.{b: b}", {"a": 0}),
    ("nope(a) && b", {"a": 1}),
    ("a && nope(a)", {"a": 0}),
    ("a && nope(a)", {"a": ""}),
    ("a && length(a, b)", {"a": 0}),
    ("length(a, b)", {"a": 0}),
    ("not_null()", {}),
    ("`1` > `0.5`", None),
    ("to_number('1e3')", None),
    ("*.b", {"x": {"b": 1}, "y": {"c": 2}}),
    # The `.get` chain for field runs, and its exact fallback.
    ("a.b.c", {"a": {"b": None}}),
    ("a.b.c", {"a": "x"}),
    ("a.b.c", {"a": {"b": [{"c": 1}]}}),
    ("a.b.c", {"a": {"b": {"c": False}}}),
    ("a.b.c", {"a": {}}),
    ("a.b.c", collections.OrderedDict(a=collections.OrderedDict(b={"c": 1}))),
    ("a.b", [1]),
]


@pytest.mark.parametrize(("text", "doc"), QUIRKS)
def test_quirks(text: str, doc: Any) -> None:
    ref = outcome(reference(), text, doc)
    got = outcome(compiled(), text, doc)
    assert same_outcome(got, ref), (text, got, ref)


def test_syntax_errors_are_jmespaths_own() -> None:
    for text in ("a.", "a[", "`{", "foo bar", "a[?]", "'"):
        with pytest.raises(exceptions.ParseError) as ours:
            compile_expression(text)
        with pytest.raises(exceptions.ParseError) as theirs:
            jmespath.compile(text)
        assert type(ours.value) is type(theirs.value)


def test_deeply_nested_projection_falls_back_correctly() -> None:
    # More than 20 nested loops exceed Python's static block limit.
    text = "a" + "[*].a" * 25
    doc: Any = 1
    for _ in range(26):
        doc = {"a": [doc]}
    assert same_outcome(outcome(compiled(), text, doc), outcome(reference(), text, doc))


# ---------------------------------------------------------------------------
# 3. The engine's functions through the compiled path.

ENGINE_CASES = [
    ("lower(s)", {"s": "AbC"}),
    ("lower(n)", {"n": 1}),
    ("lower(missing)", {}),
    ("upper(s)", {"s": "AbC"}),
    ("upper(`true`)", {}),
    ("trim(s)", {"s": "  x  "}),
    ("trim(l)", {"l": [" x"]}),
    ("split(s, ',')", {"s": "a,b,c"}),
    ("split(s, '')", {"s": "a,b"}),
    ("split(s, `1`)", {"s": "a,b"}),
    ("split(s)", {"s": "a,b"}),
    ("regex_match(s, '^a+$')", {"s": "aaa"}),
    ("regex_match(s, '(')", {"s": "aaa"}),
    ("regex_match(n, 'a')", {"n": 3}),
    ("glob_match(s, '*@vip.example.com')", {"s": "x@vip.example.com"}),
    ("glob_match(s, '*@VIP*')", {"s": "x@vip.example.com"}),
    ("glob_match(`null`, '*')", {}),
    ("to_epoch(s)", {"s": "2026-02-05T17:00:00Z"}),
    ("to_epoch(s)", {"s": "2026-02-05T17:00:00"}),
    ("to_epoch(s)", {"s": "yesterday"}),
    ("to_epoch(n)", {"n": 17}),
    ("email_domain(s)", {"s": "Someone@VIP.Example.com"}),
    ("email_domain(s)", {"s": "no-at-sign"}),
    ("email_domain(n)", {"n": 5}),
    ("email_domain(l)", {"l": ["a@b.c"]}),
    ("email_domain()", {}),
    (
        "p[?ends_with(email_domain(email) || '', 'vip.example.com')].email",
        {"p": [{"email": "a@vip.example.com"}, {"email": 1}]},
    ),
    ("now(`1`)", {}),
]


@pytest.mark.parametrize(("text", "doc"), ENGINE_CASES)
def test_engine_functions(text: str, doc: Any) -> None:
    ref = outcome(reference(ENGINE_FUNCTIONS), text, doc)
    got = outcome(compiled(ENGINE_FUNCTIONS), text, doc)
    assert same_outcome(got, ref), (text, got, ref)


def test_engine_function_errors_and_nulls() -> None:
    for name in ("lower", "upper", "trim", "to_epoch"):
        with pytest.raises(exceptions.JMESPathTypeError):
            compile_expression(f"{name}(`1`)", ENGINE_FUNCTIONS)(None)
    for name in ("split", "regex_match", "glob_match"):
        with pytest.raises(exceptions.JMESPathTypeError):
            compile_expression(f"{name}(`1`, 'a')", ENGINE_FUNCTIONS)(None)
    assert compile_expression("email_domain(@)", ENGINE_FUNCTIONS)(42) is None
    assert compile_expression("email_domain(@)", ENGINE_FUNCTIONS)("a@B.com") == "b.com"


def test_now_is_a_number_and_takes_no_arguments() -> None:
    assert isinstance(compile_expression("now()", ENGINE_FUNCTIONS)(None), float)
    with pytest.raises(exceptions.ArityError):
        compile_expression("now(`1`)", ENGINE_FUNCTIONS)(None)


def test_unknown_function_raises_when_evaluated() -> None:
    search = compile_expression("a && nope(a)")
    assert search({"a": False}) is False
    with pytest.raises(exceptions.UnknownFunctionError):
        search({"a": 1})


def test_custom_function_overrides_builtin() -> None:
    shout = JMESPathFunction("length", lambda s: s.upper() + "!", [{"types": ["string"]}])
    functions = {"length": shout}
    for text, doc in (("length(@)", "hi"), ("length(@)", [1])):
        ref = outcome(reference(functions), text, doc)
        assert same_outcome(outcome(compiled(functions), text, doc), ref), (text, ref)
    assert compile_expression("length(@)", functions)("hi") == "HI!"


def test_custom_function_signatures() -> None:
    pick = JMESPathFunction(
        "pick",
        lambda *xs: list(xs),
        [{"types": ["number", "null"]}, {"types": [], "variadic": True}],
    )
    nums = JMESPathFunction("total", lambda xs: sum(xs), [{"types": ["array-number"]}])
    functions = {"pick": pick, "total": nums}
    for text in (
        "pick(`1`, `2`)",
        "pick(`null`, 'x', `3`)",
        "pick(`true`, `1`)",
        "pick(`1`)",
        "total(`[1, 2]`)",
        'total(`[1, "a"]`)',
        "total(`[true]`)",
    ):
        ref = outcome(reference(functions), text, None)
        assert same_outcome(outcome(compiled(functions), text, None), ref), (text, ref)


@pytest.mark.parametrize("evaluator", ["compiled", "interpreter"])
def test_through_expression_compiler(evaluator: str) -> None:
    compiler = ExpressionCompiler(BUILTIN_FUNCTIONS, evaluator=evaluator)  # type: ignore[arg-type]
    search = compiler.compile(
        "ends_with(email_domain(payload.object.participant.email) || '', 'vip.example.com')"
    )
    doc = {"payload": {"object": {"participant": {"email": "x@VIP.example.com"}}}}
    assert search(doc) is True
    assert search({}) is False


def test_a_pure_function_is_called_once_per_string_argument() -> None:
    """Its result depends on the argument alone, so the compiled code may
    remember it; errors, non-string arguments, mutable results and impure
    functions are never remembered."""
    calls: collections.Counter[str] = collections.Counter()

    def counted(name: str, result: Callable[[Any], Any]) -> Callable[[Any], Any]:
        def func(value: Any) -> Any:
            calls[name] += 1
            return result(value)

        return func

    def strict(value: Any) -> Any:
        if value == "bad":
            raise exceptions.JMESPathError("bad value")
        return value

    functions = {
        "pure": JMESPathFunction("pure", counted("pure", str.upper), [{"types": []}], pure=True),
        "impure": JMESPathFunction("impure", counted("impure", str.upper), [{"types": []}]),
        "listy": JMESPathFunction("listy", counted("listy", list), [{"types": []}], pure=True),
        "strict": JMESPathFunction("strict", counted("strict", strict), [{"types": []}], pure=True),
    }
    search = compile_expression("[pure(a), impure(a), listy(a), strict(a)]", functions)
    first = search({"a": "ab"})
    second = search({"a": "ab"})
    assert first == second == ["AB", "AB", ["a", "b"], "ab"]
    assert first[2] is not second[2]  # a list is built afresh for each call
    assert calls == {"pure": 1, "impure": 2, "listy": 2, "strict": 1}
    search({"a": "cd"})
    assert calls["pure"] == 2
    numbers = compile_expression("strict(a)", functions)
    assert numbers({"a": 5}) == numbers({"a": 5}) == 5
    assert calls["strict"] == 4  # not a string: called each time
    for _ in range(2):
        with pytest.raises(exceptions.JMESPathError, match="bad value"):
            search({"a": "bad"})
    assert calls["strict"] == 6
