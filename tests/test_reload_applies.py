"""A SIGHUP reload applies everything built from the rule files, or says what it did not.

Before: "reloaded 4 rules" while actions kept the old [notifiers] (and every
other setting captured at start-up), so a fixed webhook URL kept failing
until a restart.
"""

from __future__ import annotations

import signal
from pathlib import Path

import pytest
from daemon_process import daemon_process, simulator_env
from http_target import Target
from test_daemon import ZOOM, example
from test_journal_support import wait_until

from engine.simulator import Simulator

pytestmark = pytest.mark.anyio


def notify_rules(url: str, heartbeat: str = "1s") -> str:
    return (
        ZOOM.replace('heartbeat_interval = "1s"', f'heartbeat_interval = "{heartbeat}"')
        + f"""
[notifiers]
ops = ["{url}"]

[[rule]]
name = "tell-ops"
on = ["meeting.started"]
  [[rule.action]]
  type = "notify"
  to = "ops"
  body = "{{{{ payload.object.topic }}}}"
"""
    )


async def test_a_changed_notifier_url_is_used_after_sighup(tmp_path: Path) -> None:
    rules = tmp_path / "rules.toml"
    async with Simulator() as sim, Target().serve() as target:
        base = target.url.removeprefix("http://")
        rules.write_text(notify_rules(f"json://{base}/old"))
        env = simulator_env(sim, tmp_path / "state")
        async with daemon_process(["run", "-c", str(rules)], env) as daemon:
            await sim.wait_connected(timeout=20)
            await sim.send_event(example("meeting.started", topic="one"))
            await wait_until(lambda: target.received == 1, 20)

            rules.write_text(notify_rules(f"json://{base}/new"))
            daemon.send_signal(signal.SIGHUP)
            await daemon.wait_log("reloaded 1 rules", timeout=20)
            await sim.send_event(example("meeting.started", topic="two"))
            await wait_until(lambda: target.received == 2, 20)
            assert await daemon.stop() == 0
    paths = sorted(path for path, _ in target.counts)
    assert paths == ["/new", "/old"]
    assert sim.accepted_connections == 1  # the notifier change touched no connection


async def test_changed_zoom_settings_reconnect_in_order(tmp_path: Path) -> None:
    rules = tmp_path / "rules.toml"
    async with Simulator() as sim, Target().serve() as target:
        base = target.url.removeprefix("http://")
        rules.write_text(notify_rules(f"json://{base}/n"))
        env = simulator_env(sim, tmp_path / "state")
        async with daemon_process(["run", "-c", str(rules)], env) as daemon:
            await sim.wait_connected(timeout=20)
            rules.write_text(notify_rules(f"json://{base}/n", heartbeat="2s"))
            daemon.send_signal(signal.SIGHUP)
            await daemon.wait_log("reconnected with its new settings", timeout=20)
            await sim.wait_connected(count=2, timeout=20)
            # The new connection came first; the old one then said goodbye.
            old, new = sim.connections[0], sim.connections[-1]
            await sim.wait_for(lambda: old.closed_at is not None, timeout=10)
            assert new.open
            assert new.opened_at <= old.closed_at
            await sim.send_event(example("meeting.started", topic="after"))
            await wait_until(lambda: target.received == 1, 20)
            assert await daemon.stop() == 0
    assert sim.events_dropped == 0


async def test_refused_new_credentials_keep_the_old_connection(tmp_path: Path) -> None:
    rules = tmp_path / "rules.toml"
    async with Simulator() as sim, Target().serve() as target:
        base = target.url.removeprefix("http://")
        rules.write_text(notify_rules(f"json://{base}/n"))
        env = simulator_env(sim, tmp_path / "state")
        async with daemon_process(["run", "-c", str(rules)], env) as daemon:
            await sim.wait_connected(timeout=20)
            rules.write_text(
                notify_rules(f"json://{base}/n").replace(
                    'client_secret = "${ZOOM_CLIENT_SECRET}"', 'client_secret = "wrong-secret-x"'
                )
            )
            daemon.send_signal(signal.SIGHUP)
            await daemon.wait_log("keeping the old connection", timeout=30)
            await sim.send_event(example("meeting.started", topic="still"))
            await wait_until(lambda: target.received == 1, 20)
            assert await daemon.stop() == 0
    assert "wrong-secret-x" not in daemon.output()


async def test_settings_that_need_a_restart_are_named(tmp_path: Path) -> None:
    rules = tmp_path / "rules.toml"
    async with Simulator() as sim, Target().serve() as target:
        base = target.url.removeprefix("http://")
        text = notify_rules(f"json://{base}/n")
        rules.write_text(text)
        env = simulator_env(sim, tmp_path / "state")
        async with daemon_process(["run", "-c", str(rules)], env) as daemon:
            await sim.wait_connected(timeout=20)
            rules.write_text(
                text.replace('shutdown_grace = "20s"', 'shutdown_grace = "5s"\nmax_concurrency = 4')
            )
            daemon.send_signal(signal.SIGHUP)
            await daemon.wait_log("[engine] max_concurrency changed", timeout=20)
            await daemon.wait_log("[engine] shutdown_grace changed", timeout=20)
            assert await daemon.stop() == 0
    assert sim.accepted_connections == 1


def test_event_ids_and_the_cluster_wait_for_a_restart(tmp_path: Path) -> None:
    from engine.events import per_delivery_fields
    from engine.loader import load_rules
    from engine.reload import needs_restart

    rule = '[[rule]]\nname = "r"\non = ["meeting.started"]\n  [[rule.action]]\n  type = "print"\n  message = "hi"\n'
    before = tmp_path / "before.toml"
    before.write_text(rule)
    after = tmp_path / "after.toml"
    after.write_text(
        '[engine]\nper_delivery_fields = { "meeting.*" = ["payload.object.start_time"] }\n'
        '[cluster]\nservers = ["nats://127.0.0.1:4222"]\n' + rule
    )
    old = load_rules([before])
    running = per_delivery_fields()
    new = load_rules([after], set_identity=False)
    assert per_delivery_fields() == running, "a reload changed how event ids are made"
    named = needs_restart(old.config, new.config)
    assert {"[engine] per_delivery_fields", "[cluster]"} <= set(named)
