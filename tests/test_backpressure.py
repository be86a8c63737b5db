"""A stalled action target: the socket keeps being read, heartbeats flow, memory stays bounded."""

from __future__ import annotations

from pathlib import Path

import psutil
import pytest
from daemon_process import daemon_process
from http_target import Target
from test_journal_support import (
    JournalView,
    daemon_env,
    meeting_events,
    rules_text,
    wait_until,
    write_rules,
)

from engine.simulator import Simulator

HEARTBEAT = 0.2
WARMUP = 2_000
FLOOD = 20_000
#: Events whose uuid ends in "00" match: 1%, so the test's HTTP side stays small.
WHEN = "ends_with(payload.object.uuid, '00')"


@pytest.mark.anyio
async def test_stalled_target_does_not_stall_the_listener(tmp_path: Path) -> None:
    state = tmp_path / "state"
    rules = write_rules(
        tmp_path,
        rules_text("TARGET", heartbeat=f"{HEARTBEAT}s", engine="max_concurrency = 4", when=WHEN),
    )
    async with Simulator() as sim, Target().serve() as target:
        rules.write_text(rules.read_text().replace("TARGET", target.url))
        view = JournalView(state)
        async with daemon_process(
            ["run", "-c", str(rules)], daemon_env(sim, state), start=False
        ) as daemon:
            await daemon.start()
            await sim.wait_connected(timeout=30)
            target.stall()
            await sim.send_events(meeting_events(WARMUP))
            await wait_until(lambda: view.events() == WARMUP, 30)
            # Every slot is now held by the stalled target.
            await wait_until(lambda: target.received >= 4, 30)
            rss_before = psutil.Process(daemon.pid).memory_info().rss

            beats = sim.heartbeats_received
            for start in range(WARMUP, WARMUP + FLOOD, 5_000):
                assert await sim.send_events(meeting_events(5_000, start=start)) == 5_000
            total = WARMUP + FLOOD
            # The listener kept reading: everything is journaled while no action can finish...
            await wait_until(lambda: view.events() == total, 60)
            # ...and well over three heartbeat intervals passed with heartbeats flowing.
            await sim.wait_heartbeats(beats + 5, timeout=30)
            assert len(target.counts) == 0
            assert view.scalar("SELECT COUNT(*) FROM events WHERE matched = 0") > 0
            rss_after = psutil.Process(daemon.pid).memory_info().rss
            assert sim.accepted_connections == 1  # never seen as a dead client
            assert rss_after - rss_before < 64 * 1024 * 1024, (rss_before, rss_after)

            target.release()
            matched = sum(1 for i in range(total) if f"uuid-{i}".endswith("00"))
            await wait_until(lambda: len(target.counts) == matched, 60)
            assert await daemon.stop() == 0
    assert set(target.counts.values()) == {1}
    assert view.jobs("done") == matched
