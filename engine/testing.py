"""Helpers for testing plugins and rule files with pytest (or anything else).

Nothing here talks to Zoom or starts a daemon. Rules are loaded and
evaluated exactly as the daemon would (same compiler, same plugin hooks);
actions run with a context like the daemon's, so a plugin test exercises
the real code path.

    from engine.testing import evaluate, load, make_event, run_action

    loaded = load("rules.toml", plugins=[my_plugin])
    result = evaluate(loaded, make_event({"event": "meeting.started", "payload": {...}}))
    assert [item["rule"] for item in result["fired"]] == ["page-oncall"]

    outcome = await run_action(my_plugin.run, {"who": "ops"}, make_event(...))

Like `engine.plugin`, this module's `__all__` is pinned by a test.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Iterable, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx

from engine.config import Config, EngineConfig
from engine.events import META_KEY, Event
from engine.explain import evaluate
from engine.hookspecs import ActionContext, ActionRun, ActionType
from engine.loader import LoadedRules, load_rules
from engine.services import Services

__all__ = [
    "StaticTokens",
    "action_context",
    "evaluate",
    "fired_rules",
    "load",
    "make_event",
    "run_action",
    "open_test_services",
]

log = logging.getLogger("zoomrules.testing")


def load(
    *paths: str | Path,
    plugins: Iterable[object] = (),
    env: Mapping[str, str] | None = None,
    entry_points: bool = True,
) -> LoadedRules:
    """Load rule files (or directories of them) with extra plugin objects or
    modules registered as if installed; raises `engine.errors.ConfigError`
    listing every problem, as `zoomrules check` would print them.

    `env` replaces the environment for `${VAR}` (default: the real one).
    `entry_points=False` leaves installed plugins out (only the built-in
    actions registered through the same entry points are then missing too).
    """
    return load_rules(list(paths), env=env, extra_plugins=plugins, entry_points=entry_points)


def make_event(
    body: Mapping[str, Any], *, source: str = "test", received_at: float | None = None
) -> Event:
    """An `Event` from a Zoom event object (raises `InvalidEvent` if it is not one)."""
    return Event.from_body(dict(body), source=source, received_at=received_at)


def fired_rules(loaded: LoadedRules, event: Event) -> list[str]:
    """The names of the rules `event` fires, in order (`evaluate` has the details)."""
    return [item["rule"] for item in evaluate(loaded, event)["fired"]]


class StaticTokens:
    """A Zoom token provider that always gives the same token (for `zoom_api`-style actions)."""

    def __init__(self, token: str = "test-token") -> None:
        self.value = token
        self.refreshes = 0

    async def token(self) -> str:
        return self.value

    async def refresh(self, stale: str | None = None) -> str:
        self.refreshes += 1
        return self.value


@asynccontextmanager
async def open_test_services(
    *,
    config: Config | None = None,
    tokens: StaticTokens | None = None,
    http: httpx.AsyncClient | None = None,
) -> AsyncIterator[Services]:
    """`Services` as an action sees them: a real HTTP client (closed after
    the block unless given), `tokens` (None: no Zoom credentials), and a
    configuration with no rules unless given."""
    config = config or Config(files=(), zoom=None, engine=EngineConfig(), notifiers={}, rules=())
    if http is not None:
        yield Services(config=config, http=http, tokens=tokens)
        return
    async with httpx.AsyncClient(timeout=httpx.Timeout(30.0, connect=10.0)) as client:
        yield Services(config=config, http=client, tokens=tokens)


def action_context(
    event: Event,
    services: Services,
    *,
    rule: str = "test",
    action_index: int = 0,
    attempt: int = 1,
    results: list[Any] | None = None,
) -> ActionContext:
    """The `ActionContext` the dispatcher would give an action of `rule` on `event`."""
    meta = event.metadata()
    meta["rule"] = rule
    meta["results"] = list(results or [])
    meta["previous"] = meta["results"][-1] if meta["results"] else None
    return ActionContext(
        event=event,
        rule=rule,
        action_index=action_index,
        attempt=attempt,
        root={**event.body, META_KEY: meta},
        services=services,
        log=log,
    )


async def run_action(
    action: ActionRun | ActionType,
    params: Mapping[str, Any],
    event: Event,
    *,
    services: Services | None = None,
    rule: str = "test",
    attempt: int = 1,
) -> Any:
    """Run one action once with already rendered `params`; returns its result.

    `action` is an `ActionType` or its `run` function. Failures propagate as
    the action raised them (`ActionError` with `retryable` and
    `retry_after`), so a test can assert on them; there are no retries or
    timeouts here: those are the dispatcher's.
    """
    run = action.run if isinstance(action, ActionType) else action
    if services is not None:
        return await run(dict(params), action_context(event, services, rule=rule, attempt=attempt))
    async with open_test_services() as own:
        return await run(dict(params), action_context(event, own, rule=rule, attempt=attempt))
