"""The status page at `/`: the daemon at a glance, and why each recent event did what it did.

Server-rendered HTML, readable without JavaScript and without anything
fetched from elsewhere (no scripts, fonts or style sheets from outside);
`?refresh=N` reloads it every N seconds. What it shows is gathered by
`engine.status` (masked there); every value is escaped here, whatever it
is, when it is put into the page.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from html import escape

from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import BaseRoute, Route

from engine.daemon_state import DaemonState
from engine.event_report import ActionReport, EventReport, RuleReport
from engine.journal.store import DEAD, PENDING, RETRY
from engine.status import (
    DeadLetter,
    JobsStatus,
    RuleStatus,
    Status,
    SubscriptionStatus,
    TemporalRuleStatus,
    gather,
)

__all__ = ["render", "routes"]

#: Auto-refresh intervals offered (seconds; `?refresh=` takes any from 1 to MAX_REFRESH).
REFRESH_CHOICES = (5, 30)
MAX_REFRESH = 3600
#: Events shown unfolded; the older ones fold away (their summary line stays).
EVENTS_OPEN = 10

_STYLE = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 1.5em; color: #222; }
h1 { font-size: 1.4em; margin: 0 0 .3em; } h2 { font-size: 1.15em; margin: 1.4em 0 .4em; }
table { border-collapse: collapse; margin: .3em 0; }
th, td { border: 1px solid #ccc; padding: .2em .5em; text-align: left; vertical-align: top; }
th { background: #f3f3f3; }
.ok, .fired { color: #176f2c; } .bad, .failed { color: #b00020; }
.throttled, .pending, .rechecked { color: #8a5a00; }
.condition, .stopped, .disabled, .error, .muted, .not-run, .ran-before { color: #666; }
.error { color: #b00020; }
pre.trace { margin: .2em 0 0; font-size: 12px; white-space: pre-wrap; }
details.event { margin: .3em 0; border-top: 1px solid #ddd; padding-top: .3em; }
summary { cursor: pointer; } ul.facts { list-style: none; padding: 0; margin: 0; }
ul.facts li { display: inline; margin-right: 1.2em; } code { font-size: 12px; }
"""


def routes(state: DaemonState) -> list[BaseRoute]:
    async def page(request: Request) -> Response:
        status = await gather(state)
        return HTMLResponse(render(status, refresh=_refresh(request.query_params.get("refresh"))))

    return [Route("/", page, methods=["GET", "HEAD"])]


def _refresh(value: str | None) -> int:
    try:
        seconds = int(value or 0)
    except ValueError:
        return 0
    return seconds if 0 < seconds <= MAX_REFRESH else 0


def render(status: Status, refresh: int = 0) -> str:
    """The whole page."""
    head = [
        '<!doctype html>\n<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        "<title>zoomrules status</title>",
        f'<meta http-equiv="refresh" content="{refresh}">' if refresh else "",
        f"<style>{_STYLE}</style></head><body>",
    ]
    body = [
        _header(status, refresh),
        _subscriptions(status.subscriptions, status.now),
        _rules(status.rules, status.now),
        _temporal(status.temporal, status.now),
        _jobs(status.jobs, status.now),
        _events(status),
        "</body></html>\n",
    ]
    return "\n".join(head + body)


# -- parts -----------------------------------------------------------------------


def _header(status: Status, refresh: int) -> str:
    ready = status.readiness
    readiness = (
        '<span class="ok">ready</span>'
        if ready.ready
        else '<span class="bad">not ready</span>: ' + "; ".join(map(_e, ready.reasons))
    )
    reload = f"{status.reloads} reload(s)"
    if status.failed_reloads:
        reload += f', <span class="bad">{status.failed_reloads} failed</span>'
    if status.last_reload_at is not None:
        outcome = "ok" if status.last_reload_ok else '<span class="bad">failed</span>'
        reload += f"; the last {_ago(status.last_reload_at, status.now)}: {outcome}"
    refreshes = " | ".join(
        f'<a href="?refresh={seconds}">every {seconds} s</a>' for seconds in REFRESH_CHOICES
    )
    auto = f'refreshing every {refresh} s (<a href="?">stop</a>)' if refresh else refreshes
    return "\n".join(
        [
            '<header><h1>zoomrules</h1><ul class="facts">',
            f"<li>version {_e(status.version)}</li>",
            f"<li>up {_duration(status.now - status.started_at)} "
            f"(since {_time(status.started_at)})</li>",
            f"<li>{readiness}</li>",
            f"<li>{_role(status)}</li>",
            f"<li>rules from {', '.join(f'<code>{_e(f)}</code>' for f in status.files)}</li>",
            f"<li>{reload}</li>",
            f"<li>as of {_time(status.now)}; {auto}</li>",
            "</ul></header>",
        ]
    )


def _role(status: Status) -> str:
    role = status.role
    if role.cluster is None:
        return "single process"
    holds = ", ".join(map(_e, role.holds)) or "nothing"
    text = f"cluster <b>{_e(role.cluster)}</b>, node <b>{_e(role.node or '')}</b>: runs {holds}"
    if role.standby:
        text += f"; stands by for {', '.join(map(_e, role.standby))}"
    return text


def _subscriptions(subscriptions: Iterable[SubscriptionStatus], now: float) -> str:
    rows = [
        _row(
            f"<code>{_e(sub.name)}</code>",
            f'<span class="{_state_css(sub)}">{_e(sub.state)}</span>',
            _ago(sub.since, now),
            _ago(sub.last_event_at, now),
            _number(sub.events),
            _number(sub.reconnects),
            _e(sub.last_close_reason) if sub.last_close_reason else _NONE,
            _until(sub.token_expires_at, now),
        )
        for sub in subscriptions
    ]
    return _section(
        "subscriptions",
        "Subscriptions",
        _table(
            (
                "subscription",
                "state",
                "since",
                "last event",
                "events",
                "reconnects",
                "last close reason",
                "token expires",
            ),
            rows,
            empty="no subscription",
        ),  # fmt: skip
    )


def _state_css(sub: SubscriptionStatus) -> str:
    return "ok" if sub.up else "muted" if sub.standby else "bad"


def _rules(rules: Iterable[RuleStatus], now: float) -> str:
    rows = [
        _row(
            f"<code>{_e(rule.name)}</code>"
            + ("" if rule.enabled else ' <span class="muted">(disabled)</span>'),
            ", ".join(f"<code>{_e(name)}</code>" for name in rule.on),
            _number(rule.fired),
            _ago(rule.last_fired, now),
            _number(rule.failed_actions, bad=True),
            _number(rule.throttled),
            _number(rule.errors, bad=True),
        )
        for rule in rules
    ]
    return _section(
        "rules",
        "Rules",
        _table(
            ("rule", "on", "fired", "last fired", "failed actions", "throttled", "errors"),
            rows,
            empty="no rule",
        ),
    )


def _temporal(rules: Sequence[TemporalRuleStatus], now: float) -> str:
    if not rules:
        return ""
    rows = [
        _row(
            f"<code>{_e(rule.name)}</code>",
            _e(rule.form),
            _number(rule.open),
            _deadline(rule.next_deadline, now),
            _number(rule.fired),
            _number(rule.dropped, bad=True),
        )
        for rule in rules
    ]
    elsewhere = any(rule.open is None for rule in rules)
    note = (
        '<p class="muted">Another node of the cluster runs them (it holds the correlator '
        "lease); its page shows them.</p>"
        if elsewhere
        else ""
    )
    return _section(
        "temporal",
        "Temporal rules",
        note
        + _table(("rule", "form", "open", "next deadline", "fired", "dropped at max_open"), rows)
        + "<p>Each open correlation: <code>zoomrules timers list</code>.</p>",
    )


def _jobs(jobs: JobsStatus, now: float) -> str:
    parts = [f"<p>{jobs.in_flight} job(s) queued or running in this process."]
    if jobs.counts is not None:
        counts = jobs.counts
        parts.append(
            f" In the journal: {counts.get(PENDING, 0)} pending, "
            f"{counts.get(RETRY, 0)} re-queued, "
            f'<span class="{"bad" if counts.get(DEAD) else "ok"}">'
            f"{counts.get(DEAD, 0)} dead letter(s)</span>."
        )
    if jobs.note:
        parts.append(f' <span class="muted">{_e(jobs.note)}</span>')
    parts.append("</p>")
    if jobs.dead_letters:
        parts.append(
            "<p>The oldest dead letters (all: <code>zoomrules dlq list</code>):</p>"
            + _table(
                ("id", "rule", "event", "error", "failed"),
                [_dead_row(dead, now) for dead in jobs.dead_letters],
            )
        )
    return _section("jobs", "Jobs", "".join(parts))


def _dead_row(dead: DeadLetter, now: float) -> str:
    return _row(
        str(dead.job_id), f"<code>{_e(dead.rule)}</code>", _e(dead.event),
        f'<span class="error">{_e(dead.error)}</span>', _ago(dead.failed_at, now),
    )  # fmt: skip


def _events(status: Status) -> str:
    if not status.recent_size:
        body = '<p class="muted">Not kept: <code>[http] recent_events = 0</code>.</p>'
    elif not status.events:
        body = '<p class="muted">No event yet.</p>'
    else:
        body = "\n".join(
            _event(event, status.now, index < EVENTS_OPEN)
            for index, event in enumerate(status.events)
        )
    title = f"Recent events (the last {status.recent_size}, newest first)"
    return _section("events", title if status.recent_size else "Recent events", body)


def _event(event: EventReport, now: float, open_: bool) -> str:
    fired = sum(1 for rule in event.rules if rule.verdict == "fired")
    summary = (
        f"{_ago(event.received_at, now)} <b>{_e(event.name)}</b>"
        + (f" “{_e(event.topic)}”" if event.topic else "")
        + f' <span class="muted">from {_e(event.source)}, id <code>{_e(event.event_id[:16])}</code>'
        + (f" — {fired} of {len(event.rules)} rule(s) fired" if event.rules else "")
        + "</span>"
    )
    rows = [_row(f"<code>{_e(rule.rule)}</code>", *_decision(rule)) for rule in event.rules]
    table = _table(
        ("rule", "decision", "why, or what its actions did"), rows, empty="no rule is on this event"
    )
    return f'<details class="event"{" open" if open_ else ""}><summary>{summary}</summary>{table}</details>'


def _decision(rule: RuleReport) -> tuple[str, str]:
    verdict = {
        "fired": "fired",
        "throttled": "throttled",
        "condition": "skipped: condition false",
        "error": "skipped: condition failed",
        "stopped": "skipped: stopped",
        "disabled": "skipped: disabled",
        "rechecked": "not fired",
    }[rule.verdict]
    shown = f'<span class="{rule.verdict}">{verdict}</span>'
    if rule.verdict == "fired":
        return shown, "<br>".join(map(_action, rule.actions))
    why = _e(rule.detail)
    if rule.trace:
        why += f'<pre class="trace">{_e(chr(10).join(rule.trace))}</pre>'
    return shown, why


def _action(action: ActionReport) -> str:
    what = f"{action.index + 1}. <code>{_e(action.type)}</code>: "
    css = action.state.replace(" ", "-")
    if action.state == "ok":
        retried = f", retried {action.attempts - 1} time(s)" if action.attempts > 1 else ""
        return what + f'<span class="ok">ok</span>{retried}'
    if action.state == "failed":
        dead = f" (dead letter {action.job_id})" if action.job_id is not None else ""
        return (
            what + f'<span class="failed">failed after {action.attempts} attempt(s)</span>{dead}: '
            f'<span class="error">{_e(action.error or "")}</span>'
        )
    return what + f'<span class="{css}">{_e(action.state)}</span>'


# -- pieces ----------------------------------------------------------------------


def _e(value: object) -> str:
    return escape(str(value), quote=True)


def _section(anchor: str, title: str, body: str) -> str:
    return f'<section id="{anchor}"><h2>{_e(title)}</h2>\n{body}\n</section>'


def _table(headers: Iterable[str], rows: Iterable[str], empty: str = "none") -> str:
    rows = list(rows)
    if not rows:
        return f'<p class="muted">{_e(empty)}.</p>'
    head = "".join(f"<th>{_e(h)}</th>" for h in headers)
    return f"<table><tr>{head}</tr>\n" + "\n".join(rows) + "\n</table>"


def _row(*cells: str) -> str:
    """A table row of cells already made safe (escaped) by the caller."""
    return "<tr>" + "".join(f"<td>{cell}</td>" for cell in cells) + "</tr>"


#: What a cell shows for a value not known (yet).
_NONE = '<span class="muted">—</span>'


def _number(value: int | None, bad: bool = False) -> str:
    if value is None:
        return _NONE
    return f'<span class="bad">{value:,}</span>' if bad and value else f"{value:,}"


def _time(at: float, shown: str | None = None) -> str:
    """A moment: shown as `shown` (default: its date and time), the exact
    time in the element (and its tooltip)."""
    moment = time.gmtime(at)
    iso = time.strftime("%Y-%m-%dT%H:%M:%SZ", moment)
    stamp = time.strftime("%Y-%m-%d %H:%M:%S UTC", moment)
    return f'<time datetime="{iso}" title="{stamp}">{stamp if shown is None else shown}</time>'


def _ago(at: float | None, now: float) -> str:
    return _NONE if at is None else _time(at, f"{_duration(now - at)} ago")


def _until(at: float | None, now: float) -> str:
    if at is None:
        return _NONE
    left = at - now
    if left <= 0:
        return f'<span class="bad">expired {_duration(-left)} ago</span>'
    return f"in {_duration(left)}"


def _deadline(at: float | None, now: float) -> str:
    """A deadline: past ones are due (an absence waiting to learn of a gap)."""
    if at is None:
        return _NONE
    left = at - now
    return _time(at, f"in {_duration(left)}" if left > 0 else f"due {_duration(-left)} ago")


def _duration(seconds: float) -> str:
    seconds = max(0.0, seconds)
    if seconds < 60:
        return f"{seconds:.0f} s"
    minutes = seconds / 60
    if minutes < 60:
        return f"{minutes:.0f} min"
    hours = minutes / 60
    if hours < 48:
        return f"{int(hours)} h {int(minutes % 60)} min"
    return f"{hours / 24:.0f} days"
