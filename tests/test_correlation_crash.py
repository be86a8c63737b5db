"""Temporal rules in a real `zoomrules run` process against the simulator:
SIGKILL at the moment each form fires neither loses nor repeats the firing,
and an absence whose deadline falls while the daemon is stopped fires once
at the next start, marked late (and marked as a gap when the downtime was
one).

Time here is the wall clock of a real process: windows are a couple of
seconds long, and the tests wait for what the daemon does (its journal, the
requests its actions make), never for a fixed time.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Any

import anyio
import pytest
from conftest import example, write_rules
from daemon_process import DaemonProcess, daemon_process, poll_until
from http_target import IDEMPOTENCY_HEADER, Target
from test_journal_support import JournalView, daemon_env

from engine.simulator import Simulator

WINDOW = 2.0  # seconds: the absence's window


def _rules(target: str, *, gap_threshold: str = "10s") -> str:
    def action() -> str:
        # The path says what the firing saw; the key is the firing's own.
        return f"""
  [[rule.action]]
  type = "http"
  url = "{target}/{{{{ zoomrules.rule }}}}/gap-{{{{ zoomrules.gap || `false` }}}}/late-{{{{ to_string(zoomrules.late_by > `0.5`) }}}}"
  headers = {{ {IDEMPOTENCY_HEADER} = "{{{{ zoomrules.correlation_id }}}}" }}
  json = {{ key = "{{{{ zoomrules.key }}}}" }}
  retries = 5
"""

    return f"""
version = 1

[zoom]
client_id     = "${{ZOOM_CLIENT_ID}}"
client_secret = "${{ZOOM_CLIENT_SECRET}}"
endpoint      = "${{ZOOM_WS_ENDPOINT}}"
heartbeat_interval = "200ms"
gap_threshold = "{gap_threshold}"

[engine]
state_dir = "/nonexistent/overridden/by/ZOOMRULES_STATE_DIR"
retry_backoff = "10ms"
retry_backoff_cap = "50ms"
shutdown_grace = "1s"

[[rule]]
name = "host-missing"
on   = "meeting.started"
key  = "payload.object.uuid"
unless = {{ on = "meeting.participant_joined", within = "{WINDOW}s", grace = "0s" }}
{action()}

[[rule]]
name = "recorded"
on   = "meeting.ended"
key  = "payload.object.uuid"
then = {{ on = "recording.completed", within = "1h" }}
{action()}

[[rule]]
name = "waits"
on    = "meeting.participant_jbh_waiting"
key   = "payload.object.participant.id"
count = {{ times = 3, within = "10m" }}
{action()}
"""


def _now_ms() -> int:
    return round(time.time() * 1000)


def _event(name: str, at_ms: int, **fields: Any) -> dict[str, Any]:
    body = example(name)
    body["event_ts"] = at_ms
    body["payload"]["object"].update(fields)
    return body


def _opening(form: str, at_ms: int) -> list[dict[str, Any]]:
    """What opens a correlation of `form` without firing it."""
    if form == "absence":
        return [_event("meeting.started", at_ms, uuid="m1")]
    if form == "sequence":
        return [_event("meeting.ended", at_ms, uuid="m1")]
    participant = {"id": "p1", "user_name": "Riley Park", "customer_key": "349589LkJyeW"}
    return [
        _event("meeting.participant_jbh_waiting", at_ms + i, participant=participant)
        for i in range(2)
    ]


def _completing(form: str, at_ms: int) -> list[dict[str, Any]]:
    """What makes a sequence or a count fire (an absence fires by itself)."""
    if form == "sequence":
        return [_event("recording.completed", at_ms, uuid="m1")]
    participant = {"id": "p1", "user_name": "Riley Park", "customer_key": "349589LkJyeW"}
    return [_event("meeting.participant_jbh_waiting", at_ms + 2, participant=participant)]


RULE = {"absence": "host-missing", "sequence": "recorded", "count": "waits"}


def _writer_pid(daemon: DaemonProcess) -> int:
    """The journal's writer process, a child of the daemon."""
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        if ppid == daemon.pid and b"engine.journal.sqlite" in cmdline:
            return int(entry)
    raise AssertionError("no journal writer process")


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("form", "commit"),
    [
        ("absence", "committed"),
        # The writer stopped just before the deadline: the firing's job and the
        # correlation's end are not committed when the daemon dies.
        ("absence", "not committed"),
        ("sequence", "committed"),
        ("count", "committed"),
    ],
)
async def test_sigkill_as_a_temporal_rule_fires_neither_loses_nor_repeats_the_firing(
    tmp_path: Path, form: str, commit: str
) -> None:
    state = tmp_path / "state"
    view = JournalView(state)
    async with Simulator() as sim, Target().serve() as target:
        rules = write_rules(tmp_path, _rules(target.url))
        async with daemon_process(["run", "-c", str(rules)], daemon_env(sim, state)) as daemon:
            await sim.wait_connected(timeout=30)
            opened_at = _now_ms()
            await sim.send_events(_opening(form, opened_at))
            await poll_until(lambda: view.scalar("SELECT COUNT(*) FROM correlations") == 1)
            target.stall()  # the firing's request is held: the kill lands while it runs
            writer: int | None = None
            if commit == "not committed":
                writer = _writer_pid(daemon)
                os.kill(writer, signal.SIGSTOP)
            if form != "absence":
                await sim.send_events(_completing(form, _now_ms()))
            await poll_until(lambda: target.received >= 1, timeout=WINDOW + 20)
            await daemon.kill()
            if writer is not None:
                os.kill(writer, signal.SIGKILL)
            if commit == "not committed":
                assert view.scalar("SELECT COUNT(*) FROM jobs") == 0
                assert view.scalar("SELECT COUNT(*) FROM correlations") == 1
            target.release()

            await daemon.start()
            await poll_until(
                lambda: view.scalar("SELECT COUNT(*) FROM jobs WHERE state = 'done'") == 1
            )
            # Once more, cleanly: nothing is left to fire.
            assert await daemon.stop() == 0
            await daemon.start()
            await sim.wait_connected(timeout=30)
            assert await daemon.stop() == 0

    rule = RULE[form]
    jobs = view.query("SELECT rule, state, firing_key FROM jobs")
    assert [(r, s) for r, s, _ in jobs] == [(rule, "done")]
    (key,) = {k for _, _, k in jobs}
    # Every delivery (the one the kill cut short, the one after the restart)
    # carried the firing's one idempotency key.
    assert {k for _, k in target.counts} == {key}
    assert {p.split("/")[1] for p, _ in target.counts} == {rule}
    assert view.scalar("SELECT COUNT(*) FROM correlations") == 0


@pytest.mark.anyio
@pytest.mark.parametrize(("gap_threshold", "gap"), [("1h", "false"), ("0s", "true")])
async def test_an_absence_due_while_the_daemon_is_stopped_fires_once_at_the_next_start(
    tmp_path: Path, gap_threshold: str, gap: str
) -> None:
    state = tmp_path / "state"
    view = JournalView(state)
    async with Simulator() as sim, Target().serve() as target:
        rules = write_rules(tmp_path, _rules(target.url, gap_threshold=gap_threshold))
        async with daemon_process(["run", "-c", str(rules)], daemon_env(sim, state)) as daemon:
            await sim.wait_connected(timeout=30)
            opened_at = _now_ms()
            await sim.send_events(_opening("absence", opened_at))
            await poll_until(lambda: view.scalar("SELECT COUNT(*) FROM correlations") == 1)
            assert await daemon.stop() == 0
            assert target.received == 0
            deadline = opened_at / 1000 + WINDOW
            # Stopped across the deadline, and a little more (so it is late).
            await poll_until(lambda: time.time() > deadline + 1.0, timeout=WINDOW + 10)
            await daemon.start()
            await poll_until(
                lambda: view.scalar("SELECT COUNT(*) FROM jobs WHERE state = 'done'") == 1
            )
            assert await daemon.stop() == 0
            await daemon.start()
            await sim.wait_connected(timeout=30)
            assert await daemon.stop() == 0

    # With a threshold of 0 s the restart's downtime was a gap, and it
    # overlapped the window: marked. Under the threshold it was no gap.
    assert list(target.counts) == [(f"/host-missing/gap-{gap}/late-true", target_key(view))]
    assert sum(target.counts.values()) == 1
    assert view.scalar("SELECT COUNT(*) FROM correlations") == 0


def target_key(view: JournalView) -> str:
    return str(view.scalar("SELECT firing_key FROM jobs"))


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("refused", "gap_threshold", "gap"),
    [
        # Down for 3 s across the deadline, longer than the 1 s threshold: a gap.
        (3.0, "1s", "true"),
        # Down across the deadline, under the threshold: no gap; the absence
        # waits to know that, then fires (late: the connection was back a second after).
        (1.0, "30s", "false"),
    ],
)
async def test_an_absence_due_while_the_connection_is_down_knows_whether_it_was_a_gap(
    tmp_path: Path, refused: float, gap_threshold: str, gap: str
) -> None:
    from engine.daemon import Daemon
    from engine.loader import load_rules

    state = tmp_path / "state"
    view = JournalView(state)
    async with Simulator() as sim, Target().serve() as target:
        rules = write_rules(tmp_path, _rules(target.url, gap_threshold=gap_threshold))
        env = daemon_env(sim, state)
        daemon = Daemon([rules], load_rules([rules], env=env), env=env, handle_signals=False)
        async with anyio.create_task_group() as tg:
            tg.start_soon(daemon.run)
            await sim.wait_connected(timeout=20)
            opened_at = _now_ms()
            await sim.send_events(_opening("absence", opened_at))
            await poll_until(lambda: view.scalar("SELECT COUNT(*) FROM correlations") == 1)
            # Down from now until after the deadline.
            down_for = opened_at / 1000 + WINDOW - time.time() + refused
            sim.refuse_connections(seconds=down_for)
            await sim.drop(1011, "maintenance")
            await sim.wait_connected(count=2, timeout=20)
            await poll_until(lambda: sum(target.counts.values()) == 1, timeout=20)
            daemon.stop()
    ((path, _),) = target.counts
    assert path == f"/host-missing/gap-{gap}/late-{'true' if gap == 'false' else 'false'}"
