"""`zoomrules replay` honours the journal's duplicate suppression."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

from conftest import example, run_cli, write_rules

from engine.journal.sqlite.db import JournalDB
from engine.journal.sqlite.files import DB_NAME, exclusive_lock

RULES = """
[engine]
state_dir = "{state}"
journal = {journal}

[[rule]]
name = "ended"
on = ["meeting.ended"]

  [[rule.action]]
  type = "log"
  path = "{log}"
"""


def _setup(tmp_path: Path, *, journal: bool = True, create: bool = True) -> tuple[Path, Path]:
    state, log = tmp_path / "state", tmp_path / "fired.jsonl"
    if create:
        JournalDB.open(state).close()  # the daemon's first start creates it
    rules = write_rules(
        tmp_path,
        RULES.format(state=state, log=log, journal="true" if journal else "false"),
    )
    ended = example("meeting.ended")
    other = example("meeting.ended")
    other["payload"]["object"]["id"] = "another-meeting"
    events = tmp_path / "events.jsonl"
    # The same event twice in the file, plus another one.
    events.write_text("\n".join(json.dumps(body) for body in (ended, ended, other)) + "\n")
    return rules, events


def _fired(tmp_path: Path) -> int:
    log = tmp_path / "fired.jsonl"
    return len(log.read_text().splitlines()) if log.exists() else 0


def _rows(tmp_path: Path) -> int:
    conn = sqlite3.connect(tmp_path / "state" / DB_NAME)
    try:
        count: int = conn.execute("SELECT COUNT(*) FROM events").fetchone()[0]
        return count
    finally:
        conn.close()


def test_replaying_a_file_twice_fires_its_events_once(tmp_path: Path) -> None:
    rules, events = _setup(tmp_path)
    first = run_cli("replay", "-c", rules, events)
    assert first.returncode == 0, first.stderr
    assert first.stdout.startswith("replayed 2 events from ")
    assert "1 duplicate skipped" in first.stdout  # the repeat inside the file
    assert _fired(tmp_path) == 2
    assert _rows(tmp_path) == 2  # recorded as seen

    second = run_cli("replay", "-c", rules, events)
    assert second.returncode == 0, second.stderr
    assert second.stdout.startswith("replayed 0 events from ")
    assert "3 duplicates skipped" in second.stdout
    assert "no rule fired" in second.stdout
    assert _fired(tmp_path) == 2


def test_dry_run_checks_duplicates_but_writes_nothing(tmp_path: Path) -> None:
    rules, events = _setup(tmp_path)
    for _ in range(2):
        result = run_cli("replay", "--dry-run", "-c", rules, events)
        assert result.returncode == 0, result.stderr
        assert result.stdout.startswith("replayed 2 events from ")
        assert "dry run: no action was run" in result.stdout
        assert "1 duplicate skipped" in result.stdout
    assert _rows(tmp_path) == 0
    assert _fired(tmp_path) == 0


def test_journal_off_means_no_duplicate_suppression(tmp_path: Path) -> None:
    rules, events = _setup(tmp_path, journal=False)
    for _ in range(2):
        result = run_cli("replay", "-c", rules, events)
        assert result.returncode == 0, result.stderr
        assert result.stdout.startswith("replayed 3 events from ")
        assert "skipped (seen within dedup_window)" not in result.stdout
    assert _fired(tmp_path) == 6
    assert _rows(tmp_path) == 0


def test_without_a_journal_nothing_is_skipped_and_the_summary_says_why(tmp_path: Path) -> None:
    rules, events = _setup(tmp_path, create=False)
    result = run_cli("replay", "-c", rules, events)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("replayed 3 events from ")
    assert "skipped (seen within dedup_window)" not in result.stdout
    assert "note: duplicates not checked: no journal at" in result.stdout
    assert not (tmp_path / "state").exists()  # replay never creates the journal


def test_while_a_daemon_holds_the_journal_replay_reads_but_does_not_record(
    tmp_path: Path,
) -> None:
    rules, events = _setup(tmp_path)
    with exclusive_lock(tmp_path / "state") as locked:  # stands in for the daemon
        assert locked
        result = run_cli("replay", "-c", rules, events)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("replayed 2 events from ")
    assert "holds the journal: events replayed while it runs are not recorded" in result.stdout
    assert _rows(tmp_path) == 0
