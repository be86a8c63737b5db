"""Rendering an action's parameters exactly as the engine does, for plugin tests.

The parameters go through the engine's own compile path (declared-parameter
checks, the plugin's `validate`, raw parameters compiled, defaults filled),
so a plugin test sees what `run` gets in the daemon.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import ModuleType
from typing import Any

from anyio.abc import ByteReceiveStream

from engine.config import ActionSpec
from engine.expressions import ExpressionCompiler
from engine.hookspecs import ActionType
from engine.registry import load_registry
from engine.ruleset import CompiledAction, _compile_action


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
