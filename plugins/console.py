"""The `print` action: one rendered line on standard output.

Handy while writing rules and used by `zoomrules demo`.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from typing import Any

from engine.plugin import ActionContext, ActionType, Param, hookimpl


async def run(params: Mapping[str, Any], ctx: ActionContext) -> str:
    line = f"{params['prefix']}{params['message']}"
    sys.stdout.write(line + "\n")
    sys.stdout.flush()
    return line


@hookimpl
def zoomrules_action_types() -> list[ActionType]:
    return [
        ActionType(
            name="print",
            run=run,
            params=[
                Param("message", str, required=True, help="the line to print (templated)"),
                Param("prefix", str, default="", help="text put before the message"),
            ],
            description="Print one line to standard output",
        )
    ]
