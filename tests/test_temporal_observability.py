"""Temporal rules seen from outside: `/metrics` and the status page show
each rule's open correlations and its next deadline, in a real daemon fed
by the simulator."""

from __future__ import annotations

import re
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import anyio
import httpx
import pytest
from conftest import example
from daemon_process import simulator_env
from prometheus_client.parser import text_string_to_metric_families

from engine.daemon import Daemon
from engine.loader import load_rules
from engine.simulator import Simulator

pytestmark = pytest.mark.anyio

HEAD = """
version = 1
[zoom]
client_id = "${ZOOM_CLIENT_ID}"
client_secret = "${ZOOM_CLIENT_SECRET}"
endpoint = "${ZOOM_WS_ENDPOINT}"
[engine]
state_dir = "${ZOOMRULES_STATE_DIR}"
[http]
listen = "127.0.0.1:0"
"""

TEMPORAL = """
[[rule]]
name = "host-not-joined"
on = "meeting.started"
key = "payload.object.uuid"
unless = { on = "meeting.participant_joined", within = "1h" }
  [[rule.action]]
  type = "print"
  message = "no host"
"""

PLAIN = """
[[rule]]
name = "plain"
on = ["meeting.ended"]
  [[rule.action]]
  type = "print"
  message = "ended"
"""


@dataclass
class Running:
    daemon: Daemon
    sim: Simulator
    client: httpx.AsyncClient


@asynccontextmanager
async def running(tmp_path: Path, text: str = HEAD + TEMPORAL + PLAIN) -> AsyncIterator[Running]:
    async with Simulator() as sim:
        rules = tmp_path / "rules.toml"
        rules.write_text(text)
        env = simulator_env(sim, tmp_path / "state")
        daemon = Daemon([rules], load_rules([rules], env=env), env=env, handle_signals=False)
        async with anyio.create_task_group() as tg:
            tg.start_soon(daemon.run)
            server = await daemon.wait_serving()
            await sim.wait_connected(timeout=20)
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{server.port}") as client:
                try:
                    yield Running(daemon, sim, client)
                finally:
                    daemon.stop()


def started(uuid: str) -> dict[str, object]:
    body = example("meeting.started")
    body["payload"]["object"]["uuid"] = uuid
    # Now: the example's own time is long past, and its deadline with it.
    body["event_ts"] = int(time.time() * 1000)
    return body


async def open_correlations(daemon: Daemon, count: int) -> None:
    with anyio.fail_after(20):
        while (correlations := daemon.correlations) is None or len(correlations) < count:  # noqa: ASYNC110 - no event to wait on
            await anyio.sleep(0.02)


async def scrape(client: httpx.AsyncClient) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    response = await client.get("/metrics")
    assert response.status_code == 200
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


async def test_metrics_show_open_correlations_and_the_next_deadline(tmp_path: Path) -> None:
    async with running(tmp_path) as run:
        before = time.time()
        for uuid in ("uuid-one==", "uuid-two=="):
            await run.sim.send_event(started(uuid))
        await open_correlations(run.daemon, 2)
        samples = await scrape(run.client)
        rule = (("rule", "host-not-joined"),)
        assert samples[("zoomrules_correlations_open", rule)] == 2
        assert samples[("zoomrules_correlations_opened_total", rule)] == 2
        deadline = samples[("zoomrules_correlations_next_deadline_timestamp_seconds", ())]
        # An hour (and the grace) after the events' own time.
        assert before + 3600 - 60 < deadline < time.time() + 3600 + 60
        # A rule that is not temporal has no such series.
        assert ("zoomrules_correlations_open", (("rule", "plain"),)) not in samples


async def test_the_status_page_lists_temporal_rules(tmp_path: Path) -> None:
    async with running(tmp_path) as run:
        await run.sim.send_event(started("uuid-page=="))
        await open_correlations(run.daemon, 1)
        html = (await run.client.get("/")).text
        start = html.index('<section id="temporal">')
        temporal = html[start : html.index("</section>", start)]
        row = re.search(r"<tr><td><code>host-not-joined</code></td>(.*?)</tr>", temporal)
        assert row is not None, temporal
        cells = re.findall(r"<td>(.*?)</td>", row.group(1))
        assert cells[0] == "absence"
        assert cells[1] == "1"
        assert re.search(r">in (59 min|1 h 0 min)<", cells[2]), cells[2]
        assert "<code>plain</code>" not in temporal


async def test_no_temporal_section_without_temporal_rules(tmp_path: Path) -> None:
    """Without a temporal rule the page has no such section and /metrics
    no open-correlation series (the figures exist, empty)."""
    async with running(tmp_path, HEAD + PLAIN) as run:
        await run.sim.send_event(example("meeting.started"))
        html = (await run.client.get("/")).text
        assert 'id="temporal"' not in html
        samples = await scrape(run.client)
        assert not [key for key in samples if key[0].startswith("zoomrules_correlations_")]
