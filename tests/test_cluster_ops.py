"""Operating a cluster against a real nats-server: `zoomrules dlq`, `journal stats`,
`cluster status` and `replay` with `[cluster]` in the rule files.

Nodes are real `zoomrules run` processes and Zoom is the simulator (as in
test_cluster.py); every command runs as a real `zoomrules` subprocess.
"""

from __future__ import annotations

import json
from functools import partial
from pathlib import Path
from typing import Any

import anyio
import pytest
from cluster_support import cluster_nodes, cluster_rules
from conftest import ZOOM_ENV, run_cli, write_rules
from http_target import Target
from test_journal_support import meeting_events, wait_until

from engine.config import load_config
from engine.nats_link import connect
from engine.simulator import Simulator
from tests.nats_server import NatsServer, free_ports, nats_connect
from tests.nats_server import wait_until as wait_for

pytestmark = pytest.mark.anyio


async def _cli(*args: str | Path) -> tuple[int, str, str]:
    """`zoomrules ARGS` in a subprocess (in a thread: the nodes' output keeps being read)."""
    done = await anyio.to_thread.run_sync(partial(run_cli, *args, timeout=60))
    return done.returncode, done.stdout, done.stderr


async def _json(*args: str | Path) -> Any:
    code, out, err = await _cli(*args)
    assert code == 0, out + err
    return json.loads(out)


async def _stream_messages(url: str, stream: str) -> int:
    nc = await nats_connect(url)
    try:
        return int((await nc.jetstream().stream_info(stream)).state.messages)
    finally:
        await nc.close()


async def _consumer(url: str, stream: str, consumer: str) -> Any:
    nc = await nats_connect(url)
    try:
        return await nc.jetstream().consumer_info(stream, consumer)
    finally:
        await nc.close()


async def _wait_stream(url: str, stream: str, count: int) -> None:
    async def reached() -> bool:
        return await _stream_messages(url, stream) == count

    await wait_for(reached, 30, f"{stream} holds {count} message(s)")


async def _create_streams(rules: Path) -> None:
    """What the first node does at its start: the cluster's streams, buckets and consumers."""
    config = load_config([rules], env=ZOOM_ENV)
    assert config.cluster is not None
    async with connect(config.cluster, config.engine):
        pass


def _delivered(target: Target, event_id: str) -> int:
    return target.counts[("/a", event_id)]


# -- dead letters -------------------------------------------------------------------------


async def test_dead_letters_listed_shown_retried_by_a_node_and_purged(
    tmp_path: Path, nats_server: NatsServer
) -> None:
    url = nats_server.url
    async with Simulator() as sim, Target().serve() as target:
        target.status = 500
        rules = cluster_rules(tmp_path, target.url, [url], action="retries = 1")
        async with cluster_nodes(1, rules, sim, tmp_path / "state") as (node,):
            await sim.wait_connected(timeout=30)
            assert await sim.send_events(meeting_events(3)) == 3
            await _wait_stream(url, "t_DLQ", 3)

            listed = await _json("dlq", "list", "--json", "-c", rules)
            assert [(d["rule"], d["state"], d["event"]) for d in listed] == [
                ("started", "dead", "meeting.started")
            ] * 3
            assert all(d["attempts"] == 2 and "500" in d["last_error"] for d in listed)
            first, second, third = (d["id"] for d in listed)
            event_of = {d["id"]: d["event_id"] for d in listed}

            code, out, err = await _cli("dlq", "list", "-c", rules)
            assert code == 0, err
            assert out.splitlines()[0].split()[:3] == ["ID", "FAILED", "AT"]
            assert "3 dead letter(s)" in out

            code, out, err = await _cli("dlq", "show", str(first), "-c", rules)
            assert code == 0, err
            assert "failed_action: 1 (the rule's first action)" in out
            assert f"event_id: {event_of[first]}" in out
            assert '"uuid": "uuid-' in out  # the event's body

            # Fixed: a live node takes the re-queued job and runs it once.
            target.status = 200
            code, out, err = await _cli("dlq", "retry", str(first), "-c", rules)
            assert code == 0, out + err
            assert "re-queued 1 dead letter(s) to the retry queue of cluster 't'" in out
            assert "1 live node(s) (node-1)" in out
            await wait_until(lambda: _delivered(target, event_of[first]) == 1, 30)
            await _wait_stream(url, "t_RETRY", 0)
            listed = await _json("dlq", "list", "--json", "-c", rules)
            assert [d["id"] for d in listed] == [second, third]

            # No node alive: re-queued all the same, with a warning; the
            # job waits in the retry queue (listed as re-queued) for a node.
            assert await node.daemon.stop() == 0
            code, out, err = await _cli("dlq", "retry", str(second), "-c", rules)
            assert code == 0, out + err
            assert "re-queued 1 dead letter(s)" in out
            assert "warning: no node of cluster 't' is alive" in err
            listed = await _json("dlq", "list", "--json", "-c", rules)
            assert [(d["id"], d["state"]) for d in listed] == [(second, "retry"), (third, "dead")]
            code, out, _ = await _cli("dlq", "list", "-c", rules)
            assert "(re-queued)" in out
            shown = await _json("dlq", "show", str(second), "--json", "-c", rules)
            assert shown["state"] == "retry"

            await node.daemon.start()
            await wait_until(lambda: _delivered(target, event_of[second]) == 1, 30)
            await _wait_stream(url, "t_RETRY", 0)

            code, out, err = await _cli("dlq", "purge", "--all", "-c", rules)
            assert (code, out) == (0, "purged 1 dead letter(s)\n"), err
            code, out, _ = await _cli("dlq", "list", "-c", rules)
            assert out == "no dead letters\n"
            assert _delivered(target, event_of[third]) == 0
            assert _delivered(target, event_of[first]) == 1  # not run again meanwhile

            code, out, err = await _cli("journal", "stats", "-c", rules)
            assert code == 0, err
            assert "cluster:  t (NATS at 127.0.0.1:" in out
            assert "events:   3 (0 not yet matched, 0 being worked on, oldest " in out
            assert "jobs:     0 retry, 0 dead" in out
            assert "marks:    alive:zoom:default " in out  # when the holder was last connected


async def test_purge_older_than_and_retry_of_an_unknown_id(
    tmp_path: Path, nats_server: NatsServer
) -> None:
    async with Simulator() as sim, Target().serve() as target:
        target.status = 500
        rules = cluster_rules(tmp_path, target.url, [nats_server.url], action="retries = 0")
        async with cluster_nodes(1, rules, sim, tmp_path / "state"):
            await sim.wait_connected(timeout=30)
            assert await sim.send_events(meeting_events(2)) == 2
            await _wait_stream(nats_server.url, "t_DLQ", 2)
        # The node is gone: nothing changes the dead letters from here on.
        code, out, _ = await _cli("dlq", "purge", "--older-than", "1d", "-c", rules)
        assert (code, out) == (0, "purged 0 dead letter(s)\n")
        code, out, err = await _cli("dlq", "retry", "999999", "-c", rules)
        assert (code, out, err) == (
            0,
            "re-queued 0 dead letter(s) to the retry queue of cluster 't'\n",
            "",
        )
        code, out, _ = await _cli("dlq", "show", "999999", "-c", rules)
        assert code == 1
        code, out, _ = await _cli("dlq", "purge", "--older-than", "0s", "-c", rules)
        assert (code, out) == (0, "purged 2 dead letter(s)\n")
        assert await _stream_messages(nats_server.url, "t_DLQ") == 0


# -- cluster status -------------------------------------------------------------------------


async def test_cluster_status_shows_nodes_holder_standby_and_backlog(
    tmp_path: Path, nats_server: NatsServer
) -> None:
    url = nats_server.url
    async with Simulator() as sim, Target().serve() as target:
        rules = cluster_rules(tmp_path, target.url, [url])
        async with cluster_nodes(2, rules, sim, tmp_path / "state") as nodes:
            await sim.wait_connected(timeout=30)
            holder = next(node for node in nodes if node.takeovers())
            standby = next(node for node in nodes if node is not holder)
            await standby.daemon.wait_log("zoomrules running")

            # Jobs held up at the target: the events are being worked on.
            target.stall()
            assert await sim.send_events(meeting_events(3)) == 3

            async def working() -> bool:
                info = await _consumer(url, "t_EVENTS", "matchers")
                return bool(info.num_ack_pending == 3)

            await wait_for(working, 30, "3 events being worked on")

            async def both_nodes_listed() -> bool:
                code, out, _ = await _cli("cluster", "status", "--json", "-c", rules)
                records = json.loads(out)["nodes"] if code == 0 else []
                holds = [name for record in records for name in record["holds"]]
                return len(records) == 2 and holds == ["default"]

            # Each node writes its record every third of lease_ttl.
            await wait_for(both_nodes_listed, 30, "both nodes' records written, with the lease")

            doc = await _json("cluster", "status", "--json", "-c", rules)
            assert doc["format"] == 1 and doc["cluster"] == "t"
            assert doc["server"] == url.removeprefix("nats://")
            records = {record["node"]: record for record in doc["nodes"]}
            assert sorted(records) == ["node-1", "node-2"]
            assert records[holder.name]["holds"] == ["default"]
            assert records[standby.name]["holds"] == []
            assert all(record["runs"] == ["default"] for record in records.values())
            assert {record["pid"] for record in records.values()} == {
                node.daemon.pid for node in nodes
            }
            (sub,) = doc["subscriptions"]
            assert sub["name"] == "default" and sub["holder"] == holder.name
            assert isinstance(sub["epoch"], int) and sub["epoch"] >= 1
            assert sub["since"] <= doc["checked_at"]
            matchers = doc["consumers"]["matchers"]
            assert matchers == {
                "stream": "t_EVENTS",
                "num_pending": 0,
                "num_ack_pending": 3,
                "num_redelivered": 0,
            }
            assert doc["consumers"]["retriers"]["stream"] == "t_RETRY"
            assert (doc["retry_queue"], doc["dead_letters"]) == (0, 0)
            assert (doc["problems"], doc["exit_status"]) == ([], 0)

            code, out, err = await _cli("cluster", "status", "-c", rules)
            assert code == 0, out + err
            lines = out.splitlines()
            assert lines[0] == (
                f"cluster 't' on NATS at {doc['server']}: 2 live node(s), "
                "1 of 1 subscription(s) held"
            )
            rows = {line.split()[0]: line.split() for line in lines if line}
            assert rows[holder.name][2] == str(records[holder.name]["pid"])
            assert "default" in rows[holder.name] and "default" not in rows[standby.name]
            assert rows["default"][1] == holder.name
            # The epoch is the lease key's revision: each renewal raises it.
            assert int(rows["default"][-1]) >= sub["epoch"]
            assert rows["matchers"][1:] == ["t_EVENTS", "0", "3", "0"]
            assert "PROBLEM" not in out and "NO HOLDER" not in out
            target.release()
            await wait_until(lambda: len(target.counts) == 3, 30)

            for node in nodes:
                assert await node.daemon.stop() == 0

        code, out, err = await _cli("cluster", "status", "-c", rules)
        assert code == 1, out + err
        assert "0 live node(s), 0 of 1 subscription(s) held" in out
        assert "no live node" in out
        assert any(line.split()[:3] == ["default", "NO", "HOLDER"] for line in out.splitlines())
        assert "PROBLEM: subscription 'default' has no holder" in out
        doc = json.loads((await _cli("cluster", "status", "--json", "-c", rules))[1])
        assert doc["exit_status"] == 1 and doc["nodes"] == []
        assert doc["subscriptions"] == [
            {"name": "default", "holder": None, "since": None, "epoch": None}
        ]


async def test_cluster_status_without_a_cluster_section_exits_2(tmp_path: Path) -> None:
    rules = write_rules(tmp_path, "version = 1\n")
    code, out, err = await _cli("cluster", "status", "-c", rules)
    assert (code, out) == (2, "")
    assert err == (
        f"zoomrules: cluster status: {rules} has no [cluster] section: there is no cluster "
        "to look at (see docs/cluster.md)\n"
    )
    code, _, err = await _cli("cluster", "-c", rules)
    assert code == 2 and "give a command: status" in err


async def test_unreachable_nats_is_one_clear_line(tmp_path: Path) -> None:
    (closed,) = free_ports(1)  # nothing listens there
    rules = cluster_rules(tmp_path, "http://127.0.0.1:9", [f"nats://127.0.0.1:{closed}"])
    for command in (["cluster", "status"], ["dlq", "list"], ["journal", "stats"]):
        code, out, err = await _cli(*command, "-c", rules)
        assert (code, out) == (1, ""), command
        assert len(err.splitlines()) == 1, err
        assert err.startswith(f"zoomrules: cannot reach NATS at nats://127.0.0.1:{closed} ("), err
        assert "Fix: check [cluster] servers" in err


async def test_a_cluster_no_node_ever_ran_is_said_so(
    tmp_path: Path, nats_server: NatsServer
) -> None:
    rules = cluster_rules(tmp_path, "http://127.0.0.1:9", [nats_server.url])
    for command in (["cluster", "status"], ["dlq", "list"]):
        code, out, err = await _cli(*command, "-c", rules)
        assert (code, out) == (1, ""), command
        assert "cluster 't' has no streams on NATS" in err and "no node has run yet" in err
    # Looking creates nothing.
    nc = await nats_connect(nats_server.url)
    try:
        assert await nc.jetstream().streams_info() == []
    finally:
        await nc.close()


async def test_state_dir_beside_cluster_rules_is_refused(tmp_path: Path) -> None:
    rules = cluster_rules(tmp_path, "http://127.0.0.1:9", ["nats://127.0.0.1:4222"])
    code, out, err = await _cli("dlq", "list", "-c", rules, "--state-dir", tmp_path)
    assert (code, out) == (2, "")
    assert "--state-dir names a single daemon's SQLite journal" in err and "[cluster]" in err


async def test_a_broken_cluster_section_is_reported(tmp_path: Path) -> None:
    rules = cluster_rules(tmp_path, "http://127.0.0.1:9", ["${NATS_URL_NOT_SET}"])
    for command in (["cluster", "status"], ["dlq", "list"]):
        code, out, err = await _cli(*command, "-c", rules)
        assert (code, out) == (2, ""), command
        assert "environment variable NATS_URL_NOT_SET is not set" in err


# -- replay -------------------------------------------------------------------------------------


async def test_replay_keeps_dead_letters_in_the_cluster_and_dedups_within_the_file(
    tmp_path: Path, nats_server: NatsServer
) -> None:
    async with Target().serve() as target:
        target.status = 500
        rules = cluster_rules(tmp_path, target.url, [nats_server.url], action="retries = 0")
        await _create_streams(rules)
        events = tmp_path / "events.jsonl"
        bodies = meeting_events(2)
        events.write_text("\n".join(json.dumps(body) for body in [*bodies, bodies[0]]) + "\n")

        code, out, err = await _cli("replay", "--json", "-c", rules, events)
        assert code == 1, out + err
        summary = json.loads(out)
        assert summary["events"] == 2 and summary["duplicates_skipped"] == 1
        assert summary["notes"] == [
            "duplicates looked for within this file only: a cluster's events stream cannot be "
            "searched by event id, and replayed events are not added to it"
        ]
        kept = summary["dead_letters"]
        assert (kept["kept"], kept["not_kept"]) == (2, 0)
        assert await _stream_messages(nats_server.url, "t_EVENTS") == 0

        listed = await _json("dlq", "list", "--json", "-c", rules)
        assert sorted(d["id"] for d in listed) == sorted(kept["ids"])
        assert {d["source"] for d in listed} == {f"replay:{events}"}
        # Replayed again: nothing in the cluster says it was seen.
        code, out, _ = await _cli("replay", "-c", rules, events)
        assert "2 duplicates" not in out
        assert "note: duplicates looked for within this file only" in out
