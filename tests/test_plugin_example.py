"""The example plugin package of docs/plugins.md, installed for real.

The package is pip-installed into a temporary directory (no virtualenv),
then the real CLI runs with PYTHONPATH pointing there: the `zoomrules`
entry point must be discovered, `check` must apply the plugin's parameter
checks, `test` must render its action and `replay` must run it against a
local stand-in for PagerDuty's Events API on 127.0.0.1.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from conftest import ROOT, cli_env, example, run_cli, write_rules

from engine.events import Event

PACKAGE = ROOT / "docs" / "examples" / "zoomrules-pagerduty"
ROUTING_KEY = "R0UT1NGKEY0123456789abcdefABCDEF"
assert len(ROUTING_KEY) == 32


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    target = tmp_path_factory.mktemp("site")
    # Build from a copy: setuptools writes build/ and *.egg-info next to the sources.
    copy = tmp_path_factory.mktemp("build") / PACKAGE.name
    shutil.copytree(
        PACKAGE, copy, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__")
    )
    result = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(target),
         str(copy)],
        capture_output=True, text=True, timeout=300, cwd=copy.parent,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert (target / "zoomrules_pagerduty" / "__init__.py").exists()
    return target


class PagerDutyStandIn:
    """Records Events API requests; answers 202 like PagerDuty."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        stand_in = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                length = int(self.headers["Content-Length"])
                stand_in.requests.append(
                    {"path": self.path, "body": json.loads(self.rfile.read(length))}
                )
                reply = b'{"status":"success","message":"Event processed"}'
                self.send_response(202)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/v2/enqueue"


@pytest.fixture
def pagerduty() -> Iterator[PagerDutyStandIn]:
    stand_in = PagerDutyStandIn()
    thread = threading.Thread(target=stand_in.server.serve_forever, daemon=True)
    thread.start()
    yield stand_in
    stand_in.server.shutdown()
    stand_in.server.server_close()
    thread.join()


def rules_text(url: str = "https://events.pagerduty.com/v2/enqueue", engine: str = "") -> str:
    return (
        engine
        + f"""
[[rule]]
name = "long-meeting"
on = ["meeting.ended"]
when = "minutes_between(payload.object.start_time, payload.object.end_time) > `30`"

  [[rule.action]]
  type = "pagerduty"
  routing_key = "${{PAGERDUTY_ROUTING_KEY}}"
  summary = "{{{{ payload.object.topic }}}} ran {{{{ minutes_between(payload.object.start_time, payload.object.end_time) }}}} minutes"
  severity = "warning"
  details = {{ meeting = "{{{{ payload.object.id }}}}", host = "{{{{ payload.object.host_id }}}}" }}
  url = "{url}"

  [[rule.action]]
  type = "log"
  path = "{{{{ zoomrules.rule }}}}.jsonl"
"""
    )


def env_with(path: Path | None) -> dict[str, str]:
    extra = {"PAGERDUTY_ROUTING_KEY": ROUTING_KEY}
    if path is not None:
        extra["PYTHONPATH"] = str(path)
    return cli_env(**extra)


def test_installed_package_is_discovered_through_its_entry_point(site: Path) -> None:
    dist_info = next(site.glob("zoomrules_pagerduty-*.dist-info"))
    assert (
        "[zoomrules]\npagerduty = zoomrules_pagerduty"
        in (dist_info / "entry_points.txt").read_text()
    )
    result = run_cli("plugins", "-c", site / "none.toml", env=env_with(site))
    assert result.returncode == 0, result.stderr
    assert "  pagerduty  (plugin pagerduty)  Trigger a PagerDuty incident" in result.stdout
    assert "      routing_key: string, required" in result.stdout
    assert "      severity: string, default 'error'" in result.stdout
    assert "  minutes_between()  (plugin pagerduty)" in result.stdout
    # Without the package on the path, neither is there.
    bare = run_cli("plugins", "-c", site / "none.toml", env=env_with(None))
    assert bare.returncode == 0
    assert "pagerduty" not in bare.stdout


def test_check_applies_the_plugins_parameter_checks(site: Path, tmp_path: Path) -> None:
    good = write_rules(tmp_path, rules_text(), "good.toml")
    result = run_cli("check", "-c", good, env=env_with(site))
    assert result.returncode == 0, result.stderr
    bad = write_rules(
        tmp_path,
        rules_text().replace('severity = "warning"', 'severity = "sev1"\n  sumary = "x"'),
        "bad.toml",
    )
    env = env_with(site)
    env["PAGERDUTY_ROUTING_KEY"] = "too-short"
    result = run_cli("check", "-c", bad, env=env)
    assert result.returncode == 2
    err = result.stderr
    assert f"{bad}:10: rule 'long-meeting', key 'action[1].severity': must be one of" in err
    assert f"{bad}:11: rule 'long-meeting', key 'action[1].sumary': unknown parameter" in err
    assert "(did you mean 'summary'?)" in err


def test_test_renders_the_plugin_action(site: Path, tmp_path: Path) -> None:
    rules = write_rules(tmp_path, rules_text())
    body = example("meeting.ended")  # 17:00 -> 17:55
    result = run_cli(
        "test", "-c", rules, "--json", "--show-secrets", "-",
        input=json.dumps(body), env=env_with(site),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    assert doc["fired"][0]["actions"][0] == {
        "type": "pagerduty",
        "params": {
            "routing_key": ROUTING_KEY,
            "summary": "Weekly project sync ran 55.0 minutes",
            "severity": "warning",
            "source": "zoom",
            "dedup_key": Event.from_body(body, source="").id,
            "details": {"meeting": "85746065432", "host": "z8yCxjabcdEFGHfp8uQ"},
            "url": "https://events.pagerduty.com/v2/enqueue",
        },
    }
    # Without --show-secrets, the routing key (from ${PAGERDUTY_ROUTING_KEY}) is masked.
    masked = run_cli("test", "-c", rules, "--json", "-", input=json.dumps(body), env=env_with(site))
    assert json.loads(masked.stdout)["fired"][0]["actions"][0]["params"]["routing_key"] == "***"
    short = example("meeting.ended")
    short["payload"]["object"]["end_time"] = "2026-02-05T17:20:00Z"
    result = run_cli(
        "test", "-c", rules, "--json", "-", input=json.dumps(short), env=env_with(site)
    )
    assert json.loads(result.stdout)["fired"] == []


def test_replay_runs_the_plugin_action(
    site: Path, tmp_path: Path, pagerduty: PagerDutyStandIn
) -> None:
    rules = write_rules(tmp_path, rules_text(pagerduty.url))
    ended = example("meeting.ended")
    lines = [json.dumps(ended), json.dumps(example("meeting.started"))]
    result = run_cli(
        "replay", "-c", rules, "-", input="\n".join(lines), env=env_with(site), cwd=tmp_path
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "actions: 2 ok, 0 failed" in result.stdout
    assert len(pagerduty.requests) == 1
    request = pagerduty.requests[0]
    assert request["path"] == "/v2/enqueue"
    assert request["body"] == {
        "routing_key": ROUTING_KEY,
        "event_action": "trigger",
        "dedup_key": Event.from_body(ended, source="").id,
        "payload": {
            "summary": "Weekly project sync ran 55.0 minutes",
            "source": "zoom",
            "severity": "warning",
            "component": "meeting.ended",
            "custom_details": {"meeting": "85746065432", "host": "z8yCxjabcdEFGHfp8uQ"},
        },
    }
    # The second action ran after the first (its file is named by a template).
    assert (tmp_path / "long-meeting.jsonl").exists()


def test_engine_plugins_setting_loads_a_module_without_entry_point(
    tmp_path: Path, pagerduty: PagerDutyStandIn
) -> None:
    # Just the module on PYTHONPATH: importable, but no dist-info, so no entry point.
    source = tmp_path / "src"
    shutil.copytree(
        PACKAGE / "src" / "zoomrules_pagerduty",
        source / "zoomrules_pagerduty",
        ignore=shutil.ignore_patterns("__pycache__"),
    )
    with_module = write_rules(
        tmp_path,
        rules_text(pagerduty.url, engine='[engine]\nplugins = ["zoomrules_pagerduty"]\n'),
        "with.toml",
    )
    without = write_rules(tmp_path, rules_text(pagerduty.url), "without.toml")
    refused = run_cli("check", "-c", without, env=env_with(source))
    assert refused.returncode == 2
    assert "unknown action type 'pagerduty'" in refused.stderr
    assert "unknown function: minutes_between()" in refused.stderr
    ok = run_cli("check", "-c", with_module, env=env_with(source))
    assert ok.returncode == 0, ok.stderr
    result = run_cli(
        "replay", "-c", with_module, "-", input=json.dumps(example("meeting.ended")),
        env=env_with(source), cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert len(pagerduty.requests) == 1
    # A module that does not exist is a clear error.
    missing = write_rules(
        tmp_path, rules_text(engine='[engine]\nplugins = ["no_such_plugin"]\n'), "missing.toml"
    )
    result = run_cli("check", "-c", missing, env=env_with(source))
    assert result.returncode == 2
    assert "cannot import plugin module 'no_such_plugin' from [engine] plugins" in result.stderr
