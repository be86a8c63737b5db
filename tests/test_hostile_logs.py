"""Logs under attack: no forged lines, no secrets at any level, no floods.

An attacker controls event data (names, topics, participant names) and can
repeat it as often as they like; an operator's secrets come from the
environment through `${VAR}`. Neither may show up in the logs as written:
control characters are escaped, secrets and URL paths masked, and lines
that one event can trigger are rate-limited with counts.
"""

from __future__ import annotations

import io
import json
import logging
import re
from pathlib import Path

import pytest
from conftest import cli_env, example, run_cli
from daemon_process import daemon_process, simulator_env
from http_target import Target
from test_daemon import ZOOM, wait_lines
from test_journal_support import wait_until

from engine.logs import LogLimiter, configure_logging, escape_controls
from engine.redact import clear_secrets, mask_urls, redact_value, register_secret
from engine.simulator import Simulator

pytestmark = pytest.mark.anyio

FORGED = "\n2026-12-05 14:00:00.000 CRITICAL zoomrules.daemon: the disk is on fire"
#: The shape of a log line's start; a forged line would match it.
LINE_START = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3} ")


@pytest.fixture(autouse=True)
def _forget_secrets() -> None:
    clear_secrets()


# -- log forging ------------------------------------------------------------


def test_control_characters_are_escaped_in_text_logs() -> None:
    stream = io.StringIO()
    handler = configure_logging("INFO", "text", stream=stream)
    try:
        logging.getLogger("zoomrules.test").warning(
            "event %s arrived",
            "meeting.started" + FORGED + "\r\x1b[31mred\u2028next",
            extra={"event": "x" + FORGED},
        )
    finally:
        logging.getLogger().removeHandler(handler)
    out = stream.getvalue()
    assert out.count("\n") == 1, out  # one record, one line
    assert "\\n2026-12-05" in out and "\\x1b" in out and "\\u2028" in out
    assert "CRITICAL" not in out.split(" ", 3)[2]


def test_tracebacks_keep_their_lines() -> None:
    stream = io.StringIO()
    handler = configure_logging("INFO", "text", stream=stream)
    try:
        try:
            raise ValueError("boom")
        except ValueError:
            logging.getLogger("zoomrules.test").exception("failed on %s", "a\nb")
    finally:
        logging.getLogger().removeHandler(handler)
    out = stream.getvalue()
    assert "failed on a\\nb" in out and "Traceback (most recent call last):\n" in out


def test_escape_controls_leaves_printable_text_alone() -> None:
    assert escape_controls("Zoom meeting ✓ é 会议") == "Zoom meeting ✓ é 会议"
    assert escape_controls("a\tb\nc") == "a\\tb\\nc"


async def test_a_forged_event_name_cannot_forge_a_daemon_log_line(tmp_path: Path) -> None:
    rules = tmp_path / "rules.toml"
    # A glob rule whose condition fails on the forged event: the daemon logs
    # the event's name (as it does for every condition error).
    rules.write_text(
        ZOOM
        + '[[rule]]\nname = "all"\non = ["*"]\nwhen = "abs(payload) > `1`"\n'
        + '[[rule.action]]\ntype = "log"\n'
    )
    async with Simulator() as sim:
        env = simulator_env(sim, tmp_path / "state")
        async with daemon_process(["run", "-c", str(rules)], env) as daemon:
            await sim.wait_connected(timeout=20)
            await sim.send_event({"event": "meeting.started" + FORGED, "payload": {}})
            await daemon.wait_log("condition of rule", timeout=20)
            await daemon.stop()
    for line in daemon.stderr:
        assert "the disk is on fire" not in line or not line.startswith("2026-12-05 14:00"), line
        if line.strip():
            assert LINE_START.match(line) or line.startswith((" ", "Traceback")), line


# -- floods -------------------------------------------------------------------------


def test_the_limiter_logs_a_burst_then_counts() -> None:
    now = [0.0]
    records: list[str] = []

    class Capture(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record.getMessage())

    logger = logging.getLogger("zoomrules.test.limiter")
    logger.addHandler(capture := Capture())
    logger.setLevel(logging.INFO)
    try:
        limiter = LogLimiter(logger, burst=3, window=60, clock=lambda: now[0])
        logged = [limiter.log(logging.INFO, "dup", "duplicate %d", i) for i in range(200_000)]
        assert sum(logged) == 3
        limiter.log(logging.INFO, "other", "another kind")
        now[0] = 61.0
        limiter.log(logging.INFO, "dup", "duplicate again")
    finally:
        logger.removeHandler(capture)
    assert records[:3] == ["duplicate 0", "duplicate 1", "duplicate 2"]
    assert records[3] == "another kind"
    assert records[4] == "duplicate again (199997 similar message(s) left out before this one)"


async def test_a_flood_of_duplicates_and_throttled_firings_logs_a_few_lines(
    tmp_path: Path,
) -> None:
    fired = tmp_path / "fired.jsonl"
    rules = tmp_path / "rules.toml"
    rules.write_text(
        ZOOM
        + '[[rule]]\nname = "limited"\non = ["meeting.started"]\n'
        + 'throttle = { key = "payload.object.id", limit = 1, per = "1h" }\n'
        + f'  [[rule.action]]\n  type = "log"\n  path = "{fired}"\n'
    )
    # One event delivered 300 times (duplicates), and 300 events of one
    # meeting (throttled after the first).
    same = example("meeting.started")
    meeting = [
        {**example("meeting.started"), "event_ts": 1_700_000_000_000 + i} for i in range(300)
    ]
    async with Simulator() as sim:
        env = simulator_env(sim, tmp_path / "state")
        async with daemon_process(["run", "-c", str(rules)], env) as daemon:
            await sim.wait_connected(timeout=20)
            await sim.send_events([same] * 300)
            await sim.send_events(meeting)
            await wait_lines(fired, 1)
            await daemon.wait_log("throttled", timeout=20)
            await daemon.stop()
    output = daemon.output()
    assert output.count("duplicate of event") <= 6
    assert output.count("throttled for key") <= 6


# -- secrets ----------------------------------------------------------------------------


HOOK_PATH = "/services/T0SECRET/B0SECRET/XXXXXXXXsecretpath"
TOKEN = "tok-3f9a7c1e5b2d4860a1f7"

HTTP_RULE = """
[[rule]]
name = "hook"
on = ["meeting.started"]
  [[rule.action]]
  type = "http"
  url = "${HOOK_URL}"
  headers = { Authorization = "Bearer ${HOOK_TOKEN}", x-idempotency-key = "{{ zoomrules.event_id }}" }
  json = { topic = "{{ payload.object.topic }}" }
"""


async def test_no_secret_in_debug_logs(tmp_path: Path) -> None:
    rules = tmp_path / "rules.toml"
    rules.write_text(ZOOM + HTTP_RULE)
    async with Simulator() as sim, Target().serve() as target:
        env = simulator_env(
            sim, tmp_path / "state", HOOK_URL=target.url + HOOK_PATH, HOOK_TOKEN=TOKEN
        )
        args = ["run", "-c", str(rules), "--log-level", "debug"]
        async with daemon_process(args, env) as daemon:
            await sim.wait_connected(timeout=20)
            await sim.send_event(example("meeting.started"))
            await wait_until(lambda: len(target.counts) == 1, 20)
            await daemon.stop()
    output = daemon.output()
    assert "HTTP Request" in output or "httpx" in output  # the client's own DEBUG lines were on
    for secret in (TOKEN, "T0SECRET", "secretpath", sim.client_secret, *sim.issued_tokens):
        assert secret not in output, secret


def test_test_json_masks_env_values_unless_asked(tmp_path: Path) -> None:
    rules = tmp_path / "rules.toml"
    rules.write_text(HTTP_RULE)
    event = tmp_path / "event.json"
    event.write_text(json.dumps(example("meeting.started")))
    env = cli_env(HOOK_URL="https://hooks.example.com" + HOOK_PATH, HOOK_TOKEN=TOKEN)
    masked = run_cli("test", "-c", rules, event, "--json", env=env)
    assert masked.returncode == 0, masked.stderr
    assert TOKEN not in masked.stdout and "secretpath" not in masked.stdout
    params = json.loads(masked.stdout)["fired"][0]["actions"][0]["params"]
    assert params["headers"]["Authorization"] == "***"
    shown = run_cli("test", "-c", rules, event, "--json", "--show-secrets", env=env)
    assert TOKEN in shown.stdout and HOOK_PATH in shown.stdout
    text = run_cli("test", "-c", rules, event, env=env)
    assert TOKEN not in text.stdout and "secretpath" not in text.stdout


def test_check_does_not_print_a_bad_apprise_url(tmp_path: Path) -> None:
    rules = tmp_path / "rules.toml"
    secret_url = "slack://T0SECRET/B0SECRET/notavalidtokenforslack"
    rules.write_text(
        '[notifiers]\nops = ["${OPS_URL}"]\n'
        '[[rule]]\nname = "n"\non = ["meeting.started"]\n'
        '  [[rule.action]]\n  type = "notify"\n  to = "${OPS_URL}"\n  body = "x"\n'
    )
    done = run_cli("check", "-c", rules, env=cli_env(OPS_URL=secret_url))
    assert "T0SECRET" not in done.stdout + done.stderr


def test_masking_helpers() -> None:
    register_secret("registered-secret-value")
    assert mask_urls("POST https://h.example/a/b?c=d ok") == "POST https://h.example/… ok"
    assert mask_urls("to slack://TokA/TokB/TokC failed") == "to slack://*** failed"
    assert mask_urls("http://127.0.0.1:80 up") == "http://127.0.0.1:80 up"
    assert redact_value(
        {"headers": {"authorization": "anything"}, "x": ["registered-secret-value!"]}
    ) == {"headers": {"authorization": "***"}, "x": ["***!"]}
