"""Rendering an action's parameters exactly as the engine does, for plugin tests.

The parameters go through the engine's own compile path (declared-parameter
checks, the plugin's `validate`, raw parameters compiled, defaults filled),
so a plugin test sees what `run` gets in the daemon.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from types import ModuleType
from typing import Any

import anyio
from anyio.abc import ByteReceiveStream, SocketAttribute, SocketStream

from engine.config import ActionSpec
from engine.events import Event
from engine.expr.compiler import ExpressionCompiler
from engine.plugin import ActionContext, ActionType
from engine.registry import load_registry
from engine.ruleset import CompiledAction, _compile_action
from engine.services import Services


def action_type(plugin: ModuleType) -> ActionType:
    (action,) = plugin.zoomrules_action_types()
    return action


def compile_params(plugin: ModuleType, params: Mapping[str, Any]) -> CompiledAction:
    """Compile one action of `plugin`'s type; fails the test on any load-time problem."""
    registry = load_registry(entry_points=False, extra=[plugin])
    compiler = ExpressionCompiler(registry.functions.values())
    spec = ActionSpec(
        type=action_type(plugin).name, params=dict(params), timeout=30.0, retries=0,
        continue_on_error=False, index=0,
    )  # fmt: skip
    problems: list[str] = []
    compiled = _compile_action(
        spec, registry, compiler, lambda key, msg, line=None: problems.append(f"{key}: {msg}")
    )
    assert compiled is not None and not problems, problems
    return compiled


def render(
    plugin: ModuleType, params: Mapping[str, Any], root: Mapping[str, Any]
) -> dict[str, Any]:
    """What the engine hands `run`: rendered params, raw ones compiled, defaults filled."""
    return compile_params(plugin, params).render(root)


async def read_http_request(stream: ByteReceiveStream) -> tuple[str, str, dict[str, str], bytes]:
    """(method, target, lower-cased headers, body) of one HTTP/1.1 request, for loopback receivers."""
    data = b""
    while b"\r\n\r\n" not in data:
        data += await stream.receive()
    head, body = data.split(b"\r\n\r\n", 1)
    request_line, *header_lines = head.decode().split("\r\n")
    headers = {k.lower(): v.strip() for k, v in (h.split(":", 1) for h in header_lines)}
    while len(body) < int(headers.get("content-length", "0")):
        body += await stream.receive()
    method, target, _ = request_line.split(" ", 2)
    return method, target, headers, body


def action_context(
    event: Event,
    services: Services,
    *,
    rule: str = "test-rule",
    action_index: int = 0,
    attempt: int = 1,
    state: dict[str, Any] | None = None,
    log: str = "test.action",
) -> ActionContext:
    """The context the dispatcher would hand `run` for this event."""
    return ActionContext(
        event=event, rule=rule, action_index=action_index, attempt=attempt, root=event.root(),
        services=services, log=logging.getLogger(log), state={} if state is None else state,
    )  # fmt: skip


async def run_action(
    plugin: ModuleType,
    services: Services,
    params: Mapping[str, Any],
    event: Event,
    *,
    action_index: int = 0,
    attempt: int = 1,
) -> Any:
    """Render `params` as the engine does and run `plugin`'s action once."""
    ctx = action_context(
        event, services, action_index=action_index, attempt=attempt, log=f"test.{plugin.__name__}"
    )
    return await action_type(plugin).run(render(plugin, params, ctx.root), ctx)


async def unused_port() -> int:
    """A loopback port nobody listens on (bound, then released)."""
    listener = await anyio.create_tcp_listener(local_host="127.0.0.1")
    port: int = listener.extra(SocketAttribute.local_port)
    await listener.aclose()
    return port


@asynccontextmanager
async def serve_tcp(handler: Callable[[SocketStream], Awaitable[None]]) -> AsyncIterator[int]:
    """Serve `handler` on 127.0.0.1 (a free port, yielded) for the block."""
    listener = await anyio.create_tcp_listener(local_host="127.0.0.1")
    async with anyio.create_task_group() as tg:
        tg.start_soon(listener.serve, handler)
        yield listener.extra(SocketAttribute.local_port)
        tg.cancel_scope.cancel()
