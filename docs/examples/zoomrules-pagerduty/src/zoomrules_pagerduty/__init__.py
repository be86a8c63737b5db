"""zoomrules plugin: a `pagerduty` action and a `minutes_between()` JMESPath function.

zoomrules finds this module through the `zoomrules` entry point declared in
pyproject.toml (or through `[engine] plugins = ["zoomrules_pagerduty"]`) and
calls the two `@hookimpl` functions below once, at load time.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import httpx
from jmespath import exceptions

from engine.plugin import (
    ActionContext,
    ActionError,
    ActionType,
    JMESPathFunction,
    Param,
    hookimpl,
    parse_retry_after,
)

EVENTS_API = "https://events.pagerduty.com/v2/enqueue"
SEVERITIES = ("critical", "error", "warning", "info")


# ----------------------------------------------------------------- the action


def validate(params: Mapping[str, Any]) -> list[str]:
    """Load-time checks beyond the declared types; each message names its parameter.

    Runs on the raw parameter table after `${VAR}` interpolation, so a bad
    key is caught by `zoomrules check`, not at 3 a.m.
    """
    problems = []
    key = params.get("routing_key", "")
    if "{{" not in key and len(key) != 32:
        problems.append(
            "routing_key: must be the 32-character Integration Key of a PagerDuty service"
        )
    url = params.get("url", EVENTS_API)
    if not url.startswith(("https://", "http://")):
        problems.append("url: must be an http(s) URL")
    return problems


async def run(params: Mapping[str, Any], ctx: ActionContext) -> dict[str, Any]:
    """Send one `trigger` event. `params` are already rendered."""
    body = {
        "routing_key": params["routing_key"],
        "event_action": "trigger",
        # The same Zoom event always has the same id: PagerDuty folds a
        # retried or re-delivered trigger into the incident it already opened.
        "dedup_key": params["dedup_key"],
        "payload": {
            "summary": params["summary"][:1024],
            "source": params["source"],
            "severity": params["severity"],
            "component": ctx.event.name,
            "custom_details": params.get("details") or {"rule": ctx.rule},
        },
    }
    try:
        response = await ctx.services.http.post(params["url"], json=body)
    except httpx.HTTPError as exc:
        # Network trouble: retryable (the dispatcher backs off and tries again).
        raise ActionError(f"PagerDuty unreachable: {type(exc).__name__}") from None
    if response.status_code == 429 or response.status_code >= 500:
        raise ActionError(
            f"PagerDuty answered {response.status_code}",
            # Seconds or an HTTP date; None when absent (the dispatcher backs off).
            retry_after=parse_retry_after(response.headers.get("Retry-After")),
        )
    if response.status_code >= 400:
        # A bad routing key or payload will not get better by retrying.
        raise ActionError(f"PagerDuty refused the event: {response.status_code}", retryable=False)
    ctx.log.info("PagerDuty accepted %s for rule %r", body["dedup_key"], ctx.rule)
    # The return value is visible to later actions as zoomrules.previous.
    return {"status": response.status_code, "dedup_key": body["dedup_key"]}


PAGERDUTY = ActionType(
    name="pagerduty",
    run=run,
    description="Trigger a PagerDuty incident (Events API v2), de-duplicated per Zoom event",
    params=[
        Param("routing_key", str, required=True, help="Integration Key of the PagerDuty service"),
        Param("summary", str, required=True, help="incident title (templated)"),
        Param(
            "severity", str, default="error", choices=SEVERITIES, help="critical|error|warning|info"
        ),
        Param("source", str, default="zoom", help="what PagerDuty shows as the source"),
        Param(
            "dedup_key",
            str,
            default="{{ zoomrules.event_id }}",
            help="incidents with the same key are merged (default: the Zoom event id)",
        ),
        Param("details", dict, help="custom_details table (templated values)"),
        Param("url", str, default=EVENTS_API, help="Events API endpoint"),
    ],
    validate=validate,
)


@hookimpl
def zoomrules_action_types() -> list[ActionType]:
    return [PAGERDUTY]


# ------------------------------------------------------ the JMESPath function


def _parse(value: str) -> datetime:
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise exceptions.JMESPathError(
            f"minutes_between(): not an ISO 8601 time: {value!r}"
        ) from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def minutes_between(start: str, end: str) -> float:
    return (_parse(end) - _parse(start)).total_seconds() / 60


@hookimpl
def zoomrules_jmespath_functions() -> list[JMESPathFunction]:
    return [
        JMESPathFunction(
            name="minutes_between",
            func=minutes_between,
            # jmespath's signature format: arguments are type-checked before the call.
            signature=[{"types": ["string"]}, {"types": ["string"]}],
            help="minutes from the first ISO 8601 time to the second",
        )
    ]
