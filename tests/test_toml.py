"""Rule files are read by `engine.config.parse_toml`: exactly what `tomllib` reads.

`parse_toml` reads with a compiled parser and leaves what it cannot read to
`tomllib`; a document must give the same tables, or the same error, either way.
"""

from __future__ import annotations

import tomllib
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.config import parse_toml


def reference(text: str) -> tuple[Any, ...]:
    try:
        return ("ok", repr(tomllib.loads(text)))
    except tomllib.TOMLDecodeError as exc:
        return ("error", str(exc))
    except RecursionError:
        return ("recursion",)


def ours(text: str) -> tuple[Any, ...]:
    try:
        return ("ok", repr(parse_toml(text)))
    except tomllib.TOMLDecodeError as exc:
        return ("error", str(exc))
    except RecursionError:
        return ("recursion",)


CASES = [
    'version = 1\n[[rule]]\nname = "a"\nwhen = """a == \'x\'"""\n  [[rule.action]]\n  type = "log"\n',
    'a = 1\r\nb = "x"\r\n',
    "a = 1979-05-27T00:32:00.999999-07:00\nb = 1979-05-27\nc = 07:32:00",
    "a = 1979-05-27T00:32:00.9999999Z",
    "a = 99999999999999999999",
    "a = 1e1000\nb = nan\nc = -inf\nd = 0x_1",
    "a = 0xDEAD_beef\nb = 0o17\nc = 0b1\nd = +1_000\ne = -0.0",
    '"" = 1\n\'x y\' = 2\na."b".c = 3',
    "[a.b]\nx = 1\n[a]\ny = 2",
    # TOML 1.1, which the standard library of Python 3.11 rejects.
    "a = {b = 1,\n c = 2}",
    "a = {b = 1,}",
    'a = "\\e"',
    'a = "\\x41"',
    "a = 07:32",
    "a = 1979-05-27T07:32Z",
    "é = 1",
    # Broken files: the message names the line and column.
    'name = "broken\non = 1',
    "a = 1\na = 2",
    "[a]\nb = 1\n[a]\nc = 2",
    "a = 01",
    "a = 1 # \x01",
    'a = "\x7f"',
    "a = [1,,2]",
    "a = 1\n[[a]]",
    "a = {b = 1}\na.c = 2",
    "[ a . b ]\nc = 1",
    "a = 1\rb = 2",
    # Nesting deeper than the compiled parser allows.
    "a = " + "[" * 500 + "]" * 500,
    "a = " + "{b = " * 300 + "1" + "}" * 300,
]


@pytest.mark.parametrize("text", CASES)
def test_parse_toml_is_tomllib(text: str) -> None:
    assert ours(text) == reference(text)


FRAGMENTS = st.sampled_from(
    [
        "a", "b", "rule", "[[rule]]", "[[rule.action]]", "[engine]", "[a.b]", " = ", "=", ".",
        '"x"', "'y'", '"""m\nl"""', "'''r'''", '"\\u00e9"', '"\\q"', "1", "-1", "0x1f", "1.5",
        "1e3", "inf", "true", "false", "1979-05-27", "07:32:00", "1979-05-27T07:32:00Z",
        "[", "]", "{", "}", ",", "\n", "\r\n", " ", "\t", "#c", "é", "\\", "_",
    ]
)  # fmt: skip
DOCUMENTS = st.one_of(
    st.lists(FRAGMENTS, max_size=24).map("".join),
    st.text(alphabet="ab1=[]{}.,\"' \n#\\-:", max_size=30),
)


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(text=DOCUMENTS)
def test_parse_toml_is_tomllib_on_generated_documents(text: str) -> None:
    assert ours(text) == reference(text)
