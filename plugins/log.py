"""The `log` action: one JSON line per firing, to a file or standard output.

Also the smallest complete example of an action plugin.

`path` is declared `raw=True` so the action renders it itself: a path built
partly from event data must stay under the directory written before its first
`{{` (see `plugins._paths`), while a literal path is used as written.
"""

from __future__ import annotations

import errno
import os
import sys
from collections.abc import Mapping
from typing import Any

import anyio
import orjson

from engine.plugin import ActionContext, ActionError, ActionType, Param, hookimpl, shorten
from plugins import _paths

# One lock per process: concurrent firings append whole lines, never interleaved.
# Made on the first firing: anyio.Lock() outside an event loop imports asyncio
# to find out there is none (and then makes its lock on first use anyway),
# which `zoomrules check` need not pay for.
_write_lock: anyio.Lock | None = None

#: Write failures that another attempt will not fix.
_PERMANENT = frozenset(
    {
        errno.ENOTDIR, errno.EISDIR, errno.ENAMETOOLONG, errno.ELOOP, errno.EINVAL,
        errno.EACCES, errno.EPERM, errno.EROFS, errno.EEXIST,
    }
)  # fmt: skip


def _lock() -> anyio.Lock:
    global _write_lock
    if _write_lock is None:
        _write_lock = anyio.Lock()
    return _write_lock


def _line(ctx: ActionContext) -> bytes:
    record = {"rule": ctx.rule, "event_id": ctx.event.id, "event": ctx.event.body}
    return orjson.dumps(record) + b"\n"


def _append(path: Any, root: Any, data: bytes) -> None:
    """Check `path` (a raw parameter), make its directories and append `data` (blocking)."""
    target = _paths.confine("path", path, root)
    try:
        os.makedirs(os.path.dirname(target) or ".", exist_ok=True)
        with open(target, "ab") as handle:
            handle.write(data)
    except OSError as exc:
        # OSError's own text repeats the whole file name, which may be mostly event data.
        reason = exc.strerror or type(exc).__name__
        raise ActionError(
            f"path: cannot write {shorten(target, _paths.SHOWN + 100)}: {reason}",
            retryable=exc.errno not in _PERMANENT,
        ) from None


def validate(params: Mapping[str, Any]) -> list[str]:
    return _paths.check_source("path", params.get("path"), "/var/log/zoomrules/{{ ... }}")


async def run(params: Mapping[str, Any], ctx: ActionContext) -> None:
    data = _line(ctx)
    path = params.get("path")
    async with _lock():
        if path is not None and (_paths.is_templated(path) or _paths.as_text(path, {})):
            await anyio.to_thread.run_sync(_append, path, ctx.root, data)
        else:
            sys.stdout.buffer.write(data)
            sys.stdout.flush()


@hookimpl
def zoomrules_action_types() -> list[ActionType]:
    return [
        ActionType(
            name="log",
            run=run,
            validate=validate,
            params=[
                Param(
                    "path",
                    str,
                    raw=True,
                    help="file to append to (created if missing); stdout when absent",
                )
            ],
            description="Append one JSON line (rule, event id, event) per firing",
        )
    ]
