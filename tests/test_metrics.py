"""`/metrics`: the daemon's figures, scraped over HTTP while it runs against the simulator.

Each test runs the daemon in this process, makes something happen
(events, firings, a failing action target, a dropped connection, a
reload) and scrapes until the figures say so, parsing what it gets with
prometheus_client's own parser.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import anyio
import httpx
import pytest
from daemon_process import simulator_env
from http_target import Target
from prometheus_client.parser import text_string_to_metric_families
from test_journal_support import http_actions, meeting_events

from engine.daemon import Daemon
from engine.loader import load_rules, zoom_event_names
from engine.simulator import Simulator
from engine.sources.base import EVENT_NAMES_KEPT, OTHER_EVENTS, count_event
from engine.timings import Timings

pytestmark = pytest.mark.anyio

#: Samples by (sample name, sorted labels).
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def rules_text(target: str, *, extra: str = "") -> str:
    return f"""
version = 1
[zoom]
client_id = "${{ZOOM_CLIENT_ID}}"
client_secret = "${{ZOOM_CLIENT_SECRET}}"
endpoint = "${{ZOOM_WS_ENDPOINT}}"
heartbeat_interval = "0.5s"
[engine]
state_dir = "${{ZOOMRULES_STATE_DIR}}"
[http]
listen = "127.0.0.1:0"

[[rule]]
name = "call-out"
on = ["meeting.started", "made.up.by.the.rules"]
{http_actions(target, ["started"], "retries = 0")}

[[rule]]
name = "ended"
on = ["meeting.ended"]
  [[rule.action]]
  type = "print"
  message = "ended"
{extra}
"""


@dataclass
class Running:
    daemon: Daemon
    client: httpx.AsyncClient
    sim: Simulator
    target: Target
    rules: Path

    async def scrape(self) -> Samples:
        response = await self.client.get("/metrics")
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
        samples: Samples = {}
        for family in text_string_to_metric_families(response.text):
            for sample in family.samples:
                samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
        return samples

    async def wait_until(self, check: Callable[[Samples], bool], timeout: float = 20) -> Samples:
        """Scrape until `check` holds (the daemon gets there in its own time)."""
        samples: Samples = {}
        try:
            with anyio.fail_after(timeout):
                while not check(samples := await self.scrape()):  # noqa: ASYNC110
                    await anyio.sleep(0.05)
        except TimeoutError:
            shown = "\n".join(
                f"{k}: {v}" for k, v in sorted(samples.items()) if "zoomrules" in k[0]
            )
            raise AssertionError(f"the metrics never got there; last scrape:\n{shown}") from None
        return samples


def value(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, tuple(sorted(labels.items()))))


def labels_of(samples: Samples, name: str, label: str) -> set[str]:
    return {dict(key)[label] for (sample, key) in samples if sample == name}


@asynccontextmanager
async def running(tmp_path: Path, *, refuse: int = 0) -> AsyncIterator[Running]:
    async with Target().serve() as target, Simulator() as sim:
        if refuse:
            sim.refuse_connections(count=refuse)
        rules = tmp_path / "rules.toml"
        rules.write_text(rules_text(target.url))
        env = simulator_env(sim, tmp_path / "state")
        daemon = Daemon([rules], load_rules([rules], env=env), env=env, handle_signals=False)
        async with anyio.create_task_group() as tg:
            tg.start_soon(daemon.run)
            server = await daemon.wait_serving()
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{server.port}") as client:
                try:
                    if not refuse:
                        await sim.wait_connected(timeout=20)
                    yield Running(daemon, client, sim, target, rules)
                finally:
                    daemon.stop()


async def test_events_firings_and_action_outcomes_move_the_counters(tmp_path: Path) -> None:
    async with running(tmp_path) as run:
        before = await run.scrape()
        assert value(before, "zoomrules_build_info", version="0.1.0") == 1
        assert value(before, "zoomrules_rules") == 2
        assert value(before, "zoomrules_source_up", source="zoom:default") == 1
        assert value(before, "zoomrules_zoom_token_refreshes_total") == 1

        await run.sim.send_events(meeting_events(3))
        await run.sim.send_events(meeting_events(2, "meeting.ended"))
        ok = await run.wait_until(
            lambda s: value(s, "zoomrules_action_outcomes_total",
                            action="http", rule="call-out", outcome="ok") == 3
            and value(s, "zoomrules_jobs_finished_total", outcome="done") == 5
        )  # fmt: skip
        zoom = {"source": "zoom:default"}
        assert value(ok, "zoomrules_events_received_total", **zoom, event="meeting.started") == 3
        assert value(ok, "zoomrules_events_received_total", **zoom, event="meeting.ended") == 2
        assert value(ok, "zoomrules_events_processed_total") == 5
        assert value(ok, "zoomrules_rule_firings_total", rule="call-out") == 3
        assert value(ok, "zoomrules_rule_firings_total", rule="ended") == 2
        assert value(ok, "zoomrules_action_attempts_total", action="http", rule="call-out") == 3
        call_out = {"action": "http", "rule": "call-out"}
        assert value(ok, "zoomrules_action_duration_seconds_count", **call_out) == 3
        assert value(ok, "zoomrules_action_duration_seconds_bucket", **call_out, le="+Inf") == 3
        assert value(ok, "zoomrules_zoom_last_event_timestamp_seconds", **zoom) is not None
        assert value(ok, "zoomrules_journal_events_written_total") == 5
        assert value(ok, "zoomrules_journal_writable") == 1
        assert (value(ok, "zoomrules_journal_write_duration_seconds_count") or 0) >= 1
        assert (value(ok, "zoomrules_journal_size_bytes") or 0) > 0

        # The target fails: every action fails for good (no retries), a dead letter each.
        run.target.status = 500
        await run.sim.send_events(meeting_events(2, start=100))
        failed = await run.wait_until(
            lambda s: (
                value(s, "zoomrules_dead_letters_total") == 2
                and value(s, "zoomrules_jobs_finished_total", outcome="failed") == 2
            )
        )
        assert value(failed, "zoomrules_action_outcomes_total", **call_out, outcome="failed") == 2
        assert value(failed, "zoomrules_action_attempts_total", **call_out) == 5
        assert value(failed, "zoomrules_action_duration_seconds_count", **call_out) == 5

        # The same event again: dropped by the journal as a duplicate.
        await run.sim.send_events(meeting_events(1))
        await run.wait_until(lambda s: value(s, "zoomrules_events_duplicates_total") == 1)


async def test_pending_jobs_and_the_age_of_the_oldest(tmp_path: Path) -> None:
    async with running(tmp_path) as run:
        run.target.stall()
        await run.sim.send_events(meeting_events(4))
        stalled = await run.wait_until(lambda s: value(s, "zoomrules_jobs_pending") == 4)
        assert (value(stalled, "zoomrules_jobs_oldest_pending_age_seconds") or 0) > 0
        run.target.release()
        idle = await run.wait_until(lambda s: value(s, "zoomrules_jobs_pending") == 0)
        assert value(idle, "zoomrules_jobs_oldest_pending_age_seconds") == 0


async def test_a_dropped_connection_counts_as_a_disconnect_and_a_new_connection(
    tmp_path: Path,
) -> None:
    async with running(tmp_path) as run:
        zoom = {"source": "zoom:default"}
        await run.wait_until(
            lambda s: (value(s, "zoomrules_zoom_heartbeats_answered_total", **zoom) or 0) >= 1
        )
        live = run.sim.live
        assert live is not None and live.ws is not None
        await live.ws.close(1011, "server error")
        samples = await run.wait_until(
            lambda s: (
                value(s, "zoomrules_zoom_disconnects_total", **zoom) == 1
                and value(s, "zoomrules_zoom_connections_total", **zoom) == 2
                and value(s, "zoomrules_source_up", **zoom) == 1
            )
        )
        # Closed by Zoom right after connecting: what a second client does.
        assert value(samples, "zoomrules_zoom_kicks_total", **zoom) == 1
        assert value(samples, "zoomrules_zoom_last_heartbeat_answer_timestamp_seconds", **zoom)


async def test_refused_connections_count_and_the_daemon_is_not_ready(tmp_path: Path) -> None:
    async with running(tmp_path, refuse=1000) as run:
        zoom = {"source": "zoom:default"}

        def failures(samples: Samples) -> float:
            found = value(
                samples, "zoomrules_zoom_connect_failures_total", **zoom, stage="handshake"
            )
            return found or 0

        refused = await run.wait_until(lambda s: failures(s) >= 1)
        assert value(refused, "zoomrules_ready") == 0
        assert value(refused, "zoomrules_source_up", **zoom) == 0
        assert value(refused, "zoomrules_zoom_connections_total", **zoom) == 0
        # Each attempt counts.
        await run.wait_until(lambda s: failures(s) > failures(refused))


async def test_reloads_report_success_and_failure_as_alertmanager_names_them(
    tmp_path: Path,
) -> None:
    async with running(tmp_path) as run:
        start = await run.scrape()
        loaded_at = value(start, "zoomrules_config_last_reload_success_timestamp_seconds")
        assert value(start, "zoomrules_config_last_reload_successful") == 1
        assert loaded_at == run.daemon.started_at

        extra = '[[rule]]\nname = "third"\non = ["meeting.ended"]\n  [[rule.action]]\n  type = "print"\n  message = "x"'
        run.rules.write_text(rules_text(run.target.url, extra=extra))
        assert await run.daemon.reload()
        reloaded = await run.scrape()
        assert value(reloaded, "zoomrules_rules") == 3
        assert value(reloaded, "zoomrules_config_reloads_total", result="success") == 1
        assert value(reloaded, "zoomrules_config_last_reload_successful") == 1
        reloaded_at = value(reloaded, "zoomrules_config_last_reload_success_timestamp_seconds")
        assert reloaded_at == run.daemon.last_reload_at

        run.rules.write_text("version = 1\n[[rule]]\nname = 3\n")
        assert not await run.daemon.reload()
        failed = await run.scrape()
        assert value(failed, "zoomrules_config_last_reload_successful") == 0
        assert value(failed, "zoomrules_config_reloads_total", result="failure") == 1
        assert value(failed, "zoomrules_rules") == 3  # the previous rules stay
        # Still the time of the last reload that worked.
        assert (
            value(failed, "zoomrules_config_last_reload_success_timestamp_seconds") == reloaded_at
        )


async def test_event_names_from_zoom_never_make_unbounded_labels(tmp_path: Path) -> None:
    async with running(tmp_path) as run:
        made_up = [
            {"event": f"made.up.{index}", "event_ts": 1626230691572 + index, "payload": {}}
            for index in range(50)
        ]
        await run.sim.send_events(made_up)
        # Named in a rule's `on`: a label of its own, though Zoom has no such event.
        await run.sim.send_events(
            [{"event": "made.up.by.the.rules", "event_ts": 1626230691572, "payload": {}}]
        )
        zoom = {"source": "zoom:default"}
        samples = await run.wait_until(
            lambda s: value(s, "zoomrules_events_received_total", **zoom, event=OTHER_EVENTS) == 50
        )
        names = labels_of(samples, "zoomrules_events_received_total", "event")
        assert names == {OTHER_EVENTS, "made.up.by.the.rules"}
        assert value(samples, "zoomrules_events_received_total", **zoom, event="made.up.by.the.rules") == 1  # fmt: skip
        # No label anywhere takes a value from an event: every one is a name
        # of the configuration, a fixed word, or a bucket bound.
        configured = {"zoom:default", "call-out", "ended", "http", "print", "0.1.0"}
        fixed = {"ok", "failed", "done", "success", "failure", "handshake", "refused", OTHER_EVENTS}
        for (name, labels), _ in samples.items():
            if not name.startswith("zoomrules_"):
                continue
            for label, text in labels:
                if label == "le":
                    float(text)
                elif label == "event":
                    assert text in zoom_event_names() | {OTHER_EVENTS, "made.up.by.the.rules"}
                else:
                    assert text in configured | fixed, (name, label, text)


async def test_openmetrics_when_the_scraper_asks_for_it(tmp_path: Path) -> None:
    async with running(tmp_path) as run:
        response = await run.client.get(
            "/metrics", headers={"Accept": "application/openmetrics-text; version=1.0.0"}
        )
        assert response.headers["content-type"].startswith("application/openmetrics-text")
        assert response.text.endswith("# EOF\n")
        assert "# TYPE zoomrules_events_received counter" in response.text


def test_a_source_counts_a_bounded_number_of_event_names() -> None:
    counts: Counter[str] = Counter()
    for index in range(EVENT_NAMES_KEPT + 500):
        count_event(counts, f"made.up.{index}")
    count_event(counts, "made.up.0")  # known by now: still counted apart
    assert len(counts) == EVENT_NAMES_KEPT + 1
    assert counts[OTHER_EVENTS] == 500
    assert counts["made.up.0"] == 2


def test_timings_count_each_duration_in_the_first_bucket_that_holds_it() -> None:
    timings = Timings((0.1, 1.0))
    for seconds in (0.05, 0.1, 0.5, 1.0, 7.0):
        timings.observe(seconds)
    assert list(timings.cumulative()) == [(0.1, 2), (1.0, 4), (float("inf"), 5)]
    assert timings.count == 5
    assert timings.sum == pytest.approx(8.65)
    with pytest.raises(ValueError, match="increasing"):
        Timings((1.0, 0.5))
