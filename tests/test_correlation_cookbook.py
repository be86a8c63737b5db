"""The temporal rules' cookbook: docs/correlation.md shows the rules of
examples/correlation.toml, which `zoomrules check` accepts and whose cases
(examples/correlation.cases.toml, Zoom's example events) all pass, each
rule firing in one case and not in another."""

from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path
from typing import Any

from conftest import ROOT, run_cli

RULES = ROOT / "examples" / "correlation.toml"
CASES = ROOT / "examples" / "correlation.cases.toml"
DOC = ROOT / "docs" / "correlation.md"
_TOML = re.compile(r"^```toml\n(.*?)^```", re.S | re.M)


def _rules_of(text: str) -> dict[str, dict[str, Any]]:
    return {rule["name"]: rule for rule in tomllib.loads(text).get("rule", [])}


def test_the_cookbook_rules_pass_check_without_warnings() -> None:
    result = run_cli("check", "--strict", "-c", RULES)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "6 rules" in result.stdout


def test_the_cookbook_cases_pass() -> None:
    result = run_cli("test", "--json", "-c", RULES, "--cases", CASES)
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(result.stdout)
    assert report["summary"]["failed"] == 0
    assert report["summary"]["cases"] >= 11


def test_every_cookbook_rule_fires_in_one_case_and_not_in_another() -> None:
    rules = set(_rules_of(RULES.read_text()))
    fired: set[str] = set()
    quiet: set[str] = set()
    for case in tomllib.loads(CASES.read_text())["case"]:
        for table in [case, *case.get("expect", [])]:
            for key, found in (("fires", fired), ("not_fires", quiet)):
                value = table.get(key, [])
                found.update([value] if isinstance(value, str) else value)
            if "params" in table:
                fired.add(table["rule"])
    assert rules <= fired
    # Each absence also has a case where it must not fire.
    absences = {n for n, r in _rules_of(RULES.read_text()).items() if "unless" in r}
    assert absences <= quiet


def test_the_documentation_shows_the_examples_rules() -> None:
    examples = _rules_of(RULES.read_text())
    shown: dict[str, dict[str, Any]] = {}
    for block in _TOML.findall(DOC.read_text()):
        if "[[rule]]" in block and "description" in block:
            shown.update(_rules_of(block))
    assert set(shown) == set(examples)
    assert shown == examples


def test_a_failing_timed_expectation_says_when_the_rule_fired(tmp_path: Path) -> None:
    cases = tmp_path / "late.cases.toml"
    events = ROOT / "examples" / "events" / "correlation" / "host-not-joined.jsonl"
    cases.write_text(
        f"""
[[case]]
name   = "on the minute"
events = "{events}"
  [[case.expect]]
  at    = "5m"
  fires = "host-not-joined"
"""
    )
    result = run_cli("test", "-c", RULES, "--cases", cases)
    assert result.returncode == 1
    assert (
        "host-not-joined did not fire at 2026-02-05T17:05:00Z; "
        "it fired at 2026-02-05T17:05:10Z (deadline)"
    ) in result.stdout
    assert "at 2026-02-05T17:05:10Z: host-not-joined fired (a deadline)" in result.stdout
