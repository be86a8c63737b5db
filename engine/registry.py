"""Plugin discovery and the registry of action types and JMESPath functions.

Plugins come from the `zoomrules` entry-point group (the built-ins in
`plugins/` are registered there too, so they get no special treatment) and
from modules named in `[engine] plugins`.
"""

from __future__ import annotations

import importlib
import importlib.metadata
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from types import ModuleType
from typing import Any, cast

import pluggy

from engine import hookspecs
from engine.errors import PluginError
from engine.expr.functions import BUILTIN_FUNCTIONS
from engine.hookspecs import ActionType, JMESPathFunction

ENTRY_POINT_GROUP = "zoomrules"


@dataclass
class Registry:
    """Everything plugins contributed, by name."""

    manager: pluggy.PluginManager
    actions: dict[str, ActionType] = field(default_factory=dict)
    functions: dict[str, JMESPathFunction] = field(default_factory=dict)


def _plugin_label(manager: pluggy.PluginManager, plugin: Any) -> str:
    name = manager.get_name(plugin)
    if name:
        return name
    return getattr(plugin, "__name__", type(plugin).__name__)


def load_registry(
    modules: Sequence[str] = (),
    *,
    entry_points: bool = True,
    extra: Iterable[object] = (),
) -> Registry:
    """Build a plugin manager and collect every action type and function.

    `modules` are import names from `[engine] plugins`; `extra` are plugin
    objects registered directly (tests, embedding).
    """
    manager = pluggy.PluginManager(hookspecs.PROJECT)
    manager.add_hookspecs(hookspecs.ZoomrulesSpec)
    if entry_points:
        _load_entry_points(manager)
    for name in modules:
        _register_module(manager, name)
    for plugin in extra:
        manager.register(plugin)
    registry = Registry(manager)
    registry.functions = {fn.name: fn for fn in BUILTIN_FUNCTIONS}
    _collect(registry)
    return registry


def _load_entry_points(manager: pluggy.PluginManager) -> None:
    """Like pluggy's load_setuptools_entrypoints, but a broken plugin is named."""
    for entry in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        if manager.get_plugin(entry.name) is not None or manager.is_blocked(entry.name):
            continue
        try:
            plugin = entry.load()
        except Exception as exc:  # noqa: BLE001
            raise PluginError(
                f"cannot load plugin {entry.name!r} ({entry.value}) from the "
                f"{ENTRY_POINT_GROUP!r} entry points: {type(exc).__name__}: {exc}"
            ) from exc
        if not manager.is_registered(plugin):
            manager.register(plugin, name=entry.name)


def _register_module(manager: pluggy.PluginManager, name: str) -> None:
    if manager.get_plugin(name) is not None:
        return
    try:
        module: ModuleType = importlib.import_module(name)
    except Exception as exc:  # noqa: BLE001 - any import failure is reported the same way
        raise PluginError(
            f"cannot import plugin module {name!r} from [engine] plugins: {exc}"
        ) from exc
    if manager.is_registered(module):
        return
    manager.register(module, name=name)


def _collect(registry: Registry) -> None:
    manager = registry.manager
    owners: dict[str, str] = {}
    for impl in manager.hook.zoomrules_action_types.get_hookimpls():
        label = _plugin_label(manager, impl.plugin)
        actions = cast(Iterable[object], impl.function() or ())
        for action in actions:
            if not isinstance(action, ActionType):
                raise PluginError(f"plugin {label} returned {action!r}, not an ActionType")
            if action.name in registry.actions:
                raise PluginError(
                    f"action type {action.name!r} is registered by both {owners[action.name]} and {label}"
                )
            owners[action.name] = label
            registry.actions[action.name] = replace(action, plugin=label)
    for impl in manager.hook.zoomrules_jmespath_functions.get_hookimpls():
        label = _plugin_label(manager, impl.plugin)
        functions = cast(Iterable[object], impl.function() or ())
        for fn in functions:
            if not isinstance(fn, JMESPathFunction):
                raise PluginError(f"plugin {label} returned {fn!r}, not a JMESPathFunction")
            if fn.name in registry.functions:
                owner = registry.functions[fn.name].plugin or "engine"
                raise PluginError(
                    f"JMESPath function {fn.name}() is registered by both {owner} and {label}"
                )
            registry.functions[fn.name] = replace(fn, plugin=label)
