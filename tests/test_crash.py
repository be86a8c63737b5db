"""SIGKILL in the middle of a burst: after a restart nothing is lost, nothing finished repeats."""

from __future__ import annotations

import time
from pathlib import Path

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

BURST = 5000
#: Events of the burst whose uuid ends in 0 match: 500 jobs of two slow actions.
MATCHED = BURST // 10
UNMATCHED = 500


@pytest.mark.anyio
async def test_sigkill_mid_burst_loses_nothing_and_repeats_nothing_finished(
    tmp_path: Path,
) -> None:
    state = tmp_path / "state"
    # Two actions per job: a job killed between them resumes at the second.
    rules = write_rules(
        tmp_path,
        rules_text(
            "TARGET",
            paths=("a", "b"),
            engine='max_concurrency = 16\nshutdown_grace = "2s"',
            when="ends_with(payload.object.uuid, '0')",
        ),
    )
    async with Simulator() as sim, Target(delay=0.05).serve() as target:
        rules.write_text(rules.read_text().replace("TARGET", target.url))
        view = JournalView(state)
        async with daemon_process(
            ["run", "-c", str(rules)], daemon_env(sim, state), start=False
        ) as daemon:
            await daemon.start()
            await sim.wait_connected(timeout=30)
            burst = meeting_events(BURST)
            matched = [body for body in burst if body["payload"]["object"]["uuid"].endswith("0")]
            assert len(matched) == MATCHED
            noise = meeting_events(UNMATCHED, name="meeting.ended", start=BURST)
            # Hold the actions until the burst is journaled, so that the
            # kill below lands with most of them still to run.
            target.stall()
            assert await sim.send_events(burst + noise) == BURST + UNMATCHED

            # Kill once everything read is journaled and the actions are
            # well under way, but far from finished.
            await wait_until(lambda: view.events() == BURST + UNMATCHED, 30)
            target.release()
            await wait_until(lambda: sum(target.counts.values()) >= MATCHED // 2, 30)
            # ...and some have been complete for over a second (the "settled" ones below).
            await wait_until(lambda: time.monotonic() - min(target.completed.values()) > 1.5, 30)
            await daemon.kill()
            killed_at = time.monotonic()
            done_before_kill = sum(target.counts.values())
            assert done_before_kill < 2 * MATCHED, "the burst finished before the kill"
            assert view.jobs("pending") > 0

            await daemon.start()
            expected = {(f"/{path}", body_id) for path in ("a", "b") for body_id in _ids(matched)}
            await wait_until(lambda: expected <= set(target.counts), 60)
            assert await daemon.stop() == 0

    output = daemon.output()
    assert "resumed" in output
    # Every matched (event, action) pair ran at least once...
    missing = expected - set(target.counts)
    assert not missing
    assert set(target.counts) == expected  # ...and nothing unmatched ran.
    # ...and none that had completed a second before the kill ran again.
    settled = [key for key, at in target.completed.items() if at < killed_at - 1.0]
    assert settled, "no action had completed a second before the kill"
    repeated = [key for key in settled if target.counts[key] > 1]
    assert not repeated
    assert view.jobs("pending") == 0
    assert view.jobs("done") == MATCHED


def _ids(bodies: list[dict]) -> list[str]:
    from engine.events import event_id

    return [event_id(body) for body in bodies]
