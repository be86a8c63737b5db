"""Rules cannot stop the daemon's event loop: heartbeats go on, whatever the rules.

A real `zoomrules run` against the simulator, heartbeating every 0.2 s; the
simulator's record of the heartbeats it receives is the clock. Each test
feeds rules that froze the loop before (plans compiled on the loop for each
new event name, one huge plan for a huge rule set, a regular expression
backtracking exponentially) and asserts that no two heartbeats are ever more
than two intervals apart (the listener's own dead-connection limit) and
that the connection was never dropped, while the rules fire as they must.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest
from anyio.abc import TaskStatus
from daemon_process import DaemonProcess, daemon_process, poll_until, simulator_env
from test_journal_support import JournalView

from engine.simulator import Simulator

pytestmark = pytest.mark.anyio

HEARTBEAT = 0.2
#: Two intervals: the listener's own limit for a silent connection.
GAP_LIMIT = 2 * HEARTBEAT

ZOOM = f"""
version = 1
[zoom]
client_id = "${{ZOOM_CLIENT_ID}}"
client_secret = "${{ZOOM_CLIENT_SECRET}}"
endpoint = "${{ZOOM_WS_ENDPOINT}}"
heartbeat_interval = "{HEARTBEAT}s"
[engine]
state_dir = "${{ZOOMRULES_STATE_DIR}}"
"""


class HeartbeatWatch:
    """The longest time between two heartbeats the simulator received; fails
    the test as soon as one is longer than GAP_LIMIT."""

    def __init__(self, sim: Simulator) -> None:
        self.sim = sim
        self.longest = 0.0
        self.count = 0
        self._last = 0.0

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        sim = self.sim
        await sim.wait_heartbeats(sim.heartbeats_received + 1, timeout=30)
        self._last, seen = anyio.current_time(), sim.heartbeats_received
        task_status.started()
        while True:
            try:
                await sim.wait_for(lambda s=seen: sim.heartbeats_received > s, timeout=GAP_LIMIT)
            except TimeoutError:
                raise AssertionError(
                    f"no heartbeat for {anyio.current_time() - self._last:.2f} s "
                    f"(limit {GAP_LIMIT} s, after {self.count} heartbeats)"
                ) from None
            self.note()
            seen = sim.heartbeats_received

    def note(self) -> None:
        now = anyio.current_time()
        self.longest = max(self.longest, now - self._last)
        self._last = now
        self.count = self.sim.heartbeats_received

    def check(self) -> None:
        """The gap since the last heartbeat counts too."""
        self.longest = max(self.longest, anyio.current_time() - self._last)
        print(f"longest heartbeat gap: {self.longest:.3f} s over {self.count} heartbeats")
        assert self.longest < GAP_LIMIT, self.longest


@asynccontextmanager
async def watched_daemon(
    tmp_path: Path, rules: str
) -> AsyncIterator[tuple[Simulator, DaemonProcess, HeartbeatWatch, JournalView]]:
    path = tmp_path / "rules.toml"
    path.write_text(ZOOM + rules)
    state = tmp_path / "state"
    async with (
        Simulator() as sim,
        daemon_process(["run", "-c", str(path)], simulator_env(sim, state)) as daemon,
    ):
        await sim.wait_connected(timeout=60)
        watch = HeartbeatWatch(sim)
        async with anyio.create_task_group() as tg:
            await tg.start(watch.run)
            yield sim, daemon, watch, JournalView(state)
            # A few heartbeats more: whatever the daemon still does counts.
            await sim.wait_heartbeats(sim.heartbeats_received + 5, timeout=30)
            watch.check()
            assert sim.accepted_connections == 1  # never taken for a dead client
            tg.cancel_scope.cancel()
        assert await daemon.stop() == 0


def rule(name: str, on: str, when: str, out: Path) -> str:
    return (
        f'[[rule]]\nname = "{name}"\non = ["{on}"]\nwhen = """{when}"""\n'
        f'  [[rule.action]]\n  type = "log"\n  path = "{out}"\n'
    )


#: Conditions of the shapes real rule files use, unique per rule (`{i}`),
#: false on the events below.
SHAPES = [
    "payload.object.topic == 'topic {i}'",
    "contains(lower(payload.object.topic), 'word {i}')",
    "payload.object.participants[?email == 'p{i}@example.com' && status == 'joined']",
    "length(payload.object.participants[?email_domain(email) == 'd{i}.example.com'] || `[]`) > `2`",
    "starts_with(payload.object.topic, 'x{i}') || payload.object.type == `{i}`",
    "payload.object.id == '{i}' && !contains(payload.object.topic, 'secret')",
]


def many_rules(count: int, on: str, out: Path) -> str:
    """`count` rules on `on` that never fire, then one that fires on topic 'fire'."""
    rules = [rule(f"r{i}", on, SHAPES[i % len(SHAPES)].format(i=i), out) for i in range(count)]
    rules.append(rule("fire", on, "payload.object.topic == 'fire'", out))
    return "\n".join(rules)


def event(name: str, n: int, topic: str) -> dict[str, Any]:
    people = [{"email": f"u{k}@example.com", "status": "joined"} for k in range(5)]
    return {
        "event": name,
        "event_ts": 1_700_000_000_000 + n,
        "payload": {
            "account_id": "acct",
            "object": {"id": str(1_000_000 + n), "topic": topic, "participants": people},
        },
    }


def fired(out: Path) -> list[dict[str, Any]]:
    if not out.exists():
        return []
    return [json.loads(line) for line in out.read_text().splitlines() if line.strip()]


def batches(items: list[Any], size: int) -> Iterator[list[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


async def send(sim: Simulator, bodies: list[dict[str, Any]]) -> None:
    """In batches, so that the simulator goes on reading heartbeats meanwhile."""
    for batch in batches(bodies, 100):
        assert await sim.send_events(batch) == len(batch)
        await anyio.lowlevel.checkpoint()


async def all_matched(view: JournalView, count: int, timeout: float) -> None:
    await poll_until(
        lambda: (
            view.events() == count
            and view.scalar("SELECT COUNT(*) FROM events WHERE matched = 0") == 0
        ),
        timeout,
    )


async def test_3000_event_names_under_300_glob_rules_never_stall_heartbeats(
    tmp_path: Path,
) -> None:
    """Each new event name used to compile its 300 rules on the event loop
    (0.2 s each here: 12.5 events/s, and minutes without a heartbeat)."""
    out = tmp_path / "fired.jsonl"
    names = [f"meeting.sim_{n}" for n in range(3000)]
    bodies = [event(name, n, "fire" if n % 100 == 0 else f"t{n}") for n, name in enumerate(names)]
    # And 20 rules on names by their first digit: ten sets of candidates.
    rules = many_rules(300, "meeting.*", out) + "\n".join(
        rule(f"digit{i}", f"meeting.sim_{i % 10}*", SHAPES[i % len(SHAPES)].format(i=i), out)
        for i in range(20)
    )
    async with watched_daemon(tmp_path, rules) as (sim, _, _, view):
        await send(sim, bodies)
        await all_matched(view, len(bodies), 120)
        await poll_until(lambda: len(fired(out)) == 30, 30)
    got = fired(out)
    assert {line["rule"] for line in got} == {"fire"}
    assert sorted(line["event"]["event"] for line in got) == sorted(names[::100])


async def test_20000_rules_on_one_event_name_never_stall_heartbeats(tmp_path: Path) -> None:
    """The first event used to compile all 20,000 rules into one function on
    the event loop (over ten seconds); every event now matches at once, in
    turn, while the plan is compiled off the loop and swapped in."""
    out = tmp_path / "fired.jsonl"
    async with watched_daemon(tmp_path, many_rules(20_000, "meeting.started", out)) as (
        sim,
        _,
        watch,
        view,
    ):
        sent = 0
        for wave in range(3):
            bodies = [
                event("meeting.started", sent + n, "fire" if n % 2 else "quiet") for n in range(10)
            ]
            await send(sim, bodies)
            sent += len(bodies)
            await all_matched(view, sent, 60)
            await poll_until(lambda n=sent // 2: len(fired(out)) == n, 30)
            if wave < 2:
                # Some heartbeats later (the plan is being compiled meanwhile).
                await sim.wait_heartbeats(sim.heartbeats_received + 10, timeout=30)
    assert {line["rule"] for line in fired(out)} == {"fire"}
    assert len(fired(out)) == 15


async def test_a_regex_backtracking_exponentially_in_python_never_stalls_heartbeats(
    tmp_path: Path,
) -> None:
    """`^(a+)+$` on 32 a's and a '!' took Python's re 65 s, every heartbeat
    stopped; RE2 answers at once."""
    out = tmp_path / "fired.jsonl"
    rules = "\n".join(
        [
            *(
                rule(
                    f"redos{i}",
                    "meeting.started",
                    f"regex_match(payload.object.topic, '^(a+)+{x}$')",
                    out,
                )
                for i, x in enumerate(["", "b", "c"])
            ),
            rule("fire", "meeting.started", "regex_match(payload.object.topic, '^(a|aa)+!$')", out),
        ]
    )
    async with watched_daemon(tmp_path, rules) as (sim, _, _, view):
        bodies = [event("meeting.started", n, "a" * (32 + n) + "!") for n in range(20)]
        await send(sim, bodies)
        await all_matched(view, len(bodies), 60)
        await poll_until(lambda: len(fired(out)) == 20, 30)
    assert {line["rule"] for line in fired(out)} == {"fire"}
