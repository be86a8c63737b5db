"""How deeply rule-file text nests, found before a recursive parser meets it.

The TOML and JMESPath parsers recurse once per level of nesting: a value or
an expression nested a few hundred levels deep ends in `RecursionError`
(or worse, in a compiled parser, deep in C), with no line to point at. A
linear scan of the text finds the first place that goes deeper than any
real rule file needs, so `check` can say where, and a reload can refuse the
file without ever calling the parser on it.
"""

from __future__ import annotations

__all__ = ["MAX_EXPRESSION_NESTING", "MAX_TOML_NESTING", "expression_too_deep", "toml_too_deep"]

#: Arrays and inline tables inside each other (a table header counts one).
MAX_TOML_NESTING = 32
#: Parentheses, brackets, braces and `!`/`&` prefixes inside each other.
MAX_EXPRESSION_NESTING = 64


def toml_too_deep(text: str, limit: int = MAX_TOML_NESTING) -> int | None:
    """The line where arrays and inline tables first nest deeper than `limit`, or None.

    Strings (all four kinds) and comments are skipped, so brackets inside
    them do not count.
    """
    depth = 0
    line = 1
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if c == "\n":
            line += 1
        elif c == "#":
            end = text.find("\n", i)
            i = n if end < 0 else end
            continue
        elif c in "\"'":
            i, line = _skip_toml_string(text, i, line)
            continue
        elif c in "[{":
            depth += 1
            if depth > limit:
                return line
        elif c in "]}":
            depth = max(0, depth - 1)
        i += 1
    return None


def _skip_toml_string(text: str, start: int, line: int) -> tuple[int, int]:
    """The index just past the string starting at `start`, and the line there."""
    quote = text[start]
    multi = text.startswith(quote * 3, start)
    delimiter = quote * 3 if multi else quote
    i = start + len(delimiter)
    n = len(text)
    while i < n:
        c = text[i]
        if c == "\n":
            line += 1
            if not multi:  # an unclosed one-line string: the parser reports it
                return i, line - 1
        elif c == "\\" and quote == '"':
            i += 2
            continue
        elif text.startswith(delimiter, i):
            i += len(delimiter)
            # A multi-line string may end with up to two more quotes of its kind.
            while multi and i < n and text[i] == quote:
                i += 1
            return i, line
        i += 1
    return n, line


def expression_too_deep(text: str, limit: int = MAX_EXPRESSION_NESTING) -> bool:
    """Whether a JMESPath expression nests deeper than `limit`.

    Quoted identifiers, raw strings and JSON literals are skipped; a run of
    `!` or `&` prefixes counts one level each (the parser recurses per
    prefix).
    """
    depth = 0
    prefixes = 0
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if c in "\"'`":
            i = _skip_expression_literal(text, i)
            prefixes = 0
            continue
        if c in "([{":
            depth += 1
        elif c in ")]}":
            depth = max(0, depth - 1)
        if c in "!&":
            prefixes += 1
        elif not c.isspace():
            prefixes = 0
        if depth + prefixes > limit:
            return True
        i += 1
    return False


def _skip_expression_literal(text: str, start: int) -> int:
    quote = text[start]
    i = start + 1
    n = len(text)
    while i < n:
        c = text[i]
        if c == "\\":
            i += 2
            continue
        if c == quote:
            return i + 1
        i += 1
    return n
