"""`zoomrules replay` of a generated day of meetings gives the firings a
brute-force reading of the same events gives.

Two thousand meetings over a day, made of Zoom's example events: hosts
joining on time, at the edge of the window, late (the event delivered a
minute after it happened) or never; meetings ending after minutes or after
four hours, or not that day; recordings completing after the end, or not;
participants waiting for their host again and again; connection gaps. The
reference below reads the events as the documentation states the rules'
meaning, with nothing of the engine's: for each rule, which events fire.
"""

from __future__ import annotations

import json
import random
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from conftest import example, run_cli, write_rules

from engine.events import event_id

DAY_START = 1770249600.0  # 2026-02-05T00:00:00Z
MINUTE = 60.0
MEETINGS = 2000

HOST_WINDOW, HOST_GRACE = 5 * MINUTE, 30.0
LONG_WINDOW, LONG_GRACE = 4 * 3600.0, 10.0
RECORDING_WINDOW, RECORDING_GRACE = 2 * 3600.0, 10.0
WAITS, WAITS_WINDOW, WAITS_GRACE = 3, 10 * MINUTE, 10.0


def _rules(log: Path) -> str:
    action = f'\n  [[rule.action]]\n  type = "log"\n  path = "{log}"\n'
    return f"""
version = 1

[[rule]]
name = "host-missing"
on   = "meeting.started"
key  = "payload.object.uuid"
  [rule.unless]
  on     = "meeting.participant_joined"
  when   = "payload.object.participant.id == zoomrules.start.payload.object.host_id"
  within = "5m"
  grace  = "30s"
  on_gap = "suppress"
{action}
[[rule]]
name = "meeting-over-4h"
on   = "meeting.started"
key  = "payload.object.uuid"
unless = {{ on = "meeting.ended", within = "4h" }}
{action}
[[rule]]
name = "recording-after-meeting"
on   = "meeting.ended"
key  = "payload.object.uuid"
then = {{ on = "recording.completed", within = "2h" }}
{action}
[[rule]]
name = "waiting-for-host-again"
on    = "meeting.participant_jbh_waiting"
key   = "payload.object.participant.id"
count = {{ times = 3, within = "10m" }}
{action}
"""


@dataclass
class Sent:
    """One event of the day: when it happened, when it arrives, its body."""

    at: float
    arrives: float
    body: dict[str, Any]


def _event(name: str, at: float, **fields: Any) -> dict[str, Any]:
    body = example(name)
    body["event_ts"] = round(at * 1000)
    obj = body["payload"]["object"]
    for field, value in fields.items():
        obj[field] = {**obj.get(field, {}), **value} if isinstance(value, dict) else value
    return body


def _gap(start: float, end: float) -> dict[str, Any]:
    from engine.sources.gaps import Gap, gap_event

    return gap_event(Gap("zoom:default", start, end, "test"), subscription="default").body


def generate_day(seed: int = 18) -> list[Sent]:
    rng = random.Random(seed)
    sent: list[Sent] = []

    def add(at: float, body: dict[str, Any], late: float = 0.0) -> None:
        sent.append(Sent(at, at + late, body))

    for m in range(MEETINGS):
        uuid, host = f"meeting-{m}==", f"host-{m % 300}"
        start = DAY_START + rng.uniform(0, 86400)
        add(start, _event("meeting.started", start, uuid=uuid, host_id=host))
        roll = rng.random()
        if roll < 0.6:
            join = start + rng.uniform(0, 4.5 * MINUTE)
        elif roll < 0.8:  # at the edge of the window: a second either side
            join = start + HOST_WINDOW + rng.uniform(-1.0, 1.0)
        else:
            join = None
        if join is not None:
            # One in ten arrives late: some within the grace, some after the decision.
            late = rng.uniform(5.0, 90.0) if rng.random() < 0.1 else 0.0
            participant = {"id": host, "user_name": "the host"}
            add(
                join,
                _event("meeting.participant_joined", join, uuid=uuid, participant=participant),
                late,
            )
        for guest in range(rng.randrange(3)):
            at = start + rng.uniform(0, 30 * MINUTE)
            participant = {"id": f"guest-{m}-{guest}", "user_name": "a guest"}
            add(at, _event("meeting.participant_joined", at, uuid=uuid, participant=participant))
        roll = rng.random()
        if roll < 0.85:
            end = start + rng.uniform(10 * MINUTE, 2 * 3600)
        elif roll < 0.95:
            end = start + LONG_WINDOW + rng.uniform(-30.0, 30.0)
        else:
            end = None
        if end is not None and end < DAY_START + 86400 + 6 * 3600:
            add(end, _event("meeting.ended", end, uuid=uuid, host_id=host))
            if rng.random() < 0.5:
                ready = end + rng.uniform(0, 3 * 3600)
                add(ready, _event("recording.completed", ready, uuid=uuid, host_id=host))
        if rng.random() < 0.1:
            who = {"id": f"waiter-{rng.randrange(150)}", "user_name": "a waiter"}
            at = start - rng.uniform(0, 20 * MINUTE)
            for _ in range(rng.randrange(1, 6)):
                add(at, _event("meeting.participant_jbh_waiting", at, uuid=uuid, participant=who))
                at += rng.uniform(MINUTE, 6 * MINUTE)
    for _ in range(20):
        start = DAY_START + rng.uniform(0, 86400)
        end = start + rng.uniform(10.0, 120.0)
        add(end, _gap(start, end))
    # In the order they arrive (the order of the file replayed).
    sent.sort(key=lambda s: (s.arrives, s.at))
    return sent


def reference(sent: list[Sent]) -> set[tuple[str, str]]:
    """(rule, id of the event it fires on) for every firing, by the rules' documented meaning.

    Time is the events' own: before an event is read, every deadline earlier
    than the latest `event_ts` read so far (that event's included) has
    fallen; a deadline no later than the last event's time has not.
    """
    clock_after = []  # the latest event time read, once each event is read
    latest = -1.0
    for item in sent:
        latest = max(latest, item.at)
        clock_after.append(latest)
    fired: set[tuple[str, str]] = set()
    name = [s.body["event"] for s in sent]
    obj = [
        s.body["payload"]["object"] if s.body["event"] != "zoomrules.connection_gap" else {}
        for s in sent
    ]

    def fallen(deadline: float, index: int) -> bool:
        """Had `deadline` fallen before event `index` was read?"""
        return deadline < clock_after[index]

    def first_fallen(deadline: float) -> int:
        """The index of the first event read after `deadline` fell (len(sent): never)."""
        return next((i for i, c in enumerate(clock_after) if deadline < c), len(sent))

    gaps = [
        (i, _epoch(s.body["payload"]["start_time"]), _epoch(s.body["payload"]["end_time"]))
        for i, s in enumerate(sent)
        if name[i] == "zoomrules.connection_gap"
    ]
    for a, opening in enumerate(sent):
        if name[a] == "meeting.started":
            uuid, host, start = obj[a]["uuid"], obj[a]["host_id"], opening.at
            deadline = start + HOST_WINDOW + HOST_GRACE
            satisfied = any(
                name[b] == "meeting.participant_joined"
                and obj[b]["uuid"] == uuid
                and obj[b]["participant"]["id"] == host
                and start <= sent[b].at <= start + HOST_WINDOW
                and not fallen(deadline, b)
                for b in range(a + 1, len(sent))
            )
            decided = first_fallen(deadline)
            gap = any(
                g < decided and begin < start + HOST_WINDOW and end > start
                for g, begin, end in gaps
            )
            if not satisfied and decided < len(sent) and not gap:
                fired.add(("host-missing", event_id(opening.body)))
            deadline = start + LONG_WINDOW + LONG_GRACE
            ended = any(
                name[b] == "meeting.ended"
                and obj[b]["uuid"] == uuid
                and start <= sent[b].at <= start + LONG_WINDOW
                and not fallen(deadline, b)
                for b in range(a + 1, len(sent))
            )
            if not ended and first_fallen(deadline) < len(sent):
                fired.add(("meeting-over-4h", event_id(opening.body)))
        elif name[a] == "meeting.ended":
            uuid, end = obj[a]["uuid"], opening.at
            deadline = end + RECORDING_WINDOW + RECORDING_GRACE
            for b in range(a + 1, len(sent)):
                if (
                    name[b] == "recording.completed"
                    and obj[b]["uuid"] == uuid
                    and end <= sent[b].at <= end + RECORDING_WINDOW
                    and not fallen(deadline, b)
                ):
                    fired.add(("recording-after-meeting", event_id(sent[b].body)))
                    break
    # Counts: per participant, in the order read; three within ten minutes
    # fire, and counting starts again.
    counted: dict[str, list[float]] = defaultdict(list)
    for i, item in enumerate(sent):
        if name[i] != "meeting.participant_jbh_waiting":
            continue
        times = counted[obj[i]["participant"]["id"]]
        times[:] = [t for t in times if t >= clock_after[i] - WAITS_WINDOW - WAITS_GRACE]
        times.append(item.at)
        if sum(1 for t in times if item.at - WAITS_WINDOW <= t <= item.at) >= WAITS:
            fired.add(("waiting-for-host-again", event_id(item.body)))
            times.clear()
    return fired


def _epoch(text: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(text).timestamp()


def test_a_replayed_day_fires_what_a_brute_force_reading_of_it_fires(tmp_path: Path) -> None:
    sent = generate_day()
    events = tmp_path / "day.jsonl"
    events.write_text("".join(json.dumps(s.body) + "\n" for s in sent))
    log = tmp_path / "fired.jsonl"
    rules = write_rules(tmp_path, _rules(log))
    env_state = {"ZOOMRULES_STATE_DIR": str(tmp_path / "state")}
    from conftest import cli_env

    result = run_cli("replay", "--json", "-c", rules, events, env=cli_env(**env_state), timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    summary = json.loads(result.stdout)
    assert summary["events"] == len(sent)
    got = {
        (line["rule"], line["event_id"]) for line in map(json.loads, log.read_text().splitlines())
    }
    expected = reference(sent)
    by_rule = defaultdict(int)
    for rule, _ in expected:
        by_rule[rule] += 1
    # Enough of each kind to mean something.
    assert min(by_rule.values()) >= 30, by_rule
    assert got == expected, (sorted(got - expected)[:5], sorted(expected - got)[:5])
