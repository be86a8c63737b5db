"""The `print` action through the real command line."""

from __future__ import annotations

import json
from pathlib import Path

from conftest import example, run_cli, write_rules

RULES = """
version = 1
[engine]
journal = false

[[rule]]
name = "joined"
on = ["meeting.participant_joined"]
  [[rule.action]]
  type = "print"
  prefix = "[joined] "
  message = "{{ payload.object.participant.user_name }} joined {{ payload.object.topic }} ({{ payload.object.id }})"
"""


def test_print_renders_one_line_per_firing(tmp_path: Path) -> None:
    rules = write_rules(tmp_path, RULES)
    first = example("meeting.participant_joined")
    second = example("meeting.participant_joined")
    second["payload"]["object"]["participant"]["user_name"] = "Dana Whitfield"
    events = tmp_path / "events.jsonl"
    events.write_text("\n".join(json.dumps(e) for e in (first, second)) + "\n")
    result = run_cli("replay", "-c", rules, events)
    assert result.returncode == 0, result.stderr
    printed = [line for line in result.stdout.splitlines() if line.startswith("[joined] ")]
    topic = first["payload"]["object"]["topic"]
    meeting = first["payload"]["object"]["id"]
    # Firings run concurrently: compare as a set of lines.
    assert sorted(printed) == [
        f"[joined] Dana Whitfield joined {topic} ({meeting})",
        f"[joined] Riley Park joined {topic} ({meeting})",
    ]


def test_print_requires_a_message(tmp_path: Path) -> None:
    rules = write_rules(tmp_path, RULES.replace('  message = "{{', '  mesage = "{{'))
    result = run_cli("check", "-c", rules)
    assert result.returncode == 2
    assert "action[1].message" in result.stderr and "missing required parameter" in result.stderr
    assert "did you mean 'message'" in result.stderr
