"""`notify`: send a notification through Apprise.

    [[rule.action]]
    type  = "notify"
    to    = ["oncall", "json://hooks.example.com/zoom"]
    title = "VIP joined {{ payload.object.topic }}"
    body  = "{{ payload.object.participant.user_name }}"

Every target (an Apprise URL, directly or through a `[notifiers]` name, or an
entry of an Apprise config file) is sent on its own, so a failure is reported
per target and a retry of the job resends only to the targets that failed:
the ones that succeeded are remembered in `ctx.state`. Targets are always
shown as Apprise's privacy URL (passwords and tokens masked).
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import ModuleType
from typing import TYPE_CHECKING, Any

import anyio

from engine.plugin import ActionContext, ActionError, ActionType, Param, hookimpl
from plugins._http_common import excerpt, log_extra, scalar_text

if TYPE_CHECKING:
    import apprise

NAME = "notify"
FORMATS = ("text", "markdown", "html")
#: ctx.state key: keys of targets already notified by an earlier attempt.
_SENT = "notify.sent"


@dataclass(frozen=True)
class Target:
    #: Stable identity across attempts; a hash, so no secret sits in job state.
    key: str
    #: Apprise's privacy URL: safe for logs and messages.
    display: str
    service: Any


def _apprise() -> ModuleType:
    """Apprise, imported on first use: it takes a fifth of a second, which
    every `zoomrules check` of a rule set without notifications would pay."""
    import apprise

    return apprise


def _asset() -> apprise.AppriseAsset:
    # Memory-only: a daemon should not grow Apprise's on-disk cache as a side effect.
    asset: apprise.AppriseAsset = _apprise().AppriseAsset(storage_mode="memory")
    return asset


def _key(url: str) -> str:
    return hashlib.sha256(url.encode()).hexdigest()[:24]


def _scheme_only(url: str) -> str:
    """What we may show of a URL Apprise could not parse (its rest may hold credentials)."""
    return url.split("://", 1)[0] + "://…" if "://" in url else "(not a URL)"


def _as_list(value: Any) -> list[Any]:
    if value is None:
        return []
    return list(value) if isinstance(value, list | tuple) else [value]


def _is_templated(text: str) -> bool:
    # ${VAR} is already interpolated when validate runs; only {{ }} waits for the event.
    return "{{" in text


def _parses(url: str) -> bool:
    return _apprise().Apprise.instantiate(url, asset=_asset()) is not None


def validate(params: Mapping[str, Any]) -> list[str]:
    errors: list[str] = []
    to = _as_list(params.get("to"))
    if not to and not params.get("apprise_config"):
        errors.append("to: give at least one target (or apprise_config)")
    for i, item in enumerate(to):
        if not isinstance(item, str) or not item:
            errors.append(f"to[{i}]: must be a notifier name or an Apprise URL")
        elif "://" in item and not _is_templated(item) and not _parses(item):
            errors.append(f"to[{i}]: {_scheme_only(item)} is not a valid Apprise URL")
    for i, item in enumerate(_as_list(params.get("attach"))):
        if not isinstance(item, str) or not item:
            errors.append(f"attach[{i}]: must be a file path or URL")
    return errors


def _instantiate(url: str, where: str) -> Target:
    service = _apprise().Apprise.instantiate(url, asset=_asset())
    if service is None:
        raise ActionError(
            f"{where}: {_scheme_only(url)} is not a valid Apprise URL", retryable=False
        )
    return Target(key=_key(url), display=service.url(privacy=True), service=service)


def targets_from_to(to: Sequence[Any], notifiers: Mapping[str, Sequence[str]]) -> list[Target]:
    """Targets named in `to`: URLs as they are, names through `[notifiers]`."""
    targets: list[Target] = []
    for item in to:
        item = str(item)
        if "://" in item:
            targets.append(_instantiate(item, "to"))
            continue
        if item not in notifiers:
            known = ", ".join(sorted(notifiers)) or "none defined"
            raise ActionError(f"to: unknown notifier {item!r} (known: {known})", retryable=False)
        targets.extend(_instantiate(url, f"notifiers.{item}") for url in notifiers[item])
    return targets


def _load_config_targets(path: str, tag: Any) -> list[Target]:
    """Entries of an Apprise config file matching `tag` (blocking: file I/O)."""
    config = _apprise().AppriseConfig(asset=_asset())
    if not config.add(path):
        raise ActionError(f"apprise_config: cannot read {path!r}", retryable=False)
    apobj = _apprise().Apprise(asset=_asset())
    apobj.add(config)
    if len(apobj) == 0:
        raise ActionError(f"apprise_config: {path!r} defines no notification URLs", retryable=False)
    services = list(apobj.find(tag)) if tag else list(apobj.find())
    return [
        Target(
            key=_key(service.url(privacy=False)), display=service.url(privacy=True), service=service
        )
        for service in services
    ]


async def resolve_targets(params: Mapping[str, Any], config: Any) -> list[Target]:
    notifiers: Mapping[str, Sequence[str]] = getattr(config, "notifiers", None) or {}
    targets = targets_from_to(_as_list(params.get("to")), notifiers)
    path = params.get("apprise_config")
    if path:
        targets += await anyio.to_thread.run_sync(
            _load_config_targets, str(path), params.get("tag")
        )
    unique: dict[str, Target] = {}
    for target in targets:
        unique.setdefault(target.key, target)
    return list(unique.values())


def _failure_reason(result: Any) -> str:
    """The last warning/error Apprise recorded for this send (Apprise >= 2 keeps them)."""
    messages: list[str] = []
    logs = getattr(result, "logs", None)
    if callable(logs):
        for entry in logs():
            if getattr(entry, "level", "") in ("WARNING", "ERROR", "CRITICAL"):
                messages.append(str(entry.message))
    return excerpt(messages[-1], 200) if messages else "delivery failed"


async def _send_one(
    target: Target, message: Mapping[str, Any], outcome: dict[str, str | None]
) -> None:
    """Notify one target; record None for success or a reason for failure."""
    apobj = _apprise().Apprise(asset=_asset())
    apobj.add(target.service)
    attach = message["attach"]
    try:
        result = await apobj.async_notify(
            body=message["body"],
            title=message["title"],
            body_format=message["format"],
            attach=_apprise().AppriseAttachment(attach, asset=_asset()) if attach else None,
            log_level=logging.WARNING,
        )
    except Exception as exc:  # an Apprise plugin bug must not hide the other targets' results
        outcome[target.key] = f"{type(exc).__name__}"
        return
    outcome[target.key] = None if result else _failure_reason(result)


async def run(params: Mapping[str, Any], ctx: ActionContext) -> dict[str, Any]:
    targets = await resolve_targets(params, ctx.services.config)
    extra = log_extra(ctx, NAME)
    sent: list[str] = ctx.state.setdefault(_SENT, [])
    pending = [t for t in targets if t.key not in sent]
    message = {
        "body": scalar_text(params["body"]),
        "title": scalar_text(params.get("title") or ""),
        "format": params.get("format") or "text",
        "attach": [str(a) for a in _as_list(params.get("attach"))],
    }
    outcome: dict[str, str | None] = {}
    async with anyio.create_task_group() as tg:
        for target in pending:
            tg.start_soon(_send_one, target, message, outcome)

    failed = [t for t in pending if outcome.get(t.key) is not None]
    for target in pending:
        if outcome.get(target.key) is None:
            sent.append(target.key)
            ctx.log.debug("notified %s", target.display, extra=extra)
    skipped = [t.display for t in targets if t not in pending]
    if failed:
        report = "; ".join(f"{t.display}: {outcome[t.key]}" for t in failed)
        ctx.log.warning(
            "notify failed for %d of %d targets", len(failed), len(targets), extra=extra
        )
        raise ActionError(
            f"notification failed for {len(failed)} of {len(targets)} targets: {report}"
        )
    return {
        "sent": [t.display for t in pending],
        "already_sent": skipped,
    }


@hookimpl
def zoomrules_action_types() -> list[ActionType]:
    return [
        ActionType(
            name=NAME,
            run=run,
            description="Send a notification through Apprise (Slack, e-mail, webhooks, ...).",
            validate=validate,
            params=[
                Param("to", (str, list), help="[notifiers] names and/or Apprise URLs"),
                Param("apprise_config", str, help="path of an Apprise config file"),
                Param("title", str, default="", help="notification title"),
                Param("body", str, required=True, help="notification body"),
                Param("format", str, default="text", choices=FORMATS, help="body format"),
                Param("tag", (str, list), help="only apprise_config entries with this tag"),
                Param("attach", (str, list), help="files or URLs to attach"),
            ],
        )
    ]
