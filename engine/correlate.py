"""Temporal rules: absence (`unless`), sequence (`then`) and count, per correlation key.

A temporal rule's `on` and `when` match its *opening* event as any rule's
do, but the match does not fire it: it opens a *correlation* for the value
of the rule's `key` (a JMESPath expression over the event), which then

- `unless`: waits for a follow-up event with the same key; if none comes
  within the window, the rule fires on the opening event at the deadline;
- `then`: waits for a follow-up event with the same key; if it comes
  within the window, the rule fires on it at once;
- `count`: counts the opening events with the same key; when `times` of
  them fall within one window, the rule fires on the last one, and the
  count starts again from zero.

A follow-up's own `when` sees the opening event as `zoomrules.start`; so do
the actions of every firing, with `zoomrules.key`, `zoomrules.correlation_id`
(a digest of the rule, the key and the opening event: an idempotency key),
and for an absence `zoomrules.late_by` and `zoomrules.gap`.

**Time.** Windows are measured in event time (Zoom's `event_ts`, when
something happened): an event belongs to a window by when it happened, not
when it arrived. Deadlines fall by a `Clock` (engine.timers): a window's
deadline is its end plus the rule's `grace`, the time left for events that
happened in it to arrive late.

**Gaps.** An absence cannot be trusted when the connection was down during
its window: Zoom never redelivers what it sent meanwhile. Gaps come from
`zoomrules.connection_gap` events, and, in the daemon, from a `StreamWatch`
over the sources (until when every event is in; the gaps they reported), so
that a deadline falling while a subscription is disconnected is decided
once it is known whether the disconnection was a gap. Each rule chooses
what a gap does (`on_gap`): mark the firing, suppress it, or fire anyway.

**State.** `Correlations` holds open correlations in memory and lists what
changed (`take_changes`): the journal records those changes with the jobs of
the same events, in one transaction, so that after a crash the state and
the jobs agree (engine.journal.store.StateStore); `restore` rebuilds it at
start. Nothing here waits or does I/O: the journal feed drives it in the
daemon, `replay` and `test` drive it with the events' own clock
(`advance_to`).
"""

from __future__ import annotations

import fnmatch
import hashlib
import logging
from collections import Counter, OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, NamedTuple, Protocol

import orjson

from engine.config import ABSENCE, COUNT
from engine.events import CONNECTION_GAP, META_KEY, Event
from engine.expr.compiler import is_truthy
from engine.journal.store import CLOSED, OPENED, CorrelationRow, StateChange
from engine.logs import LogLimiter, shorten
from engine.ruleset import CompiledCorrelation, CompiledRule
from engine.timers import Clock, Deadlines, EventClock

__all__ = [
    "Correlations",
    "Firing",
    "ReloadReport",
    "StreamWatch",
    "Timeline",
    "event_time",
    "fired_at",
]

log = logging.getLogger("zoomrules.correlate")

#: An absence whose gap verdict waits for the sources is looked at again this often.
HOLD_RECHECK = 1.0
#: Gap intervals remembered, for windows that open (late) after the gap's event.
_GAPS_KEPT = 256
#: Event names whose follow-up candidates are cached.
_NAMES_CACHED = 4096


class StreamWatch(Protocol):
    """What the daemon's event sources can vouch for (`engine.sources.gaps.ConnectionGaps`)."""

    #: The shortest disconnection that is a gap (seconds); None: gaps are not reported.
    threshold: float | None

    def complete_until(self) -> float | None:
        """Every event that happened before this moment (epoch seconds) has
        reached the journal, or its gap is known; None while it is not known
        yet (the sources have not started)."""
        ...

    def gaps_since(self, after: float) -> list[tuple[float, float]]:
        """(start, end) of the gaps the sources reported that ended after `after`."""
        ...


def event_time(event: Event) -> float:
    """When the event happened (epoch seconds): its `event_ts`, else when it was received."""
    stamp = event.body.get("event_ts")
    if stamp.__class__ in (int, float) and stamp > 0:
        return float(stamp) / 1000
    return event.received_at


def _key_text(value: Any) -> str | None:
    """A correlation key's value as text (None: the event takes no part)."""
    if value is None:
        return None
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS).decode()


def firing_key(rule: str, key: str, opening_id: str) -> str:
    """The idempotency key of a firing: its rule, correlation key and opening event."""
    return hashlib.sha256(f"{rule}\0{key}\0{opening_id}".encode()).hexdigest()[:32]


class Held:
    """An event a correlation holds on to: when it happened, and enough to rebuild it."""

    __slots__ = ("at", "seq", "id", "name", "received_at", "source", "raw")

    def __init__(
        self,
        at: float,
        seq: int | None,
        id: str,  # noqa: A002 - the event's id
        name: str,
        received_at: float,
        source: str,
        raw: bytes,
    ) -> None:
        self.at = at
        self.seq = seq
        self.id = id
        self.name = name
        self.received_at = received_at
        self.source = source
        #: The event's JSON: a fraction of the decoded body's memory.
        self.raw = raw

    @classmethod
    def of(cls, event: Event, seq: int | None, at: float) -> Held:
        raw = event.raw if event.raw is not None else orjson.dumps(event.body)
        return cls(at, seq, event.id, event.name, event.received_at, event.source, raw)

    def body(self) -> dict[str, Any]:
        body: dict[str, Any] = orjson.loads(self.raw)
        return body

    def event(self) -> Event:
        return Event(self.name, self.body(), self.id, self.received_at, self.source)

    def stored(self, *, whole: bool) -> list[Any]:
        """As a change to the journal lists it: `[event time, seq, id]` when
        the journal keeps the event for the correlation (its opening event,
        the `seq` of its row), else whole, as `CorrelationRow.events` has it
        (retention may remove the other events of a count's window)."""
        if not whole:
            return [self.at, self.seq, self.id]
        fields = [self.at, self.seq, self.id, self.name, self.received_at, self.source]
        return [*fields, orjson.Fragment(self.raw)]


class Open:
    """One open correlation: a rule, a key, the events it holds, its deadline."""

    __slots__ = ("rule", "key", "held", "deadline", "due_at", "gap", "alive")

    def __init__(self, rule: str, key: str, held: list[Held], deadline: float, gap: bool) -> None:
        self.rule = rule
        self.key = key
        #: The opening event first (a count: every event of its window, in event time).
        self.held = held
        #: When it fires (absence) or expires: its window's end plus grace (the clock's time).
        self.deadline = deadline
        #: When `Correlations.due` looks at it next: the deadline, or a later
        #: moment while an absence waits to know whether a gap overlapped.
        self.due_at = deadline
        self.gap = gap
        self.alive = True

    @property
    def start(self) -> Held:
        return self.held[0]


class Firing(NamedTuple):
    """A rule firing on an event: an ordinary rule's (context None), or a
    temporal rule's, with what its actions see under `zoomrules` and its
    idempotency key."""

    rule: CompiledRule
    event: Event
    #: The event's position in the journal (None: not journaled).
    seq: int | None
    context: dict[str, Any] | None = None
    key: str | None = None


@dataclass
class CorrelationStats:
    """What temporal rules did, per rule."""

    opened: Counter[str] = field(default_factory=Counter)
    fired: Counter[str] = field(default_factory=Counter)
    #: Absences closed by their follow-up (nothing fires).
    satisfied: Counter[str] = field(default_factory=Counter)
    #: Sequences and counts whose window ended without firing.
    expired: Counter[str] = field(default_factory=Counter)
    #: Opening events while a correlation of their key was open (no second one).
    already_open: Counter[str] = field(default_factory=Counter)
    #: Dropped, oldest first, at the rule's `max_open`.
    dropped: Counter[str] = field(default_factory=Counter)
    #: Absences a gap overlapped (marked, suppressed or fired per `on_gap`).
    gaps: Counter[str] = field(default_factory=Counter)
    suppressed: Counter[str] = field(default_factory=Counter)
    #: Keys and follow-up conditions that failed on an event.
    errors: Counter[str] = field(default_factory=Counter)


@dataclass
class ReloadReport:
    """What a reload did to open correlations, per rule."""

    kept: dict[str, int] = field(default_factory=dict)
    #: rule -> (how many, why).
    dropped: dict[str, tuple[int, str]] = field(default_factory=dict)


class Correlations:
    """The open correlations of every temporal rule, and their deadlines."""

    def __init__(
        self,
        rules: Sequence[CompiledRule],
        *,
        clock: Clock,
        watch: StreamWatch | None = None,
        watch_required: bool = False,
        keep_changes: bool = True,
    ) -> None:
        self.clock = clock
        #: Whether `take_changes` is called (a journal keeps the state);
        #: without one, changes are not listed at all.
        self.keep_changes = keep_changes
        #: The sources' view of the stream, for absences (see StreamWatch);
        #: while `watch_required` and none is attached, absences wait.
        self.watch = watch
        self.watch_required = watch_required
        self.stats = CorrelationStats()
        self._rules: dict[str, CompiledRule] = {}
        #: Per rule, its open correlations by key, oldest first (an OrderedDict:
        #: taking the oldest stays O(1) however many were closed before it).
        self._open: dict[str, OrderedDict[str, Open]] = {}
        self._deadlines: Deadlines[Open] = Deadlines(
            lambda item: item.due_at if item.alive else None
        )
        self._followers: dict[str, tuple[CompiledRule, ...]] = {}
        #: Gap intervals (start, end) seen in `zoomrules.connection_gap` events.
        self._gaps: list[tuple[float, float]] = []
        self._changes: list[StateChange] = []
        self._logs = LogLimiter(log)
        self._use(rules)

    def _use(self, rules: Sequence[CompiledRule]) -> None:
        self._rules = {rule.name: rule for rule in rules if rule.correlation is not None}
        self._followers = {}
        for name in self._rules:
            self._open.setdefault(name, OrderedDict())

    @property
    def active(self) -> bool:
        """Whether any temporal rule is loaded, or a correlation open."""
        return bool(self._rules) or any(self._open.values())

    def __len__(self) -> int:
        return sum(len(opened) for opened in self._open.values())

    def open_counts(self) -> dict[str, int]:
        return {name: len(opened) for name, opened in self._open.items() if opened}

    def next_deadline(self) -> float | None:
        """When `due` has something to do next (None: nothing is open)."""
        return self._deadlines.next()

    def next_deadlines(self) -> dict[str, float]:
        """Each rule's earliest open deadline (for people: a walk over every
        open correlation, not the deadline heap, which holds no rule index)."""
        return {
            name: min(corr.deadline for corr in opened.values())
            for name, opened in self._open.items()
            if opened
        }

    def _change(self, change: StateChange) -> None:
        if self.keep_changes:
            self._changes.append(change)

    def take_changes(self) -> list[StateChange]:
        """What changed since the last call, for the journal (in order)."""
        changes, self._changes = self._changes, []
        return changes

    # -- events -----------------------------------------------------------------

    def observe(
        self, event: Event, seq: int | None, matched: Sequence[CompiledRule]
    ) -> list[Firing]:
        """What fires on `event`, matched (opening side) to `matched`: its
        ordinary rules, then the temporal rules it completes (a follow-up, a
        count reached). Opens, feeds and closes correlations on the way."""
        fired = [Firing(rule, event, seq) for rule in matched if rule.correlation is None]
        if not self._rules:
            return fired
        at = event_time(event)
        if event.name == CONNECTION_GAP:
            self._gap_event(event)
        followers = self._followers.get(event.name)
        if followers is None:
            followers = self._followers_of(event.name)
        if followers:
            self._follow_ups(event, seq, at, followers, fired)
        for rule in matched:
            if rule.correlation is not None:
                self._opening(rule, rule.correlation, event, seq, at, fired)
        return fired

    def _followers_of(self, name: str) -> tuple[CompiledRule, ...]:
        if len(self._followers) >= _NAMES_CACHED:
            self._followers.clear()
        found = tuple(
            rule
            for rule in self._rules.values()
            if rule.correlation is not None
            and any(fnmatch.fnmatchcase(name, glob) for glob in rule.correlation.spec.follow_on)
        )
        self._followers[name] = found
        return found

    def _follow_ups(
        self,
        event: Event,
        seq: int | None,
        at: float,
        followers: tuple[CompiledRule, ...],
        fired: list[Firing],
    ) -> None:
        root: dict[str, Any] | None = None
        for rule in followers:
            opened = self._open.get(rule.name)
            if not opened:
                continue
            correlation = rule.correlation
            assert correlation is not None
            root = root if root is not None else event.root()
            key = self._key(rule, correlation.follow_key, root, event)
            corr = opened.get(key) if key is not None else None
            if corr is None:
                continue
            start = corr.start
            if not start.at <= at <= start.at + correlation.spec.within:
                continue  # happened before the opening event, or after its window
            if correlation.follow_when is not None and not self._follows(
                rule, correlation, event, root, start
            ):
                continue
            self._close(corr)
            if correlation.form == ABSENCE:
                self.stats.satisfied[rule.name] += 1
                continue
            self.stats.fired[rule.name] += 1
            context = self._context(corr, start, elapsed=round(at - start.at, 3))
            fired.append(Firing(rule, event, seq, context, context["correlation_id"]))

    def _follows(
        self,
        rule: CompiledRule,
        correlation: CompiledCorrelation,
        event: Event,
        root: dict[str, Any],
        start: Held,
    ) -> bool:
        assert correlation.follow_when is not None
        meta = {**root[META_KEY], "start": start.body()}
        try:
            return is_truthy(correlation.follow_when({**event.body, META_KEY: meta}))
        except Exception as exc:  # noqa: BLE001 - this event's problem: said, and not a follow-up
            self._failed(rule, event, f"{correlation.spec.table}.when", exc)
            return False

    def _opening(
        self,
        rule: CompiledRule,
        correlation: CompiledCorrelation,
        event: Event,
        seq: int | None,
        at: float,
        fired: list[Firing],
    ) -> None:
        key = self._key(rule, correlation.key, event.root(), event)
        if key is None:
            return
        opened = self._open[rule.name]
        spec = correlation.spec
        if correlation.form == COUNT:
            self._count(rule, correlation, opened, key, Held.of(event, seq, at), event, fired)
            return
        if key in opened:
            self.stats.already_open[rule.name] += 1
            return
        self._make_room(rule, opened)
        window_end = at + spec.within
        gap = correlation.form == ABSENCE and self._known_gap(at, window_end)
        corr = Open(rule.name, key, [Held.of(event, seq, at)], window_end + spec.grace, gap)
        self._add(correlation, opened, corr)

    def _count(
        self,
        rule: CompiledRule,
        correlation: CompiledCorrelation,
        opened: OrderedDict[str, Open],
        key: str,
        held: Held,
        event: Event,
        fired: list[Firing],
    ) -> None:
        spec = correlation.spec
        corr = opened.get(key)
        if corr is None:
            # One event never fills a window (`times` is 2 or more).
            self._make_room(rule, opened)
            corr = Open(rule.name, key, [held], held.at + spec.within + spec.grace, False)
            self._add(correlation, opened, corr)
            return
        if any(seen.id == held.id for seen in corr.held):
            return  # matched again (after a restart): counted once
        # Events arrive in any order; a window is about when they happened.
        # What happened longer ago than a window (and its grace) no longer counts.
        oldest = self.clock.now() - spec.within - spec.grace
        corr.held = sorted(
            [seen for seen in corr.held if seen.at >= oldest] + [held], key=lambda s: s.at
        )
        window = _full_window(corr.held, spec.times, spec.within)
        if window is None:
            self._reschedule(corr, max(seen.at for seen in corr.held) + spec.within + spec.grace)
            self._record_open(correlation, corr)
            return
        self._close(corr)
        self.stats.fired[rule.name] += 1
        first = corr.held[window]
        context = self._context(corr, first, elapsed=round(held.at - first.at, 3))
        context["count"] = spec.times
        fired.append(Firing(rule, event, held.seq, context, context["correlation_id"]))

    def _key(
        self, rule: CompiledRule, search: Any, root: dict[str, Any], event: Event
    ) -> str | None:
        try:
            return _key_text(search(root))
        except Exception as exc:  # noqa: BLE001 - this event's problem: said, and it takes no part
            self._failed(rule, event, "key", exc)
            return None

    def _failed(self, rule: CompiledRule, event: Event, key: str, exc: Exception) -> None:
        self.stats.errors[rule.name] += 1
        self._logs.log(
            logging.WARNING,
            ("failed", rule.name, key),
            "%s of rule %r failed on %s: %s; the event takes no part in its correlations",
            key, rule.name, event.name, shorten(str(exc)),
        )  # fmt: skip

    # -- opening, closing ----------------------------------------------------------

    def _make_room(self, rule: CompiledRule, opened: OrderedDict[str, Open]) -> None:
        assert rule.correlation is not None
        limit = rule.correlation.spec.max_open
        while len(opened) >= limit:
            _, oldest = next(iter(opened.items()))
            self._close(oldest)
            self.stats.dropped[rule.name] += 1
            self._logs.log(
                logging.WARNING,
                ("dropped", rule.name),
                "rule %r has %d open correlations (max_open): dropped the oldest, key %s "
                "(%d dropped so far)",
                rule.name, limit, shorten(oldest.key, 100), self.stats.dropped[rule.name],
            )  # fmt: skip

    def _add(
        self, correlation: CompiledCorrelation, opened: OrderedDict[str, Open], corr: Open
    ) -> None:
        opened[corr.key] = corr
        self._deadlines.add(corr.due_at, corr)
        self.stats.opened[corr.rule] += 1
        self._record_open(correlation, corr)

    def _reschedule(self, corr: Open, deadline: float) -> None:
        if deadline == corr.due_at:
            return
        self._deadlines.forget()
        corr.deadline = corr.due_at = deadline
        self._deadlines.add(deadline, corr)

    def _close(self, corr: Open) -> None:
        if not corr.alive:
            return
        corr.alive = False
        self._deadlines.forget()
        opened = self._open.get(corr.rule)
        if opened is not None and opened.get(corr.key) is corr:
            del opened[corr.key]
        self._change((CLOSED, corr.rule, corr.key))

    def _record_open(self, correlation: CompiledCorrelation, corr: Open) -> None:
        """For the journal: `corr` opened or changed."""
        if self.keep_changes:
            self._changes.append(self._opened_change(correlation, corr))

    @staticmethod
    def _opened_change(correlation: CompiledCorrelation, corr: Open) -> StateChange:
        events = orjson.dumps([held.stored(whole=i > 0) for i, held in enumerate(corr.held)])
        return (
            OPENED, corr.rule, corr.key, correlation.definition, correlation.form,
            corr.start.seq, corr.deadline, int(corr.gap), events,
        )  # fmt: skip

    def _context(self, corr: Open, start: Held, **extra: Any) -> dict[str, Any]:
        return {
            "start": start.body(),
            "key": orjson.loads(corr.key),
            "correlation_id": firing_key(corr.rule, corr.key, start.id),
            **extra,
        }

    # -- time -------------------------------------------------------------------

    def due(self, now: float) -> list[Firing]:
        """Deadlines up to `now`: absences fire (or wait to know about a gap,
        or are suppressed), sequences and counts expire."""
        fired: list[Firing] = []
        while (corr := self._deadlines.pop_due(now)) is not None:
            rule = self._rules.get(corr.rule)
            if rule is None or rule.correlation is None:  # its rule is gone (dropped on reload)
                self._close(corr)
                continue
            correlation = rule.correlation
            if correlation.form != ABSENCE:
                self._close(corr)
                self.stats.expired[rule.name] += 1
                continue
            firing = self._absence_due(rule, correlation, corr)
            if firing is not None:
                fired.append(firing)
        return fired

    def _absence_due(
        self, rule: CompiledRule, correlation: CompiledCorrelation, corr: Open
    ) -> Firing | None:
        now = self.clock.now()
        start = corr.start
        verdict = self._gap_verdict(corr, start.at, start.at + correlation.spec.within, now)
        if verdict is None:
            # Not known yet whether the sources missed something: look again soon.
            corr.due_at = now + HOLD_RECHECK
            self._deadlines.add(corr.due_at, corr)
            return None
        self._close(corr)
        if verdict:
            self.stats.gaps[rule.name] += 1
            choice = correlation.spec.on_gap
            if choice == "suppress":
                self.stats.suppressed[rule.name] += 1
                log.info(
                    "rule %r: a connection gap overlapped the window of key %s; not fired "
                    "(on_gap = \"suppress\")", rule.name, shorten(corr.key, 100),
                )  # fmt: skip
                return None
        self.stats.fired[rule.name] += 1
        context = self._context(
            corr,
            start,
            deadline=corr.deadline,
            late_by=round(max(0.0, now - corr.deadline), 3),
            gap=bool(verdict) and correlation.spec.on_gap == "mark",
        )
        return Firing(rule, start.event(), start.seq, context, context["correlation_id"])

    def _gap_verdict(self, corr: Open, begin: float, end: float, now: float) -> bool | None:
        """Whether a gap overlapped the window [begin, end]; None: not known yet."""
        if corr.gap or self._known_gap(begin, end):
            return True
        watch = self.watch
        if watch is None:
            return None if self.watch_required else False
        if any(start < end and stop > begin for start, stop in watch.gaps_since(begin)):
            return True
        until = watch.complete_until()
        if until is None:
            return None
        if until >= end or watch.threshold is None:
            return False
        # A source has been without a connection since `until`, inside the
        # window: a gap once that lasts as long as the threshold.
        return True if now - until >= watch.threshold else None

    def _known_gap(self, begin: float, end: float) -> bool:
        return any(start < end and stop > begin for start, stop in self._gaps)

    def _gap_event(self, event: Event) -> None:
        payload = event.body.get("payload")
        try:
            assert isinstance(payload, dict)
            start = _epoch(payload["start_time"])
            end = _epoch(payload["end_time"])
        except (AssertionError, KeyError, TypeError, ValueError):
            return  # not one of ours (a hand-written event): nothing to learn from it
        self.note_gap(start, end)

    def note_gap(self, start: float, end: float) -> None:
        """The sources could not deliver from `start` to `end`: mark every
        open absence whose window overlaps it, and remember it for windows
        that open later (an opening event that arrives late)."""
        if (start, end) in self._gaps:
            return
        self._gaps.append((start, end))
        del self._gaps[:-_GAPS_KEPT]
        for name, opened in self._open.items():
            rule = self._rules.get(name)
            correlation = rule.correlation if rule is not None else None
            if correlation is None or correlation.form != ABSENCE:
                continue
            for corr in opened.values():
                begin = corr.start.at
                if not corr.gap and start < begin + correlation.spec.within and end > begin:
                    corr.gap = True
                    self._record_open(correlation, corr)

    # -- start, reload, cancel -----------------------------------------------------

    def restore(self, rows: Iterable[CorrelationRow]) -> ReloadReport:
        """Open again what the journal kept (at start, before any event):
        correlations of rules that still exist with the same definition;
        the others are closed, and said."""
        report = ReloadReport()
        for row in rows:
            rule = self._rules.get(row.rule)
            correlation = rule.correlation if rule is not None else None
            why = _why_not_kept(correlation, row.definition)
            held = _held(row)
            if why is None and not held:
                why = "its opening event is no longer in the journal"
            if why is not None:
                _count_drop(report, row.rule, why)
                self._change((CLOSED, row.rule, row.key))
                continue
            assert rule is not None and correlation is not None
            opened = self._open[row.rule]
            if row.key in opened:
                continue
            self._make_room(rule, opened)
            corr = Open(row.rule, row.key, held, row.deadline, row.gap)
            opened[corr.key] = corr
            self._deadlines.add(corr.due_at, corr)
            report.kept[row.rule] = report.kept.get(row.rule, 0) + 1
        self._say("start", report)
        return report

    def replace_rules(self, rules: Sequence[CompiledRule]) -> ReloadReport:
        """A reload: keep the open correlations of rules that still exist
        with the same definition (`CompiledCorrelation.definition`), close
        the others; the report says which."""
        fresh = {rule.name: rule for rule in rules if rule.correlation is not None}
        report = ReloadReport()
        for name, opened in list(self._open.items()):
            if not opened:
                continue
            new = fresh.get(name)
            old = self._rules.get(name)
            definition = old.correlation.definition if old and old.correlation else ""
            why = _why_not_kept(new.correlation if new else None, definition)
            if why is None:
                report.kept[name] = len(opened)
                continue
            report.dropped[name] = (len(opened), why)
            for corr in list(opened.values()):
                self._close(corr)
        self._use(list(fresh.values()))
        for name in [name for name, opened in self._open.items() if not opened]:
            if name not in self._rules:
                del self._open[name]
        self._say("reload", report)
        return report

    @staticmethod
    def _say(when: str, report: ReloadReport) -> None:
        for name, (count, why) in sorted(report.dropped.items()):
            log.warning("%s: dropped %d open correlation(s) of rule %r: %s", when, count, name, why)
        kept = sum(report.kept.values())
        if kept:
            log.info("%s: kept %d open correlation(s) of %d rule(s)", when, kept, len(report.kept))

    def rows(self) -> list[CorrelationRow]:
        """Every open correlation whole, its events included: what a store
        that cannot look events up (the cluster's snapshot) keeps."""
        rows = []
        for name, opened in self._open.items():
            rule = self._rules.get(name)
            definition = rule.correlation.definition if rule and rule.correlation else ""
            form = rule.correlation.form if rule and rule.correlation else ""
            for corr in opened.values():
                events = orjson.dumps([held.stored(whole=True) for held in corr.held])
                row = CorrelationRow(
                    name, corr.key, definition, form, corr.start.seq, corr.deadline, corr.gap,
                    events,
                )  # fmt: skip
                rows.append(row)
        return rows

    @property
    def gaps(self) -> list[tuple[float, float]]:
        """The gap intervals remembered (`note_gap`), for a snapshot."""
        return list(self._gaps)

    def cancel(self, rule: str, key: str) -> bool:
        """Close one open correlation without firing it (`zoomrules timers cancel`)."""
        opened = self._open.get(rule)
        corr = opened.get(key) if opened is not None else None
        if corr is None:
            return False
        self._close(corr)
        log.info("rule %r: correlation %s cancelled", rule, shorten(key, 100))
        return True


class Timeline:
    """Temporal rules on the events' own time (`replay`, `test`): before each
    event, the deadlines up to when it happened fall, each at its moment;
    a recorded day replays in seconds to the firings it made."""

    def __init__(self, rules: Sequence[CompiledRule]) -> None:
        self.clock = EventClock()
        self.correlations = Correlations(rules, clock=self.clock, keep_changes=False)

    def before(self, event: Event) -> list[Firing]:
        """What falls due before `event` happened (call first, then `observe`):
        an event at the very moment of a deadline comes first (a window
        includes its end)."""
        return self.advance(event_time(event), inclusive=False)

    def observe(
        self, event: Event, matched: Sequence[CompiledRule], seq: int | None = None
    ) -> list[Firing]:
        return self.correlations.observe(event, seq, matched)

    def advance(self, when: float, *, inclusive: bool = True) -> list[Firing]:
        """Move the clock to `when`, firing each deadline on the way at its
        own moment (by event time, nothing fires late); `inclusive=False`
        leaves those due at `when` itself."""
        fired: list[Firing] = []
        correlations, clock = self.correlations, self.clock
        while (deadline := correlations.next_deadline()) is not None and (
            deadline < when or (inclusive and deadline == when)
        ):
            clock.set(deadline)
            fired.extend(correlations.due(deadline))
        clock.set(when)
        return fired


def fired_at(firing: Firing) -> float:
    """When a firing was made on the events' clock (`Timeline`): its
    deadline for an absence, else when its event happened."""
    context = firing.context
    if context is not None and "deadline" in context:
        deadline: float = context["deadline"]
        return deadline
    return event_time(firing.event)


def _full_window(held: Sequence[Held], times: int, within: float) -> int | None:
    """The index of the first of `times` events (sorted by event time) that
    happened within `within` of each other, if there are that many."""
    for first in range(len(held) - times + 1):
        if held[first + times - 1].at - held[first].at <= within:
            return first
    return None


def _why_not_kept(correlation: CompiledCorrelation | None, definition: str) -> str | None:
    if correlation is None:
        return "the rule is gone (or no longer temporal)"
    if correlation.definition != definition:
        return "its definition changed (on, when, key, form or window)"
    return None


def _held(row: CorrelationRow) -> list[Held]:
    """The events a stored correlation holds (empty when its opening event
    is no longer in the journal)."""
    held = [
        Held(at, seq, event_id, name, received_at, source, orjson.dumps(body))
        for at, seq, event_id, name, received_at, source, body in orjson.loads(row.events)
    ]
    return held if held and held[0].seq == row.seq else []


def _count_drop(report: ReloadReport, rule: str, why: str) -> None:
    count, _ = report.dropped.get(rule, (0, why))
    report.dropped[rule] = (count + 1, why)


def _epoch(text: Any) -> float:
    if not isinstance(text, str):
        raise TypeError("not a time")
    return datetime.fromisoformat(text).timestamp()
