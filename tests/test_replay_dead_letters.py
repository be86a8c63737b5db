"""`zoomrules replay` keeps jobs that failed for good as dead letters, as the daemon does.

The issue's must-show: replay's failures appear in `zoomrules dlq list`,
and `dlq retry` delivers them once the target answers again.
"""

from __future__ import annotations

import json
import os
from functools import partial
from pathlib import Path

import anyio
import pytest
from conftest import example, run_cli, write_rules
from http_target import IDEMPOTENCY_HEADER, Target, _response
from test_journal_support import JournalView

from engine.events import Event
from engine.journal import DEAD
from engine.journal.sqlite.db import JournalDB
from engine.journal.sqlite.files import exclusive_lock


class PickyTarget(Target):
    """A `Target` that answers 503 on the paths in `failing` (and 200 elsewhere)."""

    def __init__(self) -> None:
        super().__init__()
        self.failing: set[str] = set()

    async def _answer(self, path: str, key: str) -> bytes:
        if path in self.failing:
            self.received += 1
            return _response(503, b"down")
        return await super()._answer(path, key)

    def delivered(self, path: str) -> int:
        return sum(count for (p, _), count in self.counts.items() if p == path)


def _action(url: str, extra: str = "") -> str:
    return f"""
  [[rule.action]]
  type = "http"
  url = "{url}"
  headers = {{ {IDEMPOTENCY_HEADER} = "{{{{ zoomrules.event_id }}}}" }}
  json = {{ id = "{{{{ payload.object.id }}}}" }}
  {extra}
"""


SOFT = """retries = 0
  continue_on_error = true"""


def _rules(tmp_path: Path, url: str, *, journal: bool = True) -> Path:
    return write_rules(
        tmp_path,
        f"""
[engine]
state_dir = "{tmp_path / "state"}"
journal = {"true" if journal else "false"}
retry_backoff = "10ms"
retry_backoff_cap = "50ms"

[[rule]]
name = "greet"
on = ["meeting.started"]
{_action(f"{url}/greet")}

# Action 1 works, action 2 fails for good while /archive is down: a dead
# letter stopped at action 2 (next_action 1) after 2 attempts.
[[rule]]
name = "archive"
on = ["meeting.ended"]
{_action(f"{url}/audit")}
{_action(f"{url}/archive", "retries = 1")}

# A continue_on_error failure: the job goes on and ends `failed`, no dead letter.
[[rule]]
name = "best-effort"
on = ["meeting.ended"]
{_action(f"{url}/soft", SOFT)}
{_action(f"{url}/after-soft")}
""",
    )


def _events(tmp_path: Path) -> Path:
    lines = []
    for i in range(3):
        started = example("meeting.started")
        started["payload"]["object"]["id"] = f"started-{i}"
        lines.append(json.dumps(started))
    for i in range(2):
        ended = example("meeting.ended")
        ended["payload"]["object"]["id"] = f"ended-{i}"
        lines.append(json.dumps(ended))
    lines.append(json.dumps(example("user.created")))  # no rule
    path = tmp_path / "events.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


def _journal(tmp_path: Path) -> None:
    JournalDB.open(tmp_path / "state").close()  # the daemon's first start creates it


async def _cli(*args: str | Path) -> tuple[int, str, str]:
    done = await anyio.to_thread.run_sync(partial(run_cli, *args, timeout=60))
    return done.returncode, done.stdout, done.stderr


@pytest.mark.anyio
async def test_replay_failures_appear_in_dlq_list_and_dlq_retry_delivers_them(
    tmp_path: Path,
) -> None:
    _journal(tmp_path)
    events = _events(tmp_path)
    async with PickyTarget().serve() as target:
        target.failing = {"/archive", "/soft"}
        rules = _rules(tmp_path, target.url)
        code, out, err = await _cli("replay", "-c", rules, events)
        assert code == 1, out + err  # actions failed
        assert "dead letters: 2 kept in the journal (jobs 1-2)\n" in out, out
        assert f"`zoomrules dlq list -c {rules}` shows them" in out
        assert "not kept as dead letters" not in out

        code, out, err = await _cli("dlq", "list", "--json", "-c", rules)
        assert code == 0, out + err
        listed = json.loads(out)
        assert [(d["id"], d["rule"], d["state"]) for d in listed] == [
            (1, "archive", DEAD),
            (2, "archive", DEAD),
        ]
        for dead in listed:
            assert dead["next_action"] == 1  # the second action failed; the first succeeded
            assert dead["attempts"] == 2  # retries = 1
            assert dead["errors"] == 0
            assert "503" in dead["last_error"]
            assert dead["event"] == "meeting.ended"
            assert dead["source"] == f"replay:{events}"
        bodies = {d["event_id"] for d in listed}
        ended = [json.loads(line) for line in events.read_text().splitlines()][3:5]
        assert bodies == {Event.from_body(body, source="").id for body in ended}
        code, out, _ = await _cli("dlq", "show", "1", "-c", rules)
        assert code == 0 and "failed_action: 2" in out and "ended-" in out, out

        # Only dead letters are kept: not the continue_on_error jobs (they end
        # `failed` in the daemon's journal, having run their next action).
        assert JournalView(tmp_path / "state").jobs("failed") == 0
        assert target.delivered("/after-soft") == 2

        # The target answers again: no daemon runs, so `dlq retry` runs them itself.
        target.failing = set()
        assert target.delivered("/audit") == 2
        code, out, err = await _cli("dlq", "retry", "--all", "-c", rules)
        assert code == 0, out + err
        assert "2 delivered, 0 still failing" in out
        assert target.delivered("/archive") == 2
        assert target.delivered("/audit") == 2  # resumed at the failed action: not repeated
        code, out, _ = await _cli("dlq", "list", "-c", rules)
        assert "no dead letters" in out
        assert JournalView(tmp_path / "state").jobs("done") == 2


@pytest.mark.anyio
async def test_while_a_daemon_holds_the_journal_failures_are_not_kept(tmp_path: Path) -> None:
    _journal(tmp_path)
    events = _events(tmp_path)
    async with PickyTarget().serve() as target:
        target.failing = {"/archive"}
        rules = _rules(tmp_path, target.url)
        with exclusive_lock(tmp_path / "state") as locked:  # stands in for the daemon
            assert locked
            code, out, err = await _cli("replay", "-c", rules, events)
            json_code, json_out, _ = await _cli("replay", "--json", "-c", rules, events)
    assert code == 1, out + err
    assert out.startswith("replayed 6 events from ")  # it ran all the same
    assert (
        f"2 failed jobs were not kept as dead letters: a daemon (pid {os.getpid()}) holds "
        "the journal\n" in out
    ), out
    assert "kept in the journal" not in out
    doc = json.loads(json_out)
    assert json_code == 1
    assert doc["dead_letters"] == {
        "kept": 0,
        "ids": [],
        "not_kept": 2,
        "why_not_kept": f"a daemon (pid {os.getpid()}) holds the journal",
    }
    assert JournalView(tmp_path / "state").events() == 0
    assert JournalView(tmp_path / "state").query("SELECT * FROM jobs") == []


@pytest.mark.anyio
async def test_without_a_journal_the_summary_says_failures_are_not_kept(tmp_path: Path) -> None:
    events = _events(tmp_path)
    async with PickyTarget().serve() as target:
        target.failing = {"/archive"}
        off = _rules(tmp_path, target.url, journal=False)
        code, out, _ = await _cli("replay", "-c", off, events)
        assert code == 1
        assert "2 failed jobs were not kept as dead letters: [engine] journal = false" in out
        never_ran = _rules(tmp_path, target.url)  # journal on, but no journal yet
        code, out, _ = await _cli("replay", "-c", never_ran, events)
        assert code == 1
        assert "2 failed jobs were not kept as dead letters: no journal at" in out
    assert not (tmp_path / "state").exists()  # replay never creates the journal


@pytest.mark.anyio
async def test_dry_run_writes_nothing(tmp_path: Path) -> None:
    _journal(tmp_path)
    events = _events(tmp_path)
    async with PickyTarget().serve() as target:
        target.failing = {"/archive"}
        rules = _rules(tmp_path, target.url)
        code, out, err = await _cli("replay", "--dry-run", "--json", "-c", rules, events)
    assert code == 0, out + err
    doc = json.loads(out)
    assert doc["dry_run"] is True
    assert doc["fired"] == 7  # 3 greet, 2 archive, 2 best-effort
    assert doc["dead_letters"]["kept"] == 0 and doc["dead_letters"]["not_kept"] == 0
    assert target.received == 0
    view = JournalView(tmp_path / "state")
    assert view.events() == 0 and view.query("SELECT * FROM jobs") == []
