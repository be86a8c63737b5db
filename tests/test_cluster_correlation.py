"""Temporal rules in cluster mode: real nats-server, real `zoomrules run` nodes.

One node at a time runs the temporal rules (engine.correlator); the test
kills that node (SIGKILL) while correlations are open, before their
deadline, and the deadlines fire on the node that takes over: each once,
the satisfied one never. A subscription disconnected across an absence's
deadline: the absence waits for the subscription's news and fires marked.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import anyio
import httpx
import orjson
import pytest
from cluster_support import Node, cluster_nodes, cluster_rules
from conftest import ROOT, cli_env, example
from http_target import Target
from test_journal_support import wait_until

from engine.simulator import Simulator
from tests.nats_server import NatsServer

pytestmark = pytest.mark.anyio

RUNS = "correlator: this node runs the cluster's temporal rules"

ABSENCE = """
[[rule]]
name = "host-not-joined"
on   = "meeting.started"
key  = "payload.object.uuid"
unless = {{ on = "meeting.participant_joined", within = "{within}", grace = "1s" }}

  [[rule.action]]
  type = "http"
  url  = "{target}/absent/{{{{ payload.object.uuid }}}}"
  headers = {{ Idempotency-Key = "{{{{ zoomrules.correlation_id }}}}" }}
  json = {{ late_by = "{{{{ zoomrules.late_by }}}}" }}
"""


def _event(name: str, uuid: str, at_ms: int) -> dict[str, Any]:
    base = example(name)
    obj = {**base["payload"]["object"], "uuid": uuid}
    return {**base, "event_ts": at_ms, "payload": {**base["payload"], "object": obj}}


async def _timers(rules: Path, *args: str) -> Any:
    """`zoomrules timers ARGS --json` against the cluster (a real command)."""
    done = await anyio.run_process(
        [sys.executable, "-m", "engine.cli", "timers", *args, "-c", str(rules)],
        env=cli_env(),
        cwd=ROOT,
        check=False,
    )
    assert done.returncode == 0, done.stderr.decode()
    return done.stdout.decode()


async def _open_keys(rules: Path) -> set[str]:
    listed = orjson.loads(await _timers(rules, "list", "--json"))
    return {row["key"] for row in listed}


async def _until_open(rules: Path, keys: set[str]) -> None:
    """Wait until the cluster's open correlations are those of `keys`."""
    with anyio.fail_after(30):
        while True:
            if await _open_keys(rules) == keys:
                return
            await anyio.sleep(0.1)


def _correlator(nodes: list[Node]) -> Node | None:
    running = [node for node in nodes if RUNS in node.log()]
    return running[0] if len(running) == 1 else None


async def test_the_correlator_killed_before_a_deadline_and_the_deadline_fires_on_another_node(
    tmp_path: Path, nats_server: NatsServer
) -> None:
    async with Simulator() as sim, Target().serve() as target:
        extra = ABSENCE.format(within="6s", target=target.url)
        rules = cluster_rules(tmp_path, target.url, [nats_server.url], extra=extra)
        async with cluster_nodes(2, rules, sim, tmp_path / "state") as nodes:
            await sim.wait_connected(timeout=30)
            await wait_until(lambda: _correlator(nodes) is not None, 30)
            holder = _correlator(nodes)
            assert holder is not None
            other = next(node for node in nodes if node is not holder)

            now_ms = int(time.time() * 1000)
            opening = [_event("meeting.started", f"m-{i}", now_ms) for i in range(3)]
            joined = _event("meeting.participant_joined", "m-1", now_ms + 500)
            assert await sim.send_events([*opening, joined]) == 4

            # The ordinary rule fires at once, on whichever node; the absence
            # does not (it waits for its deadline), but its correlations are open.
            await wait_until(lambda: len(target.counts) == 3, 30)
            assert all(path == "/a" for path, _ in target.counts)
            await _until_open(rules, {"m-0", "m-2"})
            deadline = now_ms / 1000 + 6 + 1
            assert time.time() < deadline, "too slow to kill the node before the deadline"

            assert set(target.counts) == {
                (path, key) for path, key in target.counts if path == "/a"
            }
            await holder.daemon.kill()
            await other.daemon.wait_log(RUNS, timeout=30)

            absent = {"/absent/m-0", "/absent/m-2"}
            await wait_until(lambda: {p for p, _ in target.counts if p != "/a"} == absent, 30)
            await _until_open(rules, set())
            assert time.time() >= deadline
            # Once each, none for the meeting whose participant joined.
            assert sorted(count for (path, _), count in target.counts.items() if path != "/a") == [
                1,
                1,
            ]
            assert "/absent/m-1" not in {path for path, _ in target.counts}


async def test_timers_list_and_cancel_against_a_cluster(
    tmp_path: Path, nats_server: NatsServer
) -> None:
    async with Simulator() as sim, Target().serve() as target:
        extra = ABSENCE.format(within="1h", target=target.url)
        extra += '[http]\nlisten = "127.0.0.1:0"\n'
        rules = cluster_rules(tmp_path, target.url, [nats_server.url], extra=extra)
        async with cluster_nodes(1, rules, sim, tmp_path / "state") as nodes:
            await sim.wait_connected(timeout=30)
            await nodes[0].daemon.wait_log(RUNS, timeout=30)
            now_ms = int(time.time() * 1000)
            events = [_event("meeting.started", f"c-{i}", now_ms) for i in range(2)]
            assert await sim.send_events(events) == 2
            await _until_open(rules, {"c-0", "c-1"})
            # The correlator node's /metrics and status page show them.
            port = nodes[0].http_port()
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
                metrics = (await client.get("/metrics")).text
                assert 'zoomrules_correlations_open{rule="host-not-joined"} 2.0' in metrics
                page = (await client.get("/")).text
                assert '<section id="temporal">' in page and "Another node" not in page

            shown = orjson.loads(await _timers(rules, "show", "host-not-joined", "c-0", "--json"))
            assert shown["events"][0]["body"]["payload"]["object"]["uuid"] == "c-0"
            said = await _timers(rules, "cancel", "host-not-joined", "c-0")
            assert "cancelled 1 correlation(s)" in said
            await _until_open(rules, {"c-1"})
            assert {path for path, _ in target.counts} == {"/a"}


GAP_ABSENCE = """
[[rule]]
name = "host-not-joined"
on   = "meeting.started"
key  = "payload.object.uuid"
unless = {{ on = "meeting.participant_joined", within = "2s", grace = "1s" }}

  [[rule.action]]
  type = "http"
  url  = "{target}/absent/{{{{ payload.object.uuid }}}}/gap-{{{{ zoomrules.gap }}}}"
  headers = {{ Idempotency-Key = "{{{{ zoomrules.correlation_id }}}}" }}

[[rule]]
name = "gap"
on   = "zoomrules.connection_gap"

  [[rule.action]]
  type = "http"
  url  = "{target}/gap"
  headers = {{ Idempotency-Key = "{{{{ payload.start_time }}}}" }}
"""


async def test_an_absence_whose_deadline_falls_in_a_disconnection_fires_marked_once_back(
    tmp_path: Path, nats_server: NatsServer
) -> None:
    async with Simulator() as sim, Target().serve() as target:
        rules = cluster_rules(
            tmp_path, target.url, [nats_server.url],
            zoom='gap_threshold = "1s"\nheartbeat_interval = "1s"',
            extra=GAP_ABSENCE.format(target=target.url),
        )  # fmt: skip
        async with cluster_nodes(2, rules, sim, tmp_path / "state") as nodes:
            await sim.wait_connected(timeout=30)
            await wait_until(lambda: _correlator(nodes) is not None, 30)
            now_ms = int(time.time() * 1000)
            assert await sim.send_event(_event("meeting.started", "g-0", now_ms)) == 1
            await _until_open(rules, {"g-0"})

            # Down from before the deadline (now + 3 s) until well after it:
            # the gap's event reaches the stream only once the holder is back.
            sim.refuse_connections(seconds=6.0)
            assert await sim.drop(reset=True)
            await sim.wait_connected(count=2, timeout=30)

            def absent() -> list[str]:
                return [path for path, _ in target.counts if path.startswith("/absent/")]

            await wait_until(lambda: len(absent()) == 1, 30)
            await _until_open(rules, set())
            await wait_until(lambda: "/gap" in {path for path, _ in target.counts}, 30)
            # Once, marked (on_gap = "mark", the default).
            assert [path.lower() for path in absent()] == ["/absent/g-0/gap-true"]
            assert sum(n for (path, _), n in target.counts.items() if path != "/a") == 2
