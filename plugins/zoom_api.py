"""`zoom_api`: call the Zoom REST API with the daemon's OAuth token.

    [[rule.action]]
    type   = "zoom_api"
    method = "PUT"
    path   = "/meetings/{{ payload.object.id }}/status"
    json   = { action = "end" }

`path` is rendered here, not by the engine, so every interpolated value can be
percent-encoded as one path segment: an event field holding `../users` or
`1?x=y` cannot change which endpoint is called. A 401 refreshes the token
once and repeats the call; rate limits and server errors become retryable
ActionErrors carrying Zoom's own wait hint.
"""

from __future__ import annotations

import urllib.parse
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from engine.plugin import (
    ActionContext,
    ActionError,
    ActionType,
    Param,
    RateLimiter,
    hookimpl,
    shorten,
)
from plugins import _http_common as common

# httpx (and the command-line tools it imports) loads on the first request,
# not when the plugin is registered: `zoomrules check` sends none.
if TYPE_CHECKING:
    import httpx

NAME = "zoom_api"
DEFAULT_BASE_URL = "https://api.zoom.us/v2"
_METHODS = ("GET", "POST", "PATCH", "PUT", "DELETE")


def quote_segment(value: str) -> str:
    """Percent-encode one interpolated value so it stays inside a single path segment."""
    quoted = urllib.parse.quote(value, safe="")
    # quote() leaves dots alone, and HTTP clients collapse `.`/`..` segments.
    if quoted.strip(".") == "":
        quoted = quoted.replace(".", "%2E")
    return quoted


def render_path(path: Any, root: Mapping[str, Any]) -> str:
    """Render `path` (a Template, or plain text when it held no placeholder)."""
    if isinstance(path, str):
        text = path
    else:
        text = path.render(root, quote=quote_segment)
        if not isinstance(text, str):
            text = quote_segment(common.scalar_text(text))
    return text


def build_url(base_url: str, path: str) -> httpx.URL:
    """Join base and path, refusing anything that would leave the API host."""
    if "://" in path or path.startswith("//"):
        raise ActionError("path: must be relative to api_base_url", retryable=False)
    if "//" in path.split("?", 1)[0].lstrip("/"):
        raise ActionError(
            "path: has an empty segment (a template value rendered empty?)", retryable=False
        )
    import httpx

    base = httpx.URL(base_url)
    url = httpx.URL(base_url.rstrip("/") + "/" + path.lstrip("/"))
    if (url.scheme, url.host, url.port) != (base.scheme, base.host, base.port):
        raise ActionError("path: must stay on the Zoom API host", retryable=False)
    return url


def validate(params: Mapping[str, Any]) -> list[str]:
    errors = common.validate_expect(params.get("expect"))
    path = params.get("path")
    if isinstance(path, str):
        literal = path.split("{{", 1)[0]
        if "://" in path and "://" in literal:
            errors.append(
                'path: must be relative to api_base_url (e.g. "/meetings/{{ payload.object.id }}")'
            )
        elif not path.startswith(("/", "{{")):
            errors.append("path: must start with '/' (relative to api_base_url)")
    return errors


async def run(params: Mapping[str, Any], ctx: ActionContext) -> dict[str, Any]:
    services = ctx.services
    if services.tokens is None:
        raise ActionError("zoom_api needs [zoom] credentials", retryable=False)
    zoom = getattr(services.config, "zoom", None)
    base_url = getattr(zoom, "api_base_url", None) or DEFAULT_BASE_URL
    method = str(params.get("method") or "GET").upper()
    path = render_path(params["path"], ctx.root)
    url = build_url(base_url, path).copy_merge_params(common.stringify_query(params.get("query")))
    expect = params.get("expect")
    # Messages show the path as the rule writes it: the rendered one holds event data
    # (of any length), and the query is never shown.
    shown = shorten(getattr(params["path"], "source", params["path"]), 120)
    target = f"Zoom API {method} {shown}"
    extra = common.log_extra(ctx, NAME, method=method, path=shown)

    rate = getattr(zoom, "api_rate", None)
    # One budget for every zoom_api job of the daemon (of the cluster).
    limiter = services.rate_limiter(NAME, rate) if rate is not None else None
    token = await services.tokens.token()
    response, body = await _call(
        services.http, method, url, params, token, limiter, target, ctx, extra
    )
    if response.status_code == 401:
        # The token may have been revoked or expired early: one fresh token, one more try.
        ctx.log.info("%s: 401, refreshing the token once", target, extra=extra)
        token = await services.tokens.refresh(token)
        response, body = await _call(
            services.http, method, url, params, token, limiter, target, ctx, extra
        )
    common.check_response(response, body, expect, target, (token,))
    return common.result(response, body)


async def _call(
    client: httpx.AsyncClient,
    method: str,
    url: httpx.URL,
    params: Mapping[str, Any],
    token: str,
    limiter: RateLimiter | None,
    target: str,
    ctx: ActionContext,
    extra: Mapping[str, Any],
) -> tuple[httpx.Response, Any]:
    if limiter is not None:
        await limiter.acquire()
    json_body = params.get("json")
    request = client.build_request(
        method,
        url,
        headers={"Authorization": f"Bearer {token}", "Accept": "application/json"},
        json=json_body if json_body is not None else None,
    )
    # Zoom's errors quote ids from the path, which are useful; only the token is masked.
    secrets = common.request_secrets(request, url=False)
    return await common.send(
        client, request, target=target, log=ctx.log, extra=extra, secrets=secrets
    )


@hookimpl
def zoomrules_action_types() -> list[ActionType]:
    return [
        ActionType(
            name=NAME,
            run=run,
            description="Call the Zoom REST API (bearer token from [zoom] credentials).",
            validate=validate,
            params=[
                Param("method", str, default="GET", choices=_METHODS, help="HTTP method"),
                Param(
                    "path",
                    str,
                    required=True,
                    raw=True,
                    help="path under api_base_url; each {{ value }} is encoded as one segment",
                ),
                Param("query", dict, help="query parameters (a table)"),
                Param("json", (dict, list), help="JSON request body"),
                Param("expect", list, help="accepted status codes (default: any 2xx)"),
            ],
        )
    ]
