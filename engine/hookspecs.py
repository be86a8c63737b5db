"""The plugin interface: pluggy hook specifications and the values they return.

A plugin is any object or module with functions marked `@hookimpl`:

    from engine.hookspecs import hookimpl, ActionType, Param

    async def run(params, ctx):
        ...

    @hookimpl
    def zoomrules_action_types():
        return [ActionType(name="page", run=run, params=[Param("who", str, required=True)])]

Built-in actions in `plugins/` use exactly these hooks.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    from engine.config import Config
    from engine.events import Event
    from engine.services import Services

PROJECT = "zoomrules"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)

#: JSON types an action parameter may be declared with.
ParamType = type | tuple[type, ...]


@dataclass(frozen=True)
class Param:
    """One declared parameter of an action type.

    `type` is checked against the TOML value at load time; a string holding
    a `{{ template }}` is accepted for any type and checked again after
    rendering. `raw=True` hands the plugin the compiled Template instead of
    the rendered value (for plugins that must render with escaping, like
    `shell = true`).
    """

    name: str
    type: ParamType = str
    required: bool = False
    default: Any = None
    help: str = ""
    choices: tuple[Any, ...] | None = None
    raw: bool = False


@dataclass
class ActionContext:
    """What an action's `run` gets besides its rendered parameters."""

    event: Event
    rule: str
    action_index: int
    #: 1 for the first try, 2 for the first retry, ...
    attempt: int
    #: The template root: the event plus `zoomrules` metadata.
    root: dict[str, Any]
    services: Services
    log: logging.Logger
    #: Survives between attempts of the same job (e.g. which notification
    #: targets already succeeded, so a retry only resends the failed ones).
    state: dict[str, Any] = field(default_factory=dict)


#: `run(params, ctx)`: params are rendered; the return value (JSON-able or
#: None) is exposed to later actions of the same rule as
#: `zoomrules.results[i]` and `zoomrules.previous`.
ActionRun = Callable[[Mapping[str, Any], ActionContext], Awaitable[Any]]


@dataclass(frozen=True)
class ActionType:
    """An action a rule can name in `[[rule.action]] type = ...`."""

    name: str
    run: ActionRun
    params: Sequence[Param] = ()
    description: str = ""
    #: Extra load-time check over the raw parameter table; returns messages
    #: (each naming the parameter) for everything wrong.
    validate: Callable[[Mapping[str, Any]], list[str]] | None = None
    plugin: str = field(default="", compare=False)


@dataclass(frozen=True)
class JMESPathFunction:
    """A function usable in conditions and templates.

    `signature` uses jmespath's own format: one dict per argument,
    `{"types": ["string", "null", ...]}` (empty list = any type), the last
    optionally `"variadic": True`. Arguments are type-checked before `func`
    is called, exactly as for JMESPath's built-in functions.

    `pure` declares that the result depends only on the arguments (no clock,
    no randomness, no side effects). The matcher may then evaluate a call
    that several rules share once per event instead of once per rule, and
    remember a one-argument function's result per string argument (see
    docs/plugins.md); leave it False when in doubt.
    """

    name: str
    func: Callable[..., Any]
    signature: Sequence[Mapping[str, Any]]
    help: str = ""
    plugin: str = field(default="", compare=False)
    pure: bool = False


@dataclass(frozen=True)
class ConfigIssue:
    """Something a plugin found wrong with the configuration as a whole
    (`zoomrules_check_config`), and where: a rule (and one of its actions)
    or a `[notifiers]` name. `zoomrules check` shows it with file and line;
    an error keeps the files from being used, a warning only fails
    `check --strict`."""

    message: str
    rule: str | None = None
    #: 0-based index of the rule's action the issue is about.
    action: int | None = None
    #: The key it is about ("to", "attach_dirs"...), shown with the action.
    key: str | None = None
    #: A `[notifiers]` name it is about.
    notifier: str | None = None
    warning: bool = False


class ZoomrulesSpec:
    """Hook specifications of the `zoomrules` pluggy project."""

    @hookspec
    def zoomrules_action_types(self) -> Sequence[ActionType]:  # type: ignore[empty-body]
        """Return the action types this plugin provides."""

    @hookspec
    def zoomrules_jmespath_functions(self) -> Sequence[JMESPathFunction]:  # type: ignore[empty-body]
        """Return extra JMESPath functions for conditions and templates."""

    @hookspec
    def zoomrules_check_config(self, config: Config) -> Sequence[ConfigIssue]:  # type: ignore[empty-body]
        """Check what only the whole configuration shows (e.g. that a notifier
        an action names exists in `[notifiers]`); called once per load, after
        every action passed its own `validate`. Return one issue per problem."""
