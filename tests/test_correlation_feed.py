"""Temporal rules in the daemon's journal feed, on a real SQLite journal and
the test's clock: state and deadlines survive a stop, a deadline that fell
while stopped fires once at the next start, late events, gaps, reloads,
limits, cancelling, and throttle windows kept across restarts."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pytest
from correlation_support import (
    RECORD,
    T0,
    ManualClock,
    Recorder,
    at,
    ended,
    gap_event,
    joined,
    load_recorded,
    running_feed,
    started,
    zoom_event,
)
from daemon_process import poll_until

from engine.journal.sqlite.admin import open_admin

HOST = "z8yCxjabcdEFGHfp8uQ"
MINUTE = 60_000

HOST_MISSING = f"""
[[rule]]
name = "host-missing"
on   = "meeting.started"
key  = "payload.object.uuid"
  [rule.unless]
  on     = "meeting.participant_joined"
  when   = "payload.object.participant.id == zoomrules.start.payload.object.host_id"
  within = "5m"
  grace  = "2s"
{RECORD}
"""

RECORDED_AFTER = f"""
[[rule]]
name = "recording-after-meeting"
on   = "meeting.ended"
key  = "payload.object.uuid"
  [rule.then]
  on     = "recording.completed"
  within = "2h"
{RECORD}  value = "{{{{ zoomrules.start.event }}}} then {{{{ event }}}}"
"""

JBH_RETRIES = f"""
[[rule]]
name = "waits-for-host"
on   = "meeting.participant_jbh_waiting"
key  = "payload.object.participant.id"
count = {{ times = 3, within = "10m" }}
{RECORD}  value = "{{{{ zoomrules.count }}}}"
"""


def rows(tmp_path: Path, sql: str) -> list[tuple[Any, ...]]:
    with sqlite3.connect(tmp_path / "state" / "journal.db") as conn:
        return conn.execute(sql).fetchall()


def jbh(participant: str, ms: float) -> Any:
    return zoom_event("meeting.participant_jbh_waiting", at(ms), participant={"id": participant})


@pytest.mark.anyio
async def test_an_absence_due_while_stopped_fires_once_at_the_next_start(tmp_path: Path) -> None:
    recorder = Recorder()
    loaded = load_recorded(tmp_path, HOST_MISSING, recorder)
    clock = ManualClock()
    async with running_feed(loaded, clock) as feed:
        await feed.send(started("m1", 0))
        await feed.settled()
    assert recorder.calls == []
    assert rows(tmp_path, "SELECT rule, key, form FROM correlations") == [
        ("host-missing", '"m1"', "absence")
    ]
    clock.set(T0 + 900)  # stopped across the deadline (5:02)
    async with running_feed(loaded, clock) as feed:
        (call,) = await recorder.wait_calls(1)
        await feed.settled()
    rule, meta = call
    assert rule == "host-missing"
    assert meta["late_by"] == 900 - 302
    assert meta["gap"] is False
    assert meta["start"]["payload"]["object"]["uuid"] == "m1"
    assert meta["event_id"] == started("m1", 0).id
    # Once: nothing left open, one job with the firing's key, none at the next start.
    assert rows(tmp_path, "SELECT COUNT(*) FROM correlations") == [(0,)]
    assert rows(tmp_path, "SELECT rule, state, firing_key FROM jobs") == [
        ("host-missing", "done", meta["correlation_id"])
    ]
    clock.advance(3600)
    async with running_feed(loaded, clock) as feed:
        await feed.settled()
    assert len(recorder.calls) == 1


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("happened_ms", "fires"), [(5 * MINUTE - 1, False), (5 * MINUTE + 1, True)]
)
async def test_the_follow_up_a_millisecond_either_side_of_the_window_end_arriving_at_the_deadline(
    tmp_path: Path, happened_ms: int, fires: bool
) -> None:
    recorder = Recorder()
    loaded = load_recorded(tmp_path, HOST_MISSING, recorder)
    clock = ManualClock()
    async with running_feed(loaded, clock) as feed:
        await feed.send(started("m1", 0))
        await feed.settled()
        # It arrives a second after the window's end, within the 2 s grace.
        clock.set(T0 + 301)
        await feed.send(joined("m1", happened_ms, HOST, received_at=T0 + 301))
        await feed.settled()
        clock.set(T0 + 400)
        if fires:
            await recorder.wait_calls(1)
        await feed.settled()
    assert [rule for rule, _ in recorder.calls] == (["host-missing"] if fires else [])


@pytest.mark.anyio
async def test_a_follow_up_arriving_after_the_decision_is_late_and_fires_nothing_more(
    tmp_path: Path,
) -> None:
    recorder = Recorder()
    loaded = load_recorded(tmp_path, HOST_MISSING + RECORDED_AFTER, recorder)
    clock = ManualClock()
    async with running_feed(loaded, clock) as feed:
        await feed.send(started("m1", 0), ended("m1", 0))
        await feed.settled()
        clock.set(T0 + 303)
        await recorder.wait_calls(1)
        # Happened at 4:00, arrived at 5:03: the absence had fired.
        await feed.send(joined("m1", 4 * MINUTE, HOST, received_at=T0 + 303))
        # The recording happened within the sequence's window and arrives
        # three hours later, after its window and grace: too late.
        clock.set(T0 + 3 * 3600)
        late = zoom_event("recording.completed", at(MINUTE), uuid="m1", received_at=T0 + 3 * 3600)
        await feed.send(late)
        await feed.settled()
    assert [rule for rule, _ in recorder.calls] == ["host-missing"]


@pytest.mark.anyio
async def test_a_late_follow_up_within_grace_completes_a_sequence(tmp_path: Path) -> None:
    recorder = Recorder()
    loaded = load_recorded(tmp_path, RECORDED_AFTER, recorder)
    clock = ManualClock()
    async with running_feed(loaded, clock) as feed:
        await feed.send(ended("m1", 0))
        await feed.settled()
        clock.set(T0 + 2 * 3600 + 5)  # past the window (2h), within the 10 s grace
        late = zoom_event("recording.completed", at(119 * MINUTE), uuid="m1", received_at=T0 + 7205)
        await feed.send(late)
        await recorder.wait_calls(1)
        await feed.settled()
    assert recorder.calls == [("recording-after-meeting", "meeting.ended then recording.completed")]


@pytest.mark.anyio
async def test_a_gap_event_overlapping_the_window_marks_the_firing(tmp_path: Path) -> None:
    recorder = Recorder()
    loaded = load_recorded(tmp_path, HOST_MISSING, recorder)
    clock = ManualClock()
    async with running_feed(loaded, clock) as feed:
        await feed.send(started("m1", 0), started("m2", 3 * MINUTE))
        await feed.settled()
        clock.set(T0 + 200)
        await feed.send(gap_event(T0 + 120, T0 + 200))
        await feed.settled()
        clock.set(T0 + 600)
        await recorder.wait_calls(2)
        await feed.settled()
    assert {meta["key"]: meta["gap"] for _, meta in recorder.calls} == {"m1": True, "m2": True}
    recorder.calls.clear()
    async with running_feed(loaded, clock) as feed:
        await feed.send(started("m3", 10 * MINUTE))
        await feed.settled()
        clock.set(T0 + 1000)
        await recorder.wait_calls(1)
    assert recorder.calls[0][1]["gap"] is False


@pytest.mark.anyio
async def test_a_sequence_and_a_count_keep_their_state_across_a_restart(tmp_path: Path) -> None:
    recorder = Recorder()
    loaded = load_recorded(tmp_path, RECORDED_AFTER + JBH_RETRIES, recorder)
    clock = ManualClock()
    async with running_feed(loaded, clock) as feed:
        await feed.send(ended("m1", 0), jbh("p1", 0), jbh("p1", MINUTE))
        await feed.settled()
    clock.set(T0 + 180)
    async with running_feed(loaded, clock) as feed:
        await feed.send(
            jbh("p1", 3 * MINUTE), zoom_event("recording.completed", at(3 * MINUTE), uuid="m1")
        )
        await recorder.wait_calls(2)
        await feed.settled()
    assert sorted(recorder.calls) == [
        ("recording-after-meeting", "meeting.ended then recording.completed"),
        ("waits-for-host", 3),
    ]
    assert rows(tmp_path, "SELECT COUNT(*) FROM correlations") == [(0,)]


@pytest.mark.anyio
async def test_a_reload_keeps_unchanged_rules_correlations_and_drops_changed_ones(
    tmp_path: Path,
) -> None:
    recorder = Recorder()
    loaded = load_recorded(tmp_path, HOST_MISSING + RECORDED_AFTER, recorder)
    clock = ManualClock()
    async with running_feed(loaded, clock) as feed:
        await feed.send(started("m1", 0), ended("m1", 0))
        await feed.settled()
        # The absence's actions change (kept); the sequence's window (dropped).
        changed = (
            (HOST_MISSING + RECORDED_AFTER)
            .replace(RECORD, RECORD + '  value = "new: {{ zoomrules.key }}"\n', 1)
            .replace('within = "2h"', 'within = "3h"')
        )
        feed.feed.pipeline.replace_rules(load_recorded(tmp_path, changed, recorder, "b.toml"))
        await feed.send(zoom_event("recording.completed", at(MINUTE), uuid="m1"))
        await feed.settled()
        clock.set(T0 + 400)
        await recorder.wait_calls(1)
        await feed.settled()
    assert recorder.calls == [("host-missing", "new: m1")]
    assert rows(tmp_path, "SELECT COUNT(*) FROM correlations") == [(0,)]


@pytest.mark.anyio
async def test_at_max_open_the_oldest_is_dropped_in_the_journal_too(tmp_path: Path) -> None:
    recorder = Recorder()
    rules = HOST_MISSING.replace('grace  = "2s"', 'grace  = "2s"\n  max_open = 2')
    loaded = load_recorded(tmp_path, rules, recorder)
    clock = ManualClock()
    async with running_feed(loaded, clock) as feed:
        await feed.send(started("a", 0), started("b", 1000), started("c", 2000))
        await feed.settled()
        assert feed.feed.correlations.stats.dropped["host-missing"] == 1
    assert rows(tmp_path, "SELECT key FROM correlations ORDER BY key") == [('"b"',), ('"c"',)]
    clock.set(T0 + 400)
    async with running_feed(loaded, clock) as feed:
        await recorder.wait_calls(2)
    assert sorted(meta["key"] for _, meta in recorder.calls) == ["b", "c"]


@pytest.mark.anyio
async def test_a_correlation_cancelled_beside_the_running_feed_never_fires(tmp_path: Path) -> None:
    recorder = Recorder()
    loaded = load_recorded(tmp_path, HOST_MISSING, recorder)
    clock = ManualClock()
    async with running_feed(loaded, clock) as feed:
        await feed.send(started("m1", 0), started("m2", 0))
        await feed.settled()
        async with open_admin(loaded.config.engine) as admin:
            assert await admin.cancel_correlations([("host-missing", '"m1"')]) == 1
        # Picked up within the feed's retry poll (a second).
        await poll_until(lambda: len(feed.feed.correlations) == 1, timeout=5)
        clock.set(T0 + 400)
        await recorder.wait_calls(1)
        await feed.settled()
    assert [meta["key"] for _, meta in recorder.calls] == ["m2"]


THROTTLED = f"""
[[rule]]
name = "once-an-hour"
on   = "meeting.started"
throttle = {{ key = "payload.object.host_id", limit = 1, per = "1h" }}
{RECORD}  value = "{{{{ payload.object.uuid }}}}"
"""


@pytest.mark.anyio
async def test_throttle_windows_survive_a_restart(tmp_path: Path) -> None:
    recorder = Recorder()
    loaded = load_recorded(tmp_path, THROTTLED, recorder)
    clock = ManualClock()
    async with running_feed(loaded, clock) as feed:
        await feed.send(started("m1", 0))
        await recorder.wait_calls(1)
        await feed.settled()
    assert [rule for rule, *_ in rows(tmp_path, "SELECT rule FROM throttle_windows")] == [
        "once-an-hour"
    ]
    loaded = load_recorded(tmp_path, THROTTLED, recorder)  # a fresh process's throttles
    async with running_feed(loaded, clock) as feed:
        await feed.send(started("m2", MINUTE), started("m3", MINUTE, host_id="someone-else"))
        await recorder.wait_calls(2)
        await feed.settled()
        assert feed.feed.pipeline.stats.throttled["once-an-hour"] == 1
    assert [value for _, value in recorder.calls] == ["m1", "m3"]
