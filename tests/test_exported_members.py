"""The public API is pinned: what plugin authors import stays, and is documented.

As httpx's own test of the same name: adding a name is a decision made here,
removing one a breaking change that shows up here first.
"""

from __future__ import annotations

import inspect

import pytest

import engine.plugin
import engine.testing

PLUGIN_API = [
    "META_KEY",
    "ActionContext",
    "ActionError",
    "ActionRun",
    "ActionType",
    "Config",
    "ConfigIssue",
    "Event",
    "JMESPathFunction",
    "Param",
    "ParamType",
    "Quote",
    "RateLimiter",
    "Services",
    "Template",
    "TokenProvider",
    "hookimpl",
    "parse_retry_after",
    "redact_url",
    "shorten",
    "to_text",
]

TESTING_API = [
    "StaticTokens",
    "action_context",
    "evaluate",
    "fired_rules",
    "load",
    "make_event",
    "open_test_services",
    "run_action",
]


@pytest.mark.parametrize(
    ("module", "expected"),
    [(engine.plugin, PLUGIN_API), (engine.testing, TESTING_API)],
    ids=["engine.plugin", "engine.testing"],
)
def test_all_is_pinned(module: object, expected: list[str]) -> None:
    exported = getattr(module, "__all__")  # noqa: B009
    assert sorted(exported) == sorted(expected)
    for name in exported:
        assert hasattr(module, name), name


def test_every_plugin_api_name_is_explained_in_its_module_docstring() -> None:
    doc = engine.plugin.__doc__ or ""
    for name in PLUGIN_API:
        assert f"`{name}`" in doc, name


@pytest.mark.parametrize("name", TESTING_API)
def test_every_testing_helper_has_a_docstring(name: str) -> None:
    assert inspect.getdoc(getattr(engine.testing, name))


def test_plugin_errors_are_zoomrules_errors() -> None:
    from engine.errors import ZoomrulesError

    assert issubclass(engine.plugin.ActionError, ZoomrulesError)
