"""Equality guards: the literal test a condition starts with, shared across rules.

Most conditions in a large rule file begin with an equality on one field:
`payload.object.topic == 'Board meeting'`, `payload.object.id == '123' ||
payload.object.id == `123``, `email_domain(payload.object.participant.email)
== 'example.com' && ...`. When twenty rules on one event name test the same
field against different literals, the matcher can evaluate that field once
per event and skip, by one set lookup each, every rule whose literal is not
the value: that is what `find_guard` recognises.

Exactness: a guard is only found where skipping provably gives the result
the full evaluation would.

- The test is the *leftmost* operand of the condition's `&&` chain (or the
  whole condition), so JMESPath evaluates it first and, when it is false,
  evaluates nothing else: skipping the rule hides no later error.
- The literals are strings or numbers other than 0 and 1, for which
  JMESPath's equality is Python's `==` and so agrees with a set lookup
  (0 and 1 are JMESPath's special cases against booleans). A value that
  cannot be hashed (a list or object) equals none of them.
- The tested expression calls only JMESPath's built-in functions and
  functions declared `pure`, so evaluating it once per event instead of once
  per rule changes nothing. If it raises, the matcher evaluates each rule as
  usual, so the error is reported exactly as before.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import jmespath.functions

from engine.hookspecs import JMESPathFunction

Node = dict[str, Any]


@dataclass(frozen=True, slots=True)
class GuardShape:
    """The equality test found at the start of a condition."""

    #: Canonical text of the tested expression: rules whose keys are equal
    #: test the same thing and share one evaluation per event.
    key: str
    #: The tested expression's AST.
    node: Node
    #: The condition can only be true when the tested value is one of these.
    values: frozenset[Any]
    #: True when the condition *is* the test (true exactly for these values),
    #: so a hit fires the rule without evaluating it.
    exact: bool


_BUILTINS = frozenset(jmespath.functions.Functions.FUNCTION_TABLE)


def is_pure(name: str, functions: Mapping[str, JMESPathFunction]) -> bool:
    """Whether calls of the function `name` may be shared: a custom function
    (which overrides a built-in of its name) when declared `pure`; a
    JMESPath built-in always."""
    custom = functions.get(name)
    return custom.pure if custom is not None else name in _BUILTINS


def find_guard(tree: Node, is_pure: Callable[[str], bool]) -> GuardShape | None:
    """The equality guard of a condition's AST, or None if it has none.

    `is_pure(name)` tells whether calling the function `name` may be shared.
    """
    leftmost, exact = tree, True
    while leftmost["type"] == "and_expression":
        leftmost, exact = leftmost["children"][0], False
    found = _alternatives(leftmost)
    if found is None:
        return None
    node, values = found
    if not shareable(node, is_pure):
        return None
    return GuardShape(_canonical(node), node, frozenset(values), exact)


def _alternatives(node: Node) -> tuple[Node, list[Any]] | None:
    """`x == a` or `x == a || x == b || ...` (one x): x and the literals."""
    if node["type"] == "or_expression":
        left = _alternatives(node["children"][0])
        right = _alternatives(node["children"][1])
        if left is None or right is None or _canonical(left[0]) != _canonical(right[0]):
            return None
        return left[0], left[1] + right[1]
    if node["type"] != "comparator" or node["value"] != "eq":
        return None
    a, b = node["children"]
    if b["type"] != "literal":
        a, b = b, a
    if b["type"] != "literal" or a["type"] == "literal" or not set_comparable(b["value"]):
        return None
    return a, [b["value"]]


def set_comparable(value: Any) -> bool:
    """Literals for which JMESPath equality is exactly hash-set membership."""
    if value.__class__ is str:
        return True
    return value.__class__ in (int, float) and value not in (0, 1)


def shareable(node: Node, is_pure: Callable[[str], bool]) -> bool:
    stack = [node]
    while stack:
        current = stack.pop()
        if current["type"] == "function_expression" and not is_pure(current["value"]):
            return False
        stack.extend(c for c in current.get("children", ()) if isinstance(c, dict))
    return True


def _canonical(node: Node) -> str:
    # jmespath builds every node with the same keys in the same order, so
    # repr is a faithful canonical form (literal values included).
    return repr(node)
