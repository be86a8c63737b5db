"""Temporal rules' state machine (engine.correlate) on the events' own clock:
absence, sequence and count, their windows by event time, keys, limits,
gaps and reloads. The daemon's side (journal, restarts, crashes) is in
tests/test_correlation_daemon.py."""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytest
from correlation_support import LOG, T0, at, ended, gap_event, joined, load, started, zoom_event

from engine.correlate import Correlations, Firing, Timeline, fired_at
from engine.events import Event
from engine.loader import LoadedRules
from engine.timers import EventClock

HOST = "z8yCxjabcdEFGHfp8uQ"  # the corpus meeting's host_id

HOST_MISSING = f"""
version = 1
[[rule]]
name = "host-missing"
on   = "meeting.started"
key  = "payload.object.uuid"
  [rule.unless]
  on     = "meeting.participant_joined"
  when   = "payload.object.participant.id == zoomrules.start.payload.object.host_id"
  within = "5m"
  grace  = "0s"
{LOG}
"""

RECORDED_AFTER = f"""
version = 1
[[rule]]
name = "recording-after-meeting"
on   = "meeting.ended"
key  = "payload.object.uuid"
  [rule.then]
  on     = "recording.completed"
  within = "2h"
  grace  = "0s"
{LOG}
"""

JBH_RETRIES = f"""
version = 1
[[rule]]
name = "waits-for-host"
on   = "meeting.participant_jbh_waiting"
key  = "payload.object.participant.id"
count = {{ times = 3, within = "10m", grace = "0s" }}
{LOG}
"""

MINUTE = 60_000  # ms


def run(
    loaded: LoadedRules, events: Iterable[Event], *, until: float | None = None
) -> list[tuple[float, Firing]]:
    """Every firing, with when it was made by the events' clock."""
    timeline = Timeline(loaded.rules)
    fired: list[Firing] = []
    for event in events:
        fired.extend(timeline.before(event))
        fired.extend(timeline.observe(event, loaded.matcher.match_event(event)))
    if until is not None:
        fired.extend(timeline.advance(until))
    return [(fired_at(firing), firing) for firing in fired]


def names(fired: list[tuple[float, Firing]]) -> list[tuple[float, str, str]]:
    return [(round(when - T0, 3), f.rule.name, f.event.name) for when, f in fired]


def jbh(participant: str, ms: float, **extra: Any) -> Event:
    return zoom_event(
        "meeting.participant_jbh_waiting", at(ms), participant={"id": participant}, **extra
    )


def recording(uuid: str, ms: float) -> Event:
    return zoom_event("recording.completed", at(ms), uuid=uuid)


# -- absence --------------------------------------------------------------------


def test_an_absence_fires_at_its_deadline_on_the_opening_event(tmp_path: Path) -> None:
    loaded = load(tmp_path, HOST_MISSING)
    fired = run(loaded, [started("m1", 0), joined("m1", MINUTE)], until=T0 + 3600)
    assert names(fired) == [(300.0, "host-missing", "meeting.started")]
    _, firing = fired[0]
    context = firing.context
    assert context is not None
    assert context["start"]["payload"]["object"]["uuid"] == "m1"
    assert context["key"] == "m1"
    assert context["late_by"] == 0.0 and context["gap"] is False
    assert context["deadline"] == T0 + 300
    assert firing.key == context["correlation_id"] and len(firing.key) == 32


def test_the_host_joining_within_the_window_satisfies_the_absence(tmp_path: Path) -> None:
    loaded = load(tmp_path, HOST_MISSING)
    events = [started("m1", 0), joined("m1", 4 * MINUTE, HOST)]
    assert run(loaded, events, until=T0 + 3600) == []


@pytest.mark.parametrize(("offset_ms", "fires"), [(-1, False), (0, False), (1, True)])
def test_the_follow_up_one_millisecond_either_side_of_the_window_end(
    tmp_path: Path, offset_ms: int, fires: bool
) -> None:
    loaded = load(tmp_path, HOST_MISSING)
    events = [started("m1", 0), joined("m1", 5 * MINUTE + offset_ms, HOST)]
    fired = run(loaded, events, until=T0 + 3600)
    assert [f.rule.name for _, f in fired] == (["host-missing"] if fires else [])


def test_a_follow_up_before_the_opening_event_or_of_another_key_does_not_count(
    tmp_path: Path,
) -> None:
    loaded = load(tmp_path, HOST_MISSING)
    # Arrives after the opening event but happened before it.
    before = joined("m1", -1, HOST, received_at=T0 + 10)
    other = joined("m2", MINUTE, HOST)
    fired = run(loaded, [started("m1", 0), before, other], until=T0 + 3600)
    assert names(fired) == [(300.0, "host-missing", "meeting.started")]


def test_a_late_follow_up_counts_by_when_it_happened_within_the_grace(tmp_path: Path) -> None:
    rules = HOST_MISSING.replace('grace  = "0s"', 'grace  = "1m"')
    loaded = load(tmp_path, rules)
    # Happened at 4:59, arrives at 5:40: inside the window, late, within grace.
    late = joined("m1", 5 * MINUTE - 1000, HOST, received_at=T0 + 340)
    timeline = Timeline(loaded.rules)
    timeline.observe(started("m1", 0), loaded.matcher.match_event(started("m1", 0)))
    assert timeline.advance(T0 + 340) == []  # the deadline is 6:00 (window end + grace)
    assert timeline.observe(late, []) == []
    assert timeline.advance(T0 + 3600) == []
    assert timeline.correlations.stats.satisfied["host-missing"] == 1


def test_a_follow_up_arriving_after_the_decision_changes_nothing(tmp_path: Path) -> None:
    loaded = load(tmp_path, HOST_MISSING)
    timeline = Timeline(loaded.rules)
    opening = started("m1", 0)
    timeline.observe(opening, loaded.matcher.match_event(opening))
    assert [f.rule.name for f in timeline.advance(T0 + 301)] == ["host-missing"]
    late = joined("m1", 4 * MINUTE, HOST, received_at=T0 + 400)
    assert timeline.observe(late, []) == []
    assert len(timeline.correlations) == 0


def test_a_second_opening_event_with_an_open_key_opens_nothing(tmp_path: Path) -> None:
    loaded = load(tmp_path, HOST_MISSING)
    again = started("m1", MINUTE)
    fired = run(loaded, [started("m1", 0), again], until=T0 + 3600)
    assert names(fired) == [(300.0, "host-missing", "meeting.started")]


def test_an_event_whose_key_is_null_takes_no_part(tmp_path: Path) -> None:
    loaded = load(tmp_path, HOST_MISSING)
    opening = started("m1", 0)
    del opening.body["payload"]["object"]["uuid"]
    assert run(loaded, [opening], until=T0 + 3600) == []


def test_a_failing_follow_up_condition_is_counted_and_not_a_follow_up(tmp_path: Path) -> None:
    rules = HOST_MISSING.replace(
        "payload.object.participant.id == zoomrules.start.payload.object.host_id",
        "lower(payload.object.participant.id) == 'x'",
    )
    loaded = load(tmp_path, rules)
    bad = joined("m1", MINUTE, HOST)
    bad.body["payload"]["object"]["participant"]["id"] = 7
    timeline = Timeline(loaded.rules)
    for event in (started("m1", 0), bad):
        timeline.observe(event, loaded.matcher.match_event(event))
    assert timeline.correlations.stats.errors["host-missing"] == 1
    assert [f.rule.name for f in timeline.advance(T0 + 3600)] == ["host-missing"]


# -- sequence -------------------------------------------------------------------


def test_a_sequence_fires_at_the_follow_up_with_the_opening_event(tmp_path: Path) -> None:
    loaded = load(tmp_path, RECORDED_AFTER)
    fired = run(loaded, [ended("m1", 0), recording("m1", 30 * MINUTE)], until=T0 + 86400)
    assert names(fired) == [(1800.0, "recording-after-meeting", "recording.completed")]
    context = fired[0][1].context
    assert context is not None
    assert context["start"]["event"] == "meeting.ended"
    assert context["elapsed"] == 1800.0


@pytest.mark.parametrize(("offset_ms", "fires"), [(-1, True), (0, True), (1, False)])
def test_a_sequence_one_millisecond_either_side_of_its_window(
    tmp_path: Path, offset_ms: int, fires: bool
) -> None:
    loaded = load(tmp_path, RECORDED_AFTER)
    events = [ended("m1", 0), recording("m1", 120 * MINUTE + offset_ms)]
    fired = run(loaded, events, until=T0 + 86400)
    assert bool(fired) is fires
    assert len(Timeline(loaded.rules).correlations) == 0


def test_a_sequence_that_never_completes_expires_quietly(tmp_path: Path) -> None:
    loaded = load(tmp_path, RECORDED_AFTER)
    timeline = Timeline(loaded.rules)
    opening = ended("m1", 0)
    timeline.observe(opening, loaded.matcher.match_event(opening))
    assert timeline.advance(T0 + 86400) == []
    assert timeline.correlations.stats.expired["recording-after-meeting"] == 1
    assert len(timeline.correlations) == 0


# -- count ----------------------------------------------------------------------


def test_a_count_fires_at_the_nth_event_within_its_window(tmp_path: Path) -> None:
    loaded = load(tmp_path, JBH_RETRIES)
    events = [jbh("p1", 0), jbh("p2", MINUTE), jbh("p1", 2 * MINUTE), jbh("p1", 9 * MINUTE)]
    fired = run(loaded, events, until=T0 + 86400)
    assert names(fired) == [(540.0, "waits-for-host", "meeting.participant_jbh_waiting")]
    context = fired[0][1].context
    assert context is not None
    assert context["count"] == 3 and context["elapsed"] == 540.0
    assert context["start"]["event_ts"] == at(0)


def test_a_count_window_slides_and_starts_again_after_a_firing(tmp_path: Path) -> None:
    loaded = load(tmp_path, JBH_RETRIES)
    minutes = [0, 6, 11, 12, 13, 14, 15, 40]
    fired = run(loaded, [jbh("p1", m * MINUTE) for m in minutes], until=T0 + 86400)
    # 0, 6, 11: 11 minutes apart, no; 6, 11, 12: fires at 12; then 13, 14, 15: fires at 15.
    assert [round(when - T0) for when, _ in fired] == [720, 900]


def test_a_late_event_counts_where_it_happened(tmp_path: Path) -> None:
    loaded = load(tmp_path, JBH_RETRIES.replace('grace = "0s"', 'grace = "5m"'))
    late = jbh("p1", MINUTE, received_at=T0 + 9.5 * 60)
    events = [jbh("p1", 0), jbh("p1", 9 * MINUTE), late]
    fired = run(loaded, events, until=T0 + 86400)
    assert [f.event.body["event_ts"] for _, f in fired] == [at(MINUTE)]


def test_the_same_event_is_counted_once(tmp_path: Path) -> None:
    loaded = load(tmp_path, JBH_RETRIES)
    one = jbh("p1", 0)
    assert run(loaded, [one, one, one, jbh("p1", MINUTE)], until=T0 + 86400) == []


# -- limits, gaps ------------------------------------------------------------------


def test_past_max_open_the_oldest_correlation_is_dropped_and_counted(tmp_path: Path) -> None:
    loaded = load(tmp_path, HOST_MISSING.replace('grace  = "0s"', 'grace  = "0s"\n  max_open = 2'))
    timeline = Timeline(loaded.rules)
    for index, uuid in enumerate(["a", "b", "c"]):
        event = started(uuid, index * 1000)
        timeline.observe(event, loaded.matcher.match_event(event))
    assert timeline.correlations.stats.dropped["host-missing"] == 1
    fired = timeline.advance(T0 + 3600)
    assert [f.context["key"] for f in fired if f.context] == ["b", "c"]


@pytest.mark.parametrize(
    ("on_gap", "fires", "marked"),
    [("mark", True, True), ("fire", True, False), ("suppress", False, None)],
)
def test_a_gap_overlapping_an_absence_window(
    tmp_path: Path, on_gap: str, fires: bool, marked: bool | None
) -> None:
    rules = HOST_MISSING.replace('grace  = "0s"', f'grace  = "0s"\n  on_gap = "{on_gap}"')
    loaded = load(tmp_path, rules)
    gap = gap_event(T0 + 60, T0 + 90)
    events = [started("m1", 0), gap, started("m2", 100_000)]
    fired = run(loaded, events, until=T0 + 3600)
    by_key = {f.context["key"]: f.context for _, f in fired if f.context}
    # m2's window (1:40 - 6:40) began after the gap: no mark.
    assert by_key["m2"]["gap"] is False
    if fires:
        assert by_key["m1"]["gap"] is marked
    else:
        assert "m1" not in by_key


def test_a_gap_outside_the_window_or_reported_before_it_opens(tmp_path: Path) -> None:
    loaded = load(tmp_path, HOST_MISSING)
    # A gap event received first, about an interval inside m1's later window
    # (m1's opening event arrives late); and one entirely after m2's window.
    early_gap = gap_event(T0 + 120, T0 + 130)
    late_gap = gap_event(T0 + 700, T0 + 800)
    opening = started("m1", 0, received_at=T0 + 200)
    events = [early_gap, opening, started("m2", 0), late_gap]
    by_key = {
        f.context["key"]: f.context["gap"] for _, f in run(loaded, events, until=T0 + 3600)
        if f.context
    }  # fmt: skip
    assert by_key == {"m1": True, "m2": True}
    clean = {
        f.context["key"]: f.context["gap"]
        for _, f in run(loaded, [started("m3", 0), late_gap], until=T0 + 3600)
        if f.context
    }
    assert clean == {"m3": False}


class _Watch:
    """A StreamWatch the test sets."""

    def __init__(self) -> None:
        self.threshold: float | None = 10.0
        self.until: float | None = None
        self.gaps: list[tuple[float, float]] = []

    def complete_until(self) -> float | None:
        return self.until

    def gaps_since(self, after: float) -> list[tuple[float, float]]:
        return [gap for gap in self.gaps if gap[1] > after]


def test_an_absence_due_while_a_source_is_disconnected_waits_to_know_if_it_was_a_gap(
    tmp_path: Path,
) -> None:
    loaded = load(tmp_path, HOST_MISSING)
    clock = EventClock()
    watch = _Watch()
    correlations = Correlations(loaded.rules, clock=clock, watch=watch)
    for uuid in ("short", "long"):
        opening = started(uuid, 0)
        correlations.observe(opening, 1, loaded.matcher.match_event(opening))
    # Disconnected 5 s before the window ended; the deadline falls: not known yet.
    watch.until = T0 + 295
    clock.set(T0 + 300)
    assert correlations.due(T0 + 300) == []
    # Back after 8 s, under the 10 s threshold: no gap; fires, late, unmarked.
    watch.until = None
    clock.set(T0 + 303)
    assert correlations.due(T0 + 303) == []  # the sources are not known yet (restarting)
    watch.until = T0 + 303
    clock.set(T0 + 304)
    fired = correlations.due(T0 + 304)
    assert [(f.context["gap"], f.context["late_by"]) for f in fired if f.context] == [
        (False, 4.0),
        (False, 4.0),
    ]


def test_an_absence_due_during_a_long_disconnection_is_a_gap_once_past_the_threshold(
    tmp_path: Path,
) -> None:
    loaded = load(tmp_path, HOST_MISSING)
    clock = EventClock()
    watch = _Watch()
    correlations = Correlations(loaded.rules, clock=clock, watch=watch)
    opening = started("m1", 0)
    correlations.observe(opening, 1, loaded.matcher.match_event(opening))
    watch.until = T0 + 298
    clock.set(T0 + 300)
    assert correlations.due(clock.now()) == []
    clock.set(T0 + 308)
    fired = correlations.due(clock.now())
    assert [f.context["gap"] for f in fired if f.context] == [True]


def test_without_a_watch_attached_a_daemon_holds_absences(tmp_path: Path) -> None:
    loaded = load(tmp_path, HOST_MISSING)
    clock = EventClock()
    correlations = Correlations(loaded.rules, clock=clock, watch_required=True)
    opening = started("m1", 0)
    correlations.observe(opening, 1, loaded.matcher.match_event(opening))
    clock.set(T0 + 400)
    assert correlations.due(clock.now()) == []
    watch = _Watch()
    watch.gaps = [(T0 + 100, T0 + 350)]
    watch.until = T0 + 400
    correlations.watch = watch
    clock.set(T0 + 401)
    fired = correlations.due(clock.now())
    assert [(f.context["gap"], f.context["late_by"]) for f in fired if f.context] == [(True, 101.0)]


# -- reload ------------------------------------------------------------------------


def test_a_reload_keeps_unchanged_rules_correlations_and_drops_changed_ones(
    tmp_path: Path,
) -> None:
    text = HOST_MISSING + RECORDED_AFTER.replace("version = 1", "")
    loaded = load(tmp_path, text)
    timeline = Timeline(loaded.rules)
    for event in (started("m1", 0), ended("m1", 0)):
        timeline.observe(event, loaded.matcher.match_event(event))
    assert timeline.correlations.open_counts() == {"host-missing": 1, "recording-after-meeting": 1}
    # New actions and grace for one rule (kept), a longer window for the other (dropped).
    changed = text.replace('type = "log"', 'type = "log"\n  path = "x.log"', 1)
    changed = changed.replace('within = "2h"', 'within = "3h"')
    report = timeline.correlations.replace_rules(load(tmp_path, changed, "b.toml").rules)
    assert report.kept == {"host-missing": 1}
    assert report.dropped == {
        "recording-after-meeting": (1, "its definition changed (on, when, key, form or window)")
    }
    assert timeline.correlations.open_counts() == {"host-missing": 1}
    # A rule removed: its correlations go too.
    report = timeline.correlations.replace_rules(load(tmp_path, RECORDED_AFTER, "c.toml").rules)
    assert report.dropped == {"host-missing": (1, "the rule is gone (or no longer temporal)")}
    assert len(timeline.correlations) == 0


def test_changes_are_listed_for_the_journal(tmp_path: Path) -> None:
    loaded = load(tmp_path, HOST_MISSING + JBH_RETRIES.replace("version = 1", ""))
    correlations = Correlations(loaded.rules, clock=EventClock())
    opening = started("m1", 0)
    correlations.observe(opening, 7, loaded.matcher.match_event(opening))
    (change,) = correlations.take_changes()
    assert change[:8] == (
        "correlation", "host-missing", '"m1"', change[3], "absence", 7, T0 + 300, 0,
    )  # fmt: skip
    # The opening event is named (the journal keeps it for the correlation).
    assert json.loads(change[8]) == [[T0, 7, opening.id]]
    correlations.observe(joined("m1", MINUTE, HOST), 8, [])
    assert correlations.take_changes() == [("closed", "host-missing", '"m1"')]
    # A count's later events are whole: retention may remove them from the journal.
    first, second = jbh("p1", 0), jbh("p1", MINUTE)
    for seq, event in ((9, first), (10, second)):
        correlations.observe(event, seq, loaded.matcher.match_event(event))
    held = json.loads(correlations.take_changes()[-1][8])
    assert held[0] == [T0, 9, first.id]
    assert held[1][:4] == [T0 + 60, 10, second.id, "meeting.participant_jbh_waiting"]
    assert held[1][6] == second.body
    # Without a journal, nothing is listed.
    timeline = Timeline(loaded.rules)
    timeline.observe(opening, loaded.matcher.match_event(opening))
    assert timeline.correlations.take_changes() == []
