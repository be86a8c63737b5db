"""The matcher never compiles on the event loop and stays exact while it compiles.

Candidates not compiled yet are evaluated in turn, in slices; plans are
compiled part by part, off the loop (engine.pipeline), and swapped in. At
every stage (nothing compiled, some parts, all parts, an in-turn tail past
the cap) the rules that fire, their order, `stop` and each error's class and
message are those of evaluating every rule's condition with jmespath's
interpreter, in turn. Names are remembered least recently used first out.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import anyio
import pytest
from conftest import write_rules
from test_expr_plans import CONDITIONS, DOCUMENTS, Calls, reference

import engine.matcher as matcher_module
import engine.pipeline as pipeline_module
from engine.events import Event
from engine.loader import LoadedRules, load_rules
from engine.matcher import Matcher, Matching, UncompiledPart
from engine.pipeline import Pipeline
from engine.plugin import JMESPathFunction, hookimpl

NAME = "meeting.started"
EXTRA = ("key_of", "impure", "picky", "shout")


class ExtraFunctions:
    """The property tests' own functions (pure, impure, raising), as a plugin."""

    def __init__(self) -> None:
        self.functions = Calls().functions()

    @hookimpl
    def zoomrules_jmespath_functions(self) -> list[JMESPathFunction]:
        return [self.functions[name] for name in EXTRA]


def toml_rules(whens: list[str | None], stops: set[int], on: str = NAME, prefix: str = "r") -> str:
    out = []
    for index, when in enumerate(whens):
        condition = f"when = '''  {when}  '''\n" if when is not None else ""
        stop = "stop = true\n" if index in stops else ""
        out.append(
            f'[[rule]]\nname = "{prefix}{index}"\non = ["{on}"]\n{condition}{stop}'
            '  [[rule.action]]\n  type = "log"\n'
        )
    return "\n".join(out)


def load(tmp_path: Path, text: str, evaluator: str = "compiled") -> LoadedRules:
    path = write_rules(tmp_path, f'[engine]\nevaluator = "{evaluator}"\n' + text)
    return load_rules([path], env={}, extra_plugins=[ExtraFunctions()])


Outcome = tuple[list[str], list[tuple[str, str, str]]]


class Recorder:
    """Stands in for the matcher's error reporting: what each rule raised."""

    def __init__(self, matcher: Matcher) -> None:
        self.errors: list[tuple[str, str, str]] = []
        matcher._runtime_error = self.record  # type: ignore[method-assign]

    def record(self, rule: Any, event_name: str, exc: Exception) -> None:
        self.errors.append((rule.name, type(exc).__name__, str(exc)))

    def outcome(self, fired: list[Any]) -> Outcome:
        errors, self.errors = self.errors, []
        return [rule.name for rule in fired], errors


def in_slices(matching: Any) -> list[Any]:
    """Run a Matching as the pipeline does, its deadline always past."""
    if isinstance(matching, list):
        return matching
    assert isinstance(matching, Matching)
    while not matching.run(-math.inf):
        pass
    return matching.fired


def compile_one_part(matcher: Matcher) -> bool:
    """Do one piece of `plan_work` here, as compile_plans does it."""
    work = matcher.plan_work()
    if work is None:
        return False
    result = work.run(matcher_module.LARGE_PLAN_SOURCE)
    if isinstance(result, UncompiledPart):
        result = result.finish(compile(result.source, result.filename, "exec"))
    work.install(result)
    return True


@pytest.mark.parametrize("evaluator", ["compiled", "interpreter"])
@pytest.mark.parametrize("stop_at", [None, 11, 60])
def test_every_stage_of_compiling_equals_each_rule_in_turn(
    evaluator: str, stop_at: int | None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Small parts, some too large for a thread (compiled "elsewhere"), and
    # an in-turn tail after the cap.
    monkeypatch.setattr(matcher_module, "LARGE_PLAN_SOURCE", 12_000)
    monkeypatch.setattr(matcher_module, "PLAN_SOURCE_LIMIT", 5_000)
    whens = CONDITIONS * 2
    monkeypatch.setattr(matcher_module, "COMPILED_RULES_PER_SET", len(whens) - 9)
    stops = {stop_at} if stop_at is not None else set()
    loaded = load(tmp_path, toml_rules(whens, stops), evaluator)
    matcher = loaded.matcher
    recorder = Recorder(matcher)
    functions = ExtraFunctions().functions
    events = [
        Event.from_body({**document, "event": NAME}, source="test")
        for document in DOCUMENTS
        if isinstance(document, dict)
    ]
    stop_flags = [index in stops for index in range(len(whens))]
    expected = [reference(whens, stop_flags, event.root(), functions) for event in events]

    stages = 0
    while True:
        for event, want in zip(events, expected, strict=True):
            assert recorder.outcome(in_slices(matcher.matching(event))) == want, stages
        stages += 1
        if not compile_one_part(matcher):
            break
    entry = matcher._entry(NAME)
    if evaluator == "compiled":
        assert len(entry.parts) >= 3 and entry.compiled == len(whens) - 9
        assert matcher.stats.rules_compiled == len(whens) - 9
    else:
        assert entry.turn is not None and stages == 2
    assert entry.done
    # What `match` gives (compiling at once) agrees too.
    fresh = load(tmp_path, toml_rules(whens, stops), evaluator)
    recorder = Recorder(fresh.matcher)
    for event, want in zip(events, expected, strict=True):
        assert recorder.outcome(fresh.matcher.match_event(event)) == want


def corpus_rules(count: int, on: str, prefix: str = "r") -> str:
    """`count` rules with distinct conditions of common shapes."""
    shapes = [
        "payload.object.topic == 'topic {i}' || contains(payload.object.topic, 'w{i}')",
        "payload.object.participants[?email == 'p{i}@example.com' && status == 'joined']",
        "length(payload.object.participants[?email_domain(email) == 'd{i}.com'] || `[]`) > `1`",
        "starts_with(payload.object.topic, 'T{i}') && payload.object.id != '{i}'",
        "lower(payload.object.topic) == 'board {i}'",
    ]
    whens = [shapes[i % len(shapes)].format(i=i) for i in range(count)]
    return toml_rules(list(whens), set(), on, prefix) + "\n"


def corpus_events(names: list[str]) -> list[Event]:
    events = []
    for n, name in enumerate(names * 3):
        people = [
            {"email": f"p{k}@example.com", "status": "joined" if k % 2 else "left"}
            for k in range(n % 7)
        ]
        topic = ["topic 3", "board 14", "T8 sync", "w12 hands", "nothing"][n % 5]
        body = {
            "event": name,
            "payload": {"object": {"id": str(n), "topic": topic, "participants": people}},
        }
        events.append(Event.from_body(body, source="test"))
    return events


@pytest.mark.anyio
@pytest.mark.parametrize("with_process", [True, False])
async def test_the_pipeline_compiles_plans_off_the_loop_and_swaps_them_in(
    with_process: bool,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    compiled_in_process = 0
    compile_in_process = pipeline_module.PlanCompilerProcess.compile

    async def counting(self: Any, source: str, filename: str) -> Any:
        nonlocal compiled_in_process
        compiled_in_process += 1
        return await compile_in_process(self, source, filename)

    monkeypatch.setattr(pipeline_module.PlanCompilerProcess, "compile", counting)
    if not with_process:  # it cannot be started: parts small enough for a thread
        monkeypatch.setattr(pipeline_module.sys, "executable", str(tmp_path / "no-python"))
    text = corpus_rules(300, "meeting.*")
    loaded = load(tmp_path, text)
    expected_by = load(tmp_path, text, "interpreter").matcher
    events = corpus_events([f"meeting.n{k}" for k in range(40)])
    expected = [[rule.name for rule in expected_by.match_event(event)] for event in events]
    assert any(expected)

    pipeline = Pipeline(loaded, None)  # type: ignore[arg-type]  # choose needs no dispatcher
    matcher = loaded.matcher
    async with anyio.create_task_group() as tg:
        await tg.start(pipeline.compile_plans)
        before = [[rule.name for rule in await pipeline.choose(event)] for event in events]
        assert matcher.stats.events_in_turn > 0
        with anyio.fail_after(120):
            await pipeline.wait_plans_compiled()
        after = [[rule.name for rule in await pipeline.choose(event)] for event in events]
        tg.cancel_scope.cancel()
    assert before == expected and after == expected
    # Every name has the same candidates: compiled once, for all of them.
    entry = matcher._entry("meeting.n0")
    assert all(matcher._entry(f"meeting.n{k}") is entry for k in range(40))
    assert entry.done and entry.compiled == 300 and matcher.stats.rules_not_compiled == 0
    sources = [len(part.function.__jmespath_source__) for part in entry.parts]  # type: ignore[union-attr]
    assert compiled_in_process == 1
    if with_process:
        # One plan, larger than a thread may compile.
        assert len(sources) == 1 and sources[0] > matcher_module.PLAN_SOURCE_LIMIT
        assert entry.whole is not None
    else:
        assert len(sources) > 1 and max(sources) <= matcher_module.PLAN_SOURCE_LIMIT
        assert "the plan compiler process is gone" in caplog.text


@pytest.mark.anyio
async def test_the_plan_compiler_process_compiles_as_compile_does() -> None:
    source = "def f(x):\n    return [x, 'é', 1.5, {'k': (1, None)}]\n"
    async with pipeline_module.PlanCompilerProcess() as child:
        namespace: dict[str, Any] = {}
        exec(await child.compile(source, "<test>"), namespace)
        assert namespace["f"](3) == [3, "é", 1.5, {"k": (1, None)}]
        with pytest.raises(SyntaxError):
            await child.compile("def f(:\n", "<test>")
        exec(await child.compile("g = 2\n", "<test>"), namespace)  # still there
        assert namespace["g"] == 2


def test_names_are_forgotten_least_recently_used_first(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(matcher_module, "NAMES_CACHED", 8)
    loaded = load(tmp_path, corpus_rules(3, "meeting.*") + corpus_rules(2, "meeting.a*", "a"))
    matcher = loaded.matcher

    def match(name: str) -> list[str]:
        event = Event.from_body({"event": name, "payload": {}}, source="test")
        return [rule.name for rule in matcher.match_event(event)]

    match("meeting.a0")
    for k in range(6):
        match(f"meeting.b{k}")
    match("meeting.a0")  # used again: the most recent
    for k in range(6, 12):
        match(f"meeting.b{k}")
    assert len(matcher._names) == 8
    assert "meeting.a0" in matcher._names and "meeting.b0" not in matcher._names
    # Two sets of candidates, compiled once each, shared by their names.
    assert len(matcher._sets) == 2 and matcher.stats.parts_compiled == 2
    for k in range(12, 20):
        match(f"meeting.b{k}")
    # meeting.a0 forgotten: so is its set, and its compiled rules.
    assert list(matcher._sets.values()) == [matcher._entry("meeting.b19")]
    assert matcher._compiled_total == 3
    assert match("meeting.a0") == match("meeting.a1")


def test_compiled_rules_are_capped_per_set_and_in_all(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(matcher_module, "COMPILED_RULES_PER_SET", 5)
    monkeypatch.setattr(matcher_module, "COMPILED_RULES_TOTAL", 8)
    text = "".join(corpus_rules(12, name, name[0]) for name in ["a.x", "b.x", "c.x"])
    loaded = load(tmp_path, text)
    reference_matcher = load(tmp_path, text, "interpreter").matcher
    matcher = loaded.matcher
    for name in ["a.x", "b.x", "c.x"]:
        for event in corpus_events([name]):
            got = [rule.name for rule in matcher.match_event(event)]
            assert got == [rule.name for rule in reference_matcher.match_event(event)]
    compiled = [matcher._entry(name).compiled for name in ["a.x", "b.x", "c.x"]]
    assert compiled == [5, 5, 0]  # the third set: past the total, all in turn
    assert matcher._compiled_total == 10


def test_a_matching_run_in_slices_gives_what_it_gives_at_once(tmp_path: Path) -> None:
    loaded = load(tmp_path, corpus_rules(1000, NAME))
    events = corpus_events([NAME])
    matcher = loaded.matcher
    at_once = [[r.name for r in matcher.match_event(event)] for event in events]
    fresh = load(tmp_path, corpus_rules(1000, NAME)).matcher
    for event, want in zip(events, at_once, strict=True):
        matching = fresh.matching(event)
        assert isinstance(matching, Matching)
        slices = 1
        while not matching.run(-math.inf):
            slices += 1
        assert [r.name for r in matching.fired] == want
        assert slices >= 1000 // matcher_module.IN_TURN_SLICE  # one slice at a time


def test_a_plan_that_fails_to_compile_leaves_its_rules_to_be_evaluated_in_turn(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    loaded = load(tmp_path, corpus_rules(20, NAME))
    matcher = loaded.matcher
    event = corpus_events([NAME])[0]
    expected = [r.name for r in load(tmp_path, corpus_rules(20, NAME)).matcher.match_event(event)]
    matcher.matching(event)
    work = matcher.plan_work()
    assert work is not None
    entry = work.entry
    rules = entry.rules
    entry.rules = (*rules[:3], None, *rules[4:])  # type: ignore[assignment]  # a bug
    with caplog.at_level(logging.ERROR, logger="zoomrules.matcher"):
        result = work.run(matcher_module.LARGE_PLAN_SOURCE)
    assert "compiling the plan of 20 rules failed" in caplog.text
    entry.rules = rules
    assert result is None
    work.install(result)
    assert entry.done and entry.compiled == 0 and matcher.plan_work() is None
    assert [r.name for r in in_slices(matcher.matching(event))] == expected
