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

Local files are only read where the rule says so. `attach` and
`apprise_config` are declared `raw=True` and rendered here: an attachment
written literally is sent as it is, but one whose value comes from the event
is refused unless the rule lists `attach_dirs` and the file resolves inside
one of them (a URL from the event is always refused); a templated
`apprise_config` must stay under the directory written before its first `{{`
(`plugins._paths`).
"""

from __future__ import annotations

import difflib
import hashlib
import logging
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import ModuleType
from typing import TYPE_CHECKING, Any

import anyio

from engine.plugin import (
    ActionContext,
    ActionError,
    ActionType,
    Config,
    ConfigIssue,
    Param,
    hookimpl,
    shorten,
)
from plugins import _paths
from plugins._http_common import excerpt, log_extra, scalar_text

if TYPE_CHECKING:
    import apprise

NAME = "notify"
FORMATS = ("text", "markdown", "html")
#: ctx.state key: keys of targets already notified by an earlier attempt.
_SENT = "notify.sent"
#: What Apprise takes for a URL rather than a file (its own GET_SCHEMA_RE).
_URL = re.compile(r"\s*[a-z0-9]{1,32}://", re.IGNORECASE)


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
    return shorten(url.split("://", 1)[0], 40) + "://…" if "://" in url else "(not a URL)"


def _as_list(value: Any) -> list[Any]:
    if value is None:
        return []
    return list(value) if isinstance(value, list | tuple) else [value]


def _is_templated(text: str) -> bool:
    # ${VAR} is already interpolated when validate runs; only {{ }} waits for the event.
    return "{{" in text


def _parses(url: str) -> bool:
    # Apprise logs what it cannot parse, URL included (credentials and
    # all): quiet while asking, the caller reports the URL's scheme only.
    logger = logging.getLogger("apprise")
    level = logger.level
    logger.setLevel(logging.CRITICAL + 1)
    try:
        return _apprise().Apprise.instantiate(url, asset=_asset()) is not None
    finally:
        logger.setLevel(level)


def _placeholder(text: str) -> bool:
    """A `${VAR}` left unset while checking (`zoomrules check` without secrets)."""
    return "${" in text


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
    errors.extend(_validate_attach_dirs(params.get("attach_dirs")))
    config = params.get("apprise_config")
    if isinstance(config, str) and _is_templated(config):
        if "://" in config.split("{{", 1)[0]:
            errors.append(
                "apprise_config: only a local path may be templated; write a URL literally"
            )
        else:
            errors.extend(
                _paths.check_source(
                    "apprise_config", config, "/etc/zoomrules/apprise/{{ ... }}.yml"
                )
            )
    return errors


def _validate_attach_dirs(dirs: Any) -> list[str]:
    if dirs is None:
        return []
    if not isinstance(dirs, list):
        return ["attach_dirs: must be a list of absolute directory paths"]
    errors = []
    for i, item in enumerate(dirs):
        if not isinstance(item, str) or not item.startswith("/"):
            errors.append(f"attach_dirs[{i}]: must be an absolute path, got {item!r}")
        elif _is_templated(item):
            errors.append(f"attach_dirs[{i}]: must be written literally (no {{{{ }}}})")
        elif not item.strip("/"):
            errors.append(f"attach_dirs[{i}]: / would allow every file")
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
            raise ActionError(
                f"to: unknown notifier {shorten(item, _paths.SHOWN)!r} (known: {known})",
                retryable=False,
            )
        targets.extend(_instantiate(url, f"notifiers.{item}") for url in notifiers[item])
    return targets


def _load_config_targets(path: str, tag: Any) -> list[Target]:
    """Entries of an Apprise config file matching `tag` (blocking: file I/O)."""
    config = _apprise().AppriseConfig(asset=_asset())
    if not config.add(path):
        shown = shorten(path, _paths.SHOWN + 100)
        raise ActionError(f"apprise_config: cannot read {shown!r}", retryable=False)
    apobj = _apprise().Apprise(asset=_asset())
    apobj.add(config)
    if len(apobj) == 0:
        shown = shorten(path, _paths.SHOWN + 100)
        raise ActionError(
            f"apprise_config: {shown!r} defines no notification URLs", retryable=False
        )
    services = list(apobj.find(tag)) if tag else list(apobj.find())
    return [
        Target(
            key=_key(service.url(privacy=False)), display=service.url(privacy=True), service=service
        )
        for service in services
    ]


def _config_targets(path: Any, root: Any, tag: Any) -> list[Target]:
    """The `apprise_config` entries: a templated path is kept in its directory first."""
    return _load_config_targets(_paths.confine("apprise_config", path, root), tag)


async def resolve_targets(
    params: Mapping[str, Any], config: Any, root: Mapping[str, Any] | None = None
) -> list[Target]:
    notifiers: Mapping[str, Sequence[str]] = getattr(config, "notifiers", None) or {}
    targets = targets_from_to(_as_list(params.get("to")), notifiers)
    path = params.get("apprise_config")
    if path is not None and (_paths.is_templated(path) or _paths.as_text(path, {})):
        targets += await anyio.to_thread.run_sync(
            _config_targets, path, root or {}, params.get("tag")
        )
    unique: dict[str, Target] = {}
    for target in targets:
        unique.setdefault(target.key, target)
    return list(unique.values())


def _attachments(params: Mapping[str, Any], root: Any) -> list[str]:
    """The files and URLs to attach (blocking: resolves symlinks).

    An item written literally in the rule is the author's choice and passes
    as written. An item whose value comes from the event must be a local
    path that resolves inside one of `attach_dirs`; it is passed on resolved
    (absolute, symlinks followed) so Apprise opens the file that was checked.
    """
    raw = params.get("attach")
    if raw is None:
        return []
    dirs = [str(d) for d in _as_list(params.get("attach_dirs"))]
    # A whole-value template may render to a list: its items all come from the event.
    items: list[tuple[Any, bool]] = []
    for item in raw if isinstance(raw, list) else [raw]:
        if not _paths.is_templated(item):
            items.append((_paths.as_text(item, root), False))
            continue
        value = item.render(root) if hasattr(item, "render") else item
        for part in value if isinstance(value, list) else [value]:
            if part is not None and part != "":
                items.append((scalar_text(part), True))
    files: list[str] = []
    for i, (value, templated) in enumerate(items):
        if templated:
            value = _checked_attachment(f"attach[{i}]", value, dirs)
        if value:
            files.append(value)
    return files


def _checked_attachment(where: str, value: str, dirs: list[str]) -> str:
    if _URL.match(value):
        raise ActionError(
            f"{where}: refused: a URL from the event ({_scheme_only(value.strip())}) cannot be an "
            "attachment; write fixed URLs literally",
            retryable=False,
        )
    if not dirs:
        raise ActionError(
            f"{where}: refused: the value comes from the event and the rule sets no attach_dirs",
            retryable=False,
        )
    if "\0" in value:
        raise ActionError(f"{where}: refused: the rendered path has a NUL byte", retryable=False)
    real = os.path.realpath(value)
    if not _paths.below(real, dirs):
        raise ActionError(
            f"{where}: refused: {shorten(value, _paths.SHOWN)!r} is outside attach_dirs "
            f"({', '.join(dirs)})",
            retryable=False,
        )
    return real


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
    # Attachments are checked before anything is sent: a refusal notifies nobody.
    attach = (
        await anyio.to_thread.run_sync(_attachments, params, ctx.root)
        if params.get("attach") is not None
        else []
    )
    targets = await resolve_targets(params, ctx.services.config, ctx.root)
    extra = log_extra(ctx, NAME)
    sent: list[str] = ctx.state.setdefault(_SENT, [])
    pending = [t for t in targets if t.key not in sent]
    message = {
        "body": scalar_text(params["body"]),
        "title": scalar_text(params.get("title") or ""),
        "format": params.get("format") or "text",
        "attach": attach,
    }
    outcome: dict[str, str | None] = {}
    async with anyio.create_task_group() as tg:
        for target in pending:
            tg.start_soon(_send_one, target, message, outcome)

    failed = [t for t in pending if outcome.get(t.key) is not None]
    for target in pending:
        if outcome.get(target.key) is None:
            sent.append(target.key)
            ctx.log.debug("notified %s", shorten(target.display), extra=extra)
    skipped = [t.display for t in targets if t not in pending]
    if failed:
        report = "; ".join(f"{shorten(t.display)}: {outcome[t.key]}" for t in failed)
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
def zoomrules_check_config(config: Config) -> list[ConfigIssue]:
    """Every `[notifiers]` URL parses with Apprise, and every notifier name an
    action's `to` uses exists: both only fail at the first event otherwise."""
    issues: list[ConfigIssue] = []
    for name, urls in config.notifiers.items():
        for i, url in enumerate(urls):
            if _placeholder(url) or _parses(url):
                continue
            hint = " (an Apprise URL needs '://': mailto://...)" if "://" not in url else ""
            issues.append(
                ConfigIssue(
                    f"URL {i + 1} is not a valid Apprise URL: {_scheme_only(url)}{hint}",
                    notifier=name,
                )
            )
    for rule in config.rules:
        for action in rule.actions:
            if action.type == NAME:
                issues.extend(_check_references(rule.name, action.index, action.params, config))
    return issues


def _check_references(
    rule: str, index: int, params: Mapping[str, Any], config: Config
) -> list[ConfigIssue]:
    issues = []
    for i, item in enumerate(_as_list(params.get("to"))):
        if not isinstance(item, str) or "://" in item or _is_templated(item) or _placeholder(item):
            continue
        if item in config.notifiers:
            continue
        known = sorted(config.notifiers)
        close = difflib.get_close_matches(item, known, n=1)
        if close:
            hint = f" (did you mean '{close[0]}'?)"
        elif ":" in item:
            hint = " (an Apprise URL needs '://', e.g. mailto://user@example.com)"
        else:
            hint = ""
        listed = ", ".join(known) or "none: add a [notifiers] table"
        issues.append(
            ConfigIssue(
                f"unknown notifier {shorten(item, 60)!r}{hint}; known: {listed}",
                rule=rule,
                action=index,
                key=f"to[{i}]" if isinstance(params.get("to"), list) else "to",
            )
        )
    return issues


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
                Param("apprise_config", str, raw=True, help="path of an Apprise config file"),
                Param("title", str, default="", help="notification title"),
                Param("body", str, required=True, help="notification body"),
                Param("format", str, default="text", choices=FORMATS, help="body format"),
                Param("tag", (str, list), help="only apprise_config entries with this tag"),
                Param("attach", (str, list), raw=True, help="files or URLs to attach"),
                Param(
                    "attach_dirs",
                    list,
                    help="directories an attachment named by event data may come from",
                ),
            ],
        )
    ]
