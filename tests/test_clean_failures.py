"""Every fatal condition ends with one line and its documented exit status.

Statuses (docs/operations.md): 1 run-time failure, 2 invalid configuration
or usage, 3 credentials refused. Tracebacks only at `--log-level debug`.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
from conftest import run_cli
from daemon_process import daemon_process, simulator_env
from test_daemon import ZOOM, log_rule

import engine.cli
from engine.commands.base import EXIT_CREDENTIALS, EXIT_FAILURE, EXIT_INVALID, Command
from engine.simulator import Simulator

pytestmark = pytest.mark.anyio


def _final_line(output: list[str]) -> str:
    return [line for line in output if line.strip()][-1]


async def test_wrong_credentials_give_one_line_and_status_3(tmp_path: Path) -> None:
    rules = tmp_path / "rules.toml"
    rules.write_text(ZOOM + log_rule("x", "meeting.started", tmp_path / "x.jsonl"))
    async with Simulator() as sim:
        env = simulator_env(sim, tmp_path / "state", ZOOM_CLIENT_SECRET="not-the-secret")
        async with daemon_process(["run", "-c", str(rules)], env) as daemon:
            code = await daemon.wait_exit()
    assert code == EXIT_CREDENTIALS
    text = daemon.output()
    assert "Traceback" not in text and "ExceptionGroup" not in text
    last = _final_line(daemon.stderr)
    assert last.startswith("zoomrules: zoom:default: Zoom refused the OAuth token request")
    assert "client_id / client_secret" in last
    assert "not-the-secret" not in text
    assert len(sim.oauth_requests) == 1  # no retry storm


async def test_the_traceback_shows_only_at_debug(tmp_path: Path) -> None:
    rules = tmp_path / "rules.toml"
    rules.write_text(ZOOM + log_rule("x", "meeting.started", tmp_path / "x.jsonl"))
    async with Simulator() as sim:
        env = simulator_env(sim, tmp_path / "state", ZOOM_CLIENT_SECRET="not-the-secret")
        args = ["run", "-c", str(rules), "--log-level", "debug"]
        async with daemon_process(args, env) as daemon:
            assert await daemon.wait_exit() == EXIT_CREDENTIALS
    assert "Traceback" in daemon.output()


def test_run_without_zoom_exits_2_and_says_what_to_add(tmp_path: Path) -> None:
    rules = tmp_path / "rules.toml"
    rules.write_text(log_rule("x", "meeting.started", tmp_path / "x.jsonl"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("ZOOM")}
    env["ZOOMRULES_STATE_DIR"] = str(tmp_path / "state")
    done = run_cli("run", "-c", rules, env=env, timeout=60)
    assert done.returncode == EXIT_INVALID, done.stderr
    assert "[zoom]" in done.stderr and "ZOOM_WS_ENDPOINT" in done.stderr
    assert "Traceback" not in done.stderr


def test_run_without_zoom_and_half_an_environment_names_what_is_missing(tmp_path: Path) -> None:
    rules = tmp_path / "rules.toml"
    rules.write_text(log_rule("x", "meeting.started", tmp_path / "x.jsonl"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("ZOOM")}
    env.update(ZOOM_WS_ENDPOINT="wss://ws.zoom.us/ws?subscriptionId=x", ZOOM_CLIENT_ID="id")
    done = run_cli("run", "-c", rules, env=env, timeout=60)
    assert done.returncode == EXIT_INVALID
    assert "ZOOM_CLIENT_SECRET is not" in done.stderr


async def test_run_without_zoom_uses_the_environment(tmp_path: Path) -> None:
    fired = tmp_path / "fired.jsonl"
    rules = tmp_path / "rules.toml"
    rules.write_text(log_rule("x", "meeting.started", fired))
    async with Simulator() as sim:
        env = simulator_env(sim, tmp_path / "state")
        async with daemon_process(["run", "-c", str(rules)], env) as daemon:
            await sim.wait_connected(timeout=20)
            await daemon.stop()
    assert sim.accepted_connections == 1


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes anywhere")
def test_an_unusable_journal_exits_1_with_the_fix(tmp_path: Path) -> None:
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(stat.S_IRUSR | stat.S_IXUSR)
    rules = tmp_path / "rules.toml"
    rules.write_text(ZOOM + log_rule("x", "meeting.started", tmp_path / "x.jsonl"))
    env = {**os.environ, "ZOOM_CLIENT_ID": "a", "ZOOM_CLIENT_SECRET": "bbbbbbbb"}
    env.update(ZOOM_WS_ENDPOINT="ws://127.0.0.1:9/ws", ZOOMRULES_STATE_DIR=str(locked / "s"))
    done = run_cli("run", "-c", rules, env=env, timeout=60)
    assert done.returncode == EXIT_FAILURE
    assert "Fix:" in done.stderr and "Traceback" not in done.stderr


def test_a_bug_is_one_line_and_status_1_unless_debugging(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def broken(args: object) -> int:
        raise KeyError("something the code did not expect")

    commands = [
        Command("check", "broken", broken) if c.name == "check" else c for c in engine.cli.COMMANDS
    ]
    monkeypatch.setattr(engine.cli, "COMMANDS", commands)
    assert engine.cli.main(["check"]) == EXIT_FAILURE
    err = capsys.readouterr().err
    assert err.startswith("zoomrules: internal error: KeyError") and "Traceback" not in err
    assert engine.cli.main(["check", "--log-level", "debug"]) == EXIT_FAILURE
    assert "Traceback" in capsys.readouterr().err


def test_the_unit_does_not_restart_on_configuration_or_credentials() -> None:
    unit = (Path(__file__).resolve().parents[1] / "contrib" / "zoomrules.service").read_text()
    assert "RestartPreventExitStatus=2 3" in unit
