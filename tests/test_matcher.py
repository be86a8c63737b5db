"""The matcher: event-name index, globs, file order, stop, enabled, runtime errors, throttle."""

from __future__ import annotations

import logging
from pathlib import Path

import httpx
import pytest
from conftest import example, write_rules

from engine.dispatch import Dispatcher
from engine.events import Event
from engine.loader import LoadedRules, load_rules
from engine.pipeline import Pipeline
from engine.services import Services
from engine.throttle import Throttle

RULES = """
[engine]
evaluator = "{evaluator}"

[[rule]]
name = "ended-exact"
on = ["meeting.ended"]

  [[rule.action]]
  type = "log"

[[rule]]
name = "any-meeting"
on = "meeting.*"

  [[rule.action]]
  type = "log"

[[rule]]
name = "broken-at-runtime"
on = ["meeting.ended", "meeting.started"]
description = "lower() of a non-string raises invalid-type at run time"
when = "lower(payload.object.host_id) != 'nobody'"

  [[rule.action]]
  type = "log"

[[rule]]
name = "off"
on = ["meeting.ended"]
enabled = false

  [[rule.action]]
  type = "log"

[[rule]]
name = "incident"
on = ["meeting.ended", "recording.*"]
when = "regex_match(payload.object.topic, '(?i)incident')"
stop = true

  [[rule.action]]
  type = "log"

[[rule]]
name = "after-stop"
on = ["meeting.[es]*ed"]

  [[rule.action]]
  type = "log"
"""


@pytest.fixture(params=["compiled", "interpreter"])
def loaded(request: pytest.FixtureRequest, tmp_path: Path) -> LoadedRules:
    path = write_rules(tmp_path, RULES.replace("{evaluator}", request.param))
    return load_rules([path], env={})


def names(rules: object) -> list[str]:
    return [r.name for r in rules]  # type: ignore[attr-defined]


def event(name: str, topic: str | None = None) -> Event:
    body = example(name)
    if topic is not None:
        body["payload"]["object"]["topic"] = topic
    return Event.from_body(body, source="test")


def test_candidates_come_from_the_index_and_globs_in_file_order(loaded: LoadedRules) -> None:
    matcher = loaded.matcher
    assert names(matcher.candidates("meeting.ended")) == [
        "ended-exact",
        "any-meeting",
        "broken-at-runtime",
        "incident",
        "after-stop",
    ]
    assert names(matcher.candidates("meeting.started")) == [
        "any-meeting",
        "broken-at-runtime",
        "after-stop",
    ]
    # "meeting.[es]*ed" matches ended/started but not deleted.
    assert names(matcher.candidates("meeting.deleted")) == ["any-meeting"]
    assert names(matcher.candidates("recording.completed")) == ["incident"]
    assert names(matcher.candidates("user.created")) == []
    # Globs are case-sensitive and match the whole name.
    assert names(matcher.candidates("Meeting.ended")) == []
    assert names(matcher.candidates("xmeeting.ended")) == []


def test_disabled_rules_are_not_candidates(loaded: LoadedRules) -> None:
    assert "off" not in names(loaded.matcher.candidates("meeting.ended"))
    assert "off" in names(loaded.rules)


def test_match_in_file_order(loaded: LoadedRules) -> None:
    ev = event("meeting.ended")
    assert names(loaded.matcher.match(ev.name, ev.root())) == [
        "ended-exact",
        "any-meeting",
        "broken-at-runtime",
        "after-stop",
    ]


def test_stop_ends_matching_after_the_rule(loaded: LoadedRules) -> None:
    ev = event("meeting.ended", topic="Incident bridge 42")
    assert names(loaded.matcher.match(ev.name, ev.root())) == [
        "ended-exact",
        "any-meeting",
        "broken-at-runtime",
        "incident",
    ]


def test_runtime_error_is_logged_counted_and_other_rules_fire(
    loaded: LoadedRules, caplog: pytest.LogCaptureFixture
) -> None:
    body = example("meeting.started")
    body["payload"]["object"]["host_id"] = 60  # a number: lower() raises invalid-type
    ev = Event.from_body(body, source="test")
    with caplog.at_level(logging.WARNING, logger="zoomrules.matcher"):
        fired = loaded.matcher.match(ev.name, ev.root())
        fired_again = loaded.matcher.match(ev.name, ev.root())
    assert names(fired) == names(fired_again) == ["any-meeting", "after-stop"]
    assert loaded.matcher.errors == {"broken-at-runtime": 2}
    records = [r for r in caplog.records if r.name == "zoomrules.matcher"]
    assert len(records) == 2
    message = records[0].getMessage()
    assert "broken-at-runtime" in message and "meeting.started" in message
    assert records[0].rule == "broken-at-runtime"  # type: ignore[attr-defined]
    assert records[0].event == "meeting.started"  # type: ignore[attr-defined]
    assert records[1].error_count == 2  # type: ignore[attr-defined]


def test_the_same_rule_fires_when_the_field_is_a_string(loaded: LoadedRules) -> None:
    ev = event("meeting.started")
    assert "broken-at-runtime" in names(loaded.matcher.match(ev.name, ev.root()))
    assert loaded.matcher.errors == {}


def test_explain_gives_every_reason(loaded: LoadedRules) -> None:
    ev = event("meeting.ended", topic="incident review")
    decisions = loaded.matcher.explain(ev.name, ev.root())
    assert [(d.rule.name, d.fired, d.reason) for d in decisions] == [
        ("ended-exact", True, None),
        ("any-meeting", True, None),
        ("broken-at-runtime", True, None),
        ("off", False, "disabled"),
        ("incident", True, None),
        ("after-stop", False, "stopped"),
    ]
    # explain has no side effects on the counters
    assert loaded.matcher.errors == {}


THROTTLED = """
[[rule]]
name = "once-per-meeting"
on = ["meeting.participant_joined"]
throttle = { key = "payload.object.uuid", limit = 2, per = "10m" }

  [[rule.action]]
  type = "log"

[[rule]]
name = "unthrottled"
on = ["meeting.participant_joined"]

  [[rule.action]]
  type = "log"
"""


@pytest.mark.anyio
async def test_throttle_limits_firings_per_key(tmp_path: Path) -> None:
    loaded = load_rules([write_rules(tmp_path, THROTTLED)], env={})
    assert loaded.throttles["once-per-meeting"].limit == 2
    assert loaded.throttles["once-per-meeting"].per == 600.0
    async with httpx.AsyncClient() as http:
        pipeline = Pipeline(loaded, Dispatcher(Services(loaded.config, http)))

        def joined(uuid: str) -> Event:
            body = example("meeting.participant_joined")
            body["payload"]["object"]["uuid"] = uuid
            return Event.from_body(body, source="test")

        got = [names(pipeline.select(joined(u))) for u in ["m1", "m1", "m1", "m2"]]
    both = ["once-per-meeting", "unthrottled"]
    assert got == [both, both, ["unthrottled"], both]
    assert pipeline.stats.throttled == {"once-per-meeting": 1}


def test_throttle_window_slides_with_the_clock() -> None:
    now = [1000.0]
    throttle = Throttle(limit=1, per=60.0, clock=lambda: now[0])
    assert throttle.allow("k") is True
    assert throttle.allow("k") is False
    assert throttle.allow("other") is True
    now[0] += 59.9
    assert throttle.allow("k") is False
    now[0] += 0.1
    assert throttle.allow("k") is True
    assert throttle.suppressed == 2
    # Keys are compared as text: 123 and "123" are the same meeting id.
    assert throttle.allow(123) is True
    assert throttle.allow("123") is False
