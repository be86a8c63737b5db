"""The real command line: check warnings, test --json, replay, plugins."""

from __future__ import annotations

import json
import re
from pathlib import Path

from conftest import example, run_cli, write_rules

from engine.events import Event

REASONS_RULES = """
[[rule]]
name = "off"
on = ["meeting.ended"]
enabled = false

  [[rule.action]]
  type = "log"

[[rule]]
name = "other-event"
on = ["recording.*"]

  [[rule.action]]
  type = "log"

[[rule]]
name = "not-incident"
on = ["meeting.ended"]
when = "starts_with(payload.object.topic, 'Incident')"

  [[rule.action]]
  type = "log"

[[rule]]
name = "type-error"
on = ["meeting.ended"]
when = "upper(payload.object.duration)"

  [[rule.action]]
  type = "log"

[[rule]]
name = "audit"
on = ["meeting.*"]
stop = true

  [[rule.action]]
  type = "log"
  path = "/tmp/audit-{{ payload.object.id }}.jsonl"

  [[rule.action]]
  type = "http"
  url = "https://example.com/meetings/{{ payload.object.id }}"
  json = { duration = "{{ payload.object.duration }}", topic = "{{ payload.object.topic }}" }

[[rule]]
name = "after-stop"
on = ["meeting.ended"]

  [[rule.action]]
  type = "log"
"""


def test_test_json_has_the_exact_shape_and_every_skip_reason(tmp_path: Path) -> None:
    rules = write_rules(tmp_path, REASONS_RULES)
    body = example("meeting.ended")
    event_file = tmp_path / "ended.json"
    event_file.write_text(json.dumps(body))
    result = run_cli("test", "-c", rules, "--json", event_file)
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    assert doc == {
        "event": "meeting.ended",
        "fired": [
            {
                "rule": "audit",
                "actions": [
                    {"type": "log", "params": {"path": "/tmp/audit-85746065432.jsonl"}},
                    {
                        "type": "http",
                        "params": {
                            "url": "https://example.com/meetings/85746065432",
                            "method": "POST",
                            "json": {"duration": 60, "topic": "Weekly project sync"},
                        },
                    },
                ],
            }
        ],
        "skipped": [
            {"rule": "off", "reason": "disabled", "detail": "enabled = false"},
            {
                "rule": "other-event",
                "reason": "event",
                "detail": "meeting.ended does not match ['recording.*']",
            },
            {
                "rule": "not-incident",
                "reason": "condition",
                "detail": "when = \"starts_with(payload.object.topic, 'Incident')\" gave False",
                # Why: each operand's value (engine.trace).
                "trace": {
                    "expr": "starts_with(payload.object.topic, 'Incident')",
                    "evaluated": True,
                    "value": False,
                    "operands": [{"expr": "payload.object.topic", "value": "Weekly project sync"}],
                },
            },
            {
                "rule": "type-error",
                "reason": "error",
                "detail": doc["skipped"][3]["detail"],
                "trace": {
                    "expr": "upper(payload.object.duration)",
                    "evaluated": True,
                    "error": doc["skipped"][3]["detail"],
                    "operands": [{"expr": "payload.object.duration", "value": 60}],
                },
            },
            {
                "rule": "after-stop",
                "reason": "stopped",
                "detail": "rule 'audit' fired with stop = true",
            },
        ],
    }
    assert "invalid type" in doc["skipped"][3]["detail"]
    # Rules appear in file order across fired and skipped.
    order = [r["rule"] for r in doc["fired"]] + [r["rule"] for r in doc["skipped"]]
    assert sorted(order) == sorted(
        ["off", "other-event", "not-incident", "type-error", "audit", "after-stop"]
    )


def test_test_reads_stdin_and_exits_0_when_nothing_fires(tmp_path: Path) -> None:
    rules = write_rules(tmp_path, REASONS_RULES)
    result = run_cli("test", "-c", rules, "--json", "-", input=json.dumps(example("user.created")))
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    assert doc["event"] == "user.created"
    assert doc["fired"] == []
    assert [s["reason"] for s in doc["skipped"]] == ["disabled"] + ["event"] * 5


def test_test_text_output(tmp_path: Path) -> None:
    rules = write_rules(tmp_path, REASONS_RULES)
    body = example("meeting.ended")
    result = run_cli("test", "-c", rules, "-", input=json.dumps(body))
    assert result.returncode == 0, result.stderr
    event_id = Event.from_body(body, source="x").id
    lines = result.stdout.splitlines()
    assert lines[0] == f"event meeting.ended (id {event_id})"
    assert "FIRES  audit" in lines
    assert 'action 1 log: {"path":"/tmp/audit-85746065432.jsonl"}' in result.stdout
    assert "skip   after-stop: stopped (rule 'audit' fired with stop = true)" in lines


def test_test_rejects_a_non_event(tmp_path: Path) -> None:
    rules = write_rules(tmp_path, REASONS_RULES)
    result = run_cli("test", "-c", rules, "-", input='{"payload": {}}')
    assert result.returncode == 2
    assert "-: event object has no string 'event' name" in result.stderr
    result = run_cli("test", "-c", rules, tmp_path / "missing.json")
    assert result.returncode == 2
    assert "cannot read" in result.stderr


def test_check_warns_about_unknown_event_names_without_failing(tmp_path: Path) -> None:
    rules = write_rules(
        tmp_path,
        """
        [[rule]]
        name = "typo"
        on = ["meeting.participant_join", "meeting.ended", "meting.*"]

          [[rule.action]]
          type = "log"
        """,
    )
    result = run_cli("check", "-c", rules)
    assert result.returncode == 0, result.stderr
    assert "OK: 1 rules, 1 actions" in result.stdout
    warnings = [line for line in result.stderr.splitlines() if line.startswith("warning: ")]
    assert warnings == [
        f"warning: {rules}:1: rule 'typo', key 'on': 'meeting.participant_join' is not an event "
        "in Zoom's catalogue (did you mean 'meeting.participant_joined'?)",
        f"warning: {rules}:1: rule 'typo', key 'on': glob 'meting.*' matches no event "
        "in Zoom's catalogue",
    ]


REPLAY_RULES = """
[[rule]]
name = "ended"
on = ["meeting.ended"]

  [[rule.action]]
  type = "log"
  path = "{log}"

[[rule]]
name = "joined-example"
on = ["meeting.participant_joined"]
when = "email_domain(payload.object.participant.email) == 'example.com'"

  [[rule.action]]
  type = "log"
  path = "{log}"
"""


def _replay_input(tmp_path: Path) -> Path:
    joined_other = example("meeting.participant_joined")
    joined_other["payload"]["object"]["participant"]["email"] = "x@elsewhere.org"
    lines = [
        json.dumps(example("meeting.ended")),
        json.dumps(example("meeting.participant_joined")),
        "",
        "{not json",
        json.dumps(joined_other),
        json.dumps({"no": "event"}),
        json.dumps(example("user.created")),
    ]
    path = tmp_path / "events.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_replay_runs_the_log_action(tmp_path: Path) -> None:
    log = tmp_path / "out" / "fired.jsonl"
    rules = write_rules(tmp_path, REPLAY_RULES.replace("{log}", str(log)))
    events = _replay_input(tmp_path)
    result = run_cli("replay", "-c", rules, events)
    # Invalid lines make the exit status 1, after everything valid ran.
    assert result.returncode == 1, result.stderr
    out = result.stdout
    assert out.startswith(f"replayed 4 events from {events} in ")
    assert "2 invalid lines skipped:\n" in out
    assert f"\n  {events}:4: invalid JSON" in out
    assert f"\n  {events}:6: event object has no string 'event' name\n" in out
    assert re.search(r"^  ended +1 +0 +1 +0$", out, re.M), out
    assert re.search(r"^  joined-example +1 +0 +1 +0$", out, re.M), out
    assert "actions: 2 ok, 0 failed" in out
    records = [json.loads(line) for line in log.read_text().splitlines()]
    assert sorted(r["rule"] for r in records) == ["ended", "joined-example"]
    by_rule = {r["rule"]: r for r in records}
    assert by_rule["ended"]["event"] == example("meeting.ended")
    assert by_rule["ended"]["event_id"] == Event.from_body(example("meeting.ended"), source="").id


def test_replay_from_stdin_with_only_valid_lines_exits_0(tmp_path: Path) -> None:
    log = tmp_path / "fired.jsonl"
    rules = write_rules(tmp_path, REPLAY_RULES.replace("{log}", str(log)))
    lines = [json.dumps(example("meeting.ended"))] * 3
    result = run_cli("replay", "-c", rules, "-", input="\n".join(lines))
    assert result.returncode == 0, result.stderr
    assert "replayed 3 events" in result.stdout
    assert "actions: 3 ok, 0 failed" in result.stdout
    assert len(log.read_text().splitlines()) == 3


def test_replay_dry_run_runs_no_action(tmp_path: Path) -> None:
    log = tmp_path / "fired.jsonl"
    rules = write_rules(tmp_path, REPLAY_RULES.replace("{log}", str(log)))
    events = _replay_input(tmp_path)
    result = run_cli("replay", "--dry-run", "-c", rules, events)
    assert result.returncode == 1
    assert result.stdout.startswith("replayed 4 events from ")
    assert "; dry run: no action was run\n" in result.stdout
    assert re.search(r"^  ended +1 +0$", result.stdout, re.M), result.stdout
    assert re.search(r"^  joined-example +1 +0$", result.stdout, re.M), result.stdout
    assert "actions:" not in result.stdout
    assert not log.exists()


def test_replay_counts_failed_actions(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    rules = write_rules(
        tmp_path,
        f"""
        [[rule]]
        name = "cannot-write"
        on = ["meeting.ended"]

          [[rule.action]]
          type = "log"
          path = "{blocker}/under/a/file.jsonl"
          retries = 0
        """,
    )
    result = run_cli("replay", "-c", rules, "-", input=json.dumps(example("meeting.ended")))
    assert result.returncode == 1
    assert "actions: 0 ok, 1 failed" in result.stdout
    assert re.search(r"^  cannot-write +1 +0 +0 +1$", result.stdout, re.M), result.stdout


def test_plugins_lists_actions_params_and_functions() -> None:
    result = run_cli("plugins", "-c", "/nonexistent/rules.toml")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    for action in ("http", "log", "notify", "shell", "zoom_api"):
        assert f"\n  {action}  (plugin {action})" in out
    assert "      path: string, optional - file to append to" in out
    assert "      url: string, required" in out
    for fn in ("lower", "upper", "trim", "split", "regex_match", "glob_match", "now"):
        assert f"  {fn}()  (plugin engine)" in out
    assert "to_epoch()" in out and "email_domain()" in out


def test_plugins_json() -> None:
    result = run_cli("plugins", "--json", "-c", "/nonexistent/rules.toml")
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    actions = {a["name"]: a for a in doc["actions"]}
    assert {"http", "log", "notify", "shell", "zoom_api"} <= set(actions)
    assert actions["log"]["plugin"] == "log"
    assert actions["log"]["params"] == [
        {
            "name": "path",
            "type": "string",
            "required": False,
            "default": None,
            "help": "file to append to (created if missing); stdout when absent",
        }
    ]
    functions = {f["name"]: f["plugin"] for f in doc["functions"]}
    assert functions["email_domain"] == "engine"
    assert set(functions) >= {
        "lower", "upper", "trim", "split", "regex_match", "glob_match", "now", "to_epoch",
    }  # fmt: skip
