"""`{{ expr }}` templates in action parameters.

Every string in an action's parameter table may hold `{{ expr }}` parts,
where `expr` is a JMESPath expression over the template root (the event
plus the `zoomrules` metadata key). A string that is exactly one template
yields the raw value (number, object, list, null); otherwise each value is
interpolated as text. Tables and lists are rendered recursively. Everything
is compiled once, when the rules are loaded.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from typing import Any

import orjson

from engine.errors import ExpressionError, TemplateError
from engine.expr.compiler import ExpressionCompiler, Search
from engine.logs import shorten

_PART = re.compile(r"\{\{(.*?)\}\}", re.DOTALL)

Quote = Callable[[str], str]


def to_text(value: Any) -> str:
    """How a value reads when interpolated into text.

    Strings as they are, null as empty, booleans as JSON's true/false,
    numbers as Python prints them, objects and lists as compact JSON.
    """
    if isinstance(value, str):
        return value
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    return orjson.dumps(value).decode()


class Template:
    """One compiled template string."""

    __slots__ = ("source", "expressions", "_parts", "_whole")

    def __init__(self, source: str, compiler: ExpressionCompiler) -> None:
        self.source = source
        #: The text of each `{{ expr }}`, in order.
        self.expressions: tuple[str, ...] = ()
        parts: list[str | Search] = []
        pos = 0
        for match in _PART.finditer(source):
            if match.start() > pos:
                parts.append(source[pos : match.start()])
            expr = match.group(1).strip()
            if not expr:
                raise TemplateError(f"empty template '{{{{}}}}' in {shorten(source, 80)!r}")
            try:
                parts.append(compiler.compile(expr))
            except ExpressionError as exc:
                raise TemplateError(f"in template {{{{ {shorten(expr, 80)} }}}}: {exc}") from None
            self.expressions += (expr,)
            pos = match.end()
        if pos < len(source):
            parts.append(source[pos:])
        if "{{" in "".join(p for p in parts if isinstance(p, str)):
            raise TemplateError(f"unclosed '{{{{' in {shorten(source, 80)!r}")
        self._parts = tuple(parts)
        # Exactly one template and nothing around it: the raw value.
        self._whole = parts[0] if len(parts) == 1 and not isinstance(parts[0], str) else None

    def render(self, root: Any, quote: Quote | None = None) -> Any:
        """Evaluate against `root`.

        `quote` is applied to every interpolated value (e.g. `shlex.quote`);
        with a quote function the result is always text.
        """
        if self._whole is not None and quote is None:
            return self._whole(root)
        out = []
        for part in self._parts:
            if isinstance(part, str):
                out.append(part)
            else:
                text = to_text(part(root))
                out.append(quote(text) if quote else text)
        return "".join(out)

    def __repr__(self) -> str:
        return f"Template({self.source!r})"


def has_template(text: str) -> bool:
    return "{{" in text


class Constant:
    """A parameter value with no template in it: rendered as itself."""

    __slots__ = ("value",)

    def __init__(self, value: Any) -> None:
        self.value = value

    def render(self, root: Any) -> Any:
        return self.value


class TableRenderer:
    __slots__ = ("items",)

    def __init__(self, items: dict[str, Any]) -> None:
        self.items = items

    def render(self, root: Any) -> dict[str, Any]:
        return {key: node.render(root) for key, node in self.items.items()}


class ListRenderer:
    __slots__ = ("items",)

    def __init__(self, items: list[Any]) -> None:
        self.items = items

    def render(self, root: Any) -> list[Any]:
        return [node.render(root) for node in self.items]


Renderer = Template | Constant | TableRenderer | ListRenderer


def template_expressions(value: Any) -> list[str]:
    """The expression texts of every Template in `value`: a renderer, or a
    raw parameter value (`Template`s in lists and tables)."""
    if isinstance(value, Template):
        return list(value.expressions)
    items: Iterable[Any] = ()
    if isinstance(value, TableRenderer):
        items = value.items.values()
    elif isinstance(value, ListRenderer):
        items = value.items
    elif isinstance(value, dict):
        items = value.values()
    elif isinstance(value, list):
        items = value
    return [text for item in items for text in template_expressions(item)]


def compile_value(value: Any, compiler: ExpressionCompiler) -> Renderer:
    """Compile a parameter value (string, table, list or scalar) into a renderer."""
    if isinstance(value, str):
        return Template(value, compiler) if has_template(value) else Constant(value)
    if isinstance(value, dict):
        items = {k: compile_value(v, compiler) for k, v in value.items()}
        if all(isinstance(n, Constant) for n in items.values()):
            return Constant(value)
        return TableRenderer(items)
    if isinstance(value, list):
        nodes = [compile_value(v, compiler) for v in value]
        if all(isinstance(n, Constant) for n in nodes):
            return Constant(value)
        return ListRenderer(nodes)
    return Constant(value)
