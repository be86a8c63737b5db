"""`{{ expr }}` templates: raw values, text interpolation, recursion, metadata."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import ZOOM_ENV, example, write_rules

from engine.errors import TemplateError
from engine.events import Event
from engine.explain import evaluate
from engine.expr.compiler import ExpressionCompiler
from engine.expr.functions import BUILTIN_FUNCTIONS
from engine.expr.templates import Constant, Template, compile_value, to_text
from engine.loader import load_rules

EVENT = example("recording.completed")


@pytest.fixture(params=["compiled", "interpreter"])
def compiler(request: pytest.FixtureRequest) -> ExpressionCompiler:
    return ExpressionCompiler(BUILTIN_FUNCTIONS, request.param)


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("{{ payload.object.id }}", 85746065432),
        ("{{payload.object.recording_count}}", 2),
        ("{{ payload.object.on_prem }}", False),
        ("{{ payload.object.missing }}", None),
        ("{{ payload.object.recording_files[*].file_type }}", ["MP4", "M4A"]),
        ("{{ payload.object.recording_files[0].file_size }}", 48234567),
        ("  {{ payload.object.id }}", "  85746065432"),
    ],
)
def test_a_lone_template_yields_the_raw_value(
    compiler: ExpressionCompiler, source: str, expected: object
) -> None:
    value = Template(source, compiler).render(EVENT)
    assert value == expected
    assert type(value) is type(expected)


def test_a_lone_template_may_yield_an_object(compiler: ExpressionCompiler) -> None:
    files = Template("{{ payload.object.recording_files[0] }}", compiler).render(EVENT)
    assert files == EVENT["payload"]["object"]["recording_files"][0]


def test_text_interpolation(compiler: ExpressionCompiler) -> None:
    template = Template(
        "{{ payload.object.topic }}: {{ payload.object.recording_count }} files, "
        "on_prem={{ payload.object.on_prem }}, none=[{{ payload.object.nope }}], "
        "types={{ payload.object.recording_files[*].file_type }}",
        compiler,
    )
    assert template.render(EVENT) == (
        'Weekly project sync: 2 files, on_prem=false, none=[], types=["MP4","M4A"]'
    )


def test_quote_applies_to_each_interpolated_value(compiler: ExpressionCompiler) -> None:
    template = Template("echo {{ payload.object.topic }}", compiler)
    assert template.render(EVENT, quote=lambda s: f"<{s}>") == "echo <Weekly project sync>"
    # With a quote function even a lone template renders as text.
    lone = Template("{{ payload.object.recording_count }}", compiler)
    assert lone.render(EVENT, quote=str.upper) == "2"


def test_to_text() -> None:
    assert [to_text(v) for v in ("s", None, True, False, 3, 2.5, {"a": [1]})] == [
        "s",
        "",
        "true",
        "false",
        "3",
        "2.5",
        '{"a":[1]}',
    ]


def test_recursion_into_tables_and_lists(compiler: ExpressionCompiler) -> None:
    value = {
        "meeting": "{{ payload.object.id }}",
        "static": {"a": 1, "b": ["x"]},
        "files": [
            "{{ payload.object.recording_files[0].file_type }}",
            {
                "size": "{{ payload.object.total_size }}",
                "label": "size {{ payload.object.total_size }}",
            },
            7,
        ],
    }
    rendered = compile_value(value, compiler).render(EVENT)
    assert rendered == {
        "meeting": 85746065432,
        "static": {"a": 1, "b": ["x"]},
        "files": ["MP4", {"size": 51380295, "label": "size 51380295"}, 7],
    }


def test_values_without_templates_stay_constant(compiler: ExpressionCompiler) -> None:
    node = compile_value({"a": ["x", 1, {"b": "no template"}]}, compiler)
    assert isinstance(node, Constant)
    assert node.render({}) == {"a": ["x", 1, {"b": "no template"}]}


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("{{ }}", "empty template"),
        ("hello {{ payload.object.id", "unclosed '{{'"),
        ("{{ payload.[ }}", "in template {{ payload.[ }}"),
        ("{{ nope(payload) }}", "unknown function"),
    ],
)
def test_template_errors(compiler: ExpressionCompiler, source: str, message: str) -> None:
    with pytest.raises(TemplateError) as info:
        Template(source, compiler)
    assert message in str(info.value)


def test_zoomrules_metadata_key(tmp_path: Path) -> None:
    path = write_rules(
        tmp_path,
        """
        [[rule]]
        name = "meta"
        on = ["recording.completed"]
        when = "zoomrules.source == 'unit-test'"

          [[rule.action]]
          type = "http"
          url = "https://example.com/{{ zoomrules.event_id }}"
          json = { id = "{{ zoomrules.event_id }}", at = "{{ zoomrules.received_at }}", src = "{{ zoomrules.source }}", rule = "{{ zoomrules.rule }}", results = "{{ zoomrules.results }}", previous = "{{ zoomrules.previous }}", event = "{{ event }}" }
        """,
    )
    loaded = load_rules([path], env=ZOOM_ENV)
    event = Event.from_body(EVENT, source="unit-test", received_at=1770315001.5)
    result = evaluate(loaded, event)
    assert [f["rule"] for f in result["fired"]] == ["meta"]
    params = result["fired"][0]["actions"][0]["params"]
    assert params["url"] == f"https://example.com/{event.id}"
    assert params["json"] == {
        "id": event.id,
        "at": 1770315001.5,
        "src": "unit-test",
        "rule": "meta",
        "results": [],
        "previous": None,
        "event": "recording.completed",
    }
    # Conditions see the metadata too: another source does not fire.
    other = Event.from_body(EVENT, source="websocket")
    assert evaluate(loaded, other)["fired"] == []


def test_event_id_is_stable_for_the_same_content() -> None:
    first = Event.from_body(example("meeting.ended"), source="a")
    second = Event.from_body(example("meeting.ended"), source="b")
    changed = example("meeting.ended")
    changed["payload"]["object"]["topic"] = "other"
    assert first.id == second.id
    assert Event.from_body(changed, source="a").id != first.id


def test_events_may_not_carry_the_reserved_key() -> None:
    body = example("meeting.ended")
    body["zoomrules"] = {"rule": "forged"}
    with pytest.raises(ValueError, match="reserved key 'zoomrules'"):
        Event.from_body(body, source="test")
