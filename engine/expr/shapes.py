"""Compiling an expression once per shape instead of once per rule.

A large rule file repeats a few condition shapes with different literal
values: `payload.object.topic == 'Board meeting'`, `... == 'All hands'`.
Parsing each text with jmespath and generating its code cost more than
everything else in loading a large file (10,000 rules: about 2.5 s). Two texts
that differ only inside their literals (`'...'` raw strings, `` `...` `` JSON
literals) get the same tokens from jmespath's lexer apart from the literals'
values, so jmespath's parser gives them the same tree apart from those values
(it copies a literal token's value into a `literal` node and never looks at
it), and the compiler generates the same code for them as long as the values
are of the same *class* (see `literal_class`: the only properties of a
literal the code generator looks at).

So the second time a shape is compiled, it becomes a template:

- a function that builds the tree from the literal values, made from the tree
  of the text with each literal replaced by a marker and checked against
  jmespath's own tree for the text;
- the generated code, with the constant names that hold each literal (the
  code runs again in a fresh namespace with the new values bound to them).

Every later text of that shape is scanned (`scan`: a regular expression that
finds the literals exactly as jmespath's lexer does, and reads their values
the same way), and its tree and search function come from the template:
no parsing, no code generation, no `compile()`.

Exactness: a text is only scanned when jmespath's lexer would read it the
same way; anything unusual (an unterminated or invalid literal, the
deprecated unquoted `` `foo` `` form) is left to jmespath. A template is
only made from a text that compiled, so every text it serves compiles too,
and errors always come from jmespath itself. A template is refused when the
generated code holds a literal other than through one of the constants
found for it, or a constant that is not a function, a class set or a slice;
see tests/test_expr_shapes.py for the checks against jmespath.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import jmespath
from jmespath.parser import ParsedResult

from engine.expr.codegen import Generated, is_result_cache, parsed_result, tree_of

Node = dict[str, Any]
Search = Callable[[Any], Any]
#: How the compiler builds one parsed expression: its search function and,
#: when it is generated code, the code (see `engine.expr.codegen.generate`).
Build = Callable[[str, ParsedResult], tuple[Search, Generated | None]]

# jmespath's lexer reads `'`, `` ` `` and `"` up to the next unescaped same
# character, a backslash taking the next character whatever it is; every
# other token is made of other characters. A delimiter left alone
# (unterminated) matches the last alternative.
_DELIMITED = re.compile(
    r"""'((?:[^'\\]|\\.)*)'|`((?:[^`\\]|\\.)*)`|"(?:[^"\\]|\\.)*"|['"`]""", re.DOTALL
)

#: How often a shape may fail to become a template before it is left alone.
_ATTEMPTS = 3


def literal_class(value: Any) -> Any:
    """What the code generator may look at in a literal: null, true and false
    themselves; otherwise the value's class, and for a number whether it is
    0 or 1 (JMESPath's equality treats those apart from booleans)."""
    if value is None or value is True or value is False:
        return value
    cls = value.__class__
    if cls is int or cls is float:
        return (cls, value == 0 or value == 1)
    return cls


@dataclass(frozen=True, slots=True)
class Scanned:
    """A text cut at its literals: `key` names the shape, `values` fill it."""

    key: tuple[Any, ...]
    values: list[Any]


def scan(text: str) -> Scanned | None:
    """The shape and literal values of `text`, read as jmespath's lexer reads
    them; None when it has no literals or one that jmespath reads otherwise
    (unterminated, invalid JSON, the deprecated unquoted form)."""
    if "'" not in text and "`" not in text:
        return None
    key: list[Any] = []
    values: list[Any] = []
    pos = 0
    for match in _DELIMITED.finditer(text):
        raw, js = match.groups()
        start = match.start()
        if raw is not None:
            value: Any = raw.replace("\\'", "'") if "\\" in raw else raw
        elif js is not None:
            try:
                if js.isdigit() and js.isascii() and (js[0] != "0" or len(js) == 1):
                    value = int(js)  # what json.loads gives, faster
                else:
                    value = json.loads(js.replace("\\`", "`"))
            except Exception:  # noqa: BLE001 - jmespath decides: a warning, an error
                return None
        elif match.end() - start == 1:
            return None  # an unterminated literal or quoted identifier
        else:
            continue  # a quoted identifier stays part of the shape
        key.append(text[pos:start])
        key.append((text[start], literal_class(value)))
        values.append(value)
        pos = match.end()
    if not values:
        return None
    key.append(text[pos:])
    return Scanned(tuple(key), values)


class _Refused(Exception):
    """This text cannot make a template (`permanent`: nor can its shape)."""

    def __init__(self, permanent: bool) -> None:
        self.permanent = permanent


@dataclass(frozen=True, slots=True)
class _Template:
    tree: Callable[[list[Any]], Node]
    generated: Generated | None
    #: (constant name, literal index) pairs to bind in `generated`.
    bindings: tuple[tuple[str, int], ...]


class ShapeCache:
    """Trees and search functions by shape, for one ExpressionCompiler."""

    def __init__(self, build: Build) -> None:
        self._build = build
        #: Shape -> its template; None once it proved unable to make one.
        self._templates: dict[tuple[Any, ...], _Template | None] = {}
        #: Shape -> times compiled without a template. The first time only
        #: counts: making a template costs a second parse and a `compile()`,
        #: which a shape used once (most shapes in a small file) never repays.
        self._misses: dict[tuple[Any, ...], int] = {}
        #: Texts served by a template (for tests and curiosity).
        self.hits = 0

    def compile(self, text: str, parse: Callable[[str], ParsedResult]) -> tuple[Node, Search]:
        """The tree and search function of `text`; `parse(text)` is the way
        without a template (jmespath's parser and the caller's checks, which
        raise for a broken expression)."""
        scanned = scan(text)
        template = self._templates.get(scanned.key) if scanned is not None else None
        if scanned is not None and template is not None:
            self.hits += 1
            tree = template.tree(scanned.values)
            if template.generated is None:
                return tree, self._build(text, parsed_result(text, tree))[0]
            constants = {name: scanned.values[i] for name, i in template.bindings}
            return tree, template.generated.instantiate(constants)
        parsed = parse(text)
        if scanned is None or scanned.key in self._templates:
            return tree_of(parsed), self._build(text, parsed)[0]
        misses = self._misses.get(scanned.key, 0) + 1
        self._misses[scanned.key] = misses
        if misses >= 2:
            try:
                return self._learn(text, scanned, parsed)
            except _Refused as refused:
                if refused.permanent or misses > _ATTEMPTS:
                    self._templates[scanned.key] = None
            except RecursionError:
                self._templates[scanned.key] = None
        return tree_of(parsed), self._build(text, parsed)[0]

    def _learn(self, text: str, scanned: Scanned, parsed: ParsedResult) -> tuple[Node, Search]:
        """Make the template of `scanned`'s shape from `text`; its tree and search."""
        builder = _tree_builder(scanned)
        tree = builder(scanned.values)
        if repr(tree) != repr(parsed.parsed):  # repr tells 1, 1.0 and true apart
            raise _Refused(permanent=True)
        search, generated = self._build(text, parsed_result(text, tree))
        bindings: tuple[tuple[str, int], ...] = ()
        if generated is not None:
            bindings = _bindings(generated, scanned.values)
        self._templates[scanned.key] = _Template(builder, generated, bindings)
        return tree, search


def _bindings(generated: Generated, values: list[Any]) -> tuple[tuple[str, int], ...]:
    """Which constant of `generated` holds which literal (found by identity)."""
    if generated.exprefs:
        raise _Refused(permanent=True)
    bindings: list[tuple[str, int]] = []
    bound: set[int] = set()
    for name, value in generated.constants().items():
        found = [i for i, literal in enumerate(values) if literal is value]
        if len(found) > 1:
            # Two literals share one object (a small int, a one-character
            # string): which is which cannot be told from this text.
            raise _Refused(permanent=False)
        if found:
            bindings.append((name, found[0]))
            bound.add(found[0])
        elif not _structural(value):
            raise _Refused(permanent=True)  # a constant made from a literal, unknown
    for i, value in enumerate(values):
        if i not in bound and not (value is None or value is True or value is False):
            raise _Refused(permanent=True)  # the source itself depends on the value
    return tuple(bindings)


def _structural(value: Any) -> bool:
    """Constants that depend only on the shape: functions, class sets, slices,
    the result caches of the pure functions called."""
    if callable(value) and not isinstance(value, type):
        return True
    if is_result_cache(value):
        return True
    if isinstance(value, frozenset):
        return all(isinstance(item, type) for item in value)
    if isinstance(value, slice):
        return all(p is None or p.__class__ is int for p in (value.start, value.stop, value.step))
    return False


def _marker(index: int) -> str:
    return f"\x00literal {index}\x00"


def _tree_builder(scanned: Scanned) -> Callable[[list[Any]], Node]:
    """A function building the shape's tree from literal values: jmespath's
    tree of the shape with markers for literals, as Python source."""
    parts: list[str] = []
    index = 0
    for piece in scanned.key:
        if isinstance(piece, str):
            parts.append(piece)
            continue
        marker = json.dumps(_marker(index))
        parts.append(f"'{_marker(index)}'" if piece[0] == "'" else f"`{marker}`")
        index += 1
    try:
        probe = jmespath.compile("".join(parts)).parsed
    except jmespath.exceptions.JMESPathError:
        raise _Refused(permanent=True) from None
    seen: list[int] = []

    def emit(node: Any) -> str:
        if isinstance(node, dict):
            items = []
            for k, v in node.items():
                if k == "value" and node.get("type") == "literal":
                    text = v if isinstance(v, str) else None
                    i = next((i for i in range(index) if text == _marker(i)), None)
                    if i is None:
                        raise _Refused(permanent=True)
                    seen.append(i)
                    items.append(f"{k!r}: L[{i}]")
                else:
                    items.append(f"{k!r}: {emit(v)}")
            return "{" + ", ".join(items) + "}"
        if isinstance(node, list):
            return "[" + ", ".join(emit(v) for v in node) + "]"
        if node is None or node.__class__ in (str, int, bool):
            return repr(node)
        raise _Refused(permanent=True)

    try:
        source = emit(probe)
        if sorted(seen) != list(range(index)):
            raise _Refused(permanent=True)
        return eval(compile(f"lambda L: {source}", "<jmespath shape>", "eval"))  # type: ignore[no-any-return]
    except (SyntaxError, RecursionError, MemoryError):
        raise _Refused(permanent=True) from None
