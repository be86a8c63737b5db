"""Compiling JMESPath expressions: the one interface the matcher and templates use.

`ExpressionCompiler(functions, evaluator)` turns expression text into a plain
callable `search(document) -> value`. Two evaluators sit behind it:

- "interpreter": the reference `jmespath` package's tree interpreter;
- "compiled": `engine.expr.codegen`, which turns jmespath's AST into
  Python closures with identical semantics (the default when available).

Errors: a syntax error or unknown function raises `ExpressionError` at compile
time; run-time failures raise `jmespath.exceptions.JMESPathError` subclasses,
as jmespath does.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Literal

import jmespath
import jmespath.functions
from jmespath import exceptions
from jmespath.parser import ParsedResult

from engine.errors import ExpressionError
from engine.expr.codegen import Generated, functions_instance, generate, parsed_result, tree_of
from engine.expr.functions import BUILTIN_FUNCTIONS, regex_problem
from engine.expr.guards import find_guard, is_pure
from engine.expr.shapes import ShapeCache
from engine.hookspecs import JMESPathFunction
from engine.nesting import MAX_EXPRESSION_NESTING, expression_too_deep
from engine.problems import did_you_mean

Search = Callable[[Any], Any]
Evaluator = Literal["compiled", "interpreter"]
EVALUATORS: tuple[str, ...] = ("compiled", "interpreter")


def _known_function_names(tree: dict[str, Any]) -> Iterable[str]:
    """Every function name called anywhere in a parsed AST."""
    for node in _calls(tree):
        yield node["value"]


def _calls(tree: dict[str, Any]) -> Iterable[dict[str, Any]]:
    """Every function call node of a parsed AST."""
    stack = [tree]
    while stack:
        node = stack.pop()
        if node.get("type") == "function_expression":
            yield node
        for child in node.get("children", ()):
            if isinstance(child, dict):
                stack.append(child)


_BUILTIN_REGEX_MATCH = next(fn for fn in BUILTIN_FUNCTIONS if fn.name == "regex_match")


@dataclass(frozen=True, slots=True)
class Guard:
    """A condition's leading equality test, ready to evaluate (see engine.expr.guards)."""

    key: str
    search: Search
    values: frozenset[Any]
    exact: bool


class ExpressionCompiler:
    """Compiles expression text once; caches by text.

    Texts that differ only in their literal values share one parse and one
    generated code (`engine.expr.shapes`).
    """

    def __init__(
        self,
        functions: Iterable[JMESPathFunction] = (),
        evaluator: Evaluator = "compiled",
    ) -> None:
        if evaluator not in EVALUATORS:
            raise ValueError(f"unknown evaluator {evaluator!r}; choose one of {EVALUATORS}")
        self.functions: dict[str, JMESPathFunction] = {fn.name: fn for fn in functions}
        self.evaluator: Evaluator = evaluator
        self._options = jmespath.Options(custom_functions=functions_instance(self.functions))
        self._builtin_names = set(jmespath.functions.Functions.FUNCTION_TABLE)
        self._cache: dict[str, Search] = {}
        #: Parsed ASTs by text, for `guard`.
        self._trees: dict[str, dict[str, Any]] = {}
        self._guard_searches: dict[str, Search] = {}
        #: Expressions of one shape (differing only in literals) share a parse.
        self._shapes = ShapeCache(self._generate)

    def compile(self, text: str) -> Search:
        """Compile `text`, raising ExpressionError with a readable message."""
        cached = self._cache.get(text)
        if cached is not None:
            return cached
        try:
            tree, search = self._shapes.compile(text, self._parse)
        except RecursionError:
            # An expression shallow by the text's measure can still make a
            # tree too deep to walk (a chain of thousands of fields).
            raise ExpressionError("too deeply nested to compile") from None
        self._cache[text] = search
        self._trees[text] = tree
        return search

    def _parse(self, text: str) -> ParsedResult:
        """jmespath's parse of `text`, its functions checked; ExpressionError if broken."""
        if expression_too_deep(text):
            raise ExpressionError(
                f"nested more than {MAX_EXPRESSION_NESTING} levels deep "
                "(parentheses, brackets, braces, ! and & prefixes)"
            )
        try:
            parsed = jmespath.compile(text)
        except exceptions.ParseError as exc:
            raise ExpressionError(_describe_parse_error(exc)) from None
        except exceptions.JMESPathError as exc:  # lexer errors and friends
            raise ExpressionError(str(exc)) from None
        unknown = sorted(
            set(_known_function_names(tree_of(parsed))) - self._builtin_names - set(self.functions)
        )
        if unknown:
            known = self._builtin_names | set(self.functions)
            named = ", ".join(f"{n}(){did_you_mean(n, known)}" for n in unknown)
            raise ExpressionError(f"unknown function: {named}")
        return parsed

    def tree(self, text: str) -> dict[str, Any] | None:
        """The parsed AST of `text`, if it has been compiled."""
        return self._trees.get(text)

    def problems(self, text: str) -> list[str]:
        """What is wrong with compiled `text` that JMESPath does not see and
        that would make it fail at every evaluation: each `regex_match(x,
        '<literal>')` whose pattern RE2 cannot compile (the engine's own
        `regex_match` only: a plugin may replace it)."""
        if "regex_match" not in text or self.functions.get("regex_match") != _BUILTIN_REGEX_MATCH:
            return []
        tree = self._trees.get(text)
        found = []
        for node in _calls(tree) if tree is not None else ():
            if node["value"] != "regex_match" or len(node["children"]) != 2:
                continue
            pattern = node["children"][1]
            if pattern.get("type") == "literal" and isinstance(pattern.get("value"), str):
                problem = regex_problem(pattern["value"])
                if problem is not None:
                    found.append(problem)
        return found

    def guard(self, text: str) -> Guard | None:
        """The equality test `text` starts with, if the matcher can share it.

        `text` must have been compiled already.
        """
        tree = self._trees.get(text)
        if tree is None:
            return None
        shape = find_guard(tree, self._is_pure)
        if shape is None:
            return None
        search = self._guard_searches.get(shape.key)
        if search is None:
            parsed = parsed_result(f"<guard of {text}>", shape.node)
            search = self._guard_searches[shape.key] = self._build(parsed.expression, parsed)
        return Guard(shape.key, search, shape.values, shape.exact)

    def _is_pure(self, name: str) -> bool:
        return is_pure(name, self.functions)

    def _build(self, text: str, parsed: Any) -> Search:
        return self._generate(text, parsed)[0]

    def _generate(self, text: str, parsed: Any) -> tuple[Search, Generated | None]:
        """The search function for `parsed`, and its generated code if any."""
        if self.evaluator == "compiled":
            try:
                return generate(parsed, text, self.functions)
            except exceptions.JMESPathError as exc:
                raise ExpressionError(str(exc)) from None
        options = self._options

        def search(document: Any) -> Any:
            return parsed.search(document, options)

        return search, None


def _describe_parse_error(exc: exceptions.ParseError) -> str:
    msg = getattr(exc, "msg", None) or str(exc).splitlines()[0]
    pos = getattr(exc, "lex_position", None)
    token = getattr(exc, "token_value", None)
    where = f" at column {pos + 1}" if isinstance(pos, int) and pos >= 0 else ""
    near = f" near {token!r}" if token not in (None, "") else ""
    return f"invalid JMESPath{where}{near}: {msg}"


def is_truthy(value: Any) -> bool:
    """JMESPath truthiness: false, null, empty string/list/object are false; 0 is true."""
    if value is None or value is False:
        return False
    if isinstance(value, (str, list, dict)):
        return len(value) > 0
    return True
