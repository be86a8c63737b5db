"""The journal: storage, dedup, dead letters, corruption, permissions, migration, retention."""

from __future__ import annotations

import json
import sqlite3
import stat
import time
from pathlib import Path

import anyio
import pytest
from conftest import cli_env, run_cli, write_rules
from daemon_process import daemon_process
from http_target import Target
from test_journal_support import (
    JournalView,
    daemon_env,
    meeting_events,
    rules_text,
    wait_until,
)

from engine.daemon import Daemon
from engine.events import Event
from engine.journal.sqlite.db import JournalDB
from engine.journal.sqlite.files import DB_NAME
from engine.journal.sqlite.schema import SCHEMA_VERSION, migrate
from engine.journal.store import ActionOutcome
from engine.loader import load_rules
from engine.simulator import Simulator


def _event(i: int, received_at: float | None = None) -> Event:
    return Event.from_body(meeting_events(1, start=i)[0], source="test", received_at=received_at)


# -- storage ------------------------------------------------------------------


def test_state_dir_and_files_are_owner_only(tmp_path: Path) -> None:
    state = tmp_path / "deep" / "state"
    db = JournalDB.open(state)
    with db.transaction():
        db.append_event(_event(1), 60)
    db.close()
    assert stat.S_IMODE(state.stat().st_mode) == 0o700
    for name in (DB_NAME, f"{DB_NAME}-wal", f"{DB_NAME}-shm"):
        path = state / name
        if path.exists():
            assert stat.S_IMODE(path.stat().st_mode) == 0o600, name


def test_same_event_within_the_window_is_stored_once(tmp_path: Path) -> None:
    db = JournalDB.open(tmp_path)
    now = time.time()
    with db.transaction():
        first = db.append_event(_event(1, now), 60)
        again = db.append_event(_event(1, now + 30), 60)
        later = db.append_event(_event(1, now + 120), 60)
        other = db.append_event(_event(2, now), 60)
    assert first is not None and again is None
    assert later is not None and later[0] == first[1]
    assert other is not None
    assert db.stats()["duplicates_dropped"] == 1
    db.close()


def test_job_progress_done_failed_dead(tmp_path: Path) -> None:
    db = JournalDB.open(tmp_path)
    now = time.time()
    with db.transaction():
        seq = db.append_event(_event(1), 60)
        assert seq is not None
        ok, soft, hard = db.record_jobs([(seq[1], ["ok", "soft", "hard"])], now)
        db.action_finished(ActionOutcome(ok, 0, 1, None, 1, False), now)
        assert db.job(ok).state == "pending" and db.job(ok).next_action == 1  # type: ignore[union-attr]
        db.action_finished(ActionOutcome(ok, 1, 1, None, 1, False), now)
        db.action_finished(ActionOutcome(soft, 0, 0, "HTTP 500", 2, True), now)
        db.action_finished(ActionOutcome(hard, 0, 1, "HTTP 503", 4, False), now)
    states = {job_id: db.job(job_id) for job_id in (ok, soft, hard)}
    assert states[ok].state == "done"  # type: ignore[union-attr]
    assert states[soft].state == "failed"  # type: ignore[union-attr]
    dead = states[hard]
    assert dead is not None
    assert (dead.state, dead.next_action, dead.attempts, dead.last_error) == (
        "dead",
        0,
        4,
        "HTTP 503",
    )
    db.close()


def test_retention_removes_old_finished_rows_only(tmp_path: Path) -> None:
    db = JournalDB.open(tmp_path)
    day = 86400.0
    now = time.time()
    old, recent = now - 10 * day, now - 60
    with db.transaction():
        seqs = [db.append_event(_event(i, old), 1)[1] for i in range(4)]  # type: ignore[index]
        fresh = db.append_event(_event(9, recent), 1)[1]  # type: ignore[index]
        done, dead, pending, fresh_done = db.record_jobs(
            [(seqs[0], ["r"]), (seqs[1], ["r"]), (seqs[2], ["r"]), (fresh, ["r"])], old
        )
        for job in (done, fresh_done):
            db.action_finished(
                ActionOutcome(job, 0, 0, None, 1, False), old if job == done else recent
            )
        db.action_finished(ActionOutcome(dead, 0, 0, "boom", 1, False), old)
        db.record_jobs([(seqs[3], [])], old)  # matched, fired nothing
    with db.transaction():
        while db.purge_expired(now, retention=7 * day, keep_events=day, chunk=2):
            pass
    remaining = {row[0] for row in db.conn.execute("SELECT id FROM jobs")}
    assert remaining == {dead, pending, fresh_done}
    events = {row[0] for row in db.conn.execute("SELECT seq FROM events")}
    # Events of the dead letter and the pending job stay; so does the recent one.
    assert events == {seqs[1], seqs[2], fresh}
    db.close()


def test_migration_from_schema_1_keeps_the_data(tmp_path: Path) -> None:
    path = tmp_path / DB_NAME
    conn = sqlite3.connect(path, isolation_level=None)
    migrate(conn, target=1)
    conn.execute(
        "INSERT INTO events (event_id, name, source, received_at, body) VALUES (?, ?, ?, ?, ?)",
        ("abc", "meeting.started", "zoom:default", 1.0, b'{"event":"meeting.started"}'),
    )
    conn.execute(
        "INSERT INTO jobs (event_seq, rule, state, created_at, updated_at) "
        "VALUES (1, 'r', 'pending', 1, 1)"
    )
    conn.close()

    db = JournalDB.open(tmp_path)
    assert db.conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    rows = db.jobs(["pending"])
    assert [(r.rule, r.errors, r.event.id) for r in rows] == [("r", 0, "abc")]
    db.close()


# -- opening failures: the daemon stops with the recovery step -----------------------


def _run_daemon(tmp_path: Path, state: Path) -> tuple[int, str]:
    rules = write_rules(tmp_path, rules_text("http://127.0.0.1:9"))
    env = cli_env(
        ZOOMRULES_STATE_DIR=str(state),
        ZOOM_CLIENT_ID="id",
        ZOOM_CLIENT_SECRET="secret",
        ZOOM_WS_ENDPOINT="ws://127.0.0.1:9/ws?subscriptionId=x",
        ZOOM_OAUTH_URL="http://127.0.0.1:9/oauth/token",
    )
    done = run_cli("run", "-c", rules, env=env, timeout=60)
    return done.returncode, done.stderr


def test_garbage_journal_stops_the_daemon_with_the_recovery_step(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    (state / DB_NAME).write_bytes(b"this is not a database\n" * 200)
    code, err = _run_daemon(tmp_path, state)
    assert code == 1
    assert "damaged or not a zoomrules journal" in err
    assert f"mv {state / DB_NAME} {state / DB_NAME}.broken" in err
    assert "Traceback" not in err


def test_journal_from_a_newer_version_is_refused(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    conn = sqlite3.connect(state / DB_NAME)
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    conn.close()
    code, err = _run_daemon(tmp_path, state)
    assert code == 1
    assert f"schema version {SCHEMA_VERSION + 1}, written by a newer zoomrules" in err


def test_unusable_state_dir_is_refused(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    code, err = _run_daemon(tmp_path, blocker / "state")
    assert code == 1
    assert "cannot create the state directory" in err and "ZOOMRULES_STATE_DIR" in err


def test_unwritable_state_dir_is_refused(tmp_path: Path) -> None:
    import os

    if os.geteuid() == 0:
        pytest.skip("root ignores permission bits (the unusable-path case is tested above)")
    state = tmp_path / "state"
    state.mkdir(mode=0o500)
    code, err = _run_daemon(tmp_path, state)
    assert code == 1 and "not writable" in err


# -- through the daemon ---------------------------------------------------------


@pytest.mark.anyio
async def test_the_same_100_events_delivered_twice_fire_once(tmp_path: Path) -> None:
    async with Simulator() as sim, Target().serve() as target:
        env = daemon_env(sim, tmp_path / "state")
        rules = write_rules(tmp_path, rules_text(target.url))
        daemon = Daemon([rules], load_rules([rules], env=env), env=env, handle_signals=False)
        bodies = meeting_events(100)
        async with anyio.create_task_group() as tg:
            tg.start_soon(daemon.run)
            await sim.wait_connected(timeout=10)
            assert await sim.send_events(bodies) == 100
            # A second delivery: another connection (as an overlapping
            # subscription or a reconnect would give) sending the same events.
            await sim.drop(1001)
            await sim.wait_connected(count=2, timeout=10)
            assert await sim.send_events(bodies) == 100
            assert daemon.runtime is not None and daemon.runtime.store is not None
            journal = daemon.runtime.store
            await wait_until(lambda: journal.counters.duplicates == 100, 20)
            await wait_until(lambda: len(target.counts) == 100, 20)
            daemon.stop()
    assert set(target.counts.values()) == {1}
    assert JournalView(tmp_path / "state").jobs("done") == 100


def _cli(tmp_path: Path, env: dict[str, str], *args: str) -> tuple[int, str]:
    done = run_cli(*args, "-c", tmp_path / "rules.toml", env=env, timeout=60)
    return done.returncode, done.stdout + done.stderr


@pytest.mark.anyio
async def test_dead_letters_round_trip(tmp_path: Path) -> None:
    state = tmp_path / "state"
    async with Simulator() as sim, Target().serve() as target:
        env = daemon_env(sim, state)
        rules = write_rules(tmp_path, rules_text(target.url, action="retries = 1"))
        view = JournalView(state)
        async with daemon_process(["run", "-c", str(rules)], env, start=False) as daemon:
            # The target is down: both attempts fail, the jobs become dead letters.
            target.status = 503
            await daemon.start()
            await sim.wait_connected(timeout=30)
            await sim.send_events(meeting_events(5))
            await wait_until(lambda: view.jobs("dead") == 5, 30)
            code, out = await anyio.to_thread.run_sync(_cli, tmp_path, env, "dlq", "list", "--json")
            assert code == 0, out
            listed = json.loads(out)
            assert [d["state"] for d in listed] == ["dead"] * 5
            assert all("503" in d["last_error"] and d["attempts"] == 2 for d in listed)
            code, out = await anyio.to_thread.run_sync(
                _cli, tmp_path, env, "dlq", "show", str(listed[0]["id"])
            )
            assert code == 0 and "meeting.started" in out and "503" in out

            # Target back up; the running daemon picks the re-queued jobs up.
            target.status = 200
            code, out = await anyio.to_thread.run_sync(_cli, tmp_path, env, "dlq", "retry", "--all")
            assert code == 0 and "re-queued 5" in out, out
            await wait_until(lambda: len(target.counts) == 5, 30)
            await wait_until(lambda: view.jobs("done") == 5, 30)

            # Down again; this time no daemon runs: `dlq retry` runs them itself.
            target.status = 503
            await sim.send_events(meeting_events(3, start=100))
            await wait_until(lambda: view.jobs("dead") == 3, 30)
            assert await daemon.stop() == 0
            target.status = 200
            code, out = await anyio.to_thread.run_sync(_cli, tmp_path, env, "dlq", "retry", "--all")
            assert code == 0 and "3 delivered" in out, out
            assert len(target.counts) == 8
            code, out = await anyio.to_thread.run_sync(_cli, tmp_path, env, "dlq", "list")
            assert "no dead letters" in out
            code, out = await anyio.to_thread.run_sync(
                _cli, tmp_path, env, "journal", "stats", "--json"
            )
            stats = json.loads(out)
            assert stats["jobs"]["done"] == 8 and stats["events"] == 8
    assert set(target.counts.values()) == {1}


def test_dlq_purge(tmp_path: Path) -> None:
    state = tmp_path / "state"
    db = JournalDB.open(state)
    now = time.time()
    with db.transaction():
        seq = db.append_event(_event(1), 60)[1]  # type: ignore[index]
        ids = db.record_jobs([(seq, ["a", "b", "c"])], now)
        for job in ids:
            db.action_finished(ActionOutcome(job, 0, 0, "gone", 1, False), now - 10 * 86400)
        db.mark_dead(ids[2], "gone", now)
    db.close()
    env = cli_env(ZOOMRULES_STATE_DIR=str(state))
    done = run_cli("dlq", "purge", str(ids[0]), "--state-dir", state, env=env)
    assert done.returncode == 0 and "purged 1" in done.stdout
    done = run_cli("dlq", "purge", "--older-than", "7d", "--state-dir", state, env=env)
    assert "purged 1" in done.stdout
    done = run_cli("dlq", "list", "--json", "--state-dir", state, env=env)
    assert [d["id"] for d in json.loads(done.stdout)] == [ids[2]]
    done = run_cli("journal", "stats", "--state-dir", state, env=env)
    assert "1 dead" in done.stdout and "events:   1" in done.stdout


def test_two_processes_creating_the_state_directory_at_once_both_succeed(tmp_path: Path) -> None:
    """The losing one used to say `File exists. Fix: create it`."""
    import threading

    from engine.journal.sqlite.files import ensure_state_dir

    state = tmp_path / "a" / "b" / "state"
    errors: list[BaseException] = []
    start = threading.Barrier(8)

    def create() -> None:
        start.wait()
        try:
            ensure_state_dir(state)
        except BaseException as exc:  # noqa: BLE001 - collected for the assertion
            errors.append(exc)

    threads = [threading.Thread(target=create) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert state.is_dir() and (state.stat().st_mode & 0o777) == 0o700
