"""`zoomrules replay`'s summary, as text and as one JSON document (`--json`)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

from conftest import ROOT, cli_env, example, run_cli, write_rules

from engine.journal.sqlite.db import JournalDB


def _rules(tmp_path: Path) -> Path:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    return write_rules(
        tmp_path,
        f"""
        [engine]
        state_dir = "{tmp_path / "state"}"
        retry_backoff = "10ms"

        [[rule]]
        name = "started"
        on = ["meeting.started"]
        throttle = {{ key = "payload.object.id", limit = 1, per = "1h" }}

          [[rule.action]]
          type = "log"
          path = "{tmp_path / "started.jsonl"}"

        [[rule]]
        name = "ended"
        on = ["meeting.ended"]

          [[rule.action]]
          type = "log"
          path = "{tmp_path / "ended.jsonl"}"

          [[rule.action]]
          type = "log"
          path = "{blocker}/cannot/write.jsonl"
          retries = 0

        [[rule]]
        name = "never"
        on = ["meeting.deleted"]

          [[rule.action]]
          type = "log"
          path = "{tmp_path / "never.jsonl"}"
        """,
    )


def _event(name: str, n: int, **obj: Any) -> str:
    body = example(name)
    body["event_ts"] = 1_700_000_000_000 + n  # distinct events, not duplicates
    body["payload"]["object"].update(obj)
    return json.dumps(body)


def _events(tmp_path: Path) -> Path:
    lines = [
        # Three events of meeting m1 (the throttle lets one fire), one of m2.
        *(_event("meeting.started", n, id="m1") for n in range(3)),
        _event("meeting.started", 3, id="m2"),
        _event("meeting.ended", 4),
        _event("meeting.ended", 4),  # the same event again: a duplicate
        # Events no rule is written for, by name: 3, 2 and 1 of each.
        *(_event("user.created", n) for n in range(10, 13)),
        *(_event("user.updated", n) for n in range(13, 15)),
        *(_event(name, 20 + i) for i, name in enumerate(
            ["user.deleted", "recording.started", "recording.stopped", "recording.paused"]
        )),
        "",  # blank lines are not counted
    ]  # fmt: skip
    # Twelve invalid lines, spread through the file.
    for n in range(12):
        lines.insert(2 * n, "{not json" if n % 2 else json.dumps({"no": "event"}))
    path = tmp_path / "events.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


def _setup(tmp_path: Path) -> tuple[Path, Path]:
    JournalDB.open(tmp_path / "state").close()  # the daemon's first start creates it
    return _rules(tmp_path), _events(tmp_path)


def test_the_text_summary(tmp_path: Path) -> None:
    rules, events = _setup(tmp_path)
    result = run_cli("replay", "-c", rules, events)
    assert result.returncode == 1, result.stdout + result.stderr  # an action failed
    lines = result.stdout.splitlines()
    assert re.fullmatch(
        rf"replayed 14 events from {re.escape(str(events))} in \d+\.\d\ds \([\d,]+ events/s\)",
        lines[0],
    ), lines[0]
    # Invalid lines: the first ten, then a count.
    assert lines[1] == "12 invalid lines skipped:"
    assert lines[2] == f"  {events}:1: event object has no string 'event' name"
    assert lines[3].startswith(f"  {events}:3: invalid JSON: ")
    assert lines[12] == "  ... and 2 more"
    rest = lines[13:]
    assert rest == [
        "1 duplicate skipped (seen within dedup_window)",
        "rules fired: 3 firings",
        "  RULE     FIRED  THROTTLED  ACTIONS OK  FAILED",
        "  started      2          2           2       0",
        "  ended        1          0           1       1",
        "9 events matched no rule: user.created (3), user.updated (2), user.deleted (1), "
        "recording.started (1), recording.stopped (1), 1 more",
        "actions: 3 ok, 1 failed",
        "dead letters: 1 kept in the journal (job 1)",
        f"  `zoomrules dlq list -c {rules}` shows them, "
        f"`zoomrules dlq retry --all -c {rules}` runs them again",
    ], "\n".join(rest)
    # Nothing of replay's own per line on standard error (only the engine's log lines).
    assert "invalid" not in result.stderr


def test_the_json_summary(tmp_path: Path) -> None:
    rules, events = _setup(tmp_path)
    result = run_cli("replay", "--json", "-c", rules, events)
    assert result.returncode == 1, result.stdout + result.stderr
    doc = json.loads(result.stdout)  # one document, nothing else on standard output
    seconds = doc.pop("seconds")
    assert isinstance(seconds, float) and seconds >= 0
    invalid = doc.pop("invalid_lines")
    assert invalid["count"] == 12
    assert [entry["line"] for entry in invalid["first"]] == [
        1,
        3,
        5,
        7,
        9,
        11,
        13,
        15,
        17,
        19,
        21,
        23,
    ]
    assert invalid["first"][0]["error"] == "event object has no string 'event' name"
    assert invalid["first"][1]["error"].startswith("invalid JSON: ")
    assert doc == {
        "format": 1,
        "file": str(events),
        "dry_run": False,
        "lines": 27,
        "events": 14,
        "duplicates_skipped": 1,
        "notes": [],
        "fired": 3,
        "rules": [
            {"rule": "started", "fired": 2, "throttled": 2, "actions_ok": 2,
             "actions_failed": 0, "failed_jobs": 0, "condition_errors": 0},
            {"rule": "ended", "fired": 1, "throttled": 0, "actions_ok": 1,
             "actions_failed": 1, "failed_jobs": 1, "condition_errors": 0},
        ],
        "unmatched": {
            "events": 9,
            "names": [
                {"event": "user.created", "count": 3},
                {"event": "user.updated", "count": 2},
                {"event": "user.deleted", "count": 1},
                {"event": "recording.started", "count": 1},
                {"event": "recording.stopped", "count": 1},
                {"event": "recording.paused", "count": 1},
            ],
        },
        "actions": {"ok": 3, "failed": 1},
        "dead_letters": {"kept": 1, "ids": [1], "not_kept": 0, "why_not_kept": None},
        "failed_jobs": 1,
        "open_correlations": {"count": 0, "rules": []},
        "exit_status": 1,
    }  # fmt: skip


def test_json_keeps_what_actions_print_off_standard_output(tmp_path: Path) -> None:
    rules = write_rules(
        tmp_path,
        """
        [engine]
        journal = false

        [[rule]]
        name = "say"
        on = ["meeting.ended"]

          [[rule.action]]
          type = "print"
          message = "ended: {{ payload.object.id }}"
        """,
    )
    result = run_cli("replay", "--json", "-c", rules, "-", input=_event("meeting.ended", 1))
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    assert doc["file"] == "-" and doc["fired"] == 1 and doc["exit_status"] == 0
    assert doc["duplicates_skipped"] is None  # journal = false: not looked for
    assert "ended: " in result.stderr


def test_an_all_clear_replay_exits_0(tmp_path: Path) -> None:
    rules, _ = _setup(tmp_path)
    events = tmp_path / "fine.jsonl"
    events.write_text(_event("meeting.started", 1, id="x") + "\n")
    result = run_cli("replay", "-c", rules, events)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "invalid" not in result.stdout and "dead letters" not in result.stdout
    assert "actions: 1 ok, 0 failed" in result.stdout


def test_check_does_not_import_rich(tmp_path: Path) -> None:
    rules = _rules(tmp_path)
    code = (
        "import sys; from engine.cli import main; status = main(['check', '-c', sys.argv[1]]); "
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'rich')); sys.exit(status)"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, str(rules)],
        env=cli_env(), capture_output=True, text=True, cwd=ROOT, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "[]"
