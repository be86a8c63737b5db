"""Temporal rules through the command line: `check` (every bad input named at
its line), `test` (what one event opens), `replay` (what is left open),
`timers` (list, show, cancel); and the journal's migration to schema 4."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest
from conftest import example, run_cli, write_rules
from correlation_support import (
    RECORD,
    T0,
    ManualClock,
    Recorder,
    load_recorded,
    running_feed,
    started,
)

from engine.journal.sqlite.db import JournalDB
from engine.journal.sqlite.files import DB_NAME
from engine.journal.sqlite.schema import SCHEMA_VERSION, migrate

LOG = '\n  [[rule.action]]\n  type = "log"\n'


def check(tmp_path: Path, text: str) -> list[str]:
    rules = write_rules(tmp_path, text)
    result = run_cli("check", "-c", rules)
    assert result.returncode == 2, result.stdout + result.stderr
    prefix = f"{rules}:"
    lines = [line.strip() for line in result.stderr.splitlines()[1:]]
    assert all(line.startswith(prefix) for line in lines), lines
    return [line[len(prefix) :] for line in lines]


def test_check_names_every_bad_temporal_key_at_its_line(tmp_path: Path) -> None:
    problems = check(
        tmp_path,
        f"""
        version = 1
        [[rule]]
        name = "a"
        on   = "meeting.started"
          [rule.unless]
          on     = "meeting.participant_joined"
          when   = "payload.object.participant.id =="
          within = "soon"
          on_gapp = "mark"
        {LOG}
        [[rule]]
        name  = "b"
        on    = "meeting.participant_jbh_waiting"
        key   = "payload.object.participant.id"
        count = {{ times = 1, within = "10m", on_gap = "mark" }}
        then  = {{ on = "x", within = "1m" }}
        throttle = {{ key = "x" }}
        {LOG}
        [[rule]]
        name = "c"
        on   = "meeting.ended"
        key  = "payload.object.uuid"
        unless = "2h"
        {LOG}
        [[rule]]
        name = "d"
        on   = "meeting.ended"
        key  = "payload.object.uuid"
        then = {{ within = "2h", on_gap = "fire", max_open = 0, key = "" }}
        {LOG}
        [[rule]]
        name = "e"
        on   = "meeting.ended"
        key  = "payload.object.uuid"
        {LOG}
        """,
    )
    assert problems == [
        "2: rule 'a', key 'key': is required with unless: the JMESPath expression whose value "
        "ties the events together, e.g. 'payload.object.uuid'",
        "7: rule 'a', key 'unless.when': invalid JMESPath at column 33: Invalid jmespath "
        "expression",
        "8: rule 'a', key 'unless.within': expected a duration like '30s', '10m', '1h', "
        "'250ms', got 'soon'",
        "9: rule 'a', key 'unless.on_gapp': unknown key (did you mean 'on_gap'?)",
        "18: rule 'b', key 'count.on_gap': applies to unless only: a gap in the connection can "
        "hide the event an absence waits for; count has nothing to mark",
        "18: rule 'b', key 'count.times': must be at least 2, got 1",
        "19: rule 'b', key 'then': a rule has one temporal form, and this one has count",
        "20: rule 'b', key 'throttle': cannot be combined with count: a temporal rule fires "
        "once per correlation (count = { ... } is the way to fire on repeats)",
        "29: rule 'c', key 'unless': must be a table { on = ..., within = '5m' }, got string",
        "38: rule 'd', key 'then.on_gap': applies to unless only: a gap in the connection can "
        "hide the event an absence waits for; then has nothing to mark",
        "38: rule 'd', key 'then.on': is required: the event name (or a list of them, globs "
        "allowed) to wait for",
        "38: rule 'd', key 'then.key': must not be empty (leave it out to use the rule's key)",
        "38: rule 'd', key 'then.max_open': must be at least 1, got 0",
        "46: rule 'e', key 'key': a correlation key goes with a temporal form: unless = { ... }, "
        "then = { ... } or count = { ... } (see docs/correlation.md)",
    ]


def test_check_takes_temporal_rules_with_a_cluster_and_refuses_them_without_a_journal(
    tmp_path: Path,
) -> None:
    rule = f"""
        [[rule]]
        name = "long"
        on   = "meeting.started"
        key  = "payload.object.uuid"
        unless = {{ on = "meeting.ended", within = "4h" }}
        {LOG}
    """
    rules = write_rules(
        tmp_path, 'version = 1\n[cluster]\nservers = ["nats://127.0.0.1:4222"]\n' + rule
    )
    result = run_cli("check", "-c", rules)
    assert result.returncode == 0, result.stdout + result.stderr
    (problem,) = check(tmp_path, "version = 1\n[engine]\njournal = false\n" + rule)
    assert problem.startswith("9: rule 'long', key 'unless': ")
    assert "unless rules need [engine] journal = true" in problem


def test_check_warns_of_an_unknown_follow_up_event(tmp_path: Path) -> None:
    rules = write_rules(
        tmp_path,
        f"""
        version = 1
        [[rule]]
        name = "x"
        on   = "meeting.ended"
        key  = "payload.object.uuid"
          [rule.then]
          on     = "recording.complete"
          within = "2h"
        {LOG}
        """,
    )
    result = run_cli("check", "--strict", "-c", rules)
    assert result.returncode == 2
    assert (
        f"{rules}:7: rule 'x', key 'then.on': 'recording.complete' is not an event in Zoom's "
        "catalogue (did you mean 'recording.completed'?)"
    ) in result.stderr


def test_test_shows_what_one_event_opens(tmp_path: Path) -> None:
    rules = write_rules(
        tmp_path,
        f"""
        version = 1
        [[rule]]
        name = "long"
        on   = "meeting.started"
        key  = "payload.object.uuid"
        unless = {{ on = "meeting.ended", within = "4h" }}
        {LOG}
        """,
    )
    event = tmp_path / "started.json"
    event.write_text(json.dumps(example("meeting.started")))
    result = run_cli("test", "-c", rules, event)
    assert result.returncode == 0
    assert (
        'OPENS  long (key "4444AAAiAAAAAiAiAiiAii=="): fires at the deadline unless '
        "meeting.ended comes within 4h"
    ) in result.stdout
    doc = json.loads(run_cli("test", "--json", "-c", rules, event).stdout)
    assert doc["fired"] == []
    assert doc["opens"] == [
        {
            "rule": "long",
            "form": "absence",
            "key": "4444AAAiAAAAAiAiAiiAii==",
            "effect": "fires at the deadline unless meeting.ended comes within 4h",
        }
    ]


def test_replay_counts_what_is_still_open_after_the_last_event(tmp_path: Path) -> None:
    log = tmp_path / "fired.jsonl"
    rules = write_rules(
        tmp_path,
        f"""
        version = 1
        [[rule]]
        name = "long"
        on   = "meeting.started"
        key  = "payload.object.uuid"
        unless = {{ on = "meeting.ended", within = "4h" }}
          [[rule.action]]
          type = "log"
          path = "{log}"
        """,
    )
    events = tmp_path / "events.jsonl"
    first, second, late = (example("meeting.started") for _ in range(3))
    second["payload"]["object"]["uuid"] = "second=="
    late["payload"]["object"]["uuid"] = "later=="
    late["event_ts"] = first["event_ts"] + 5 * 3600 * 1000
    events.write_text("".join(json.dumps(e) + "\n" for e in (first, second, late)))
    env_state = {"ZOOMRULES_STATE_DIR": str(tmp_path / "state")}
    from conftest import cli_env

    result = run_cli("replay", "-c", rules, events, env=cli_env(**env_state))
    assert result.returncode == 0, result.stderr
    # The first two fired at their deadline, 4h10s on, before the third event (5h on).
    assert len(log.read_text().splitlines()) == 2
    assert "1 correlation still open after the last event" in result.stdout
    doc = json.loads(
        run_cli("replay", "--json", "-c", rules, events, env=cli_env(**env_state)).stdout
    )
    assert doc["open_correlations"] == {"count": 1, "rules": [{"rule": "long", "open": 1}]}


@pytest.mark.anyio
async def test_timers_lists_shows_and_cancels_open_correlations(tmp_path: Path) -> None:
    recorder = Recorder()
    rules_text = f"""
[[rule]]
name = "long"
on   = "meeting.started"
key  = "payload.object.uuid"
unless = {{ on = "meeting.ended", within = "4h" }}
{RECORD}
"""
    loaded = load_recorded(tmp_path, rules_text, recorder)
    clock = ManualClock()
    async with running_feed(loaded, clock) as feed:
        await feed.send(started("m1", 0), started("m2", 1000))
        await feed.settled()
    state = ["--state-dir", str(tmp_path / "state")]
    listed = run_cli("timers", "list", *state)
    assert listed.returncode == 0, listed.stderr
    assert '"m1"' in listed.stdout and '"m2"' in listed.stdout
    assert "2 open correlation(s)" in listed.stdout
    rows = json.loads(run_cli("timers", "list", "--json", *state).stdout)
    assert [(r["rule"], r["key"], r["form"], r["deadline"]) for r in rows] == [
        ("long", "m1", "absence", T0 + 4 * 3600 + 10),
        ("long", "m2", "absence", T0 + 1 + 4 * 3600 + 10),
    ]
    shown = json.loads(run_cli("timers", "show", "--json", "long", "m2", *state).stdout)
    assert shown["events"][0]["body"]["payload"]["object"]["uuid"] == "m2"
    text = run_cli("timers", "show", "long", '"m1"', *state).stdout
    assert "form: absence" in text and "meeting.started" in text
    missing = run_cli("timers", "show", "long", "m3", *state)
    assert missing.returncode == 1
    assert "no open correlation of rule 'long' with key m3" in missing.stderr
    # No daemon holds the journal: cancelled at once.
    cancelled = run_cli("timers", "cancel", "long", "m1", *state)
    assert cancelled.stdout.strip() == "cancelled 1 correlation(s)"
    assert [r["key"] for r in json.loads(run_cli("timers", "list", "--json", *state).stdout)] == [
        "m2"
    ]
    assert run_cli("timers", "cancel", "long", "--all", *state).returncode == 0
    assert "no open correlations" in run_cli("timers", "list", *state).stdout
    assert run_cli("timers", "cancel", "long", *state).returncode == 2


def test_a_v3_journal_migrates_to_v4_with_its_data(tmp_path: Path) -> None:
    conn = sqlite3.connect(tmp_path / DB_NAME, isolation_level=None)
    migrate(conn, target=3)
    conn.execute(
        "INSERT INTO events (event_id, name, source, received_at, body) "
        "VALUES ('abc', 'meeting.started', 'zoom:default', 1.0, '{\"event\":\"meeting.started\"}')"
    )
    conn.execute(
        "INSERT INTO jobs (event_seq, rule, state, created_at, updated_at) "
        "VALUES (1, 'r', 'dead', 1, 1)"
    )
    conn.execute("INSERT INTO marks (name, value, updated_at) VALUES ('alive:zoom:a', 5, 5)")
    conn.close()

    db = JournalDB.open(tmp_path)
    assert SCHEMA_VERSION == 4
    assert db.conn.execute("PRAGMA user_version").fetchone()[0] == 4
    (job,) = db.jobs(["dead"])
    assert (job.rule, job.event.id, job.context) == ("r", "abc", None)
    assert db.read_mark("alive:zoom:a") == 5
    # The new tables work, with the jobs of the same transaction.
    with db.transaction():
        db.record_jobs(
            [(1, [("r2", "k" * 32, b'{"key": "x"}')])],
            10.0,
            [("correlation", "r2", '"x"', "d", "absence", 1, 99.0, 0, b'[[1.0, 1, "abc"]]')],
        )
    (keyed,) = db.jobs(["pending"])
    assert keyed.context == {"key": "x"}
    (row,) = db.load_state(0).correlations
    assert (row.rule, row.key, row.seq, row.deadline) == ("r2", '"x"', 1, 99.0)
    assert json.loads(row.events)[0][:4] == [1.0, 1, "abc", "meeting.started"]
    assert db.stats()["correlations"] == 1
    # The same firing key twice is one job.
    with db.transaction():
        db.record_jobs([(1, [("r2", "k" * 32, b"{}")])], 11.0)
    assert len(db.jobs(["pending"])) == 1
    db.close()
