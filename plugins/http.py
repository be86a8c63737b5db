"""`http`: call any HTTP endpoint (an outbound webhook).

    [[rule.action]]
    type    = "http"
    url     = "https://hooks.example.com/zoom"
    headers = { Authorization = "Bearer ${HOOK_TOKEN}" }
    json    = { meeting = "{{ payload.object.id }}", topic = "{{ payload.object.topic }}" }

Retries follow the same rules as `zoom_api` (they share `_http_common`):
429/503 with Retry-After, other 5xx and network errors are retryable, any
other unexpected status is not. Only the scheme, host and port of the URL
ever appear in logs and errors: webhook URLs often carry their secret in the
path or query, so those (and credential headers) are also masked where a
server echoes them in a response body we show.

Rendered headers are checked before anything is sent: a name that is not an
HTTP token, or a value with a line break, NUL or other control character, or
a non-ASCII character, fails the action at once (non-retryable), naming the
header but never showing the value.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from engine.plugin import (
    ActionContext,
    ActionError,
    ActionType,
    Param,
    hookimpl,
    redact_url,
    shorten,
)
from plugins import _http_common as common

# httpx (and the command-line tools it imports) loads on the first request,
# not when the plugin is registered: `zoomrules check` sends none.
if TYPE_CHECKING:
    import httpx

NAME = "http"
#: RFC 9110 `token`: what a header name may be made of.
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_LINE_BREAK_OR_NUL = re.compile(r"[\r\n\x00]")
_CONTROL = re.compile(r"[\x01-\x08\x0a-\x1f\x7f]")


def validate(params: Mapping[str, Any]) -> list[str]:
    errors = common.validate_expect(params.get("expect"))
    if params.get("json") is not None and params.get("body") is not None:
        errors.append("json, body: give one of them, not both")
    url = params.get("url")
    if isinstance(url, str) and not url.lower().startswith(("{{", "http://", "https://")):
        errors.append("url: must start with http:// or https://")
    headers = params.get("headers")
    if isinstance(headers, dict):
        errors.extend(
            f"headers.{name}: must be a string"
            for name, value in headers.items()
            if not isinstance(value, str)
        )
    return errors


def build_request(client: httpx.AsyncClient, params: Mapping[str, Any]) -> httpx.Request:
    import httpx

    try:
        url = httpx.URL(str(params["url"]))
    except httpx.InvalidURL:
        raise ActionError("url: not a valid URL", retryable=False) from None
    if url.scheme not in ("http", "https") or not url.host:
        raise ActionError("url: must be an absolute http:// or https:// URL", retryable=False)
    url = url.copy_merge_params(common.stringify_query(params.get("query")))
    headers = checked_headers(params.get("headers"))
    body = params.get("body")
    json_body = params.get("json")
    return client.build_request(
        str(params.get("method") or "POST").upper(),
        url,
        headers=headers,
        json=json_body,
        content=None if body is None else common.scalar_text(body).encode(),
    )


def checked_headers(headers: Any) -> dict[str, str]:
    """Rendered headers as text, or a non-retryable ActionError naming the first bad one.

    A value is never shown: it may be a credential, or event data built to
    forge a header (`\\r\\n` would end it and start another).
    """
    if headers is None:
        return {}
    if not isinstance(headers, dict):
        raise ActionError("headers: did not render to a table", retryable=False)
    out: dict[str, str] = {}
    for key, value in headers.items():
        name = str(key)
        if not _TOKEN.fullmatch(name):
            shown = shorten(name, 60)
            raise ActionError(
                f"headers: {shown!r} is not a valid header name; not sent", retryable=False
            )
        text = common.scalar_text(value)
        problem = (
            "a line break or NUL byte"
            if _LINE_BREAK_OR_NUL.search(text)
            else "a control character"
            if _CONTROL.search(text)
            else "a character that is not ASCII (put such values in json or query)"
            if not text.isascii()
            else None
        )
        if problem:
            raise ActionError(
                f"headers.{shorten(name, 60)}: the value has {problem}; not sent", retryable=False
            )
        out[name] = text
    return out


async def run(params: Mapping[str, Any], ctx: ActionContext) -> dict[str, Any]:
    client = ctx.services.http
    request = build_request(client, params)
    target = f"{request.method} {shorten(redact_url(request.url), 120)}"
    extra = common.log_extra(ctx, NAME, method=request.method)
    secrets = common.request_secrets(request, url=True)
    response, body = await common.send(
        client, request, target=target, log=ctx.log, extra=extra, secrets=secrets
    )
    common.check_response(response, body, params.get("expect"), target, secrets)
    return common.result(response, body)


@hookimpl
def zoomrules_action_types() -> list[ActionType]:
    return [
        ActionType(
            name=NAME,
            run=run,
            description="Send an HTTP request (outbound webhook).",
            validate=validate,
            params=[
                Param("url", str, required=True, help="absolute http(s) URL"),
                Param("method", str, default="POST", choices=common.METHODS, help="HTTP method"),
                Param("headers", dict, help="request headers (a table)"),
                Param("query", dict, help="query parameters (a table)"),
                Param("json", (dict, list), help="JSON request body"),
                Param("body", str, help="raw request body (text)"),
                Param("expect", list, help="accepted status codes (default: any 2xx)"),
            ],
        )
    ]
