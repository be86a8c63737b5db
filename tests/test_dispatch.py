"""The dispatcher: order, continue_on_error, retries, timeouts, concurrency bound."""

from __future__ import annotations

import logging
import math
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
import anyio.lowlevel
import httpx
import pytest
from anyio import wait_all_tasks_blocked
from conftest import example, write_rules

from engine.dispatch import Dispatcher, Job
from engine.events import Event
from engine.loader import LoadedRules, load_rules
from engine.plugin import ActionContext, ActionError, ActionType, Param, hookimpl
from engine.services import Services

pytestmark = pytest.mark.anyio


class SteeredPlugin:
    """Action types whose behaviour the tests steer."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, int, int, dict[str, Any]]] = []
        self.fail_first: dict[str, int] = {}
        self.in_flight = 0
        self.max_in_flight = 0
        self.entered = 0
        self.gate = anyio.Event()
        self.cancelled = 0
        self.dispatcher: Dispatcher | None = None

    async def record(self, params: Mapping[str, Any], ctx: ActionContext) -> Any:
        self.calls.append((ctx.rule, ctx.action_index, ctx.attempt, dict(params)))
        key = f"{ctx.rule}/{ctx.action_index}"
        if self.fail_first.get(key, 0) >= ctx.attempt:
            raise ActionError(f"attempt {ctx.attempt} refused", retryable=params["retryable"])
        return {"n": ctx.action_index, "echo": params.get("value")}

    async def hang(self, params: Mapping[str, Any], ctx: ActionContext) -> None:
        self.calls.append((ctx.rule, ctx.action_index, ctx.attempt, dict(params)))
        try:
            await anyio.sleep_forever()
        finally:
            self.cancelled += 1

    async def gated(self, params: Mapping[str, Any], ctx: ActionContext) -> None:
        self.entered += 1
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            await self.gate.wait()
        finally:
            self.in_flight -= 1

    async def late(self, params: Mapping[str, Any], ctx: ActionContext) -> Any:
        """Returns just as its timeout fires: the cancellation is called but never delivered."""
        self.calls.append((ctx.rule, ctx.action_index, ctx.attempt, dict(params)))
        assert self.dispatcher is not None
        for lane in self.dispatcher._lanes:  # what the timer does at the deadline
            if lane.deadline < math.inf:
                lane.scope.cancel()
        return "late but done"

    @hookimpl
    def zoomrules_action_types(self) -> list[ActionType]:
        return [
            ActionType("late", self.late),
            ActionType(
                "record",
                self.record,
                [Param("value"), Param("retryable", bool, default=True)],
            ),
            ActionType("hang", self.hang),
            ActionType("gated", self.gated),
        ]


RULES = """
[engine]
retry_backoff = "1ms"
retry_backoff_cap = "1ms"
action_retries = 0

[[rule]]
name = "ordered"
on = ["meeting.ended"]

  [[rule.action]]
  type = "record"
  value = "first {{ payload.object.topic }}"

  [[rule.action]]
  type = "record"
  value = "{{ zoomrules.previous.echo }}"

  [[rule.action]]
  type = "record"
  value = "{{ zoomrules.results[*].n }}"

[[rule]]
name = "stops-on-error"
on = ["meeting.ended"]

  [[rule.action]]
  type = "record"

  [[rule.action]]
  type = "record"

[[rule]]
name = "continues"
on = ["meeting.ended"]

  [[rule.action]]
  type = "record"
  continue_on_error = true

  [[rule.action]]
  type = "record"
  value = "{{ zoomrules.previous }}"

[[rule]]
name = "retried"
on = ["meeting.ended"]

  [[rule.action]]
  type = "record"
  retries = 3

[[rule]]
name = "not-retryable"
on = ["meeting.ended"]

  [[rule.action]]
  type = "record"
  retries = 3
  retryable = false

[[rule]]
name = "hung"
on = ["meeting.ended"]

  [[rule.action]]
  type = "hang"
  timeout = "50ms"
  retries = 1

  [[rule.action]]
  type = "record"

[[rule]]
name = "gated"
on = ["meeting.ended"]

  [[rule.action]]
  type = "gated"

[[rule]]
name = "late"
on = ["meeting.ended"]

  [[rule.action]]
  type = "late"

  [[rule.action]]
  type = "record"
  value = "{{ zoomrules.previous }}"

[[rule]]
name = "hung-once"
on = ["meeting.ended"]

  [[rule.action]]
  type = "hang"
  timeout = "50ms"
"""


@pytest.fixture
def plugin() -> SteeredPlugin:
    return SteeredPlugin()


@pytest.fixture
def loaded(tmp_path: Path, plugin: SteeredPlugin) -> LoadedRules:
    return load_rules([write_rules(tmp_path, RULES)], env={}, extra_plugins=[plugin])


@pytest.fixture
async def dispatcher(loaded: LoadedRules, plugin: SteeredPlugin) -> AsyncIterator[Dispatcher]:
    async with httpx.AsyncClient() as http, anyio.create_task_group() as tg:
        dispatcher = Dispatcher(
            Services(loaded.config, http), max_concurrency=2, backoff=0.001, backoff_cap=0.001
        )
        await tg.start(dispatcher.run)
        plugin.dispatcher = dispatcher
        yield dispatcher
        tg.cancel_scope.cancel()


EVENT = Event.from_body(example("meeting.ended"), source="test")


def rule(loaded: LoadedRules, name: str) -> Any:
    return next(r for r in loaded.rules if r.name == name)


async def test_actions_run_in_order_and_see_earlier_results(
    loaded: LoadedRules, dispatcher: Dispatcher, plugin: SteeredPlugin
) -> None:
    assert await dispatcher.run_job(Job(EVENT, rule(loaded, "ordered"))) is True
    assert [(c[1], c[3]["value"]) for c in plugin.calls] == [
        (0, "first Weekly project sync"),
        (1, "first Weekly project sync"),
        (2, [0, 1]),
    ]
    assert dispatcher.stats.actions_ok == 3
    assert dispatcher.stats.jobs_done == 1


async def test_a_failed_action_stops_the_rest_of_the_rule(
    loaded: LoadedRules, dispatcher: Dispatcher, plugin: SteeredPlugin, caplog: Any
) -> None:
    plugin.fail_first["stops-on-error/0"] = 99
    with caplog.at_level(logging.ERROR, logger="zoomrules.dispatch"):
        ok = await dispatcher.run_job(Job(EVENT, rule(loaded, "stops-on-error")))
    assert ok is False
    assert [c[1] for c in plugin.calls] == [0]  # action 2 never ran
    assert dispatcher.stats.actions_failed == 1
    assert dispatcher.stats.failed_by_rule == {"stops-on-error": 1}
    assert dispatcher.stats.jobs_failed == 1
    message = caplog.records[-1].getMessage()
    assert "rule 'stops-on-error' action 1 (record) failed on meeting.ended" in message
    assert "attempt 1 refused" in message


async def test_continue_on_error_runs_the_next_action(
    loaded: LoadedRules, dispatcher: Dispatcher, plugin: SteeredPlugin
) -> None:
    plugin.fail_first["continues/0"] = 99
    ok = await dispatcher.run_job(Job(EVENT, rule(loaded, "continues")))
    assert ok is False  # the job still counts as failed
    assert [c[1] for c in plugin.calls] == [0, 1]
    assert plugin.calls[1][3]["value"] is None  # the failed action has no result
    assert dispatcher.stats.actions_ok == 1 and dispatcher.stats.actions_failed == 1


async def test_retries_until_success(
    loaded: LoadedRules, dispatcher: Dispatcher, plugin: SteeredPlugin
) -> None:
    plugin.fail_first["retried/0"] = 2
    assert await dispatcher.run_job(Job(EVENT, rule(loaded, "retried"))) is True
    assert [c[2] for c in plugin.calls] == [1, 2, 3]
    assert dispatcher.stats.retries == 2
    assert dispatcher.stats.actions_failed == 0


async def test_retries_are_bounded(
    loaded: LoadedRules, dispatcher: Dispatcher, plugin: SteeredPlugin
) -> None:
    plugin.fail_first["retried/0"] = 99
    assert await dispatcher.run_job(Job(EVENT, rule(loaded, "retried"))) is False
    assert [c[2] for c in plugin.calls] == [1, 2, 3, 4]  # 1 try + retries = 3


async def test_non_retryable_errors_are_not_retried(
    loaded: LoadedRules, dispatcher: Dispatcher, plugin: SteeredPlugin
) -> None:
    plugin.fail_first["not-retryable/0"] = 1
    assert await dispatcher.run_job(Job(EVENT, rule(loaded, "not-retryable"))) is False
    assert [c[2] for c in plugin.calls] == [1]
    assert dispatcher.stats.retries == 0


async def test_engine_default_retries_apply(loaded: LoadedRules) -> None:
    # [engine] action_retries = 0 fills actions that do not set retries.
    assert rule(loaded, "ordered").actions[0].spec.retries == 0
    assert rule(loaded, "retried").actions[0].spec.retries == 3
    assert rule(loaded, "hung").actions[0].spec.timeout == 0.05
    assert rule(loaded, "ordered").actions[0].spec.timeout == 30.0


async def test_a_hung_action_times_out_and_is_cancelled(
    loaded: LoadedRules, dispatcher: Dispatcher, plugin: SteeredPlugin, caplog: Any
) -> None:
    with caplog.at_level(logging.ERROR, logger="zoomrules.dispatch"):
        ok = await dispatcher.run_job(Job(EVENT, rule(loaded, "hung")))
    assert ok is False
    # Two attempts (retries = 1), each cancelled; the next action never ran.
    assert [(c[1], c[2]) for c in plugin.calls] == [(0, 1), (0, 2)]
    assert plugin.cancelled == 2
    assert "timed out after 0.05s" in caplog.records[-1].getMessage()


async def test_concurrency_is_bounded(
    loaded: LoadedRules, dispatcher: Dispatcher, plugin: SteeredPlugin
) -> None:
    gated = rule(loaded, "gated")
    submitted = 0

    async def submit_all() -> None:
        nonlocal submitted
        for _ in range(5):
            await dispatcher.submit(Job(EVENT, gated))
            submitted += 1

    async with anyio.create_task_group() as tg:
        tg.start_soon(submit_all)
        await wait_all_tasks_blocked()
        # Two jobs run; the third submit waits for a free slot (backpressure).
        assert plugin.entered == 2
        assert dispatcher.in_flight == 2
        assert submitted == 2
        plugin.gate.set()
    await dispatcher.wait_idle()
    assert plugin.entered == 5
    assert plugin.max_in_flight == 2
    assert dispatcher.stats.jobs_done == 5
    assert dispatcher.in_flight == 0


async def test_submit_runs_jobs_concurrently_and_independently(
    loaded: LoadedRules, dispatcher: Dispatcher, plugin: SteeredPlugin
) -> None:
    plugin.fail_first["stops-on-error/0"] = 99
    await dispatcher.submit(Job(EVENT, rule(loaded, "stops-on-error")))
    await dispatcher.submit(Job(EVENT, rule(loaded, "ordered")))
    await dispatcher.wait_idle()
    assert dispatcher.stats.jobs_failed == 1
    assert dispatcher.stats.jobs_done == 1
    assert sorted(c[0] for c in plugin.calls) == ["ordered"] * 3 + ["stops-on-error"]


async def test_a_worker_goes_on_after_an_action_of_its_job_timed_out(
    loaded: LoadedRules, dispatcher: Dispatcher, plugin: SteeredPlugin
) -> None:
    # More jobs than workers, so the workers that ran the hung actions run
    # the rest: every job after a timeout still runs, in order, to the end.
    for _ in range(3):
        await dispatcher.submit(Job(EVENT, rule(loaded, "hung-once")))
        await dispatcher.submit(Job(EVENT, rule(loaded, "ordered")))
    with anyio.fail_after(10):
        await dispatcher.wait_idle()
    assert plugin.cancelled == 3
    assert dispatcher.stats.jobs_failed == 3
    assert dispatcher.stats.jobs_done == 3
    assert dispatcher.stats.actions_ok == 9
    ordered = [c for c in plugin.calls if c[0] == "ordered"]
    assert [c[3]["value"] for c in ordered] == [
        "first Weekly project sync",
        "first Weekly project sync",
        [0, 1],
    ] * 3


async def test_an_action_that_returns_as_its_deadline_passes_keeps_its_result(
    loaded: LoadedRules, dispatcher: Dispatcher, plugin: SteeredPlugin
) -> None:
    outcomes: list[tuple[int, Any, int]] = []

    async def observer(job: Job, index: int, error: Any, attempts: int) -> None:
        await anyio.lowlevel.checkpoint()  # the job goes on awaiting after the late cancellation
        outcomes.append((index, error, attempts))

    dispatcher.observer = observer
    assert await dispatcher.run_job(Job(EVENT, rule(loaded, "late"))) is True
    await dispatcher.submit(Job(EVENT, rule(loaded, "late")))
    await dispatcher.wait_idle()
    assert outcomes == [(0, None, 1), (1, None, 1)] * 2
    assert [c[3].get("value") for c in plugin.calls if c[0] == "late"] == [
        None,
        "late but done",
    ] * 2
    assert dispatcher.stats.jobs_done == 2


async def test_jobs_that_wait_get_a_worker_each(
    loaded: LoadedRules, tmp_path: Path, plugin: SteeredPlugin
) -> None:
    async with httpx.AsyncClient() as http, anyio.create_task_group() as tg:
        dispatcher = Dispatcher(Services(loaded.config, http), max_concurrency=16)
        await tg.start(dispatcher.run)
        for _ in range(16):
            await dispatcher.submit(Job(EVENT, rule(loaded, "gated")))
        await wait_all_tasks_blocked()
        assert plugin.entered == 16
        plugin.gate.set()
        await dispatcher.wait_idle()
        assert dispatcher.stats.jobs_done == 16
        tg.cancel_scope.cancel()


async def test_run_job_needs_a_running_dispatcher(loaded: LoadedRules) -> None:
    async with httpx.AsyncClient() as http:
        dispatcher = Dispatcher(Services(loaded.config, http))
        with pytest.raises(RuntimeError, match="not running"):
            await dispatcher.run_job(Job(EVENT, rule(loaded, "ordered")))
