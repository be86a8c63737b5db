"""rules.example.toml against Zoom's own example events."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from conftest import EXAMPLE_RULES, ROOT, ZOOM_ENV, corpus, run_cli
from conftest import example as zoom_example

from engine.events import Event
from engine.explain import evaluate
from engine.loader import LoadedRules, load_rules

#: A few representative events also go through the real CLI.
CLI_SAMPLE = [
    "meeting.participant_joined",
    "recording.completed",
    "team_chat.channel_message_posted",
    "phone.voicemail_received",
    "user.deleted",
    "webinar.registration_created",
]


#: The events zoomrules emits itself are not in Zoom's corpus: their example
#: beside the example rules.
ENGINE_EXAMPLES = {"zoomrules.connection_gap": ROOT / "examples" / "events" / "connection-gap.json"}


def example(name: str) -> dict[str, Any]:
    if name in ENGINE_EXAMPLES:
        body: dict[str, Any] = json.loads(ENGINE_EXAMPLES[name].read_text())
        return body
    return zoom_example(name)


@pytest.fixture(scope="module")
def loaded() -> LoadedRules:
    return load_rules([EXAMPLE_RULES], env=ZOOM_ENV)


def test_check_accepts_the_example_file() -> None:
    result = run_cli("check", "-c", EXAMPLE_RULES)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("OK: 14 rules")
    assert "warning" not in result.stderr


def test_check_without_the_zoom_environment_warns_precisely_and_strict_fails() -> None:
    env = {k: v for k, v in ZOOM_ENV.items() if k != "ZOOM_CLIENT_SECRET"}
    result = run_cli("check", "-c", EXAMPLE_RULES, env={**env, "PATH": "/usr/bin:/bin"})
    assert result.returncode == 0
    assert f"warning: {EXAMPLE_RULES}:14: [zoom], key 'client_secret'" in result.stderr
    assert "ZOOM_CLIENT_SECRET is not set" in result.stderr
    strict = run_cli("check", "--strict", "-c", EXAMPLE_RULES, env={**env, "PATH": "/usr/bin:/bin"})
    assert strict.returncode == 2
    assert f"error: {EXAMPLE_RULES}:14: [zoom], key 'client_secret'" in strict.stderr


def test_every_corpus_example_goes_through_test(loaded: LoadedRules) -> None:
    examples = corpus()
    assert len(examples) > 400
    fired_rules: set[str] = set()
    for name, body in examples.items():
        event = Event.from_body(body, source="test")
        result = evaluate(loaded, event)
        assert result["event"] == body["event"], name
        assert len(result["fired"]) + len(result["skipped"]) == len(loaded.rules), name
        for item in result["fired"]:
            fired_rules.add(item["rule"])
            for action in item["actions"]:
                assert "error" not in action, (name, item["rule"], action)
        errors = [s for s in result["skipped"] if s["reason"] == "error"]
        assert errors == [], (name, errors)
        json.dumps(result)  # the --json document is JSON-able
    # The unmodified corpus already exercises most rules.
    assert {"recording-ready", "webinar-lead-to-crm", "audit-meeting-lifecycle"} <= fired_rules


@pytest.mark.parametrize("name", CLI_SAMPLE)
def test_corpus_examples_through_the_cli(loaded: LoadedRules, name: str, tmp_path: Path) -> None:
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps(example(name)))
    result = run_cli("test", "-c", EXAMPLE_RULES, "--json", path)
    assert result.returncode == 0, result.stderr
    expected = evaluate(loaded, Event.from_body(example(name), source="test"))
    assert json.loads(result.stdout) == expected


def _set(body: dict[str, Any], dotted: str, value: Any) -> None:
    node: Any = body
    parts = dotted.split(".")
    for part in parts[:-1]:
        node = node[int(part)] if isinstance(node, list) else node[part]
    node[parts[-1]] = value


def _event(name: str, changes: dict[str, Any]) -> Event:
    body = example(name)
    for dotted, value in changes.items():
        _set(body, dotted, value)
    return Event.from_body(body, source="test")


P = "payload.object."
SMALL_FILES = {
    f"{P}recording_files.{i}.file_size": 1000
    for i in range(len(example("recording.completed")["payload"]["object"]["recording_files"]))
}

# rule -> (matching event, its changes), (near miss event, its changes, expected skip reason)
CASES: dict[str, tuple[tuple[str, dict[str, Any]], tuple[str, dict[str, Any], str]]] = {
    "vip-joined": (
        ("meeting.participant_joined", {f"{P}participant.email": "Dana@VIP.example.com"}),
        (
            "meeting.participant_joined",
            {f"{P}participant.email": "dana@vip.example.com.evil.org"},
            "condition",
        ),
    ),
    "external-guest-in-internal-meeting": (
        (
            "meeting.participant_joined",
            {f"{P}topic": "[internal] Roadmap", f"{P}participant.email": "guest@gmail.com"},
        ),
        (
            "meeting.participant_joined",
            {f"{P}topic": "[internal] Roadmap", f"{P}participant.email": "me@corp.example.com"},
            "condition",
        ),
    ),
    "incident-bridge-ended": (
        ("meeting.ended", {f"{P}topic": "SEV1 payments bridge"}),
        ("meeting.ended", {f"{P}topic": "Post-incident review"}, "condition"),
    ),
    "screen-share-in-board-meeting": (
        ("meeting.sharing_started", {f"{P}topic": "Board meeting Q1"}),
        (
            "meeting.sharing_started",
            {f"{P}topic": "Board meeting Q1", f"{P}participant.user_id": "z8yCxjabcdEFGHfp8uQ"},
            "condition",
        ),
    ),
    "recording-ready": (
        ("recording.completed", {}),
        ("recording.completed", {f"{P}recording_count": 0}, "condition"),
    ),
    "archive-large-recordings": (
        ("recording.completed", {}),
        ("recording.completed", SMALL_FILES, "condition"),
    ),
    "webinar-lead-to-crm": (
        ("webinar.registration_created", {}),
        ("webinar.registration_cancelled", {}, "event"),
    ),
    "user-deactivated": (
        ("user.deleted", {}),
        ("user.activated", {}, "event"),
    ),
    "user-created-outside-domain": (
        ("user.created", {f"{P}email": "jill@gmail.com"}),
        ("user.created", {}, "condition"),
    ),
    "outage-keyword-in-chat": (
        ("team_chat.channel_message_posted", {f"{P}message": "Is this an OUTAGE? checkout fails"}),
        ("team_chat.channel_message_posted", {f"{P}message": "no outages this week"}, "condition"),
    ),
    "missed-sales-call": (
        ("phone.callee_missed", {}),
        ("phone.callee_missed", {f"{P}caller.connection_type": "internal"}, "condition"),
    ),
    "voicemail-to-ticket": (
        ("phone.voicemail_received", {}),
        ("phone.voicemail_received", {f"{P}duration": 5}, "condition"),
    ),
    "audit-meeting-lifecycle": (
        ("meeting.started", {}),
        ("meeting.updated", {}, "event"),
    ),
    "connection-gap-catch-up": (
        ("zoomrules.connection_gap", {"payload.cause": "zoomrules was not running"}),
        ("meeting.started", {}, "event"),
    ),
}


def test_every_example_rule_has_a_case(loaded: LoadedRules) -> None:
    assert sorted(CASES) == sorted(rule.name for rule in loaded.rules)


def _outcome(loaded: LoadedRules, rule: str, event: Event) -> dict[str, Any]:
    result = evaluate(loaded, event)
    for item in result["fired"]:
        if item["rule"] == rule:
            return {"fired": True, **item}
    for item in result["skipped"]:
        if item["rule"] == rule:
            return {"fired": False, **item}
    raise AssertionError(f"{rule} missing from {result}")


@pytest.mark.parametrize("rule", sorted(CASES))
def test_example_rule_fires_and_not_on_a_near_miss(loaded: LoadedRules, rule: str) -> None:
    (hit_name, hit_changes), (miss_name, miss_changes, reason) = CASES[rule]
    hit, miss = _event(hit_name, hit_changes), _event(miss_name, miss_changes)
    spec = next(r for r in loaded.rules if r.name == rule)
    if not spec.spec.enabled:
        # Shipped switched off: it says so, and its condition is still right.
        assert _outcome(loaded, rule, hit)["reason"] == "disabled"
        assert spec.condition is not None
        assert spec.condition(hit.root()) is True
        assert spec.condition(miss.root()) is False
        return
    fired = _outcome(loaded, rule, hit)
    assert fired["fired"], fired
    assert fired["actions"], fired
    for action in fired["actions"]:
        assert "error" not in action and action["params"], action
    skipped = _outcome(loaded, rule, miss)
    assert not skipped["fired"]
    assert skipped["reason"] == reason, skipped


def test_rendered_actions_of_the_vip_rule(loaded: LoadedRules) -> None:
    event = _event("meeting.participant_joined", {f"{P}participant.email": "dana@vip.example.com"})
    fired = _outcome(loaded, "vip-joined", event)
    assert fired["actions"] == [
        {
            "type": "notify",
            "params": {
                "to": "oncall",
                "title": "VIP joined Weekly project sync",
                "body": "Riley Park joined at 2026-02-05T17:02:00Z (meeting 85746065432)",
                "format": "text",
            },
        },
        {"type": "log", "params": {"path": "/var/lib/zoomrules/vip.jsonl"}},
    ]


def test_rendered_json_of_the_crm_rule(loaded: LoadedRules) -> None:
    event = _event("webinar.registration_created", {})
    action = _outcome(loaded, "webinar-lead-to-crm", event)["actions"][0]
    assert action["params"]["headers"] == {"Idempotency-Key": event.id}
    assert action["params"]["json"] == {
        "email": "riley.park@example.com",
        "first_name": "Jill",
        "last_name": "Chill",
        "webinar": "Quarterly product webinar",
        "country": "US",
    }
