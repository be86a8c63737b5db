"""Cluster mode against a real nats-server: leases, failover, shared work, exactly-one runs.

Every node is a real `zoomrules run` process; Zoom is the simulator; the
actions' target counts requests by their idempotency key (the event's id).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import anyio
import orjson
import pytest
from cluster_support import cluster_nodes, cluster_rules
from conftest import example
from http_target import Target
from test_journal_support import meeting_events, wait_until

from engine.simulator import Simulator, WebhookSender
from tests.nats_server import NatsServer, nats_connect, run_nats_cluster

pytestmark = pytest.mark.anyio


def _no_overlap(sim: Simulator) -> None:
    """Zoom never saw two connections of the subscription open at once."""
    accepted = sorted((c for c in sim.connections if c.accepted), key=lambda c: c.opened_at)
    assert not any(c.replaced for c in accepted), "a node connected while another held it"
    for before, after in zip(accepted, accepted[1:], strict=False):
        assert before.closed_at is not None and before.closed_at <= after.opened_at


async def _all_acknowledged(url: str, events: int, cluster: str = "t") -> None:
    """Wait until the events stream holds `events` events and the cluster
    acknowledged every one (their jobs ended)."""
    nc = await nats_connect(url)
    try:
        js = nc.jetstream()
        with anyio.fail_after(30):
            while True:
                stream = await js.stream_info(f"{cluster}_EVENTS")
                info = await js.consumer_info(f"{cluster}_EVENTS", "matchers")
                if (
                    stream.state.messages >= events
                    and info.num_ack_pending == 0
                    and info.num_pending == 0
                ):
                    return
                await anyio.sleep(0.05)
    finally:
        await nc.close()


async def _node_records(url: str, cluster: str = "t") -> dict[str, dict[str, Any]]:
    nc = await nats_connect(url)
    try:
        bucket = await nc.jetstream().key_value(f"{cluster}_nodes")
        records = {}
        for key in await bucket.keys():
            entry = await bucket.get(key)
            if entry.value:
                records[key] = orjson.loads(entry.value)
        return records
    finally:
        await nc.close()


async def test_a_standby_takes_the_lease_after_the_holder_is_killed(
    tmp_path: Path, nats_server: NatsServer
) -> None:
    async with Simulator() as sim, Target().serve() as target:
        rules = cluster_rules(tmp_path, target.url, [nats_server.url])
        async with cluster_nodes(2, rules, sim, tmp_path / "state") as nodes:
            await sim.wait_connected(timeout=30)
            holder = next(node for node in nodes if node.takeovers())
            standby = next(node for node in nodes if node is not holder)

            first = meeting_events(5)
            assert await sim.send_events(first) == 5
            await wait_until(lambda: len(target.counts) == 5, 30)
            # Killed between an action's end and the event's acknowledgement,
            # the holder's jobs would run again (at least once); not tested here.
            await _all_acknowledged(nats_server.url, 5)

            await holder.daemon.kill()
            killed = time.monotonic()
            await standby.wait_holding(timeout=30)
            await sim.wait_connected(count=2, timeout=30)
            takeover = time.monotonic() - killed
            # The holder's lease lapses after lease_ttl (3 s); the standby looks
            # every 0.6 s. A loaded machine adds delay, never removes it.
            assert takeover >= 2.0, "the standby took the lease while it was still held"

            second = meeting_events(5, start=5)
            assert await sim.send_events(second) == 5
            await wait_until(lambda: len(target.counts) == 10, 30)
            assert set(target.counts.values()) == {1}
            assert (holder.takeovers(), standby.takeovers()) == (1, 1)


async def test_no_two_holders_when_the_holder_loses_its_nats_server(
    tmp_path: Path, nats_server_bin: Path
) -> None:
    # Without advertised routes a node knows only its own NATS server:
    # stopping it cuts the node off while the other two keep a quorum.
    async with (
        run_nats_cluster(tmp_path / "nats", binary=nats_server_bin, advertise=False) as nats,
        Simulator() as sim,
        Target().serve() as target,
    ):
        n1, n2, _ = nats.nodes
        rules = cluster_rules(tmp_path, target.url, nats.urls, replicas=3)
        async with cluster_nodes(
            2, rules, sim, tmp_path / "state", start=False, servers=[[n1.url], [n2.url]]
        ) as (cut_off, survivor):
            await cut_off.daemon.start()
            await cut_off.wait_holding()
            await sim.wait_connected(timeout=30)
            await survivor.daemon.start()
            await survivor.daemon.wait_log("zoomrules running")

            await n1.stop()
            await cut_off.daemon.wait_log("lease lost (no renewal", timeout=30)
            await survivor.wait_holding(timeout=30)
            await sim.wait_connected(count=2, timeout=30)
            _no_overlap(sim)

            events = meeting_events(5)
            assert await sim.send_events(events) == 5
            await wait_until(lambda: len(target.counts) == 5, 30)

            # Back on NATS, the cut-off node stands by: still one holder.
            await n1.start()
            await cut_off.daemon.wait_log("NATS: reconnected", timeout=30)
            more = meeting_events(5, start=5)
            assert await sim.send_events(more) == 5
            await wait_until(lambda: len(target.counts) == 10, 30)
            assert cut_off.takeovers() == 1
            _no_overlap(sim)
            assert set(target.counts.values()) == {1}


async def test_redundant_subscriptions_run_each_event_once_and_cover_a_node_loss(
    tmp_path: Path, nats_server: NatsServer
) -> None:
    async with Simulator() as sim_a, Simulator() as sim_b, Target().serve() as target:
        sims = [sim_a, sim_b]
        recording_rule = """
[[rule]]
name = "recorded"
on   = ["recording.completed"]
  [[rule.action]]
  type = "http"
  url = "TARGET/recorded"
  headers = { x-idempotency-key = "{{ zoomrules.event_id }}" }
""".replace("TARGET", target.url)
        rules = cluster_rules(tmp_path, target.url, [nats_server.url], sims=sims)
        rules.write_text(rules.read_text() + recording_rule)
        async with cluster_nodes(2, rules, sim_a, tmp_path / "state") as nodes:
            await sim_a.wait_connected(timeout=30)
            await sim_b.wait_connected(timeout=30)

            async def spread() -> bool:
                records = await _node_records(nats_server.url)
                return sorted(len(r.get("holds", [])) for r in records.values()) == [1, 1]

            with anyio.fail_after(60):
                while not await spread():  # noqa: ASYNC110 - the nodes are other processes
                    await anyio.sleep(0.2)

            # Both subscriptions carry every event; one of the two recording
            # deliveries has a download token of its own, as Zoom's do.
            events = meeting_events(10)
            recording = example("recording.completed")
            again = {**recording, "download_token": "another-token"}
            for sim in sims:
                assert await sim.send_events(events) == 10
            assert await sim_a.send_event(recording) == 1
            assert await sim_b.send_event(again) == 1
            await wait_until(lambda: len(target.counts) == 11, 30)
            await _all_acknowledged(nats_server.url, 11)

            # One node dies: the other subscription still delivers, at once.
            records = await _node_records(nats_server.url)
            victim = next(node for node in nodes if records[node.name]["holds"] == ["sub-0"])
            await victim.daemon.kill()
            during = meeting_events(10, start=10)
            for sim in sims:
                await sim.send_events(during)
            await wait_until(lambda: len(target.counts) == 21, 30)
            assert set(target.counts.values()) == {1}


async def test_a_job_whose_node_is_killed_mid_action_runs_elsewhere_and_finished_ones_do_not(
    tmp_path: Path, nats_server: NatsServer
) -> None:
    count = 60
    async with Simulator() as sim, Target(delay=0.1).serve() as target:
        rules = cluster_rules(
            tmp_path, target.url, [nats_server.url], paths=("a", "b"),
            engine="max_concurrency = 8",
        )  # fmt: skip
        async with cluster_nodes(2, rules, sim, tmp_path / "state") as nodes:
            await sim.wait_connected(timeout=30)
            for node in nodes:
                await node.daemon.wait_log("zoomrules running")
            events = meeting_events(count)
            assert await sim.send_events(events) == count

            # Hold the actions once some jobs ended, let those settle (their
            # events acknowledged), then kill the node that matched the most
            # while its other jobs hang mid-way.
            def fired(node: Any) -> int:
                return node.daemon.output().count("rule 'started' fired")

            await wait_until(lambda: len(target.counts) >= 10, 30)
            target.stall()
            stalled_at = time.monotonic()
            await wait_until(lambda: time.monotonic() - stalled_at > 1.5, 30)
            settled = set(target.counts)
            victim = max(nodes, key=fired)
            await victim.daemon.kill()
            target.release()
            assert len(target.counts) < 2 * count, "everything finished before the kill"

            expected = {(f"/{path}", event_id) for path in "ab" for event_id in _event_ids(nodes)}
            await wait_until(lambda: len(target.counts) == 2 * count, 60)
            assert set(target.counts) >= expected
            # Jobs that had ended ran once; only those cut short ran again.
            assert all(target.counts[pair] == 1 for pair in settled)
            repeated = [pair for pair, n in target.counts.items() if n > 1]
            assert len(repeated) <= 8  # at most the victim's jobs in flight at the kill
            assert all(target.counts[("/a", key)] == 1 for (path, key) in repeated if path == "/b")


def _event_ids(nodes: Any) -> set[str]:
    import re

    found: set[str] = set()
    for node in nodes:
        found |= set(re.findall(r"fired on meeting.started \(event (\w+)\)", node.log()))
    return found


async def test_a_throttle_is_the_clusters_not_each_nodes(
    tmp_path: Path, nats_server: NatsServer
) -> None:
    async with Simulator() as sim, Target().serve() as target:
        rules = cluster_rules(
            tmp_path, target.url, [nats_server.url],
            rule='throttle = { key = "payload.object.host_id", limit = 3, per = "1h" }',
        )  # fmt: skip
        async with cluster_nodes(2, rules, sim, tmp_path / "state") as nodes:
            await sim.wait_connected(timeout=30)
            for node in nodes:
                await node.daemon.wait_log("zoomrules running")
            # Twenty meetings of one host, matched by both nodes.
            events = meeting_events(20)
            for body in events:
                assert await sim.send_event(body) == 1
            await _all_acknowledged(nats_server.url, 20)
            assert len(target.counts) == 3
            throttled = sum(node.log().count("throttled for key") for node in nodes)
            assert throttled >= 2  # logged lines are rate-limited per node


async def test_a_holder_stopped_cleanly_hands_its_subscription_over_at_once(
    tmp_path: Path, nats_server: NatsServer
) -> None:
    async with Simulator() as sim, Target().serve() as target:
        # A lease that would take 60 s to lapse: only a release explains a
        # takeover within the 20 s the standby is given below.
        rules = cluster_rules(tmp_path, target.url, [nats_server.url], lease_ttl="60s")
        async with cluster_nodes(2, rules, sim, tmp_path / "state") as nodes:
            await sim.wait_connected(timeout=30)
            holder = next(node for node in nodes if node.takeovers())
            standby = next(node for node in nodes if node is not holder)
            await standby.daemon.wait_log("zoomrules running")

            assert await holder.daemon.stop() == 0
            await standby.wait_holding(timeout=20)
            await sim.wait_connected(count=2, timeout=20)
            _no_overlap(sim)
            records = await _node_records(nats_server.url)
            assert set(records) == {standby.name}, "the stopped node's record stayed"
            assert await sim.send_events(meeting_events(3)) == 3
            await wait_until(lambda: len(target.counts) == 3, 30)


GAP_RULE = """
[[rule]]
name = "gap"
on   = ["zoomrules.connection_gap"]
  [[rule.action]]
  type = "http"
  url = "TARGET/gap"
  headers = { x-idempotency-key = "{{ payload.subscription }}|{{ payload.start_time }}|{{ payload.end_time }}|{{ payload.seconds }}|{{ payload.cause }}" }
"""


def _gaps(target: Target) -> list[dict[str, Any]]:
    from datetime import datetime

    found = []
    for path, key in target.counts:
        if path != "/gap":
            continue
        subscription, start, end, seconds, cause = key.split("|", 4)
        found.append(
            {
                "subscription": subscription,
                "start": datetime.fromisoformat(start).timestamp(),
                "end": datetime.fromisoformat(end).timestamp(),
                "seconds": float(seconds),
                "cause": cause,
            }
        )
    return found


async def test_a_failover_is_reported_as_a_gap_by_the_node_taking_over(
    tmp_path: Path, nats_server: NatsServer
) -> None:
    async with Simulator() as sim, Target().serve() as target:
        rules = cluster_rules(
            tmp_path, target.url, [nats_server.url],
            zoom='gap_threshold = "1s"\nheartbeat_interval = "1s"',
            extra=GAP_RULE.replace("TARGET", target.url),
        )  # fmt: skip
        async with cluster_nodes(2, rules, sim, tmp_path / "state") as nodes:
            await sim.wait_connected(timeout=30)
            holder = next(node for node in nodes if node.takeovers())
            standby = next(node for node in nodes if node is not holder)
            await standby.daemon.wait_log("zoomrules running")
            # The holder's mark is written at least every heartbeat (1 s).
            await sim.wait_heartbeats(3, timeout=30)

            await holder.daemon.kill()
            killed = time.time()
            await standby.wait_holding(timeout=30)
            await sim.wait_connected(count=2, timeout=30)
            connected = time.time()
            await wait_until(lambda: len(_gaps(target)) == 1, 30)

    (gap,) = _gaps(target)
    assert gap["subscription"] == "default"
    assert gap["cause"].startswith("connected from another zoomrules process until then")
    # It starts at the holder's last mark (at most a heartbeat and a mark
    # interval before the kill) and ends when the standby connected.
    assert killed - 3.0 <= gap["start"] <= killed
    assert killed < gap["end"] <= connected + 1.0
    assert abs(gap["seconds"] - (gap["end"] - gap["start"])) < 0.01


async def test_a_cluster_restarted_after_a_stop_reports_the_gap_once(
    tmp_path: Path, nats_server: NatsServer
) -> None:
    async with Simulator() as sim, Target().serve() as target:
        rules = cluster_rules(
            tmp_path, target.url, [nats_server.url],
            zoom='gap_threshold = "1s"',
            extra=GAP_RULE.replace("TARGET", target.url),
        )  # fmt: skip
        async with cluster_nodes(1, rules, sim, tmp_path / "state") as (node,):
            await sim.wait_connected(timeout=30)
            assert await node.daemon.stop() == 0
            stopped = time.time()
            await wait_until(lambda: time.time() - stopped > 1.5, 10)
            await node.daemon.start()
            await sim.wait_connected(count=2, timeout=30)
            await wait_until(lambda: len(_gaps(target)) == 1, 30)
            restarted = time.time()
            assert await node.daemon.stop() == 0

    (gap,) = _gaps(target)
    assert gap["cause"].startswith("zoomrules was not running")
    # A clean stop writes the mark as the connection closes.
    assert stopped - 1.0 <= gap["start"] <= stopped
    assert stopped + 1.5 <= gap["end"] <= restarted


async def test_webhooks_on_every_node_fire_once_and_a_200_survives_the_node(
    tmp_path: Path, nats_server: NatsServer
) -> None:
    """Every node serves the webhook; Zoom's retry landing on another node,
    and the same event by WebSocket, fire once; a node killed right after
    its 200 has lost nothing: the event was in the cluster's stream."""
    secret = "cluster-webhook-secret"
    async with Simulator() as sim, Target().serve() as target:
        rules = cluster_rules(
            tmp_path, target.url, [nats_server.url],
            zoom='[zoom.webhook]\nsecret_token = "${WEBHOOK_SECRET}"',
            extra='[http]\nlisten = "127.0.0.1:0"',
        )  # fmt: skip
        env = {"WEBHOOK_SECRET": secret}
        async with cluster_nodes(2, rules, sim, tmp_path / "state", env=env) as nodes:
            await sim.wait_connected(timeout=30)
            for node in nodes:
                await node.daemon.wait_log("serving HTTP on", timeout=30)
            first, second = (
                WebhookSender(f"http://127.0.0.1:{node.http_port()}/zoom/webhook", secret)
                for node in nodes
            )
            async with first, second:
                # One occurrence: by webhook to node-1, Zoom's retry to
                # node-2, and by WebSocket to whichever node holds it.
                body = {**example("meeting.started"), "event_ts": int(time.time() * 1000)}
                delivery = await first.deliver(body)
                assert delivery.status == 200
                assert (await second.retry(delivery)).status == 200
                assert await sim.send_event(body) == 1
                # Events spread over both nodes' webhooks: each once.
                events = meeting_events(10)
                for index, event in enumerate(events):
                    sender = first if index % 2 else second
                    assert (await sender.deliver(event)).status == 200
                await wait_until(lambda: len(target.counts) == 11, 30)
                await _all_acknowledged(nats_server.url, 11)
                # Answered 200, then killed at once, before any action could
                # end (the target holds every request): another node runs it.
                target.stall()
                late = {**example("meeting.started"), "event_ts": int(time.time() * 1000) + 1}
                assert (await first.deliver(late)).status == 200
                await nodes[0].daemon.kill()
                target.release()
                await wait_until(lambda: len(target.counts) == 12, 60)
                assert set(target.counts.values()) == {1}
