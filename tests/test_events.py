"""The Event value: validation, the id, and its being computed only when read."""

from __future__ import annotations

import copy
import hashlib
import pickle
from pathlib import Path

import orjson
import pytest

import engine.events
from engine.errors import InvalidEvent
from engine.events import Event, canonical_json, event_id
from tests.conftest import example


def _nested(depth: int) -> str:
    """An event whose `d` holds lists nested so that the body is `depth` deep."""
    return '{"event": "deep", "d": ' + "[" * (depth - 1) + "]" * (depth - 1) + "}"


def test_the_id_is_the_hash_of_the_canonical_json() -> None:
    body = example("meeting.started")
    text = orjson.dumps(body).decode()
    expected = hashlib.sha256(orjson.dumps(body, option=orjson.OPT_SORT_KEYS)).hexdigest()[:32]
    assert Event.from_json(text, source="a").id == expected
    assert Event.from_body(body, source="b").id == expected
    assert canonical_json(body) == orjson.dumps(body, option=orjson.OPT_SORT_KEYS)


def test_key_order_and_spacing_do_not_change_the_id() -> None:
    compact = Event.from_json('{"event":"x.y","a":1,"b":{"c":2,"d":[3]}}', source="s")
    spaced = Event.from_json('{ "b": {"d": [3], "c": 2}, "a": 1, "event": "x.y" }', source="s")
    assert compact.id == spaced.id


def test_an_event_from_text_hashes_only_when_its_id_is_read(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls: list[object] = []

    def counting(body: dict[str, object]) -> str:
        calls.append(body)
        return event_id(body)

    monkeypatch.setattr(engine.events, "event_id", counting)
    event = Event.from_json(orjson.dumps(example("meeting.ended")), source="s")
    assert calls == []
    assert event.metadata()["event_id"] == event.id == event_id(event.body)
    assert len(calls) == 1  # read twice, computed once


@pytest.mark.parametrize("depth", [2, 200, 254])
def test_bodies_orjson_can_encode_are_accepted_with_their_id(depth: int) -> None:
    event = Event.from_json(_nested(depth), source="s")
    assert event.id == event_id(event.body)


@pytest.mark.parametrize("depth", [255, 400])
def test_a_body_nested_too_deeply_is_rejected_when_decoded(depth: int) -> None:
    """Not later, when something first reads the id."""
    with pytest.raises(InvalidEvent, match="cannot be encoded"):
        Event.from_json(_nested(depth), source="s")
    with pytest.raises(InvalidEvent, match="cannot be encoded"):
        Event.from_body(orjson.loads(_nested(depth)), source="s")


def test_many_shallow_brackets_are_not_mistaken_for_depth() -> None:
    """More brackets than orjson nests, but shallow: accepted, id computed at once."""
    text = orjson.dumps({"event": "wide", "lists": [[i] for i in range(600)]})
    event = Event.from_json(text, source="s")
    assert event.id == event_id(orjson.loads(text))


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[1]", "must be a JSON object, got list"),
        ('{"payload": {}}', "no string 'event' name"),
        ('{"event": ""}', "no string 'event' name"),
        ('{"event": "a.b", "zoomrules": 1}', "reserved key 'zoomrules'"),
        ('{"event": ', "invalid JSON"),
    ],
)
def test_what_is_not_an_event_says_why(text: str, message: str) -> None:
    with pytest.raises(InvalidEvent, match=message):
        Event.from_json(text, source="s")


def test_events_are_immutable_and_compare_without_their_text() -> None:
    body = example("meeting.started")
    from_text = Event.from_json(orjson.dumps(body), source="s")
    event = Event(from_text.name, from_text.body, None, from_text.received_at, "s")
    assert event == from_text  # `raw` is not compared; the lazy id is
    assert event != Event(event.name, event.body, "other", event.received_at, "s")
    with pytest.raises(AttributeError, match="immutable"):
        event.name = "x"  # type: ignore[misc]
    with pytest.raises(AttributeError, match="immutable"):
        del event.body
    with pytest.raises(TypeError):
        hash(event)
    assert f"id={event.id!r}" in repr(event)


@pytest.mark.parametrize("read_id_first", [False, True])
def test_events_pickle_and_copy(read_id_first: bool) -> None:
    event = Event.from_json(orjson.dumps(example("meeting.started")), source="s")
    if read_id_first:
        assert event.id
    for again in (pickle.loads(pickle.dumps(event)), copy.copy(event), copy.deepcopy(event)):
        assert again == event
        assert again.raw == event.raw
        assert again.id == event_id(event.body)


def test_an_id_settled_from_elsewhere_is_kept_and_a_known_one_is_not_replaced() -> None:
    text = orjson.dumps(example("meeting.started"))
    event = Event.from_json(text, source="s")
    assert event.known_id is None
    event.settle_id(event_id(event.body))
    assert event.known_id == event.id == event_id(event.body)
    event.settle_id("something else")
    assert event.id == event_id(event.body)


def test_two_deliveries_of_one_recording_share_an_id_despite_the_download_token() -> None:
    from conftest import example

    first = example("recording.completed")
    second = {**first, "download_token": "another-token-for-the-second-delivery"}
    assert Event.from_body(first, source="a").id == Event.from_body(second, source="b").id
    # Anything else that differs is another occurrence.
    other = {**first, "event_ts": first["event_ts"] + 1}
    assert Event.from_body(other, source="a").id != Event.from_body(first, source="a").id


def test_per_delivery_fields_are_configurable(tmp_path: Path) -> None:
    from conftest import example

    from engine.events import DEFAULT_PER_DELIVERY, set_per_delivery_fields
    from engine.loader import load_rules

    rules = tmp_path / "rules.toml"
    rules.write_text(
        '[engine]\nper_delivery_fields = { "meeting.*" = ["payload.object.join_url"] }\n'
        '[[rule]]\nname = "r"\non = ["meeting.started"]\n[[rule.action]]\ntype = "log"\n'
    )
    try:
        loaded = load_rules([rules])
        assert ("recording.*", ("download_token",)) in loaded.config.engine.per_delivery_fields
        body = example("meeting.started")
        moved = {**body, "payload": {**body["payload"], "object": {
            **body["payload"]["object"], "join_url": "https://zoom.us/j/other"}}}  # fmt: skip
        assert Event.from_body(body, source="a").id == Event.from_body(moved, source="a").id
    finally:
        set_per_delivery_fields(DEFAULT_PER_DELIVERY)
