"""The `log` action: one JSON line per firing, to a file or standard output.

Also the smallest complete example of an action plugin.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import anyio
import orjson

from engine.plugin import ActionContext, ActionType, Param, hookimpl

# One lock per process: concurrent firings append whole lines, never interleaved.
# Made on the first firing: anyio.Lock() outside an event loop imports asyncio
# to find out there is none (and then makes its lock on first use anyway),
# which `zoomrules check` need not pay for.
_write_lock: anyio.Lock | None = None


def _lock() -> anyio.Lock:
    global _write_lock
    if _write_lock is None:
        _write_lock = anyio.Lock()
    return _write_lock


def _line(ctx: ActionContext) -> bytes:
    record = {"rule": ctx.rule, "event_id": ctx.event.id, "event": ctx.event.body}
    return orjson.dumps(record) + b"\n"


def _append(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("ab") as handle:
        handle.write(data)


async def run(params: Mapping[str, Any], ctx: ActionContext) -> None:
    data = _line(ctx)
    path = params.get("path")
    async with _lock():
        if path:
            await anyio.to_thread.run_sync(_append, Path(path), data)
        else:
            sys.stdout.buffer.write(data)
            sys.stdout.flush()


@hookimpl
def zoomrules_action_types() -> list[ActionType]:
    return [
        ActionType(
            name="log",
            run=run,
            params=[
                Param(
                    "path", str, help="file to append to (created if missing); stdout when absent"
                )
            ],
            description="Append one JSON line (rule, event id, event) per firing",
        )
    ]
