"""What the status page shows, gathered from a running daemon (`DaemonState`) as plain data.

`gather` reads the daemon's own counters on the event loop (cheap), asks
the journal for its job counts and oldest dead letters within
`JOURNAL_TIMEOUT` (a slow journal, e.g. a full disk or a cluster's NATS
far away, leaves that part unknown rather than holding the page), and
explains the recent events (`engine.event_report`) in a worker thread.
Every text that may carry a secret (errors, close reasons, event values)
is masked as the logs mask it; `engine.status_page` renders the result.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import anyio

from engine import __version__
from engine.daemon_state import DaemonState, Readiness
from engine.event_report import EventReport, explain_seen
from engine.journal.store import DEAD, RETRY, JobRow, JournalStore
from engine.logs import shorten
from engine.redact import mask_text
from engine.sources.base import EventSource

__all__ = ["JOURNAL_TIMEOUT", "Status", "gather"]

#: Longest the page waits for the journal's counts (seconds).
JOURNAL_TIMEOUT = 0.5
#: Dead letters listed (the oldest waiting; `zoomrules dlq list` has them all).
DEAD_LETTERS_SHOWN = 5


@dataclass(frozen=True)
class Role:
    """Single process, or a node of a cluster and the subscriptions it runs."""

    cluster: str | None = None
    node: str | None = None
    #: Subscriptions this node runs (holds the lease of), and those it stands by for.
    holds: tuple[str, ...] = ()
    standby: tuple[str, ...] = ()


@dataclass(frozen=True)
class SubscriptionStatus:
    name: str
    up: bool
    #: Run by another node of the cluster, or by none yet (this node stands by).
    standby: bool
    #: "connected", why not, or which node holds it.
    state: str
    #: When it last came up (if up) or went down.
    since: float | None
    events: int | None = None
    last_event_at: float | None = None
    #: Connections after the first.
    reconnects: int | None = None
    last_close_reason: str | None = None
    token_expires_at: float | None = None


@dataclass(frozen=True)
class RuleStatus:
    name: str
    enabled: bool
    on: tuple[str, ...]
    #: Jobs started since the daemon started (resumed and retried ones too).
    fired: int
    last_fired: float | None
    failed_actions: int
    throttled: int
    #: Evaluation errors of its condition (with the rules loaded now).
    errors: int


@dataclass(frozen=True)
class TemporalRuleStatus:
    """A temporal rule's open correlations (docs/correlation.md)."""

    name: str
    #: `absence`, `sequence` or `count`.
    form: str
    #: None: not run by this process (another node of the cluster runs them).
    open: int | None
    #: Its earliest open deadline (None: nothing open).
    next_deadline: float | None
    fired: int
    dropped: int


@dataclass(frozen=True)
class DeadLetter:
    job_id: int
    rule: str
    event: str
    error: str
    failed_at: float


@dataclass(frozen=True)
class JobsStatus:
    #: Jobs queued or running in this process.
    in_flight: int
    #: Jobs by state in the journal (None: no journal, or it did not answer).
    counts: dict[str, int] | None = None
    dead_letters: tuple[DeadLetter, ...] = ()
    #: Why the journal's part is missing, when it is.
    note: str | None = None


@dataclass(frozen=True)
class Status:
    version: str
    now: float
    started_at: float
    readiness: Readiness
    reloads: int
    failed_reloads: int
    last_reload_at: float | None
    last_reload_ok: bool
    files: tuple[str, ...]
    role: Role
    subscriptions: tuple[SubscriptionStatus, ...]
    rules: tuple[RuleStatus, ...]
    jobs: JobsStatus
    temporal: tuple[TemporalRuleStatus, ...]
    #: How many events are kept (0: none, `[http] recent_events`).
    recent_size: int
    events: tuple[EventReport, ...]


async def gather(state: DaemonState, journal_timeout: float = JOURNAL_TIMEOUT) -> Status:
    """Everything the status page shows, as of now."""
    config = state.loaded.config
    pipeline = state.pipeline
    recent = pipeline.recent if pipeline is not None else None
    # Taken on the event loop: the ring changes with every event.
    snapshot = recent.snapshot() if recent is not None else []
    sources = state.sources
    jobs = await _jobs(state, journal_timeout)
    events = await anyio.to_thread.run_sync(explain_seen, snapshot)
    return Status(
        version=__version__,
        now=time.time(),
        started_at=state.started_at,
        readiness=_readiness(state.readiness()),
        reloads=state.reloads,
        failed_reloads=state.failed_reloads,
        last_reload_at=state.last_reload_at,
        last_reload_ok=state.last_reload_ok,
        files=tuple(str(path) for path in config.files),
        role=_role(state, sources),
        subscriptions=tuple(_subscription(source) for source in sources),
        rules=_rules(state),
        jobs=jobs,
        temporal=_temporal(state),
        recent_size=recent.size if recent is not None else 0,
        events=tuple(events),
    )


def _readiness(readiness: Readiness) -> Readiness:
    # Its reasons quote close reasons and journal errors.
    return Readiness(readiness.ready, tuple(mask_text(why) for why in readiness.reasons))


def _role(state: DaemonState, sources: list[EventSource]) -> Role:
    cluster = state.loaded.config.cluster
    if cluster is None:
        return Role()
    health = [(source.name, source.health()) for source in sources]
    return Role(
        cluster=cluster.name,
        node=cluster.node,
        holds=tuple(name for name, h in health if not h.standby),
        standby=tuple(name for name, h in health if h.standby),
    )


def _subscription(source: EventSource) -> SubscriptionStatus:
    health = source.health()
    # Counters every source may not have (a webhook source has no connection).
    stats = source.stats
    connects = getattr(stats, "connects", None)
    reason = getattr(stats, "last_close_reason", None)
    return SubscriptionStatus(
        name=source.name,
        up=health.up,
        standby=health.standby,
        state=shorten(mask_text(health.detail), 200),
        since=health.since,
        events=getattr(stats, "events", None),
        last_event_at=getattr(stats, "last_event_at", None),
        reconnects=max(connects - 1, 0) if isinstance(connects, int) else None,
        last_close_reason=shorten(mask_text(reason), 200) if reason else None,
        token_expires_at=getattr(stats, "token_expires_at", None),
    )


def _rules(state: DaemonState) -> tuple[RuleStatus, ...]:
    loaded = state.loaded
    dispatcher, pipeline = state.dispatcher, state.pipeline
    fired = dispatcher.stats.fired_by_rule if dispatcher is not None else {}
    failed = dispatcher.stats.failed_by_rule if dispatcher is not None else {}
    last = dispatcher.stats.last_fired if dispatcher is not None else {}
    throttled = pipeline.stats.throttled if pipeline is not None else {}
    errors = loaded.matcher.errors
    return tuple(
        RuleStatus(
            name=rule.name,
            enabled=rule.spec.enabled,
            on=rule.spec.on,
            fired=fired.get(rule.name, 0),
            last_fired=last.get(rule.name),
            failed_actions=failed.get(rule.name, 0),
            throttled=throttled.get(rule.name, 0),
            errors=errors.get(rule.name, 0),
        )
        for rule in loaded.rules
    )


def _temporal(state: DaemonState) -> tuple[TemporalRuleStatus, ...]:
    correlations = state.correlations
    counts = correlations.open_counts() if correlations is not None else {}
    deadlines = correlations.next_deadlines() if correlations is not None else {}
    stats = correlations.stats if correlations is not None else None
    return tuple(
        TemporalRuleStatus(
            name=rule.name,
            form=rule.correlation.form,
            open=counts.get(rule.name, 0) if correlations is not None else None,
            next_deadline=deadlines.get(rule.name),
            fired=stats.fired[rule.name] if stats is not None else 0,
            dropped=stats.dropped[rule.name] if stats is not None else 0,
        )
        for rule in state.loaded.rules
        if rule.correlation is not None
    )


async def _jobs(state: DaemonState, timeout: float) -> JobsStatus:
    dispatcher = state.dispatcher
    in_flight = dispatcher.in_flight if dispatcher is not None else 0
    store = state.store
    if store is None:
        return JobsStatus(in_flight, note="the journal is off: no dead letters are kept")
    found: tuple[dict[str, Any], list[JobRow]] | None = None
    try:
        with anyio.move_on_after(timeout):
            found = await _journal(store)
    except Exception as exc:  # noqa: BLE001 - the page shows it instead of failing
        return JobsStatus(in_flight, note=f"the journal failed to answer: {_error(exc)}")
    if found is None:
        return JobsStatus(in_flight, note=f"the journal did not answer within {timeout:g}s")
    stats, rows = found
    counts = {state: int(count) for state, count in stats.get("jobs", {}).items()}
    dead = tuple(
        DeadLetter(
            job_id=row.id,
            rule=row.rule,
            event=shorten(mask_text(row.event.name), 100),
            error=shorten(mask_text(row.last_error or ""), 300),
            failed_at=row.updated_at,
        )
        for row in rows
    )
    return JobsStatus(in_flight, counts=counts, dead_letters=dead)


async def _journal(store: JournalStore) -> tuple[dict[str, Any], list[JobRow]]:
    stats = await store.stats()
    jobs = stats.get("jobs", {})
    waiting = jobs.get(DEAD, 0) + jobs.get(RETRY, 0)
    rows = await store.dead_letters(DEAD_LETTERS_SHOWN) if waiting else []
    return stats, rows


def _error(exc: Exception) -> str:
    return shorten(mask_text(f"{type(exc).__name__}: {exc}"), 300)
