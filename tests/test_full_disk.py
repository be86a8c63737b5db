"""A full disk loses nothing silently: the journal holds, stops intake, resumes.

The disk is made full for the journal's writer process alone with a file-size
limit (RLIMIT_FSIZE, set on the running process with prlimit): every write
past it fails in the kernel (EFBIG), which SQLite reports as an I/O error,
exactly as it reports a full disk. Raising the limit again is space returning.
"""

from __future__ import annotations

import signal
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

pytestmark = pytest.mark.anyio

EVENTS = 400


def _writer(daemon_pid: int) -> psutil.Process:
    """The journal's writer process (`python -m engine.journal.sqlite DB`)."""
    for child in psutil.Process(daemon_pid).children():
        if "engine.journal.sqlite" in " ".join(child.cmdline()):
            return child
    raise AssertionError("no journal writer process")


def _limit_writes(process: psutil.Process, size: int) -> None:
    _, hard = process.rlimit(psutil.RLIMIT_FSIZE)
    process.rlimit(psutil.RLIMIT_FSIZE, (size, hard))


def _unlimit_writes(process: psutil.Process) -> None:
    _, hard = process.rlimit(psutil.RLIMIT_FSIZE)
    process.rlimit(psutil.RLIMIT_FSIZE, (hard, hard))


def _journal_size(state: Path) -> int:
    return max((state / name).stat().st_size for name in ("journal.db", "journal.db-wal"))


@pytest.fixture
def state(tmp_path: Path) -> Path:
    return tmp_path / "state"


async def test_full_disk_holds_events_stops_intake_and_resumes_with_nothing_lost(
    tmp_path: Path, state: Path
) -> None:
    # A small in-memory bound: intake stops well before EVENTS are read.
    engine = 'max_concurrency = 8\njournal_buffer = "64KiB"'
    rules = write_rules(tmp_path, rules_text("TARGET", heartbeat="1s", engine=engine))
    async with Simulator() as sim, Target().serve() as target:
        rules.write_text(rules.read_text().replace("TARGET", target.url))
        env = daemon_env(sim, state)
        view = JournalView(state)
        async with daemon_process(["run", "-c", str(rules)], env) as daemon:
            await sim.wait_connected(timeout=30)
            await sim.send_events(meeting_events(10))
            await wait_until(lambda: len(target.counts) == 10, 30)
            writer = _writer(daemon.pid)
            _limit_writes(writer, _journal_size(state) + 4096)

            assert await sim.send_events(meeting_events(EVENTS, start=10)) == EVENTS
            await daemon.wait_log("journal: cannot write", timeout=30)
            await daemon.wait_log("stopped taking events", timeout=30)
            # Nothing was dropped, and nothing beyond what the journal holds ran.
            assert "write failed" not in daemon.output()
            held_runs = len(target.counts)
            assert held_runs < 10 + EVENTS
            # The connection stays up while intake is stopped (heartbeats flow).
            beats = sim.heartbeats_received
            await sim.wait_heartbeats(beats + 2, timeout=30)
            assert daemon.process.returncode is None

            _unlimit_writes(writer)  # space returns
            await daemon.wait_log("journal: writing again", timeout=60)
            await wait_until(lambda: len(target.counts) == 10 + EVENTS, 120)
            assert await daemon.stop() == 0
    assert set(target.counts.values()) == {1}  # each event's action ran once
    assert view.events() == 10 + EVENTS
    assert view.jobs("done") == 10 + EVENTS
    assert sim.events_dropped == 0


async def test_stopping_while_the_disk_is_full_says_what_was_lost_and_fails(
    tmp_path: Path, state: Path
) -> None:
    rules = write_rules(tmp_path, rules_text("TARGET", heartbeat="1s"))
    async with Simulator() as sim, Target().serve() as target:
        rules.write_text(rules.read_text().replace("TARGET", target.url))
        env = daemon_env(sim, state)
        async with daemon_process(["run", "-c", str(rules)], env) as daemon:
            await sim.wait_connected(timeout=30)
            await sim.send_events(meeting_events(3))
            await wait_until(lambda: len(target.counts) == 3, 30)
            _limit_writes(_writer(daemon.pid), _journal_size(state) + 4096)
            await sim.send_events(meeting_events(50, start=3))
            await daemon.wait_log("journal: cannot write", timeout=30)
            daemon.send_signal(signal.SIGTERM)
            status = await daemon.wait_exit(60)
    output = daemon.output()
    assert status != 0, output
    assert "never journaled and are lost" in output
    # One clear line at the end says why the daemon failed.
    assert "could not be journaled" in output
