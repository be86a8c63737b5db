"""Why a condition is false: the value of each part, for `zoomrules test`.

A rule skipped because its `when` is false (or failed) gets a trace: the
condition's `&&` / `||` parts, each with its value, and for each part that
is a comparison or a function call, the values of its operands, so that
`a.b == 'x' && length(c) > `2`` on an event where `a.b` is "y" shows

    a.b == 'x'  ->  false
      a.b = "y"
    length(c) > `2`  ->  not evaluated (&& stops at a false part)

Sub-expressions are evaluated on the parsed tree with jmespath's own
interpreter and the engine's functions (the reference evaluator the compiled
one is checked against), and shown as text by `unparse`: jmespath's tree
keeps no positions, so the text is rebuilt from the tree. The rebuilt text
parses back to the same tree (tests/test_rule_cases.py checks this over the
JMESPath compliance suite); it is the expression's canonical form, not
necessarily the spelling of the rule file (`"a"` may come back as `a`).

Nothing here has side effects beyond what evaluating the condition has.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

import jmespath
import orjson

from engine.expr.codegen import functions_instance, parsed_result
from engine.expr.compiler import is_truthy
from engine.hookspecs import JMESPathFunction

__all__ = ["Tracer", "trace_condition", "unparse"]

Node = Mapping[str, Any]

_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_COMPARATORS = {"eq": "==", "ne": "!=", "lt": "<", "lte": "<=", "gt": ">", "gte": ">="}
_BINARY = {"pipe": ("|", 1), "or_expression": ("||", 2), "and_expression": ("&&", 3)}
#: How loosely a node's text binds: it needs parentheses as an operand of
#: anything binding tighter. Nodes not listed are atoms (fields, literals,
#: function calls, multi-selects, subexpressions, index expressions).
_LOOSENESS = {
    "expref": 0,
    "pipe": 1,
    "or_expression": 2,
    "and_expression": 3,
    "comparator": 5,
    "projection": 8,
    "value_projection": 8,
    "filter_projection": 8,
    "flatten": 8,
    "not_expression": 45,
}
_ATOM = 100
#: How many levels of operands a trace shows: `f(g(a.b)) == 'x'` shows
#: `f(g(a.b))`, `g(a.b)` and `a.b`.
_OPERAND_DEPTH = 3
#: What `!` applies to without parentheses (`!a.b` is `(!a).b`).
_NOT_OPERANDS = frozenset(
    {"field", "literal", "current", "function_expression", "multi_select_list",
     "multi_select_dict", "not_expression"}
)  # fmt: skip


# --------------------------------------------------------------------------
# tree -> text


def unparse(node: Node) -> str:
    """JMESPath text for a parsed tree (jmespath's AST as plain dicts)."""
    return _text(node)


def _looseness(node: Node) -> int:
    if node.get("type") == "index_expression" and _is_slice_index(node):
        return _LOOSENESS["projection"]
    return _LOOSENESS.get(str(node.get("type")), _ATOM)


def _is_slice_index(node: Node) -> bool:
    children = node.get("children") or []
    return bool(children) and children[-1].get("type") == "slice"


def _wrap(node: Node, tighter_than: int) -> str:
    """`node`'s text, parenthesised unless it binds tighter than `tighter_than`."""
    text = _text(node)
    return text if _looseness(node) > tighter_than else f"({text})"


def _postfix_base(node: Node) -> str:
    """Text that `[...]`, `.x` or `[*]` may follow (`""` for the implicit current node)."""
    if node.get("type") == "identity":
        return ""
    return _wrap(node, _ATOM - 1)


def _projected(node: Node) -> str:
    """The right side of a projection: nothing, `.x`, `[...]`."""
    if node.get("type") == "identity":
        return ""
    text = _text(node)
    return text if text.startswith("[") else "." + text


def _field(name: Any) -> str:
    name = str(name)
    return name if _IDENTIFIER.fullmatch(name) else json.dumps(name, ensure_ascii=False)


def _literal(value: Any) -> str:
    if isinstance(value, str) and "\\" not in value:
        return "'" + value.replace("'", "\\'") + "'"
    text = json.dumps(value, ensure_ascii=False, separators=(", ", ": "))
    return "`" + text.replace("`", "\\`") + "`"


def _text(node: Node) -> str:
    kind = node.get("type")
    children: list[Any] = list(node.get("children") or [])
    if kind == "field":
        return _field(node.get("value"))
    if kind == "literal":
        return _literal(node.get("value"))
    if kind in ("current", "identity"):
        return "@"
    if kind == "subexpression":
        # `a.b[*].c` is a.(b[*].c): a projection after a dot takes in what
        # follows, so one that does not is closed with parentheses.
        first, *rest = children
        text = _wrap(first, _ATOM - 1)
        for before, child in zip(children, rest, strict=False):
            if before is not first and _looseness(before) < _ATOM:
                text = f"({text})"
            text += "." + _text(child)
        return text
    if kind == "index_expression":
        base, *indices = children
        return _postfix_base(base) + "".join(_bracket(index) for index in indices)
    if kind == "index":
        return f"[{node.get('value')}]"
    if kind == "slice":
        return _bracket(node)
    if kind == "comparator":
        op = _COMPARATORS.get(str(node.get("value")), str(node.get("value")))
        return f"{_wrap(children[0], 4)} {op} {_wrap(children[1], 5)}"
    if kind in _BINARY:
        op, power = _BINARY[str(kind)]
        return f"{_wrap(children[0], power - 1)} {op} {_wrap(children[1], power)}"
    if kind == "not_expression":
        operand = children[0]
        text = _text(operand)
        return "!" + (text if operand.get("type") in _NOT_OPERANDS else f"({text})")
    if kind == "function_expression":
        return f"{node.get('value')}({', '.join(_text(arg) for arg in children)})"
    if kind == "expref":
        return "&" + _text(children[0])
    if kind == "multi_select_list":
        return "[" + ", ".join(_text(child) for child in children) + "]"
    if kind == "multi_select_dict":
        pairs = (f"{_field(pair.get('value'))}: {_text(pair['children'][0])}" for pair in children)
        return "{" + ", ".join(pairs) + "}"
    if kind == "key_val_pair":
        return f"{_field(node.get('value'))}: {_text(children[0])}"
    if kind == "projection":
        left, right = children
        if left.get("type") == "flatten":
            head = _postfix_base(left["children"][0]) + "[]"
        elif left.get("type") == "index_expression" and _is_slice_index(left):
            head = _text(left)
        else:
            head = _postfix_base(left) + "[*]"
        return head + _projected(right)
    if kind == "value_projection":
        left, right = children
        head = "*" if left.get("type") == "identity" else _postfix_base(left) + ".*"
        return head + _projected(right)
    if kind == "filter_projection":
        left, right, condition = children
        return f"{_postfix_base(left)}[?{_text(condition)}]{_projected(right)}"
    if kind == "flatten":
        return _postfix_base(children[0]) + "[]"
    # A node type this module does not know (a newer jmespath): still readable.
    inner = ", ".join(_text(c) if isinstance(c, Mapping) else repr(c) for c in children)
    return f"{kind}({inner})"


def _bracket(node: Node) -> str:
    if node.get("type") == "index":
        return f"[{node.get('value')}]"
    if node.get("type") == "slice":
        start, stop, step = (list(node.get("children") or []) + [None, None, None])[:3]
        text = f"{'' if start is None else start}:{'' if stop is None else stop}"
        if step is not None:
            text += f":{step}"
        return f"[{text}]"
    return f"[{_text(node)}]"


# --------------------------------------------------------------------------
# the trace


def _is_constant(node: Node) -> bool:
    """A literal, or a list or object built of literals only: its text is its value."""
    kind = node.get("type")
    if kind == "literal":
        return True
    if kind == "multi_select_list":
        return all(_is_constant(child) for child in node.get("children") or [])
    if kind == "multi_select_dict":
        return all(_is_constant(pair["children"][0]) for pair in node.get("children") or [])
    return False


def _operands(node: Node) -> list[Node]:
    """The sub-expressions whose values explain `node`'s value."""
    kind = node.get("type")
    children = list(node.get("children") or [])
    if kind == "not_expression":
        inner = children[0]
        while inner.get("type") == "not_expression":
            inner = inner["children"][0]
        if inner.get("type") in ("comparator", "function_expression"):
            return _operands(inner)
        return [] if _is_constant(inner) else [inner]
    if kind not in ("comparator", "function_expression"):
        return []
    return [
        child
        for child in children
        if not _is_constant(child) and child.get("type") not in ("expref", "current", "identity")
    ]


def _chain(node: Node, kind: str) -> list[Node]:
    """`a && b && c` (a tree of one operator, leaning left) as [a, b, c]."""
    parts: list[Node] = []
    pending = [node]
    while pending:
        current = pending.pop()
        if current.get("type") == kind:
            left, right = current["children"]
            pending += [right, left]
        else:
            parts.append(current)
    return parts


def _plain(value: Any) -> Any:
    """`value` if it is JSON-able (what a JMESPath value is), else its repr."""
    try:
        orjson.dumps(value)
    except TypeError:
        return repr(value)
    return value


class Tracer:
    """Evaluates the parts of conditions with jmespath's interpreter and `functions`."""

    def __init__(self, functions: Mapping[str, JMESPathFunction]) -> None:
        self.options = jmespath.Options(custom_functions=functions_instance(functions))

    def trace(self, tree: Node, root: Any) -> dict[str, Any]:
        """The trace of a condition's tree on `root` (see `trace_condition`)."""
        return self._node(tree, root)

    def _search(self, node: Node, root: Any) -> tuple[Any, str | None]:
        try:
            return parsed_result("<trace>", dict(node)).search(root, self.options), None
        except Exception as exc:  # noqa: BLE001 - shown to the user as the part's error
            return None, f"{type(exc).__name__}: {exc}"

    def _node(self, node: Node, root: Any) -> dict[str, Any]:
        kind = node.get("type")
        if kind in ("and_expression", "or_expression"):
            return self._chain(node, str(kind), root)
        return {"expr": unparse(node), "evaluated": True, **self._value(node, root, 0)}

    def _value(self, node: Node, root: Any, depth: int) -> dict[str, Any]:
        """`value` or `error` of `node`, and `operands` (each `expr`, `value` or
        `error`, and its own `operands`, a few levels down)."""
        value, error = self._search(node, root)
        out: dict[str, Any] = {"error": error} if error is not None else {"value": _plain(value)}
        if depth < _OPERAND_DEPTH:
            operands = [
                {"expr": unparse(operand), **self._value(operand, root, depth + 1)}
                for operand in _operands(node)
            ]
            if operands:
                out["operands"] = operands
        return out

    def _chain(self, node: Node, kind: str, root: Any) -> dict[str, Any]:
        """`&&` / `||` parts in order, as jmespath evaluates them: the first
        false part of `&&` (true part of `||`) decides, the rest are not evaluated."""
        stop_when = kind == "or_expression"  # || stops at a true part, && at a false one
        parts: list[dict[str, Any]] = []
        result: dict[str, Any] = {}
        decided = False
        for part in _chain(node, kind):
            if decided:
                parts.append({"expr": unparse(part), "evaluated": False})
                continue
            traced = self._node(part, root)
            parts.append(traced)
            if "error" in traced:
                result, decided = {"error": traced["error"]}, True
            elif is_truthy(traced["value"]) == stop_when:
                result, decided = {"value": traced["value"]}, True
            else:
                result = {"value": traced["value"]}
        return {
            "expr": unparse(node),
            "evaluated": True,
            **result,
            "op": "&&" if kind == "and_expression" else "||",
            "parts": parts,
        }


def trace_condition(
    tree: Node, root: Any, functions: Mapping[str, JMESPathFunction]
) -> dict[str, Any]:
    """A condition's trace: a node `{"expr", "evaluated", "value" | "error",
    "operands"?, "op"?, "parts"?}` (docs/rules.md, "Testing rules")."""
    return Tracer(functions).trace(tree, root)


# --------------------------------------------------------------------------
# as text

#: Values longer than this are cut in text output (`--json` has them whole).
SHOWN_VALUE_CHARS = 120


def show_value(value: Any, limit: int = SHOWN_VALUE_CHARS) -> str:
    """Compact JSON of `value`, cut to `limit` characters."""
    try:
        text = orjson.dumps(value).decode()
    except TypeError:
        text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def trace_lines(node: Mapping[str, Any], indent: str = "") -> list[str]:
    """A trace as indented lines: each part `expr  ->  value`, its operands
    `expr = value` under it; the root of an `&&` / `||` chain is left out
    (its parts say it)."""
    if "parts" in node:
        return _part_lines(node, indent)
    return _leaf_lines(node, indent)


def _outcome(node: Mapping[str, Any], op: str | None) -> str:
    if not node.get("evaluated", True):
        why = "&& stops at a false part" if op == "&&" else "|| stops at a true part"
        return f"not evaluated ({why})"
    if "error" in node:
        return f"error: {node['error']}"
    return show_value(node.get("value"))


def _part_lines(chain: Mapping[str, Any], indent: str) -> list[str]:
    lines: list[str] = []
    op = chain.get("op")
    for part in chain["parts"]:
        if "parts" in part and part.get("evaluated", True):
            lines.append(f"{indent}({part['expr']})  ->  {_outcome(part, op)}")
            lines.extend(_part_lines(part, indent + "  "))
        else:
            lines.extend(_leaf_lines(part, indent, op))
    return lines


def _leaf_lines(node: Mapping[str, Any], indent: str, op: str | None = None) -> list[str]:
    lines = [f"{indent}{node['expr']}  ->  {_outcome(node, op)}"]
    lines.extend(_operand_lines(node, indent + "  "))
    return lines


def _operand_lines(node: Mapping[str, Any], indent: str) -> list[str]:
    lines = []
    for operand in node.get("operands", ()):
        shown = f"error: {operand['error']}" if "error" in operand else show_value(operand["value"])
        lines.append(f"{indent}{operand['expr']} = {shown}")
        lines.extend(_operand_lines(operand, indent + "  "))
    return lines
