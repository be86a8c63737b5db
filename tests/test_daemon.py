"""`zoomrules run` as a real process against the simulator: reload, shutdown, credentials."""

from __future__ import annotations

import copy
import gc
import json
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from conftest import product_events
from daemon_process import ZOOMRULES, daemon_process, poll_until, simulator_env

from engine.daemon import GC_GENERATION0, fewer_gc_passes
from engine.simulator import Simulator

pytestmark = pytest.mark.anyio

MEETINGS = product_events("meetings")

ZOOM = """
version = 1
[zoom]
client_id = "${ZOOM_CLIENT_ID}"
client_secret = "${ZOOM_CLIENT_SECRET}"
endpoint = "${ZOOM_WS_ENDPOINT}"
heartbeat_interval = "1s"
[engine]
state_dir = "${ZOOMRULES_STATE_DIR}"
shutdown_grace = "20s"
"""


def log_rule(name: str, event: str, path: Path) -> str:
    return f"""
[[rule]]
name = "{name}"
on = ["{event}"]
  [[rule.action]]
  type = "log"
  path = "{path}"
"""


def example(name: str, **object_fields: Any) -> dict[str, Any]:
    body = copy.deepcopy(MEETINGS[name]["example"])
    body["payload"]["object"].update(object_fields)
    return body


def lines(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


async def wait_lines(path: Path, count: int, timeout: float = 20.0) -> list[dict[str, Any]]:
    await poll_until(lambda: len(lines(path)) >= count, timeout)
    return lines(path)


async def test_events_fire_rules_end_to_end(tmp_path: Path) -> None:
    out = tmp_path / "fired.jsonl"
    rules = tmp_path / "rules.toml"
    rules.write_text(ZOOM + log_rule("started", "meeting.started", out))
    async with Simulator() as sim:
        env = simulator_env(sim, tmp_path / "state")
        async with daemon_process(["run", "-c", str(rules)], env) as daemon:
            await sim.wait_connected(timeout=20)
            sent = [example("meeting.started", topic=f"topic {i}") for i in range(50)]
            await sim.send_events(sent)
            got = await wait_lines(out, 50)
            assert sorted(r["event"]["payload"]["object"]["topic"] for r in got) == sorted(
                e["payload"]["object"]["topic"] for e in sent
            )
            assert {r["rule"] for r in got} == {"started"}
            daemon.send_signal(signal.SIGTERM)
            assert await daemon.wait_exit() == 0


async def test_sighup_reload_valid_then_invalid_keeps_connection(tmp_path: Path) -> None:
    first, second = tmp_path / "first.jsonl", tmp_path / "second.jsonl"
    rules = tmp_path / "rules.toml"
    rules.write_text(ZOOM + log_rule("first", "meeting.started", first))
    async with Simulator() as sim:
        env = simulator_env(sim, tmp_path / "state")
        async with daemon_process(["run", "-c", str(rules)], env) as daemon:
            await sim.wait_connected(timeout=20)
            await sim.send_event(example("meeting.started", topic="before reload"))
            await wait_lines(first, 1)

            rules.write_text(ZOOM + log_rule("second", "meeting.started", second))
            daemon.send_signal(signal.SIGHUP)
            await daemon.wait_log("reloaded 1 rules")
            await sim.send_event(example("meeting.started", topic="after reload"))
            assert (await wait_lines(second, 1))[0]["rule"] == "second"
            assert len(lines(first)) == 1

            rules.write_text(
                ZOOM + '[[rule]]\nname = "broken"\non = ["meeting.started"]\nwhen = "a.["\n'
            )
            daemon.send_signal(signal.SIGHUP)
            await daemon.wait_log("reload failed")
            await daemon.wait_log("key 'when'")
            await sim.send_event(example("meeting.started", topic="after bad reload"))
            got = await wait_lines(second, 2)
            assert got[-1]["event"]["payload"]["object"]["topic"] == "after bad reload"
            # The connection was never dropped for either reload.
            assert sim.accepted_connections == 1
            daemon.send_signal(signal.SIGTERM)
            assert await daemon.wait_exit() == 0


async def test_sigterm_lets_action_in_flight_finish(tmp_path: Path) -> None:
    started, release, finished = tmp_path / "started", tmp_path / "release", tmp_path / "finished"
    script = f"touch {started}; while [ ! -e {release} ]; do sleep 0.02; done; touch {finished}"
    rules = tmp_path / "rules.toml"
    rules.write_text(
        ZOOM
        + f"""
[[rule]]
name = "slow"
on = ["meeting.ended"]
  [[rule.action]]
  type = "shell"
  command = ["/bin/sh", "-c", "{script}"]
  timeout = "60s"
"""
    )
    async with Simulator() as sim:
        env = simulator_env(sim, tmp_path / "state")
        async with daemon_process(["run", "-c", str(rules)], env) as daemon:
            await sim.wait_connected(timeout=20)
            await sim.send_event(example("meeting.ended"))
            await poll_until(started.exists)
            daemon.send_signal(signal.SIGTERM)
            await daemon.wait_log("shutting down")
            await sim.wait_disconnected(timeout=20)  # stops reading from Zoom first
            assert daemon.process.returncode is None  # ... but waits for the action
            release.touch()
            assert await daemon.wait_exit() == 0
            assert finished.exists()


async def test_wrong_credentials_stop_with_clear_message(tmp_path: Path) -> None:
    rules = tmp_path / "rules.toml"
    rules.write_text(ZOOM + log_rule("x", "meeting.started", tmp_path / "x.jsonl"))
    async with Simulator() as sim:
        env = simulator_env(sim, tmp_path / "state", ZOOM_CLIENT_SECRET="not-the-secret")
        async with daemon_process(["run", "-c", str(rules)], env) as daemon:
            code = await daemon.wait_exit()
        assert code != 0
        text = "\n".join(daemon.stderr)
        assert "client_secret" in text and "client_id" in text
        assert "not-the-secret" not in text
        assert len(sim.oauth_requests) == 1  # no retry storm


async def test_several_subscriptions_each_connect(tmp_path: Path) -> None:
    out = tmp_path / "fired.jsonl"
    async with Simulator(subscription_id="sub-a") as a, Simulator(subscription_id="sub-b") as b:
        rules = tmp_path / "rules.toml"
        rules.write_text(
            f"""
version = 1
[zoom]
client_id = "{a.client_id}"
client_secret = "{a.client_secret}"
oauth_url = "{a.oauth_url}"
  [[zoom.subscription]]
  name = "a"
  endpoint = "{a.ws_endpoint}"
  [[zoom.subscription]]
  name = "b"
  endpoint = "{b.ws_endpoint}"
  oauth_url = "{b.oauth_url}"
[engine]
state_dir = "{tmp_path / "state"}"
"""
            + log_rule("all", "meeting.*", out)
        )
        env = simulator_env(a, tmp_path / "state")
        for key in ("ZOOM_WS_ENDPOINT", "ZOOM_OAUTH_URL"):
            env.pop(key)
        async with daemon_process(["run", "-c", str(rules)], env) as daemon:
            await a.wait_connected(timeout=20)
            await b.wait_connected(timeout=20)
            await a.send_event(example("meeting.started", topic="from a"))
            await b.send_event(example("meeting.ended", topic="from b"))
            got = await wait_lines(out, 2)
            assert {r["event"]["payload"]["object"]["topic"] for r in got} == {"from a", "from b"}
            assert {r["event"]["event"] for r in got} == {"meeting.started", "meeting.ended"}
            daemon.send_signal(signal.SIGINT)
            assert await daemon.wait_exit() == 0


async def test_json_log_format(tmp_path: Path) -> None:
    rules = tmp_path / "rules.toml"
    rules.write_text(ZOOM + log_rule("x", "meeting.started", tmp_path / "x.jsonl"))
    async with Simulator() as sim:
        env = simulator_env(sim, tmp_path / "state")
        async with daemon_process(["run", "-c", str(rules), "--log-format", "json"], env) as daemon:
            await sim.wait_connected(timeout=20)
            await daemon.wait_log("connected")
            daemon.send_signal(signal.SIGTERM)
            assert await daemon.wait_exit() == 0
        records = [json.loads(line) for line in daemon.stderr if line.strip()]
        assert records and all({"ts", "level", "logger", "msg"} <= set(r) for r in records)
        assert not any(token in line for token in sim.issued_tokens for line in daemon.stderr)


def test_run_refuses_invalid_rule_file(tmp_path: Path) -> None:
    rules = tmp_path / "rules.toml"
    rules.write_text(ZOOM.replace('heartbeat_interval = "1s"', 'heartbeat_intervall = "1s"'))
    env = {
        "ZOOM_CLIENT_ID": "a",
        "ZOOM_CLIENT_SECRET": "b",
        "ZOOM_WS_ENDPOINT": "ws://127.0.0.1:9/ws",
    }
    env["ZOOMRULES_STATE_DIR"] = str(tmp_path)
    result = subprocess.run(
        [*ZOOMRULES, "run", "-c", str(rules)], env={**env, "PATH": "/usr/bin:/bin"},
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 2
    assert (
        "heartbeat_intervall" in result.stderr
        and "did you mean 'heartbeat_interval'" in result.stderr
    )


def test_demo_shows_rules_firing() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "engine.cli", "demo"], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "[vip-joined]" in out and "Dana Whitfield" in out
    assert "[recording-ready]" in out and "join URL https://" in out
    assert out.count("[guest-joined]") == 2
    assert "[meeting-ended]" in out


def test_the_collector_runs_less_often_while_the_daemon_runs_and_is_restored_after() -> None:
    before = gc.get_threshold()
    with fewer_gc_passes():
        assert gc.get_threshold() == (max(before[0], GC_GENERATION0), *before[1:])
    assert gc.get_threshold() == before
