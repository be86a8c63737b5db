"""Dispatch overhead: actions/s through the dispatcher.

- a no-op action with `max_concurrency` 1 and 32 (the dispatcher's own cost:
  rendering, timeout scope, retry bookkeeping, scheduling);
- the `shell` action running `/bin/true` with 1 and 32 (process start-up
  dominates: this is what a shell-heavy rule set can sustain);
- baseline in the same run: calling the no-op coroutine directly in a loop.

    python benchmarks/actions.py [--actions 20000] [--shell 500]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Mapping
from functools import partial
from pathlib import Path
from typing import Any

import anyio

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._results import write_section  # noqa: E402
from engine.dispatch import Dispatcher, Job  # noqa: E402
from engine.events import Event  # noqa: E402
from engine.loader import LoadedRules, load_rules  # noqa: E402
from engine.plugin import ActionContext, ActionType, Param, hookimpl  # noqa: E402
from engine.runtime import open_services  # noqa: E402

EVENT = {
    "event": "meeting.started",
    "event_ts": 1770310800000,
    "payload": {
        "account_id": "D8cJuqWVQ623CI4Q8yQK0Q",
        "object": {"id": "85746065432", "topic": "Weekly project sync"},
    },
}


async def noop(params: Mapping[str, Any], ctx: ActionContext) -> None:
    return None


class NoopPlugin:
    @hookimpl
    def zoomrules_action_types(self) -> list[ActionType]:
        return [ActionType("noop", noop, [Param("note", str)])]


def load(action: str) -> LoadedRules:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "rules.toml"
        path.write_text(
            f'version = 1\n[[rule]]\nname = "bench"\non = ["meeting.started"]\n{action}\n'
        )
        return load_rules([path], extra_plugins=[NoopPlugin()])


async def rate(loaded: LoadedRules, count: int, concurrency: int) -> float:
    async with open_services(loaded.config) as services:
        dispatcher = Dispatcher(services, max_concurrency=concurrency)
        rule = loaded.rules[0]
        events = [
            Event.from_body({**EVENT, "event_ts": EVENT["event_ts"] + i}, source="bench")
            for i in range(count)
        ]
        async with anyio.create_task_group() as tg:
            await tg.start(dispatcher.run)
            start = time.perf_counter()
            for event in events:
                await dispatcher.submit(Job(event, rule))
            await dispatcher.wait_idle()
            elapsed = time.perf_counter() - start
            tg.cancel_scope.cancel()
        if dispatcher.stats.actions_ok != count:
            raise SystemExit(f"only {dispatcher.stats.actions_ok} of {count} actions succeeded")
    return count / elapsed


async def direct_rate(count: int) -> float:
    event = Event.from_body(EVENT, source="bench")
    ctx: Any = ActionContext(event, "bench", 0, 1, {}, None, None)  # type: ignore[arg-type]
    start = time.perf_counter()
    for _ in range(count):
        await noop({"note": "x"}, ctx)
    return count / (time.perf_counter() - start)


async def main_async(args: argparse.Namespace) -> str:
    noop_rules = load('  [[rule.action]]\n  type = "noop"\n  note = "{{ payload.object.topic }}"')
    shell_rules = load(
        '  [[rule.action]]\n  type = "shell"\n  command = ["/bin/true", "{{ payload.object.id }}"]'
    )
    direct = await direct_rate(args.actions)
    rows = [("no-op coroutine called directly (baseline)", direct)]
    for concurrency in (1, 32):
        rows.append(
            (
                f"no-op action via dispatcher, concurrency {concurrency}",
                await rate(noop_rules, args.actions, concurrency),
            )
        )
    for concurrency in (1, 32):
        rows.append(
            (
                f"shell /bin/true via dispatcher, concurrency {concurrency}",
                await rate(shell_rules, args.shell, concurrency),
            )
        )
    lines = [
        f"{args.actions} no-op actions, {args.shell} shell actions; one rule, one action per event, params templated",
        "",
        "| path | actions/s | per action |",
        "| --- | ---: | ---: |",
    ]
    lines += [f"| {name} | {value:,.0f} | {1e6 / value:,.1f} µs |" for name, value in rows]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--actions", type=int, default=20_000)
    parser.add_argument("--shell", type=int, default=500)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    report = anyio.run(partial(main_async, args))
    print(report)
    if not args.no_write:
        write_section("Actions", report)


if __name__ == "__main__":
    main()
