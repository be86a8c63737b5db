"""`zoomrules simulate` and `zoomrules demo -c`: trying one's own rules without Zoom.

Real processes throughout: `zoomrules simulate` on free ports, a real
`zoomrules run` pointed at it with the environment it printed, rules with a
`log` action writing to tmp_path.
"""

from __future__ import annotations

import argparse
import json
import os
import pty
import shlex
import shutil
import socket
import stat
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import httpx
import orjson
import pytest
from conftest import example, run_cli, write_rules
from daemon_process import DaemonProcess, daemon_process, poll_until
from websockets.asyncio.client import connect

from engine.simulator import EventFeed, Simulator, builtin_events, parse_events

pytestmark = pytest.mark.anyio

#: Generous: a loaded 2-core machine starts Python processes slowly.
TIMEOUT = 60.0

SIM_KEYS = {
    "ZOOM_CLIENT_ID",
    "ZOOM_CLIENT_SECRET",
    "ZOOM_ACCOUNT_ID",
    "ZOOM_WS_ENDPOINT",
    "ZOOM_OAUTH_URL",
    "ZOOM_API_BASE_URL",
    "ZOOMRULES_STATE_DIR",
}

# The rule file a user would write: credentials and endpoint from the environment.
USER_RULES = """
version = 1

[zoom]
client_id     = "${{ZOOM_CLIENT_ID}}"
client_secret = "${{ZOOM_CLIENT_SECRET}}"
account_id    = "${{ZOOM_ACCOUNT_ID}}"
endpoint      = "${{ZOOM_WS_ENDPOINT}}"
heartbeat_interval = "5s"

[[rule]]
name = "started"
on   = ["meeting.started"]

  [[rule.action]]
  type = "log"
  path = "{log}"
"""


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ZOOM", "ZOOMRULES"))}
    env.update(PYTHONUNBUFFERED="1", **extra)
    return env


def exported(lines: list[str]) -> dict[str, str]:
    """The `export KEY=value` lines printed, read as a shell would."""
    env: dict[str, str] = {}
    for line in lines:
        if line.startswith("export "):
            key, _, value = shlex.split(line)[1].partition("=")
            env[key] = value
    return env


def records(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def has_line(process: DaemonProcess, text: str, count: int = 1) -> bool:
    return sum(text in line for line in process.stdout) >= count


@asynccontextmanager
async def simulate(*args: str) -> AsyncIterator[tuple[DaemonProcess, dict[str, str]]]:
    """`zoomrules simulate --port 0 ARGS`, once it printed its environment."""
    async with daemon_process(["simulate", "--port", "0", *args], clean_env()) as sim:
        state_dir: str | None = None
        try:
            await sim.wait_for(
                lambda: has_line(sim, "export ZOOMRULES_STATE_DIR=") and has_line(sim, "stops it"),
                TIMEOUT,
            )
            env = exported(sim.stdout)
            state_dir = env["ZOOMRULES_STATE_DIR"]
            yield sim, env
        finally:
            await sim.ensure_dead()
            if state_dir is not None:
                shutil.rmtree(state_dir, ignore_errors=True)


def control_url(env: dict[str, str]) -> str:
    return env["ZOOM_OAUTH_URL"].removesuffix("/oauth/token") + "/_sim"


# -- simulate + run ---------------------------------------------------------


async def test_run_pointed_at_simulate_fires_rules_on_events_sent_on_demand(
    tmp_path: Path,
) -> None:
    fired = tmp_path / "fired.jsonl"
    rules = write_rules(tmp_path, USER_RULES.format(log=fired))
    env_file = tmp_path / "sim.env"
    async with simulate("--env-file", str(env_file)) as (sim, env):
        assert set(env) == SIM_KEYS
        assert env["ZOOM_WS_ENDPOINT"].startswith("ws://127.0.0.1:")
        assert env["ZOOM_OAUTH_URL"].startswith("http://127.0.0.1:")
        # The file holds the same environment, for its owner only, and loads
        # exactly as the documentation says.
        assert stat.S_IMODE(env_file.stat().st_mode) == 0o600
        shell = await anyio.run_process(
            ["sh", "-c", "set -a; . ./sim.env; set +a; env"], cwd=tmp_path, env=clean_env()
        )
        from_file = dict(line.partition("=")[::2] for line in shell.stdout.decode().splitlines())
        assert {key: from_file[key] for key in SIM_KEYS} == env

        async with (
            daemon_process(["run", "-c", str(rules)], clean_env(**env)) as run,
            httpx.AsyncClient(timeout=TIMEOUT) as http,
        ):
            await sim.wait_for(lambda: has_line(sim, "client connected"), TIMEOUT)
            # A corpus event by name...
            answer = await http.post(f"{control_url(env)}/send/meeting.started")
            assert answer.status_code == 200, answer.text
            assert answer.json()["delivered"] == 1
            await poll_until(lambda: len(records(fired)) >= 1, TIMEOUT)
            # ...and one's own event, posted as the body.
            own = example("meeting.started")
            own["payload"]["object"]["topic"] = "Posted by the test"
            answer = await http.post(f"{control_url(env)}/send", content=json.dumps(own))
            assert answer.status_code == 200, answer.text
            await poll_until(lambda: len(records(fired)) >= 2, TIMEOUT)
            # The same event again is a new event (event_ts is the time of
            # sending), not a redelivery the journal would drop.
            answer = await http.post(f"{control_url(env)}/send/meeting.started")
            assert answer.status_code == 200, answer.text
            await poll_until(lambda: len(records(fired)) >= 3, TIMEOUT)
            assert await run.stop() == 0

            await sim.wait_for(lambda: has_line(sim, "client disconnected"), TIMEOUT)
            dropped = await http.post(f"{control_url(env)}/next")
            assert dropped.status_code == 409
            assert dropped.json()["dropped"] == 1
        await sim.wait_for(lambda: has_line(sim, "DROPPED"), TIMEOUT)
        assert await sim.stop() == 0
    got = records(fired)
    assert [r["rule"] for r in got] == ["started"] * 3
    assert got[1]["event"]["payload"]["object"]["topic"] == "Posted by the test"
    assert len({r["event_id"] for r in got}) == 3
    assert sum("sent    meeting.started" in line for line in sim.stdout) == 3
    summary = sim.stdout[-2] if "state directory" in sim.stdout[-1] else sim.stdout[-1]
    assert "4 event(s) sent: 3 delivered, 1 dropped (no client connected)" in summary


async def test_simulate_sends_by_webhook_too_and_the_rule_fires_once(tmp_path: Path) -> None:
    fired = tmp_path / "fired.jsonl"
    with socket.create_server(("127.0.0.1", 0)) as probe:
        port = probe.getsockname()[1]  # free now; the daemon binds it below
    webhook = f"""
[zoom.webhook]
secret_token = "${{{{ZOOM_WEBHOOK_SECRET_TOKEN}}}}"
[http]
listen = "127.0.0.1:{port}"
"""
    rules = write_rules(
        tmp_path, USER_RULES.replace("[[rule]]", webhook + "[[rule]]").format(log=fired)
    )
    async with simulate("--webhook", f"http://127.0.0.1:{port}/zoom/webhook") as (sim, env):
        assert set(env) == SIM_KEYS | {"ZOOM_WEBHOOK_SECRET_TOKEN"}
        async with (
            daemon_process(["run", "-c", str(rules)], clean_env(**env)) as run,
            httpx.AsyncClient(timeout=TIMEOUT) as http,
        ):
            await sim.wait_for(lambda: has_line(sim, "client connected"), TIMEOUT)
            answer = await http.post(f"{control_url(env)}/send/meeting.started")
            assert answer.status_code == 200, answer.text
            [sent] = answer.json()["sent"]
            assert sent["webhook"] == "200 accepted"
            await poll_until(lambda: len(records(fired)) >= 1, TIMEOUT)
            assert await run.stop() == 0
        assert await sim.stop() == 0
    assert len(records(fired)) == 1, "sent both ways, fired once"
    assert has_line(sim, "WebSocket delivered, webhook 200 accepted")
    assert "duplicate of event" in run.output()


async def test_simulate_sends_on_a_schedule_and_loops(tmp_path: Path) -> None:
    fired = tmp_path / "fired.jsonl"
    rules = write_rules(tmp_path, USER_RULES.format(log=fired))
    events = tmp_path / "events.jsonl"
    lines = [orjson.dumps(example(name)).decode() for name in ("meeting.started", "meeting.ended")]
    events.write_text("\n".join(lines) + "\n")
    async with simulate("--events", str(events), "--every", "0.2s", "--loop") as (sim, env):
        assert has_line(sim, "One every 0.2s, over and over")
        async with daemon_process(["run", "-c", str(rules)], clean_env(**env)) as run:
            # Three rounds: meeting.started is sent again and again, and fires each time.
            await poll_until(lambda: len(records(fired)) >= 3, TIMEOUT)
            assert await run.stop() == 0
        assert await sim.stop() == 0
    assert has_line(sim, "via schedule")
    assert has_line(sim, "[1/2] via schedule", 3)
    got = records(fired)
    assert len({r["event"]["event_ts"] for r in got}) == len(got)


async def test_the_terminal_sends_events_on_enter_and_by_name(tmp_path: Path) -> None:
    """Commands typed on simulate's own terminal (a pseudo-terminal it controls)."""
    master, slave = pty.openpty()
    # In a session of its own (DaemonProcess starts one), opening the pty makes it
    # the controlling terminal, with simulate in the foreground, as a shell does.
    wrapper = (
        "import os, sys; fd = os.open(sys.argv[1], os.O_RDWR); os.dup2(fd, 0); "
        "os.execv(sys.executable, [sys.executable, '-m', 'engine.cli', *sys.argv[2:]])"
    )
    args = [sys.executable, "-c", wrapper, os.ttyname(slave), "simulate", "--port", "0"]
    os.close(slave)
    try:
        async with anyio.create_task_group() as tg:
            sim = DaemonProcess([], clean_env(), None, tg)
            sim.args = args
            await sim.start()
            try:
                await sim.wait_for(lambda: has_line(sim, "Enter: send the next event"), TIMEOUT)
                os.write(master, b"\n")
                await sim.wait_for(lambda: has_line(sim, "DROPPED meeting.created [1/8]"), TIMEOUT)
                os.write(master, b"send meeting.participant_joined\n")
                os.write(master, b"send meeting.participant_joined\n")
                await sim.wait_for(
                    lambda: has_line(sim, "meeting.participant_joined [4/8]"), TIMEOUT
                )
                assert has_line(sim, "meeting.participant_joined [3/8] via terminal")
                os.write(master, b"send no.such\nquit\n")
                assert await sim.wait_exit(TIMEOUT) == 0
                await sim.wait_for(lambda: has_line(sim, "stopped."), TIMEOUT)
            finally:
                await sim.ensure_dead()
                tg.cancel_scope.cancel()
    finally:
        os.close(master)
    assert has_line(sim, "no event named 'no.such'")
    assert has_line(sim, "3 event(s) sent: 0 delivered, 3 dropped")


# -- simulate: bad input ------------------------------------------------------


def test_simulate_reports_invalid_event_lines_with_file_and_line(tmp_path: Path) -> None:
    events = tmp_path / "events.jsonl"
    good = orjson.dumps(example("meeting.started")).decode()
    events.write_text(f'{good}\n\n{{"event": "x.y", \nnot json\n{{"no": "name"}}\n{good}\n')
    result = run_cli("simulate", "--port", "0", "--events", events, env=clean_env())
    assert result.returncode == 2
    assert f"{events}:3: invalid JSON" in result.stderr
    assert f"{events}:4: invalid JSON" in result.stderr
    assert f"{events}:5: event object has no string 'event' name" in result.stderr
    assert ":1:" not in result.stderr and ":6:" not in result.stderr
    assert "export" not in result.stdout  # nothing started


def test_simulate_reads_events_from_stdin_and_names_it(tmp_path: Path) -> None:
    result = run_cli("simulate", "--events", "-", input="[1, 2]\n", env=clean_env())
    assert result.returncode == 2
    assert "<stdin>: event #1: event must be a JSON object, got int" in result.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["simulate", "--every", "bogus"],
         "argument --every: expected a duration like '30s', '10m', '1h', '250ms', got 'bogus'"),
        (["simulate", "--every", "0s"], "argument --every: must be longer than 0, got '0s'"),
        (["demo", "--duration", "bogus"],
         "argument --duration: expected a duration like '30s', '10m', '1h', '250ms', "
         "got 'bogus'"),
        (["simulate", "--loop"], "--loop repeats the schedule: give --every too"),
        (["simulate", "--port", "65535"], "argument --port: expected 0 (any free ports)"),
        (["simulate", "--webhook", "127.0.0.1:9464"],
         "argument --webhook: expected an http:// or https:// URL"),
    ],
)  # fmt: skip
def test_bad_options_exit_2_with_a_clear_message(args: list[str], message: str) -> None:
    result = run_cli(*args, env=clean_env())
    assert result.returncode == 2
    assert message in result.stderr
    assert "invalid" not in result.stderr


def test_simulate_on_a_busy_port_says_so() -> None:
    with socket.create_server(("127.0.0.1", 0)) as busy:
        port = busy.getsockname()[1]
        result = run_cli("simulate", "--port", str(port), env=clean_env())
    assert result.returncode == 1
    assert "cannot listen on 127.0.0.1" in result.stderr and "--port" in result.stderr


# -- demo -c -------------------------------------------------------------------


def test_demo_runs_ones_own_rules(tmp_path: Path) -> None:
    fired = tmp_path / "fired.jsonl"
    # No [zoom]: demo adds one pointing at its simulator.
    rules = write_rules(
        tmp_path,
        f"""
        [[rule]]
        name = "someone-joined"
        on   = ["meeting.participant_joined"]

          [[rule.action]]
          type = "log"
          path = "{fired}"
        """,
    )
    result = run_cli("demo", "-c", rules, env=clean_env())
    assert result.returncode == 0, result.stderr
    assert [r["rule"] for r in records(fired)] == ["someone-joined"] * 3
    assert "[vip-joined]" not in result.stdout  # not the built-in rules
    assert "demo: sent meeting.participant_joined" in result.stdout
    assert "demo: rules fired: someone-joined 3x" in result.stdout
    assert "demo: actions: 3 ok, 0 failed" in result.stdout


def test_demo_sends_ones_own_events_to_rules_with_their_own_zoom_section(tmp_path: Path) -> None:
    fired = tmp_path / "fired.jsonl"
    # Credentials written in the file: the simulator accepts them.
    text = USER_RULES.format(log=fired).replace("${ZOOM_CLIENT_ID}", "literal-id")
    rules = write_rules(tmp_path, text)
    events = tmp_path / "mine.jsonl"
    started = example("meeting.started")
    started["payload"]["object"]["topic"] = "Mine"
    events.write_text(orjson.dumps(started).decode() + "\n")
    result = run_cli("demo", "-c", rules, "--events", events, env=clean_env())
    assert result.returncode == 0, result.stderr
    got = records(fired)
    assert [r["event"]["payload"]["object"]["topic"] for r in got] == ["Mine"]
    assert "1 event(s) to send" in result.stdout


def test_demo_with_broken_rules_prints_every_problem_and_exits_2(tmp_path: Path) -> None:
    rules = write_rules(
        tmp_path,
        """
        [[rule]]
        name = "broken"
        on   = ["meeting.started"]
        when = "payload.object.(("

          [[rule.action]]
          type = "no_such_action"
        """,
    )
    result = run_cli("demo", "-c", rules, env=clean_env())
    assert result.returncode == 2
    assert "2 problems in the configuration" in result.stderr
    assert f"{rules}:4: rule 'broken', key 'when'" in result.stderr
    assert "unknown action type 'no_such_action'" in result.stderr
    assert "demo: simulator on" not in result.stdout


def test_demo_refuses_subscriptions_it_cannot_reach(tmp_path: Path) -> None:
    rules = write_rules(
        tmp_path,
        """
        [zoom]
        client_id     = "${ZOOM_CLIENT_ID}"
        client_secret = "${ZOOM_CLIENT_SECRET}"

          [[zoom.subscription]]
          name     = "elsewhere"
          endpoint = "wss://ws.zoom.us/ws?subscriptionId=real"

        [[rule]]
        name = "r"
        on   = ["meeting.started"]
          [[rule.action]]
          type = "log"
        """,
    )
    result = run_cli("demo", "-c", rules, env=clean_env())
    assert result.returncode == 2
    assert "[[zoom.subscription]] 'elsewhere', key 'endpoint'" in result.stderr


# -- the feed, in process ------------------------------------------------------


def test_event_files_may_be_json_lines_an_object_or_an_array() -> None:
    one, two = example("meeting.started"), example("meeting.ended")
    lines = b"\n".join(orjson.dumps(e) for e in (one, two))
    assert parse_events(lines, "f") == ([one, two], [])
    assert parse_events(orjson.dumps(one, option=orjson.OPT_INDENT_2), "f") == ([one], [])
    assert parse_events(orjson.dumps([one, two]), "f") == ([one, two], [])
    assert parse_events(b'[{"event": "a"}, {"x": 1}]', "f")[1] == [
        "f: event #2: event object has no string 'event' name"
    ]
    assert parse_events(b"", "f") == ([], [])


async def test_the_feed_stamps_every_event_and_takes_names_in_turn() -> None:
    events = builtin_events()
    async with Simulator() as sim:
        feed = EventFeed(sim, events)
        dropped = await feed.send_next(via="test")
        assert not dropped.delivered and feed.dropped == 1
        token = sim.issue_token()
        async with connect(f"{sim.ws_endpoint}&access_token={token}") as ws:
            await ws.recv()  # build_connection
            await sim.wait_connected()
            first = await feed.send_named("meeting.participant_joined", via="test")
            second = await feed.send_named("meeting.participant_joined", via="test")
            frames = [orjson.loads(orjson.loads(await ws.recv())["content"]) for _ in range(2)]
    assert (first.index, second.index) == (2, 3)
    assert [f["payload"] for f in frames] == [events[2]["payload"], events[3]["payload"]]
    assert frames[0]["event_ts"] < frames[1]["event_ts"]
    assert (feed.sent, feed.delivered, feed.dropped) == (3, 2, 1)


async def test_the_schedule_without_loop_goes_through_once() -> None:
    events = [example("meeting.started"), example("meeting.ended")]
    async with Simulator() as sim:
        feed = EventFeed(sim, events)
        token = sim.issue_token()
        async with connect(f"{sim.ws_endpoint}&access_token={token}") as ws:
            await ws.recv()
            with anyio.fail_after(TIMEOUT):
                await feed.run_schedule(0.01, loop=False)
            names = [orjson.loads(orjson.loads(await ws.recv())["content"])["event"] for _ in "ab"]
    assert names == ["meeting.started", "meeting.ended"]
    assert feed.schedule_done and feed.sent == 2


# -- the documentation ---------------------------------------------------------


def test_the_getting_started_commands_parse() -> None:
    """Every `zoomrules demo`/`simulate` command the guide shows is one the CLI takes."""
    import re

    from engine.cli import COMMANDS, build_parser

    guide = (Path(__file__).resolve().parents[1] / "docs" / "getting-started.md").read_text()
    blocks = re.findall(r"^ *```sh\n(.*?)^ *```", guide, re.S | re.M)
    commands = [
        line.strip()
        for block in blocks
        for line in block.splitlines()
        if line.strip().startswith(("zoomrules simulate", "zoomrules demo"))
    ]
    assert "zoomrules simulate --env-file sim.env" in commands
    assert "zoomrules demo -c rules.toml" in commands
    parser = build_parser()
    for command in commands:
        parser.parse_args(shlex.split(command)[1:])
    section = guide[guide.index("## 5. Try your rules locally") : guide.index("## 6. Run")]
    assert "set -a; . ./sim.env; set +a" in section  # what the env-file test above runs
    helps = ""
    for command in COMMANDS:
        if command.name in ("simulate", "demo"):
            sub = argparse.ArgumentParser()
            command.add_arguments(sub)
            helps += sub.format_help()
    for option in re.findall(r"`(--[a-z-]+)", section):
        assert option in helps, option
