"""Rule unit tests: `zoomrules test --cases`, the cases format, and condition traces."""

from __future__ import annotations

import glob
import json
import tomllib
from pathlib import Path
from typing import Any

import jmespath
import pytest
from conftest import COMPLIANCE_DIR, EXAMPLE_RULES, ROOT, ZOOM_ENV, cli_env, example, run_cli
from conftest import write_rules as _write_rules

from engine.cases import matches, read_cases, run_cases
from engine.events import CONNECTION_GAP, Event
from engine.explain import evaluate
from engine.expr.functions import BUILTIN_FUNCTIONS
from engine.loader import load_rules
from engine.sources.gaps import Gap, gap_event
from engine.trace import trace_condition, trace_lines, unparse

EXAMPLE_CASES = ROOT / "rules.example.cases.toml"
EXAMPLE_EVENTS = ROOT / "examples" / "events"

RULES = """
[[rule]]
name = "vip-joined"
on   = ["meeting.participant_joined"]
when = "email_domain(payload.object.participant.email) == 'vip.example.com' && length(payload.object.topic) > `2`"

  [[rule.action]]
  type  = "notify"
  to    = "json://localhost/oncall"
  title = "VIP joined {{ payload.object.topic }}"
  body  = "{{ payload.object.participant.user_name }} joined"

  [[rule.action]]
  type = "log"
  path = "/tmp/vip.jsonl"

[[rule]]
name = "internal-topic"
on   = ["meeting.*"]
when = "contains(payload.object.topic, '[internal]') || payload.object.type == `8`"

  [[rule.action]]
  type = "http"
  url  = "${HOOK_URL:-https://hooks.example.com/zoom}"
  headers = { Authorization = "Bearer ${HOOK_TOKEN:-none}" }
  json = { id = "{{ payload.object.id }}", topic = "{{ payload.object.topic }}", tags = ["zoom", "{{ event }}"] }

[[rule]]
name = "audit"
on   = ["meeting.started", "meeting.ended"]

  [[rule.action]]
  type = "log"
"""


def write(directory: Path, name: str, text: str) -> Path:
    return _write_rules(directory, text, name)


def event_file(directory: Path, name: str, body: dict[str, Any]) -> Path:
    path = directory / name
    path.write_text(json.dumps(body))
    return path


def joined(email: str = "riley.park@example.com", topic: str = "Weekly project sync") -> Any:
    body = example("meeting.participant_joined")
    body["payload"]["object"]["participant"]["email"] = email
    body["payload"]["object"]["topic"] = topic
    return body


@pytest.fixture
def rules(tmp_path: Path) -> Path:
    event_file(tmp_path, "vip.json", joined("dana@vip.example.com", "Quarterly review"))
    event_file(tmp_path, "guest.json", joined("sam@gmail.com"))
    (tmp_path / "life.jsonl").write_text(
        "".join(
            json.dumps(body) + "\n"
            for body in (
                example("meeting.started"),
                joined("dana@vip.example.com", "[internal] Roadmap"),
                example("meeting.ended"),
            )
        )
    )
    return write(tmp_path, "rules.toml", RULES)


# --------------------------------------------------------------------------
# the example rules ship with passing cases


def test_the_example_rules_cases_pass() -> None:
    result = run_cli("test", "-c", EXAMPLE_RULES, "--cases", EXAMPLE_CASES)
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert all(line.startswith("PASS  ") for line in lines[:-1]), result.stdout
    assert lines[-1] == f"OK: {len(lines) - 1} cases passed"


def test_the_example_cases_cover_every_example_rule() -> None:
    loaded = load_rules([EXAMPLE_RULES], env=ZOOM_ENV)
    data = tomllib.loads(EXAMPLE_CASES.read_text())
    named: set[str] = set()
    for case in data["case"]:
        for entry in [case, *case.get("expect", [])]:
            named.update(entry.get("fires", []), entry.get("not_fires", []))
            if "rule" in entry:
                named.add(entry["rule"])
    assert named == {rule.name for rule in loaded.rules}
    # ... and every enabled rule is seen firing, with its parameters checked
    cases, problems = read_cases([EXAMPLE_CASES], loaded)
    assert problems == []
    report = run_cases(loaded, cases, [EXAMPLE_CASES])
    fired = {rule for case in report["cases"] for e in case["events"] for rule in e["fired"]}
    assert fired == {rule.name for rule in loaded.rules if rule.spec.enabled}
    checked = {e.params.rule for case in cases for e in case.expectations if e.params}
    assert checked >= fired - {"external-guest-in-internal-meeting", "audit-meeting-lifecycle"}


def _shape(value: Any, path: str = "") -> dict[str, str]:
    """Every leaf path of a JSON value (array items as `[]`) and its JSON type."""
    if isinstance(value, dict):
        out: dict[str, str] = {path: "object"}
        for key, item in value.items():
            out.update(_shape(item, f"{path}.{key}"))
        return out
    if isinstance(value, list):
        out = {path: "array"}
        for item in value:
            out.update(_shape(item, f"{path}[]"))
        return out
    if isinstance(value, bool):
        return {path: "boolean"}
    if isinstance(value, int | float):
        return {path: "number"}
    return {path: "null" if value is None else type(value).__name__}


def _example_events() -> list[tuple[str, dict[str, Any]]]:
    found = []
    for path in sorted(p for p in EXAMPLE_EVENTS.rglob("*") if p.is_file()):
        name = str(path.relative_to(EXAMPLE_EVENTS))
        if path.suffix == ".jsonl":
            lines = path.read_text().splitlines()
            found += [(f"{name}:{i}", json.loads(t)) for i, t in enumerate(lines, 1)]
        else:
            found.append((name, json.loads(path.read_text())))
    for case in tomllib.loads(EXAMPLE_CASES.read_text())["case"]:
        if isinstance(case.get("event"), dict):
            found.append((case["name"], case["event"]))
    return found


def _documented(name: str) -> dict[str, Any]:
    """Zoom's documented example of an event; for one zoomrules emits, one it made."""
    if name == CONNECTION_GAP:
        gap = Gap("zoom:default", 1_770_310_900.123, 1_770_310_972.624, "zoomrules was not running")
        return gap_event(gap, subscription="default").body
    return example(name)


@pytest.mark.parametrize(("where", "body"), _example_events(), ids=lambda v: str(v)[:40])
def test_example_events_have_zoom_shapes(where: str, body: dict[str, Any]) -> None:
    """Each example event is Zoom's documented example of its event, values
    changed only (or, for an event zoomrules emits, has the shape it emits)."""
    expected = _shape(_documented(body["event"]))
    got = _shape(body)
    assert {p: t for p, t in got.items() if expected.get(p) != t} == {}, where
    # Nothing left out either, but the items of an array left empty.
    empty = [p + "[]" for p, t in got.items() if t == "array" and p + "[]" not in got]
    missing = {p for p in expected if p not in got and not p.startswith(tuple(empty))}
    assert missing == set(), where


# --------------------------------------------------------------------------
# pass, fail, invalid


def test_a_passing_cases_file_exits_0(rules: Path, tmp_path: Path) -> None:
    cases = write(
        tmp_path,
        "ok.cases.toml",
        """
        [[case]]
        name      = "vip from a file"
        event     = "vip.json"
        fires     = ["vip-joined"]
        not_fires = ["internal-topic"]
        exactly   = true

        [[case]]
        name  = "an inline event"
        fires = ["audit"]
          [case.event]
          event = "meeting.started"
          payload = { account_id = "x", object = { id = "1", topic = "Standup" } }
        """,
    )
    result = run_cli("test", "-c", rules, "--cases", cases)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.splitlines() == [
        f"PASS  vip from a file  ({cases}:1)",
        f"PASS  an inline event  ({cases}:8)",
        "OK: 2 cases passed",
    ]


def test_a_wrong_expectation_exits_1_and_names_the_mismatch(rules: Path, tmp_path: Path) -> None:
    cases = write(
        tmp_path,
        "wrong.cases.toml",
        """
        [[case]]
        name  = "a guest is no VIP"
        event = "guest.json"
        fires = ["vip-joined"]

        [[case]]
        name  = "the VIP page's title"
        event = "vip.json"
          [[case.expect]]
          rule   = "vip-joined"
          action = 1
          params = { title = "VIP joined Quarterly revue" }
        """,
    )
    result = run_cli("test", "-c", rules, "--cases", cases)
    assert result.returncode == 1, result.stdout + result.stderr
    out = result.stdout
    assert f"FAIL  a guest is no VIP  ({cases}:1)" in out
    assert f"{cases}:4: vip-joined did not fire: condition" in out
    # the part of the condition that failed, with its operands' values
    assert "email_domain(payload.object.participant.email) == 'vip.example.com'  ->  false" in out
    assert 'email_domain(payload.object.participant.email) = "gmail.com"' in out
    assert 'payload.object.participant.email = "sam@gmail.com"' in out
    assert "length(payload.object.topic) > `2`  ->  not evaluated (&& stops at a false part)" in out
    assert f"{cases}:12: vip-joined action 1 (notify), parameter 'title' differs" in out
    assert 'expected: "VIP joined Quarterly revue"' in out
    assert 'got:      "VIP joined Quarterly review"' in out
    assert out.splitlines()[-1] == "FAILED: 2 of 2 cases failed, 0 passed"

    doc = json.loads(run_cli("test", "-c", rules, "--cases", cases, "--json").stdout)
    assert doc["summary"] == {"cases": 2, "passed": 0, "failed": 2}
    first, second = doc["cases"]
    assert first["failures"][0]["kind"] == "fires"
    assert first["failures"][0]["rule"] == "vip-joined"
    assert first["failures"][0]["skipped"][0]["trace"]["parts"][1] == {
        "expr": "length(payload.object.topic) > `2`",
        "evaluated": False,
    }
    assert second["failures"] == [
        {
            "kind": "params",
            "line": 12,
            "event": 1,
            "rule": "vip-joined",
            "action": 1,
            "type": "notify",
            "param": "title",
            "expected": "VIP joined Quarterly revue",
            "got": "VIP joined Quarterly review",
            "message": "vip-joined action 1 (notify), parameter 'title' differs",
        }
    ]


#: One case per kind of expectation: (name, its TOML body, passes?, kinds of its failures).
KINDS: list[tuple[str, str, bool, list[str]]] = [
    ("fires", 'event = "vip.json"\nfires = ["vip-joined"]', True, []),
    ("fires, one string", 'event = "vip.json"\nfires = "vip-joined"', True, []),
    ("fires, wrong", 'event = "guest.json"\nfires = ["vip-joined"]', False, ["fires"]),
    ("not_fires", 'event = "guest.json"\nnot_fires = ["vip-joined"]', True, []),
    ("not_fires, wrong", 'event = "vip.json"\nnot_fires = ["vip-joined"]', False, ["not_fires"]),
    ("exactly", 'event = "vip.json"\nfires = ["vip-joined"]\nexactly = true', True, []),
    ("exactly, nothing", 'event = "guest.json"\nexactly = true', True, []),
    (
        "exactly, wrong",
        "events = \"life.jsonl\"\nfires = ['audit']\nexactly = true",
        False,
        ["exactly"],
    ),
    (
        "sequence: fires somewhere, by index and by name",
        'events = "life.jsonl"\nfires = ["vip-joined", "internal-topic", "audit"]\n'
        '[[case.expect]]\nevent = 2\nfires = ["vip-joined", "internal-topic"]\nexactly = true\n'
        '[[case.expect]]\nevent = "meeting.ended"\nfires = ["audit"]\nnot_fires = ["vip-joined"]',
        True,
        [],
    ),
    (
        "sequence: not on that event",
        'events = "life.jsonl"\n[[case.expect]]\nevent = 1\nfires = ["vip-joined"]',
        False,
        ["fires"],
    ),
    (
        "sequence of files and an inline table",
        'events = ["guest.json", "vip.json", { event = "meeting.ended", payload = { object = { topic = "x" } } }]\n'
        'not_fires = ["internal-topic"]\n'
        '[[case.expect]]\nevent = 3\nfires = ["audit"]\nexactly = true',
        True,
        [],
    ),
    (
        "params: action by type, several parameters",
        'event = "vip.json"\n[[case.expect]]\nrule = "vip-joined"\naction = "notify"\n'
        'params = { title = "VIP joined Quarterly review", body = "Riley Park joined", to = "json://localhost/oncall" }',
        True,
        [],
    ),
    (
        "params: a table matches by its keys, arrays exactly",
        'events = "life.jsonl"\n[[case.expect]]\nevent = 2\nrule = "internal-topic"\n'
        'params = { json = { topic = "[internal] Roadmap", tags = ["zoom", "meeting.participant_joined"] } }',
        True,
        [],
    ),
    (
        "params: a table with a wrong value",
        'events = "life.jsonl"\n[[case.expect]]\nevent = 2\nrule = "internal-topic"\n'
        "params = { json = { id = 85746065432 } }",
        False,
        ["params"],
    ),
    (
        "params: an array of another length",
        'events = "life.jsonl"\n[[case.expect]]\nevent = 2\nrule = "internal-topic"\n'
        'params = { json = { tags = ["zoom"] } }',
        False,
        ["params"],
    ),
    (
        "params: a parameter not rendered",
        'event = "vip.json"\n[[case.expect]]\nrule = "vip-joined"\naction = 1\n'
        'params = { tag = "ops" }',
        False,
        ["params"],
    ),
    (
        "params of a rule that did not fire",
        'event = "guest.json"\n[[case.expect]]\nrule = "vip-joined"\naction = 2\n'
        'params = { path = "/tmp/vip.jsonl" }',
        False,
        ["fires"],
    ),
]


def test_each_kind_of_expectation(rules: Path, tmp_path: Path) -> None:
    text = "".join(f'[[case]]\nname = "{name}"\n{body}\n\n' for name, body, _, _ in KINDS)
    cases = write(tmp_path, "kinds.cases.toml", text)
    result = run_cli("test", "-c", rules, "--cases", cases, "--json")
    assert result.returncode == 1, result.stderr
    doc = json.loads(result.stdout)
    got = {
        case["name"]: (case["passed"], [f["kind"] for f in case["failures"]])
        for case in doc["cases"]
    }
    assert got == {name: (passes, kinds) for name, _, passes, kinds in KINDS}
    by_name = {case["name"]: case for case in doc["cases"]}
    wrong = by_name["exactly, wrong"]["failures"][0]
    assert wrong["unexpected"] == ["vip-joined", "internal-topic"]
    assert wrong["got"] == ["audit", "vip-joined", "internal-topic"]
    assert by_name["not_fires, wrong"]["failures"][0]["fired_on"] == [1]
    table = by_name["params: a table with a wrong value"]["failures"][0]
    assert (table["expected"], table["got"]) == ({"id": 85746065432}, {"id": "85746065432"})
    assert doc["summary"] == {
        "cases": len(KINDS),
        "passed": sum(1 for k in KINDS if k[2]),
        "failed": sum(1 for k in KINDS if not k[2]),
    }
    assert by_name["sequence: fires somewhere, by index and by name"]["events"] == [
        {
            "index": i,
            "event": name,
            "id": doc["cases"][8]["events"][i - 1]["id"],
            "from": f"life.jsonl:{i}",
            "fired": fired,
        }
        for i, name, fired in [
            (1, "meeting.started", ["audit"]),
            (2, "meeting.participant_joined", ["vip-joined", "internal-topic"]),
            (3, "meeting.ended", ["audit"]),
        ]
    ]
    text_out = run_cli("test", "-c", rules, "--cases", cases).stdout
    assert "      -  85746065432" not in text_out  # the id differs as a number vs a string:
    assert '-  "id": 85746065432' in text_out and '+  "id": "85746065432"' in text_out


def test_a_directory_of_cases_files(rules: Path, tmp_path: Path) -> None:
    folder = tmp_path / "cases"
    folder.mkdir()
    for name in ("b.cases.toml", "a.cases.toml"):
        (folder / name).write_text(
            f'[[case]]\nname = "{name}"\nevent = "../vip.json"\nfires = ["vip-joined"]\n'
        )
    (folder / "notes.toml").write_text("not = 'a cases file'")
    result = run_cli("test", "-c", rules, "--cases", folder)
    assert result.returncode == 0, result.stderr
    assert [line.split("  ")[1] for line in result.stdout.splitlines()[:-1]] == [
        "a.cases.toml",
        "b.cases.toml",
    ]
    both = run_cli("test", "-c", rules, "--cases", folder / "a.cases.toml", folder / "b.cases.toml")
    assert both.stdout == result.stdout
    empty = tmp_path / "empty"
    empty.mkdir()
    nothing = run_cli("test", "-c", rules, "--cases", empty)
    assert nothing.returncode == 2
    assert f"{empty}: command line: no *.cases.toml files in this directory" in nothing.stderr


def test_an_invalid_cases_file_exits_2_with_every_problem(rules: Path, tmp_path: Path) -> None:
    cases = write(
        tmp_path,
        "bad.cases.toml",
        """
        version = 1
        cases = []

        [[case]]
        name  = "typos"
        event = "missing.json"
        fires = ["vip-joind"]
        exactly = "yes"
        firess = ["audit"]

        [[case]]
        name   = "typos"
        events = "life.jsonl"

          [[case.expect]]
          event = "meeting.endd"
          fires = ["audit"]

          [[case.expect]]
          event  = 2
          rule   = "vip-joined"
          action = 1
          params = { titel = "x" }

          [[case.expect]]
          rule   = "vip-joined"
          action = "http"
          params = { title = "x" }

        [[case]]
        name = "no expectation"
        event = { event = "meeting.started", payload = { object = { start_time = 2026-02-05T17:00:00Z } } }
        """,
    )
    result = run_cli("test", "-c", rules, "--cases", cases)
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert lines == [
        "zoomrules: 12 problems in the test cases:",
        f"  {cases}:2: top level, key 'cases': unknown key (did you mean 'case'?)",
        f"  {cases}:6: case 'typos', key 'event': missing.json: cannot read: "
        "No such file or directory",
        f"  {cases}:7: case 'typos', key 'fires[1]': unknown rule 'vip-joind' "
        "(did you mean 'vip-joined'?)",
        f"  {cases}:8: case 'typos', key 'exactly': must be true or false",
        f"  {cases}:9: case 'typos', key 'firess': unknown key (did you mean 'fires'?)",
        f"  {cases}:12: case 'typos', key 'name': duplicate case name (first at line 4)",
        f"  {cases}:16: case 'typos', key 'expect[1].event': no meeting.endd event in this case "
        "(did you mean 'meeting.ended'?); its events: meeting.ended, meeting.participant_joined, "
        "meeting.started",
        f"  {cases}:23: case 'typos', key 'expect[2].params.titel': action 1 of 'vip-joined' "
        "(notify) has no parameter 'titel' (did you mean 'title'?)",
        f"  {cases}:25: case 'typos', key 'expect[3].event': this case has 3 events: say which "
        "one's parameters are checked, with event = <number> or <event name>, or at = <when>",
        f"  {cases}:27: case 'typos', key 'expect[3].action': rule 'vip-joined' has no http "
        "action (1 notify, 2 log)",
        f"  {cases}:30: case 'no expectation': no expectations: give fires, not_fires, "
        "exactly = true or [[case.expect]]",
        f"  {cases}:32: case 'no expectation', key 'event.payload.object.start_time': TOML "
        "date-time 2026-02-05T17:00:00+00:00 is not a JSON value: quote it as Zoom sends it "
        '(e.g. "2026-02-05T17:00:00Z")',
    ]


def test_invalid_cases_problems_in_line_order(rules: Path, tmp_path: Path) -> None:
    cases = write(
        tmp_path,
        "bad.cases.toml",
        """
        [[case]]
        name  = "a"
        events = "life.jsonl"
          [[case.expect]]
          rule   = "vip-joined"
          action = 1
          params = { title = "x" }

        [[case]]
        name = "b"
        event = "life.jsonl"
        fires = "audit"

        [[case]]
        event = "vip.json"
        fires = ["audit"]
        """,
    )
    result = run_cli("test", "-c", rules, "--cases", cases, "--json")
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.splitlines()[1:] == [
        f"  {cases}:4: case 'a', key 'expect[1].event': this case has 3 events: say which one's "
        "parameters are checked, with event = <number> or <event name>, or at = <when>",
        f"  {cases}:11: case 'b', key 'event': a JSON lines file holds a sequence: write "
        'events = "life.jsonl"',
        f"  {cases}:14: case #3, key 'name': missing: every case needs a name",
    ]


def test_a_toml_syntax_error_and_bad_rules_exit_2(rules: Path, tmp_path: Path) -> None:
    cases = write(tmp_path, "broken.cases.toml", '[[case]]\nname = "x\n')
    result = run_cli("test", "-c", rules, "--cases", cases)
    assert result.returncode == 2
    assert f"{cases}:2: TOML syntax:" in result.stderr
    bad_rules = write(tmp_path, "bad-rules.toml", "[[rule]]\nname = 'x'\n")
    result = run_cli("test", "-c", bad_rules, "--cases", cases)
    assert result.returncode == 2
    assert "in the configuration" in result.stderr


def test_event_or_cases_but_not_both(rules: Path, tmp_path: Path) -> None:
    cases = write(
        tmp_path, "x.cases.toml", '[[case]]\nname = "x"\nevent = "vip.json"\nfires = "audit"\n'
    )
    both = run_cli("test", "-c", rules, tmp_path / "vip.json", "--cases", cases)
    assert both.returncode == 2
    assert "not both" in both.stderr
    neither = run_cli("test", "-c", rules)
    assert neither.returncode == 2
    assert "give one EVENT.json" in neither.stderr


# --------------------------------------------------------------------------
# single-event mode: as before, plus traces


def test_single_event_test_still_exits_0_whatever_fires(rules: Path, tmp_path: Path) -> None:
    result = run_cli("test", "-c", rules, tmp_path / "guest.json")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("event meeting.participant_joined (id ")
    assert lines[1] == "no rule fires"
    assert lines[2].startswith("skip   vip-joined: condition (when = ")


def test_test_shows_the_operands_of_a_false_condition(rules: Path, tmp_path: Path) -> None:
    event = event_file(tmp_path, "topic.json", joined("dana@vip.example.com", "Hi"))
    text = run_cli("test", "-c", rules, event)
    assert text.returncode == 0, text.stderr
    skip = text.stdout.split("skip   vip-joined: ")[1].split("skip   ")[0].splitlines()
    assert skip[1:] == [
        "         email_domain(payload.object.participant.email) == 'vip.example.com'  ->  true",
        '           email_domain(payload.object.participant.email) = "vip.example.com"',
        '             payload.object.participant.email = "dana@vip.example.com"',
        "         length(payload.object.topic) > `2`  ->  false",
        "           length(payload.object.topic) = 2",
        '             payload.object.topic = "Hi"',
    ]
    # || shows every part it evaluated
    assert "         contains(payload.object.topic, '[internal]')  ->  false" in text.stdout
    assert "         payload.object.type == `8`  ->  false" in text.stdout
    assert "           payload.object.type = 2" in text.stdout

    doc = json.loads(run_cli("test", "-c", rules, event, "--json").stdout)
    vip = next(s for s in doc["skipped"] if s["rule"] == "vip-joined")
    assert vip["trace"] == {
        "expr": "email_domain(payload.object.participant.email) == 'vip.example.com' "
        "&& length(payload.object.topic) > `2`",
        "evaluated": True,
        "value": False,
        "op": "&&",
        "parts": [
            {
                "expr": "email_domain(payload.object.participant.email) == 'vip.example.com'",
                "evaluated": True,
                "value": True,
                "operands": [
                    {
                        "expr": "email_domain(payload.object.participant.email)",
                        "value": "vip.example.com",
                        "operands": [
                            {
                                "expr": "payload.object.participant.email",
                                "value": "dana@vip.example.com",
                            }
                        ],
                    }
                ],
            },
            {
                "expr": "length(payload.object.topic) > `2`",
                "evaluated": True,
                "value": False,
                "operands": [
                    {
                        "expr": "length(payload.object.topic)",
                        "value": 2,
                        "operands": [{"expr": "payload.object.topic", "value": "Hi"}],
                    }
                ],
            },
        ],
    }
    # a rule that fired, or was skipped for another reason, has no trace
    assert all(
        "trace" not in s for s in doc["skipped"] if s["reason"] not in ("condition", "error")
    )


# --------------------------------------------------------------------------
# secrets


def test_rendered_params_in_failures_are_masked(rules: Path, tmp_path: Path) -> None:
    secret_url = "https://hooks.example.com/T0SECRETPATH/x"
    env = cli_env(HOOK_URL=secret_url, HOOK_TOKEN="s3cr3t-token-value")
    cases = write(
        tmp_path,
        "masked.cases.toml",
        """
        [[case]]
        name   = "the hook"
        events = "life.jsonl"
          [[case.expect]]
          event  = 2
          rule   = "internal-topic"
          params = { url = "https://hooks.example.com/other", headers = { Authorization = "Bearer wrong" } }
        """,
    )
    masked = run_cli("test", "-c", rules, "--cases", cases, "--json", env=env)
    assert masked.returncode == 1, masked.stderr
    assert "T0SECRETPATH" not in masked.stdout and "s3cr3t-token-value" not in masked.stdout
    url, headers = json.loads(masked.stdout)["cases"][0]["failures"]
    assert url["got"] == "***"
    assert headers["got"] == {"Authorization": "***"}
    text = run_cli("test", "-c", rules, "--cases", cases, env=env)
    assert "T0SECRETPATH" not in text.stdout and "s3cr3t-token-value" not in text.stdout
    shown = run_cli("test", "-c", rules, "--cases", cases, "--json", "--show-secrets", env=env)
    url, headers = json.loads(shown.stdout)["cases"][0]["failures"]
    assert url["got"] == secret_url
    assert headers["got"] == {"Authorization": "Bearer s3cr3t-token-value"}


# --------------------------------------------------------------------------
# the parts: matching, unparsing, tracing


@pytest.mark.parametrize(
    ("expected", "got", "result"),
    [
        ("a", "a", True),
        ("a", "b", False),
        (1, 1.0, True),
        (1, "1", False),
        (True, 1, False),
        (1, True, False),
        (True, True, True),
        ({"a": 1}, {"a": 1, "b": 2}, True),
        ({"a": {"b": 1}}, {"a": {"b": 1, "c": 2}}, True),
        ({"a": 1}, {"b": 1}, False),
        ({}, {"b": 1}, True),
        ({}, [], False),
        ([1, 2], [1, 2], True),
        ([1, 2], [1, 2, 3], False),
        ([{"a": 1}], [{"a": 1, "b": 2}], True),
        ("a", None, False),
    ],
)
def test_matches(expected: Any, got: Any, result: bool) -> None:
    assert matches(expected, got) is result


def _compliance_expressions() -> list[str]:
    found = []
    for path in sorted(glob.glob(str(COMPLIANCE_DIR / "*.json"))):
        for suite in json.loads(Path(path).read_text()):
            for case in suite["cases"]:
                try:
                    jmespath.compile(case["expression"])
                except jmespath.exceptions.JMESPathError:
                    continue
                found.append(case["expression"])
    return found


EXTRA_EXPRESSIONS = [
    "!a.b", "!(a.b)", "!a[0]", "!(a.b[0])", "(a[*].b).c", "(foo.bar[*]).baz", "a[*].[b, c]",
    "a || b && c", "(a || b) && c", "a && (b || c)", "!(a == b)", "a == (b == c)", "&a || b",
    "sort_by(a, &b.c)[0]", "'it\\'s'", "'back\\\\slash'", "`\"tick\\`\"`", "a | (b | c)",
    "(a | b).c", "a[][]", "a[0:2][0]", "{a: b, \"c d\": e}.a", "a[?b == `1` && c].d",
    "\"a-b\".c", "length(c) > `2`", "!(!a && b)", "`[1, {\"x\": null}]`",
]  # fmt: skip


def test_unparse_gives_text_that_parses_to_the_same_tree() -> None:
    expressions = _compliance_expressions() + EXTRA_EXPRESSIONS
    assert len(expressions) > 800
    wrong = []
    for text in expressions:
        tree = jmespath.compile(text).parsed
        again = unparse(tree)  # type: ignore[arg-type]
        if repr(jmespath.compile(again).parsed) != repr(tree):
            wrong.append((text, again))
    assert wrong == []


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("a.b == 'x' && length(c) > `2`", "a.b == 'x' && length(c) > `2`"),
        ('a."b"', "a.b"),
        ('`"x"`', "'x'"),
        ("(a || b) && !c", "(a || b) && !c"),
        ("!contains(['x', 'y'], a)", "!contains(['x', 'y'], a)"),
    ],
)
def test_unparse_reads_like_the_rule(text: str, shown: str) -> None:
    assert unparse(jmespath.compile(text).parsed) == shown  # type: ignore[arg-type]


FUNCTIONS = {fn.name: fn for fn in BUILTIN_FUNCTIONS}


def _trace(text: str, document: Any) -> dict[str, Any]:
    return trace_condition(jmespath.compile(text).parsed, document, FUNCTIONS)  # type: ignore[arg-type]


def test_trace_and_or_chains() -> None:
    doc = {"a": {"b": "y"}, "c": [1, 2, 3], "d": None}
    traced = _trace("a.b == 'x' && length(c) > `2` && d", doc)
    assert traced["value"] is False
    assert [p.get("value", "-") for p in traced["parts"]] == [False, "-", "-"]
    assert traced["parts"][0]["operands"] == [{"expr": "a.b", "value": "y"}]
    assert trace_lines(traced) == [
        "a.b == 'x'  ->  false",
        '  a.b = "y"',
        "length(c) > `2`  ->  not evaluated (&& stops at a false part)",
        "d  ->  not evaluated (&& stops at a false part)",
    ]
    traced = _trace("d || a.b == 'y' || x", doc)
    assert traced["value"] is True
    assert [p["evaluated"] for p in traced["parts"]] == [True, True, False]
    nested = _trace("a.b == 'y' && (d || c[0] == `2`)", doc)
    assert trace_lines(nested, "  ") == [
        "  a.b == 'y'  ->  true",
        '    a.b = "y"',
        "  (d || c[0] == `2`)  ->  false",
        "    d  ->  null",
        "    c[0] == `2`  ->  false",
        "      c[0] = 1",
    ]


def test_trace_of_a_failing_part() -> None:
    traced = _trace("a.b == 'y' && upper(c)", {"a": {"b": "y"}, "c": 5})
    assert "error" in traced and "invalid type" in traced["error"]
    assert traced["parts"][1]["operands"] == [{"expr": "c", "value": 5}]
    assert trace_lines(traced)[2].startswith("upper(c)  ->  error: JMESPathTypeError")


def test_trace_follows_the_compiled_condition(rules: Path) -> None:
    """`evaluate` traces exactly the rule's condition, with the engine's functions."""
    loaded = load_rules([rules])
    result = evaluate(loaded, Event.from_body(joined("x@gmail.com"), source="test"))
    vip = next(s for s in result["skipped"] if s["rule"] == "vip-joined")
    assert vip["trace"]["parts"][0]["value"] is False
    assert evaluate(loaded, Event.from_body(joined(), source="test"), trace=False)["skipped"][
        0
    ].keys() == {"rule", "reason", "detail"}


def test_the_documented_cases_file_passes_against_the_example_rules(tmp_path: Path) -> None:
    """docs/rules.md's example of the format is a valid, passing cases file."""
    section = (ROOT / "docs" / "rules.md").read_text().split("## Testing rules", 1)[1]
    text = section.split("```toml\n", 1)[1].split("```", 1)[0]
    (tmp_path / "events").symlink_to(EXAMPLE_EVENTS)
    cases = tmp_path / "rules.cases.toml"
    cases.write_text(text)
    result = run_cli("test", "-c", EXAMPLE_RULES, "--cases", cases)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.splitlines()[-1] == "OK: 3 cases passed"
