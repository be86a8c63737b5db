"""`zoomrules plugins`: action types, their parameters, JMESPath functions, and their plugins."""

from __future__ import annotations

import argparse
import sys

import orjson

from engine.commands.base import EXIT_INVALID, EXIT_OK, Command, config_paths
from engine.config import read_config
from engine.errors import PluginError
from engine.hookspecs import Param
from engine.registry import load_registry
from engine.ruleset import param_type_names


def _type_name(param: Param) -> str:
    return "|".join(param_type_names(param.type))


def handle(args: argparse.Namespace) -> int:
    # Plugins listed in [engine] plugins count too, when a rule file is around.
    modules: tuple[str, ...] = ()
    paths = config_paths(args)
    if args.config or all(p.exists() for p in paths):
        config, _ = read_config(paths)
        modules = config.engine.plugins
    try:
        registry = load_registry(modules)
    except PluginError as exc:
        print(f"zoomrules: {exc}", file=sys.stderr)
        return EXIT_INVALID
    if args.json:
        doc = {
            "actions": [
                {
                    "name": a.name,
                    "plugin": a.plugin,
                    "description": a.description,
                    "params": [
                        {
                            "name": p.name,
                            "type": _type_name(p),
                            "required": p.required,
                            "default": p.default,
                            "help": p.help,
                        }
                        for p in a.params
                    ],
                }
                for a in sorted(registry.actions.values(), key=lambda a: a.name)
            ],
            "functions": [
                {"name": f.name, "plugin": f.plugin or "engine", "help": f.help}
                for f in sorted(registry.functions.values(), key=lambda f: f.name)
            ],
        }
        print(orjson.dumps(doc, option=orjson.OPT_INDENT_2).decode())
        return EXIT_OK
    print("Action types:")
    for action in sorted(registry.actions.values(), key=lambda a: a.name):
        print(f"  {action.name}  (plugin {action.plugin})  {action.description}")
        for p in action.params:
            flag = (
                "required"
                if p.required
                else f"default {p.default!r}"
                if p.default is not None
                else "optional"
            )
            print(f"      {p.name}: {_type_name(p)}, {flag}" + (f" - {p.help}" if p.help else ""))
    print("\nJMESPath functions (beyond the standard set):")
    for fn in sorted(registry.functions.values(), key=lambda f: f.name):
        print(f"  {fn.name}()  (plugin {fn.plugin or 'engine'})  {fn.help}")
    return EXIT_OK


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="machine-readable output")


COMMAND = Command(
    "plugins", "list action types, JMESPath functions and their plugins", handle, add_arguments
)
