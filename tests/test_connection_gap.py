"""`zoomrules.connection_gap`: what Zoom could not deliver, made visible.

A subscription without a connection for `[zoom] gap_threshold` emits one
gap event once it is back: after a dropped connection held down, after the
daemon was stopped (or killed) and started again. The last moment each
subscription was known connected is a journal mark (schema v3), written
periodically, when a connection comes or goes, and at a clean stop.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace
from datetime import datetime
from pathlib import Path
from typing import Any

import anyio
import pytest
from conftest import run_cli, write_rules
from daemon_process import daemon_process, poll_until, simulator_env
from test_journal_support import JournalView

from engine.config import EngineConfig, read_config
from engine.daemon import Daemon
from engine.events import CONNECTION_GAP, Event
from engine.journal.sqlite import open_store
from engine.journal.sqlite.db import JournalDB
from engine.journal.sqlite.files import DB_NAME
from engine.journal.sqlite.schema import SCHEMA_VERSION, migrate
from engine.loader import load_rules
from engine.simulator import Simulator
from engine.sources.gaps import MARK_PREFIX, ConnectionGaps, Gap, MemoryMarks, gap_event
from engine.sources.zoom_ws import ZoomListener

MARK = MARK_PREFIX + "zoom:default"


def rules_text(
    gaps: Path, marker: Path, *, threshold: str = "0.5s", heartbeat: str = "0.2s"
) -> str:
    return f"""
        version = 1

        [zoom]
        client_id     = "${{ZOOM_CLIENT_ID}}"
        client_secret = "${{ZOOM_CLIENT_SECRET}}"
        endpoint      = "${{ZOOM_WS_ENDPOINT}}"
        heartbeat_interval = "{heartbeat}"
        gap_threshold = "{threshold}"

        [engine]
        state_dir = "${{ZOOMRULES_STATE_DIR}}"

        [[rule]]
        name = "gap"
        on   = ["zoomrules.connection_gap"]
          [[rule.action]]
          type = "log"
          path = "{gaps}"

        [[rule]]
        name = "marker"
        on   = ["meeting.started"]
          [[rule.action]]
          type = "log"
          path = "{marker}"
        """


def lines(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def marker_event(n: int) -> dict[str, Any]:
    return {
        "event": "meeting.started",
        "event_ts": 1_700_000_000_000 + n,
        "payload": {"account_id": "acc", "object": {"id": str(n), "topic": f"marker {n}"}},
    }


def epoch(iso: str) -> float:
    return datetime.fromisoformat(iso).timestamp()


def mark_in(state: Path) -> float | None:
    """The journal's `alive:zoom:default` mark, read from outside (None if not yet)."""
    rows = JournalView(state).query("SELECT value FROM marks WHERE name = ?", MARK)
    return float(rows[0][0]) if rows else None


class Files:
    def __init__(self, tmp_path: Path) -> None:
        self.state = tmp_path / "state"
        self.gaps = tmp_path / "gaps.jsonl"
        self.marker = tmp_path / "marker.jsonl"

    async def marker_logged(self, sim: Simulator, n: int) -> None:
        """Send marker event `n` and wait until its rule logged it: everything
        the listener handed on before it has been matched by then."""
        ts = marker_event(n)["event_ts"]
        await sim.send_event(marker_event(n))
        await poll_until(lambda: any(r["event"]["event_ts"] == ts for r in lines(self.marker)), 20)


@asynccontextmanager
async def running_daemon(
    sim: Simulator, files: Files, rules: Path, *, accepted: int = 1
) -> AsyncIterator[Daemon]:
    """The daemon in this process, connected; stopped cleanly on exit."""
    env = simulator_env(sim, files.state)
    daemon = Daemon([rules], load_rules([rules], env=env), env=env, handle_signals=False)
    async with anyio.create_task_group() as tg:
        tg.start_soon(daemon.run)
        await sim.wait_connected(count=accepted, timeout=20)
        try:
            yield daemon
        finally:
            daemon.stop()


def listener(daemon: Daemon) -> ZoomListener:
    (source,) = daemon.sources
    assert isinstance(source, ZoomListener)
    return source


# -- through the daemon ------------------------------------------------------------


@pytest.mark.anyio
async def test_a_connection_held_down_past_the_threshold_emits_one_gap_event(
    tmp_path: Path,
) -> None:
    files = Files(tmp_path)
    rules = write_rules(tmp_path, rules_text(files.gaps, files.marker))
    async with Simulator() as sim, running_daemon(sim, files, rules) as daemon:
        await files.marker_logged(sim, 1)
        assert lines(files.gaps) == []  # the first start ever: no mark, no gap

        sim.refuse_connections(seconds=1.0)
        dropped = time.time()
        await sim.drop(1011, "maintenance")
        await sim.wait_connected(count=2, timeout=20)
        back = sim.connections[-1].opened_at
        await poll_until(lambda: len(lines(files.gaps)) == 1, 20)
        await files.marker_logged(sim, 2)
        assert listener(daemon).stats.gaps == 1

    (fired,) = lines(files.gaps)
    event = fired["event"]
    assert event["event"] == CONNECTION_GAP
    payload = event["payload"]
    assert set(payload) == {
        "subscription", "source", "start_time", "end_time", "seconds", "cause",
    }  # fmt: skip
    assert payload["subscription"] == "default"
    assert payload["source"] == "zoom:default"
    # Zoom's close frame shows the connection delivered until it was dropped.
    assert abs(epoch(payload["start_time"]) - dropped) < 0.2
    assert payload["start_time"].endswith("Z") and len(payload["start_time"]) == 24
    end = epoch(payload["end_time"])
    assert back <= end < back + 1.0
    assert event["event_ts"] == round(end * 1000)
    assert payload["seconds"] == pytest.approx(end - epoch(payload["start_time"]), abs=0.002)
    assert payload["seconds"] >= 1.0  # refused for a second
    assert payload["cause"].startswith(
        "connection lost: closed with code 1011 'maintenance'; then "
    )
    assert "failed attempt" in payload["cause"]
    assert "HTTP 503" in payload["cause"]
    # Journaled like any event, from the subscription's source, with its id.
    view = JournalView(files.state)
    assert fired["event_id"] == Event.from_body(event, source="x").id
    assert view.query("SELECT source FROM events WHERE name = ?", CONNECTION_GAP) == [
        ("zoom:default",)
    ]


@pytest.mark.anyio
async def test_a_dead_connection_s_gap_starts_at_its_last_frame(tmp_path: Path) -> None:
    """No close handshake: the connection was last known connected when its
    last frame (a heartbeat answer) came, not when the watchdog gave up."""
    files = Files(tmp_path)
    rules = write_rules(tmp_path, rules_text(files.gaps, files.marker, threshold="0.3s"))
    async with Simulator() as sim, running_daemon(sim, files, rules) as daemon:
        await files.marker_logged(sim, 1)
        sim.heartbeat_acks = False  # silent from now on: dead after 2 x 0.2 s
        silent_since = time.time()
        await sim.wait_connected(count=2, timeout=20)
        sim.heartbeat_acks = True
        await poll_until(lambda: len(lines(files.gaps)) == 1, 20)
        await files.marker_logged(sim, 2)
        assert listener(daemon).stats.dead_connections == 1
    (fired,) = lines(files.gaps)
    payload = fired["event"]["payload"]
    assert payload["cause"] == (
        "connection lost: no frame from the server for 0.4s (dead connection)"
    )
    # The last heartbeat answer came before the server fell silent ...
    assert silent_since - 0.5 < epoch(payload["start_time"]) < silent_since + 0.1
    # ... and the watchdog waited two heartbeat intervals after it.
    assert payload["seconds"] >= 0.4


@pytest.mark.anyio
async def test_a_drop_shorter_than_the_threshold_emits_nothing(tmp_path: Path) -> None:
    files = Files(tmp_path)
    rules = write_rules(tmp_path, rules_text(files.gaps, files.marker, threshold="10s"))
    async with Simulator() as sim, running_daemon(sim, files, rules) as daemon:
        await files.marker_logged(sim, 1)
        await sim.drop(1006)  # a reset: alive until the last frame (a heartbeat answer)
        await sim.wait_connected(count=2, timeout=20)
        await files.marker_logged(sim, 2)
        assert listener(daemon).stats.gaps == 0
    assert lines(files.gaps) == []
    assert JournalView(files.state).query(
        "SELECT COUNT(*) FROM events WHERE name = ?", CONNECTION_GAP
    ) == [(0,)]


@pytest.mark.anyio
async def test_a_reload_that_replaces_the_connection_is_no_gap(tmp_path: Path) -> None:
    """The new connection comes up before the old one goes: even with
    `gap_threshold = "0s"` (every reconnect) nothing is reported."""
    files = Files(tmp_path)
    rules = write_rules(tmp_path, rules_text(files.gaps, files.marker, threshold="0s"))
    async with Simulator() as sim, running_daemon(sim, files, rules) as daemon:
        await files.marker_logged(sim, 1)
        # A new heartbeat interval: the connection is replaced.
        write_rules(
            tmp_path, rules_text(files.gaps, files.marker, threshold="0s", heartbeat="0.3s")
        )
        assert await daemon.reload()
        await sim.wait_connected(count=2, timeout=20)
        await sim.wait_for(lambda: sum(c.open for c in sim.connections) == 1, 20)
        await files.marker_logged(sim, 2)
        # ... while a real drop is one, at this threshold.
        await sim.drop(1006)
        await sim.wait_connected(count=3, timeout=20)
        await poll_until(lambda: len(lines(files.gaps)) == 1, 20)
        await files.marker_logged(sim, 3)
    assert len(lines(files.gaps)) == 1


@pytest.mark.anyio
async def test_a_daemon_stopped_past_the_threshold_reports_it_was_not_running(
    tmp_path: Path,
) -> None:
    files = Files(tmp_path)
    rules = write_rules(tmp_path, rules_text(files.gaps, files.marker))
    async with Simulator() as sim:
        async with running_daemon(sim, files, rules):
            await files.marker_logged(sim, 1)
        await sim.wait_disconnected()
        stopped = time.time()
        # The clean stop recorded when the connection closed.
        last = mark_in(files.state)
        assert last is not None and stopped - 2.0 < last <= stopped

        sim.refuse_connections(seconds=0.7)  # down for longer than the threshold, surely
        async with running_daemon(sim, files, rules, accepted=2):
            await poll_until(lambda: len(lines(files.gaps)) == 1, 20)
            await files.marker_logged(sim, 2)
    (fired,) = lines(files.gaps)
    payload = fired["event"]["payload"]
    assert payload["cause"].startswith("zoomrules was not running; then ")
    # From the mark, to the millisecond.
    assert (
        fired["event"]["payload"]["start_time"]
        == gap_event(Gap("zoom:default", last, last + 1, ""), subscription="default").body[
            "payload"
        ]["start_time"]
    )
    assert payload["seconds"] >= 0.7


@pytest.mark.anyio
async def test_the_mark_survives_a_sigkill_and_the_gap_is_found_at_the_next_start(
    tmp_path: Path,
) -> None:
    files = Files(tmp_path)
    rules = write_rules(tmp_path, rules_text(files.gaps, files.marker))
    async with Simulator() as sim:
        env = simulator_env(sim, files.state)
        async with daemon_process(["run", "-c", str(rules)], env) as daemon:
            await sim.wait_connected(timeout=20)
            await poll_until(lambda: mark_in(files.state) is not None)
            first = mark_in(files.state)
            assert first is not None
            # Written again while connected (every 0.5 s with this heartbeat),
            # not only when connecting or stopping.
            await poll_until(lambda: (mark_in(files.state) or 0) > first + 0.2)
            await daemon.kill()
            killed = time.time()
            last = mark_in(files.state)
            assert last is not None and killed - 2.0 < last < killed

            sim.refuse_connections(seconds=0.7)
            await daemon.start()
            await sim.wait_connected(count=2, timeout=20)
            await poll_until(lambda: len(lines(files.gaps)) == 1)
            await daemon.stop()
    (fired,) = lines(files.gaps)
    payload = fired["event"]["payload"]
    assert payload["cause"].startswith("zoomrules was not running")
    assert abs(epoch(payload["start_time"]) - last) < 0.001
    assert payload["seconds"] >= 0.7


@pytest.mark.anyio
async def test_gap_threshold_off_emits_nothing(tmp_path: Path) -> None:
    files = Files(tmp_path)
    rules = write_rules(tmp_path, rules_text(files.gaps, files.marker, threshold="off"))
    async with Simulator() as sim, running_daemon(sim, files, rules) as daemon:
        await files.marker_logged(sim, 1)
        sim.refuse_connections(seconds=0.7)
        await sim.drop(1006)
        await sim.wait_connected(count=2, timeout=20)
        await files.marker_logged(sim, 2)
        assert listener(daemon).stats.gaps == 0
    assert lines(files.gaps) == []


@pytest.mark.anyio
async def test_a_reload_changes_the_threshold_without_reconnecting(tmp_path: Path) -> None:
    files = Files(tmp_path)
    rules = write_rules(tmp_path, rules_text(files.gaps, files.marker, threshold="0s"))
    async with Simulator() as sim, running_daemon(sim, files, rules) as daemon:
        await files.marker_logged(sim, 1)
        write_rules(tmp_path, rules_text(files.gaps, files.marker, threshold="off"))
        assert await daemon.reload()
        assert daemon.gaps is not None and daemon.gaps.threshold is None
        await files.marker_logged(sim, 2)
        assert sim.accepted_connections == 1
        await sim.drop(1006)
        await sim.wait_connected(count=2, timeout=20)
        await files.marker_logged(sim, 3)
    assert lines(files.gaps) == []


@pytest.mark.anyio
async def test_without_the_journal_gaps_within_a_run_are_still_emitted(tmp_path: Path) -> None:
    files = Files(tmp_path)
    text = rules_text(files.gaps, files.marker).replace(
        'state_dir = "${ZOOMRULES_STATE_DIR}"',
        'state_dir = "${ZOOMRULES_STATE_DIR}"\njournal = false',
    )
    rules = write_rules(tmp_path, text)
    async with Simulator() as sim, running_daemon(sim, files, rules) as daemon:
        assert daemon.runtime is not None and daemon.runtime.store is None
        await files.marker_logged(sim, 1)
        sim.refuse_connections(seconds=0.7)
        await sim.drop(1006)
        await sim.wait_connected(count=2, timeout=20)
        await poll_until(lambda: len(lines(files.gaps)) == 1, 20)
    (fired,) = lines(files.gaps)
    assert fired["event"]["payload"]["cause"].startswith("connection lost: closed with code 1006")
    assert not (files.state / DB_NAME).exists()


# -- the journal's marks ------------------------------------------------------------


def test_a_v2_journal_migrates_to_v3_with_its_data(tmp_path: Path) -> None:
    conn = sqlite3.connect(tmp_path / DB_NAME, isolation_level=None)
    migrate(conn, target=2)
    conn.execute(
        "INSERT INTO events (event_id, name, source, received_at, body, duplicates) "
        "VALUES ('abc', 'meeting.started', 'zoom:default', 1.0, '{\"event\":\"meeting.started\"}', 2)"
    )
    conn.execute(
        "INSERT INTO jobs (event_seq, rule, state, created_at, updated_at, errors) "
        "VALUES (1, 'r', 'dead', 1, 1, 1)"
    )
    conn.close()

    db = JournalDB.open(tmp_path)
    assert SCHEMA_VERSION >= 3
    assert db.conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    assert [(r.rule, r.state, r.errors, r.event.id) for r in db.jobs(["dead"])] == [
        ("r", "dead", 1, "abc")
    ]
    assert db.stats()["duplicates_dropped"] == 2
    assert db.read_mark(MARK) is None
    with db.transaction():
        db.write_mark(MARK, 1234.5, 2000.0)
        db.write_mark(MARK, 1300.25, 2001.0)
    assert db.read_mark(MARK) == 1300.25
    assert db.stats()["marks"] == {MARK: 1300.25}
    db.close()


@pytest.mark.anyio
async def test_marks_are_kept_through_the_store_across_restarts(tmp_path: Path) -> None:
    engine = EngineConfig(state_dir=tmp_path)
    async with open_store(engine, writer="thread") as store:
        assert await store.read_mark("alive:zoom:a") is None
        await store.append(Event.from_body(marker_event(1), source="zoom:a"))
        await store.write_mark("alive:zoom:a", 100.5)
        await store.write_mark("alive:zoom:b", 7.0)
        await store.write_mark("alive:zoom:a", 101.5)
        assert await store.read_mark("alive:zoom:a") == 101.5  # reads see queued writes
    async with open_store(engine) as store:
        assert await store.read_mark("alive:zoom:a") == 101.5
        assert await store.read_mark("alive:zoom:b") == 7.0
        assert store.db.stats()["events"] == 1


def test_journal_stats_shows_the_marks(tmp_path: Path) -> None:
    db = JournalDB.open(tmp_path)
    with db.transaction():
        db.write_mark(MARK, time.time(), time.time())
    db.close()
    done = run_cli("journal", "stats", "--state-dir", tmp_path)
    assert done.returncode == 0, done.stderr
    assert f"marks:    {MARK} " in done.stdout
    as_json = run_cli("journal", "stats", "--json", "--state-dir", tmp_path)
    assert set(json.loads(as_json.stdout)["marks"]) == {MARK}


# -- ConnectionGaps on its own -------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0


def _gaps(marks: MemoryMarks | None = None, threshold: float | None = 10.0) -> ConnectionGaps:
    return ConnectionGaps(marks or MemoryMarks(), threshold=threshold, started_at=1_800_000_000.0)


@pytest.mark.anyio
async def test_causes_and_thresholds() -> None:
    marks = MemoryMarks()
    marks.values[MARK] = 1_799_999_990.0  # written before this process started
    gaps = _gaps(marks)
    await gaps.load("zoom:default")
    one, two = object(), object()
    gap = gaps.up("zoom:default", one, lambda: 1_800_000_001.0, now=1_800_000_001.0)
    assert gap is not None
    assert (gap.start, gap.end, gap.seconds) == (1_799_999_990.0, 1_800_000_001.0, 11.0)
    assert gap.cause == "zoomrules was not running"
    gaps.handed_over("zoom:default")
    # A second connection while the first is up (a reload): no gap.
    assert gaps.up("zoom:default", two, lambda: 1_800_000_050.0, now=1_800_000_050.0) is None
    gaps.down("zoom:default", one, alive_until=1_800_000_050.0, reason="replaced")
    gaps.down("zoom:default", two, alive_until=1_800_000_100.0, reason="closed with code 1006")
    assert gaps.last_alive("zoom:default") == 1_800_000_100.0
    # Back within the threshold: nothing.
    assert gaps.up("zoom:default", one, lambda: 0.0, now=1_800_000_109.0) is None
    gaps.down("zoom:default", one, alive_until=1_800_000_110.0, reason="closed with code 1001")
    gap = gaps.up(
        "zoom:default", two, lambda: 0.0, now=1_800_000_125.5,
        failures=2, last_failure="handshake refused with HTTP 503",
    )  # fmt: skip
    assert gap is not None and gap.seconds == 15.5
    assert gap.cause == (
        "connection lost: closed with code 1001; then 2 failed attempts to connect "
        "(last: handshake refused with HTTP 503)"
    )
    gaps.down("zoom:default", two, alive_until=1_800_000_126.0, reason="x")
    gaps.threshold = None  # "off"
    assert gaps.up("zoom:default", one, lambda: 0.0, now=1_800_009_000.0) is None
    gaps.down("zoom:default", one, alive_until=1_800_009_000.0, reason="x")
    gaps.threshold = 0.0  # every reconnect
    assert gaps.up("zoom:default", two, lambda: 0.0, now=1_800_009_000.001) is not None


@pytest.mark.anyio
async def test_no_mark_no_gap_and_a_mark_from_another_process() -> None:
    gaps = _gaps()
    await gaps.load("zoom:a")
    assert gaps.up("zoom:a", object(), lambda: 0.0, now=1_800_000_100.0) is None
    marks = MemoryMarks()
    marks.values[MARK_PREFIX + "zoom:b"] = 1_800_000_050.0  # while this process ran
    gaps = _gaps(marks)
    await gaps.load("zoom:b")
    link = object()
    gap = gaps.up("zoom:b", link, lambda: 0.0, now=1_800_000_100.0)
    assert gap is not None and gap.cause == "connected from another zoomrules process until then"
    gaps.handed_over("zoom:b")
    gaps.down("zoom:b", link, alive_until=1_800_000_200.0, reason="closed with code 1006")
    # Another process held it meanwhile (a failover): read again when the
    # source starts again, and newer than what this process knows.
    marks.values[MARK_PREFIX + "zoom:b"] = 1_800_000_300.0
    await gaps.load("zoom:b")
    gap = gaps.up("zoom:b", link, lambda: 0.0, now=1_800_000_400.0)
    assert gap is not None and gap.start == 1_800_000_300.0
    assert gap.cause == "connected from another zoomrules process until then"


@pytest.mark.anyio
async def test_the_mark_waits_for_the_gap_event_to_be_handed_over() -> None:
    marks = MemoryMarks()
    marks.values[MARK] = 1_799_999_000.0
    gaps = _gaps(marks)
    await gaps.load("zoom:default")
    link = object()
    alive = [1_800_000_000.0]
    assert gaps.up("zoom:default", link, lambda: alive[0], now=1_800_000_000.0) is not None
    alive[0] = 1_800_000_003.0
    await gaps.flush()
    # Not handed over yet (the journal is full, say): if the process died
    # now, the next start must find the same gap again.
    assert marks.values[MARK] == 1_799_999_000.0
    gaps.handed_over("zoom:default")
    await gaps.flush()
    assert marks.values[MARK] == 1_800_000_003.0
    gaps.down("zoom:default", link, alive_until=1_800_000_004.0, reason="x")
    await gaps.flush()
    assert marks.values[MARK] == 1_800_000_004.0


def test_the_event_is_the_same_for_the_same_gap_and_differs_otherwise() -> None:
    gap = Gap("zoom:default", 1_765_000_000.1234, 1_765_000_012.6239, "zoomrules was not running")
    event = gap_event(gap, subscription="default", account_id="acc-1")
    assert event.body == {
        "event": "zoomrules.connection_gap",
        "event_ts": 1_765_000_012_624,
        "payload": {
            "subscription": "default",
            "source": "zoom:default",
            "start_time": "2025-12-06T05:46:40.123Z",
            "end_time": "2025-12-06T05:46:52.624Z",
            "seconds": 12.501,
            "cause": "zoomrules was not running",
            "account_id": "acc-1",
        },
    }
    assert event.source == "zoom:default"
    assert event.received_at == gap.end
    again = gap_event(replace(gap), subscription="default", account_id="acc-1")
    assert again.id == event.id
    later = gap_event(replace(gap, end=gap.end + 0.01), subscription="default")
    assert later.id != event.id
    assert "account_id" not in later.body["payload"]


# -- configuration and check --------------------------------------------------------


def test_gap_threshold_is_configured(tmp_path: Path) -> None:
    def threshold(value: str) -> tuple[float | None, list[str]]:
        path = tmp_path / "rules.toml"
        path.write_text(
            f'[zoom]\nclient_id = "i"\nclient_secret = "s"\n'
            f'endpoint = "wss://ws.zoom.us/ws?subscriptionId=x"\n{value}\n'
        )
        config, problems = read_config([path], {})
        assert config.zoom is not None
        return config.zoom.gap_threshold, [p.message for p in problems]

    assert threshold("") == (10.0, [])
    assert threshold('gap_threshold = "1m"') == (60.0, [])
    assert threshold('gap_threshold = "0s"') == (0.0, [])
    assert threshold('gap_threshold = "off"') == (None, [])
    value, problems = threshold('gap_threshold = "sometimes"')
    assert value == 10.0
    assert problems == [
        "expected a duration like '10s', '1m', '0s' (every reconnect), or 'off', got 'sometimes'"
    ]


def test_check_knows_the_gap_event(tmp_path: Path) -> None:
    rules = write_rules(
        tmp_path,
        """
        [[rule]]
        name = "gap"
        on   = ["zoomrules.connection_gap"]
          [[rule.action]]
          type = "log"

        [[rule]]
        name = "all-engine-events"
        on   = ["zoomrules.*"]
          [[rule.action]]
          type = "log"
        """,
    )
    done = run_cli("check", "--strict", "-c", rules)
    assert done.returncode == 0, done.stderr
    assert "warning" not in done.stderr and "error" not in done.stderr

    typo = write_rules(
        tmp_path,
        """
        [[rule]]
        name = "gap"
        on   = ["zoomrules.connection_gaps"]
          [[rule.action]]
          type = "log"
        """,
        name="typo.toml",
    )
    done = run_cli("check", "-c", typo)
    assert done.returncode == 0
    assert (
        "'zoomrules.connection_gaps' is not an event zoomrules emits "
        "(did you mean 'zoomrules.connection_gap'?)"
    ) in done.stderr


def test_zoomrules_test_takes_a_gap_event(tmp_path: Path) -> None:
    rules = write_rules(
        tmp_path,
        """
        [[rule]]
        name = "long-gap"
        on   = ["zoomrules.connection_gap"]
        when = "payload.seconds > `60`"
          [[rule.action]]
          type = "log"
        """,
    )
    event = gap_event(
        Gap("zoom:default", 1_765_000_000.0, 1_765_000_120.0, "zoomrules was not running"),
        subscription="default",
    )
    path = tmp_path / "gap.json"
    path.write_text(json.dumps(event.body))
    done = run_cli("test", "-c", rules, "--json", path)
    assert done.returncode == 0, done.stderr
    assert [item["rule"] for item in json.loads(done.stdout)["fired"]] == ["long-gap"]
