"""`/metrics`: the daemon's figures for Prometheus, read from the engine's own statistics.

Nothing is counted twice: no Prometheus counter is incremented anywhere in
the engine. At each scrape a collector reads what the parts keep for
themselves anyway (the sources' `stats`, `PipelineStats`, `DispatchStats`,
the journal's `JournalCounters`, the token managers' `TokenStats`, the
leases) and turns it into metric families. What a scrape does not ask for
costs nothing; what it asks for is read on the event loop, where those
statistics change, so it sees each of them whole.

The registry is the daemon's own (not prometheus_client's global one):
two daemons in one process (tests) do not mix, and nothing a library
registers globally leaks in. Besides the engine's figures it carries the
standard `process_*` and `python_info` ones.

Label values are bounded by the configuration, never by the events:

- `source`, `rule`, `action`: names from the rule files (and plugins);
- `event`: an event name counts apart only if it is in Zoom's catalogue,
  one the engine emits, or named (not globbed) in a rule's `on`; every
  other name is counted under `other`. Names come from Zoom (or a webhook
  sender): a flood of made-up ones must not make a series each;
- `reason`, `outcome`, `stage`, `result`: fixed sets of the code.

No meeting, user, email or event id is ever a label. Times are exported
as Unix timestamps (`..._timestamp_seconds`), as Prometheus's guidelines
ask: `time() - metric` in a query gives the seconds since, exact at any
evaluation, where a "seconds since" gauge would be as old as its scrape.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterable, Iterator

from prometheus_client import CollectorRegistry, PlatformCollector, ProcessCollector
from prometheus_client.exposition import choose_encoder
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.utils import floatToGoString
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from engine import __version__
from engine.auth import TokenManager
from engine.daemon_state import DaemonState
from engine.loader import LoadedRules, known_event_names
from engine.matcher import is_glob
from engine.sources.base import OTHER_EVENTS, EventSource
from engine.sources.leased import LeasedSource
from engine.sources.zoom_ws import ListenerStats, ZoomListener
from engine.timings import Timings

__all__ = ["EngineCollector", "routes"]


def routes(state: DaemonState) -> list[BaseRoute]:
    """`GET /metrics` for `state`, in Prometheus's text format (or
    OpenMetrics, when the scraper asks for it)."""
    registry = CollectorRegistry()
    registry.register(EngineCollector(state))
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)

    async def metrics(request: Request) -> Response:
        encoder, content_type = choose_encoder(request.headers.get("accept", ""))
        return Response(encoder(registry), headers={"Content-Type": content_type})

    return [Route("/metrics", metrics, methods=["GET", "HEAD"])]


class EngineCollector:
    """The engine's statistics as metric families, read at each `collect()`."""

    def __init__(self, state: DaemonState) -> None:
        self.state = state
        self._names = EventNames()

    def collect(self) -> Iterator[Metric]:
        state = self.state
        yield from _daemon(state)
        yield from _sources(state.sources, self._names.labels(state.loaded))
        yield from _tokens(state)
        yield from _rules(state)
        yield from _correlations(state)
        yield from _actions(state)
        yield from _journal(state)


class EventNames:
    """Which event names are labels of their own (see the module's docstring)."""

    def __init__(self) -> None:
        self._loaded: LoadedRules | None = None
        self._named: frozenset[str] = frozenset()

    def labels(self, loaded: LoadedRules) -> frozenset[str]:
        if loaded is not self._loaded:  # recomputed after a reload only
            named = {name for rule in loaded.rules for name in rule.spec.on if not is_glob(name)}
            self._named = known_event_names() | named
            self._loaded = loaded
        return self._named


def fold(counts: Counter[str], allowed: frozenset[str]) -> dict[str, int]:
    """`counts` by name, names outside `allowed` added up under `other`."""
    folded: dict[str, int] = {}
    for name, count in counts.items():
        label = name if name in allowed else OTHER_EVENTS
        folded[label] = folded.get(label, 0) + count
    return folded


# -- the daemon ---------------------------------------------------------------


def _daemon(state: DaemonState) -> Iterator[Metric]:
    yield _gauge("zoomrules_build_info", "zoomrules's version (always 1).", 1, version=__version__)
    yield _gauge(
        "zoomrules_ready",
        "1 when the daemon does its job: the journal writes and every source delivers "
        "(here or, in a cluster, on another node), as /-/ready says.",
        state.readiness().ready,
    )
    yield _gauge("zoomrules_rules", "Rules loaded.", len(state.loaded.rules))
    yield _gauge(
        "zoomrules_config_last_reload_successful",
        "1 if the last reload of the rule files worked (or none was tried), 0 if it failed.",
        state.last_reload_ok,
    )
    yield _gauge(
        "zoomrules_config_last_reload_success_timestamp_seconds",
        "When the rules in use were loaded: at start, or by the last reload that worked.",
        state.last_reload_success_at,
    )
    reloads = CounterMetricFamily(
        "zoomrules_config_reloads", "Reloads of the rule files (SIGHUP).", labels=["result"]
    )
    reloads.add_metric(["success"], state.reloads)
    reloads.add_metric(["failure"], state.failed_reloads)
    yield reloads


# -- sources ------------------------------------------------------------------


def _sources(sources: Iterable[EventSource], events: frozenset[str]) -> Iterator[Metric]:
    up = GaugeMetricFamily(
        "zoomrules_source_up",
        "1 while the source delivers events to this daemon (connected), else 0.",
        labels=["source"],
    )
    received = CounterMetricFamily(
        "zoomrules_events_received",
        "Events received, by source and event name (names outside Zoom's catalogue and the "
        "rules' `on` lists are counted as `other`).",
        labels=["source", "event"],
    )
    malformed = CounterMetricFamily(
        "zoomrules_events_malformed",
        "Input a source received and skipped, by reason.",
        labels=["source", "reason"],
    )
    zoom = _ZoomFamilies()
    leases = _LeaseFamilies()
    for source in sources:
        name = source.name
        up.add_metric([name], source.health().up)
        stats = source.stats
        by_name = getattr(stats, "events_by_name", None)
        if isinstance(by_name, Counter):
            for event, count in fold(by_name, events).items():
                received.add_metric([name, event], count)
        bad = getattr(stats, "malformed", None)
        if isinstance(bad, Counter):
            for reason, count in bad.items():
                malformed.add_metric([name, reason], count)
        if isinstance(stats, ListenerStats):
            zoom.add(name, stats)
        if isinstance(source, LeasedSource):
            leases.add(source)
    yield from (up, received, malformed)
    yield from zoom.families()
    yield from leases.families()


class _ZoomFamilies:
    """What a Zoom subscription's listener counts (`ListenerStats`)."""

    def __init__(self) -> None:
        def counter(name: str, text: str, *extra: str) -> CounterMetricFamily:
            return CounterMetricFamily(f"zoomrules_zoom_{name}", text, labels=["source", *extra])

        def gauge(name: str, text: str) -> GaugeMetricFamily:
            return GaugeMetricFamily(f"zoomrules_zoom_{name}", text, labels=["source"])

        self.connections = counter(
            "connections", "Connections Zoom accepted (build_connection success)."
        )
        self.disconnects = counter(
            "disconnects", "Accepted connections that ended (the listener reconnects after each)."
        )
        self.failures = counter(
            "connect_failures",
            "Attempts to connect that failed: at the WebSocket handshake, or refused by "
            "Zoom's build_connection.",
            "stage",
        )
        self.kicks = counter(
            "kicks",
            "Connections Zoom closed within seconds of accepting them: another client "
            "connected to the same subscription replaces this one.",
        )
        self.dead = counter(
            "dead_connections",
            "Connections given up after two heartbeat intervals without a frame from Zoom.",
        )
        self.sent = counter("heartbeats_sent", "Heartbeats sent to Zoom.")
        self.answered = counter("heartbeats_answered", "Heartbeats Zoom answered.")
        self.gaps = counter(
            "connection_gaps", "zoomrules.connection_gap events emitted (Zoom could not deliver)."
        )
        self.last_event = gauge(
            "last_event_timestamp_seconds", "When the last event arrived (absent before one)."
        )
        self.last_heartbeat = gauge(
            "last_heartbeat_answer_timestamp_seconds",
            "When Zoom last answered a heartbeat (absent before it did).",
        )

    def add(self, source: str, stats: ListenerStats) -> None:
        self.connections.add_metric([source], stats.connects)
        self.disconnects.add_metric([source], stats.disconnects)
        self.failures.add_metric([source, "handshake"], stats.handshake_failures)
        self.failures.add_metric([source, "refused"], stats.build_failures)
        self.kicks.add_metric([source], stats.kicks)
        self.dead.add_metric([source], stats.dead_connections)
        self.sent.add_metric([source], stats.heartbeats_sent)
        self.answered.add_metric([source], stats.heartbeats_acked)
        self.gaps.add_metric([source], stats.gaps)
        if stats.last_event_at is not None:
            self.last_event.add_metric([source], stats.last_event_at)
        if stats.last_heartbeat_at is not None:
            self.last_heartbeat.add_metric([source], stats.last_heartbeat_at)

    def families(self) -> list[Metric]:
        return [
            self.connections, self.disconnects, self.failures, self.kicks, self.dead,
            self.sent, self.answered, self.gaps, self.last_event, self.last_heartbeat,
        ]  # fmt: skip


class _LeaseFamilies:
    """Cluster mode: which subscriptions this node holds (`LeasedSource`)."""

    def __init__(self) -> None:
        self.held = GaugeMetricFamily(
            "zoomrules_lease_held",
            "1 while this node holds the subscription's lease (and reads it), else 0.",
            labels=["source"],
        )
        self.epoch = GaugeMetricFamily(
            "zoomrules_lease_epoch",
            "The epoch of the lease this node holds (absent on a standby): it grows at "
            "every change of holder.",
            labels=["source"],
        )
        self.takeovers = CounterMetricFamily(
            "zoomrules_lease_takeovers", "Times this node took the lease.", labels=["source"]
        )
        self.losses = CounterMetricFamily(
            "zoomrules_lease_losses",
            "Times this node lost the lease while holding it (another node took over, "
            "or NATS was out of reach for too long).",
            labels=["source"],
        )

    def add(self, source: LeasedSource) -> None:
        holding = source.lease.holding
        self.held.add_metric([source.name], holding is not None)
        if holding is not None:
            self.epoch.add_metric([source.name], holding.epoch)
        self.takeovers.add_metric([source.name], source.takeovers)
        self.losses.add_metric([source.name], source.losses)

    def families(self) -> list[Metric]:
        if not self.held.samples:
            return []  # not a cluster
        return [self.held, self.epoch, self.takeovers, self.losses]


def _tokens(state: DaemonState) -> Iterator[Metric]:
    """Zoom OAuth tokens: of every token manager in use, added up."""
    managers: dict[int, TokenManager] = {}
    tokens = [getattr(_inner(source), "tokens", None) for source in state.sources]
    dispatcher = state.dispatcher
    if dispatcher is not None:
        tokens.append(dispatcher.services.tokens)
    for manager in tokens:
        if isinstance(manager, TokenManager):
            managers[id(manager)] = manager
    yield CounterMetricFamily(
        "zoomrules_zoom_token_refreshes",
        "Zoom access tokens obtained (the first and every refresh).",
        sum(manager.stats.obtained for manager in managers.values()),
    )
    yield CounterMetricFamily(
        "zoomrules_zoom_token_refresh_failures",
        "Token requests that failed (retried, or refused for good).",
        sum(manager.stats.failures for manager in managers.values()),
    )


def _inner(source: EventSource) -> EventSource | ZoomListener:
    return source.inner if isinstance(source, LeasedSource) else source


# -- rules, actions, jobs -----------------------------------------------------


def _rules(state: DaemonState) -> Iterator[Metric]:
    pipeline, dispatcher = state.pipeline, state.dispatcher
    if pipeline is None or dispatcher is None:
        return
    yield CounterMetricFamily(
        "zoomrules_events_processed",
        "Events matched against the rules.",
        pipeline.stats.events,
    )
    yield _by_rule(
        "zoomrules_rule_firings", "Jobs started: a rule fired on an event (after throttling).",
        dispatcher.stats.fired_by_rule,
    )  # fmt: skip
    yield _by_rule(
        "zoomrules_rule_throttled", "Firings a rule's throttle held back.",
        pipeline.stats.throttled,
    )  # fmt: skip
    yield _by_rule(
        "zoomrules_rule_throttle_key_errors",
        "Events whose throttle key failed to evaluate (the firing was not throttled).",
        pipeline.stats.throttle_key_errors,
    )
    yield _by_rule(
        "zoomrules_rule_condition_errors",
        "Events on which a rule's `when` raised an error (the rule did not fire); "
        "counted since the rules were last loaded.",
        pipeline.rules.matcher.errors,
    )


def _correlations(state: DaemonState) -> Iterator[Metric]:
    """Temporal rules (docs/correlation.md): present once a journal feed runs."""
    correlations = state.correlations
    if correlations is None:
        return
    open_now = GaugeMetricFamily(
        "zoomrules_correlations_open", "Open correlations of a temporal rule.", labels=["rule"]
    )
    for rule, count in correlations.open_counts().items():
        open_now.add_metric([rule], count)
    yield open_now
    deadline = correlations.next_deadline()
    if deadline is not None:
        yield _gauge(
            "zoomrules_correlations_next_deadline_timestamp_seconds",
            "When the earliest open correlation's deadline falls.",
            deadline,
        )
    stats = correlations.stats
    for name, text, counts in (
        ("opened", "Correlations opened.", stats.opened),
        ("fired", "Firings of temporal rules (an absence at its deadline, "
         "a sequence at its follow-up, a count at its Nth event).", stats.fired),
        ("satisfied", "Absences closed by their follow-up (nothing fired).", stats.satisfied),
        ("expired", "Sequences and counts whose window ended without firing.", stats.expired),
        ("dropped", "Correlations dropped, oldest first, at the rule's max_open.", stats.dropped),
        ("gap_overlaps", "Absences a connection gap overlapped.", stats.gaps),
        ("suppressed", "Absences not fired because a gap overlapped them (on_gap).",
         stats.suppressed),
        ("errors", "Keys and follow-up conditions that failed on an event.", stats.errors),
    ):  # fmt: skip
        yield _by_rule(f"zoomrules_correlations_{name}", text, counts)


def _by_rule(name: str, text: str, counts: Counter[str]) -> CounterMetricFamily:
    family = CounterMetricFamily(name, text, labels=["rule"])
    for rule, count in counts.items():
        family.add_metric([rule], count)
    return family


def _actions(state: DaemonState) -> Iterator[Metric]:
    dispatcher = state.dispatcher
    if dispatcher is None:
        return
    stats = dispatcher.stats
    labels = ["action", "rule"]
    attempts = CounterMetricFamily(
        "zoomrules_action_attempts", "Attempts at an action that ended.", labels=labels
    )
    outcomes = CounterMetricFamily(
        "zoomrules_action_outcomes",
        "Actions that ended: ok, or failed for good (after their retries).",
        labels=[*labels, "outcome"],
    )
    durations = HistogramMetricFamily(
        "zoomrules_action_duration_seconds",
        "How long actions took, from the first attempt to the outcome (retries included).",
        labels=labels,
    )
    for (action, rule), counts in stats.actions.items():
        attempts.add_metric([action, rule], counts.ok + counts.failed + counts.retries)
        outcomes.add_metric([action, rule, "ok"], counts.ok)
        outcomes.add_metric([action, rule, "failed"], counts.failed)
        _add_histogram(durations, [action, rule], counts.durations)
    yield from (attempts, outcomes, durations)
    jobs = CounterMetricFamily(
        "zoomrules_jobs_finished",
        "Jobs (a rule fired on an event) that ended: every action ok, or one failed.",
        labels=["outcome"],
    )
    jobs.add_metric(["done"], stats.jobs_done)
    jobs.add_metric(["failed"], stats.jobs_failed)
    yield jobs
    yield _gauge(
        "zoomrules_jobs_pending",
        "Jobs queued or running (waiting to retry included).",
        dispatcher.in_flight,
    )
    oldest = dispatcher.oldest_received_at()
    yield _gauge(
        "zoomrules_jobs_oldest_pending_age_seconds",
        "Age of the oldest job queued or running, from when its event was received (0 without any).",
        max(0.0, time.time() - oldest) if oldest is not None else 0.0,
    )


def _add_histogram(family: HistogramMetricFamily, labels: list[str], timings: Timings) -> None:
    buckets = [(floatToGoString(le), count) for le, count in timings.cumulative()]
    family.add_metric(labels, buckets, timings.sum)


# -- the journal --------------------------------------------------------------


def _journal(state: DaemonState) -> Iterator[Metric]:
    store = state.store
    if store is None:
        return
    counters = store.counters
    yield _gauge(
        "zoomrules_journal_writable",
        "1 while the journal's storage takes writes, 0 while it refuses them "
        "(events are held in memory meanwhile).",
        store.health().ok,
    )
    writes = HistogramMetricFamily(
        "zoomrules_journal_write_duration_seconds",
        "How long each write to the journal took, from the batch handed to the storage "
        "to its commit.",
    )
    _add_histogram(writes, [], counters.write_seconds)
    yield writes
    size = store.disk_bytes()
    if size is not None:
        yield _gauge("zoomrules_journal_size_bytes", "The journal's files on disk.", size)
    yield CounterMetricFamily(
        "zoomrules_journal_events_written", "Events made durable in the journal.", counters.appended
    )
    yield CounterMetricFamily(
        "zoomrules_events_duplicates",
        "Events dropped as duplicates of one already in the journal (same event id).",
        counters.duplicates,
    )
    yield CounterMetricFamily(
        "zoomrules_journal_write_errors", "Writes the journal's storage refused or failed.",
        counters.write_errors,
    )  # fmt: skip
    yield CounterMetricFamily(
        "zoomrules_dead_letters",
        "Jobs that became dead letters (`zoomrules dlq list`).",
        counters.dead_letters,
    )


def _gauge(name: str, text: str, value: float, **labels: str) -> GaugeMetricFamily:
    family = GaugeMetricFamily(name, text, labels=list(labels))
    family.add_metric(list(labels.values()), float(value))
    return family
