"""Local paths that come partly from event data: kept inside a directory.

Event data is written by whoever can join a meeting or name themselves. When a
rule builds a file or directory name from it (`path = "/var/log/zoom/{{
payload.object.topic }}.jsonl"`), the part written in the rule decides where
things may go and the event only picks a name under it:

- A value with no `{{ }}` is the rule author's choice and is used as written.
- Otherwise the **base** is the directory part of the text before the first
  `{{` (`/var/log/zoom/` above; `/var/log/zoom/` too for
  `/var/log/zoom/meeting-{{ id }}`); with no `/` before the first `{{` it is
  the current directory. A base that is `/` confines nothing and is refused
  (at load time when written so, at run time when it is the current
  directory).
- The rendered path is refused if it holds a NUL byte, if, resolved the way
  the kernel will (symlinks of existing parents followed, then `..`:
  `os.path.realpath`), it is not inside the resolved base, or if the part
  after the base has an empty segment (`a//b`, a trailing `/`: a value that
  rendered empty).
- What the action uses is the resolved path, so the name checked is the name
  opened.

The check happens when the action runs; a symlink swapped in between the
check and the open (by someone who can write under the base) is not covered.
Callers run `confine` in a worker thread: resolving symlinks is file-system I/O.
"""

from __future__ import annotations

import os
from typing import Any

from engine.plugin import ActionError, Template, shorten, to_text

#: How much of a rendered value a message shows.
SHOWN = 80


def _as_is(text: str) -> str:
    return text


def is_templated(value: Any) -> bool:
    """Whether a parameter (a raw `Template` or plain text) takes anything from the event."""
    source = value.source if isinstance(value, Template) else value
    return isinstance(source, str) and "{{" in source


def as_text(value: Any, root: Any) -> str:
    """A raw parameter rendered as text (a literal one is its own text)."""
    if isinstance(value, Template):
        rendered: str = value.render(root, quote=_as_is)  # with a quote function: always text
        return rendered
    return to_text(value)


def literal_base(source: str) -> str:
    """The directory part of the text before the first `{{` ("" = the current directory)."""
    prefix = source.split("{{", 1)[0]
    return prefix[: prefix.rfind("/") + 1]


def check_source(name: str, source: Any, example: str) -> list[str]:
    """Load-time problems of a path parameter (none for a literal one)."""
    if not isinstance(source, str) or "{{" not in source:
        return []
    base = literal_base(source)
    if base and not base.strip("/"):
        return [
            f"{name}: the directory before the first {{{{ }}}} is /, which confines nothing: "
            f"write one (e.g. {example})"
        ]
    return []


def confine(name: str, value: Any, root: Any) -> str:
    """The path to use for `value`, a raw parameter: a literal path as written, a
    templated one resolved and checked to stay under its base (see above).

    Raises a non-retryable ActionError saying what is wrong and under which
    directory, showing at most SHOWN characters of what the event supplied.
    Blocking: resolves symlinks.
    """
    if not isinstance(value, Template) or "{{" not in value.source:
        # Literal, or text rendered before it got here (no template left to tell parts apart).
        return as_text(value, root)
    source = value.source
    rendered = as_text(value, root)
    base = literal_base(source)
    where = base or "the current directory"
    # The rendered text starts with the literal text before the first `{{`.
    tail = rendered[len(base) :]
    if "\0" in rendered:
        raise ActionError(f"{name}: rendered path has a NUL byte (under {where})", retryable=False)
    real_base = os.path.realpath(base or ".")
    if real_base == "/":
        raise ActionError(
            f"{name}: {where} is /, which confines nothing: write a directory before the first "
            "{{ }}",
            retryable=False,
        )
    real = os.path.realpath(rendered)
    if os.path.commonpath([real_base, real]) != real_base:
        raise ActionError(
            f"{name}: rendered path leaves {where}: {shorten(tail, SHOWN)!r}", retryable=False
        )
    if "" in tail.split("/"):
        raise ActionError(
            f"{name}: rendered path has an empty segment (a value rendered empty?): "
            f"{shorten(tail, SHOWN)!r}",
            retryable=False,
        )
    return real


def below(path: str, directories: list[str]) -> bool:
    """Whether `path`, resolved, is strictly below one of `directories`, resolved (blocking)."""
    real = os.path.realpath(path)
    for directory in directories:
        base = os.path.realpath(directory)
        if real != base and os.path.commonpath([base, real]) == base:
            return True
    return False
