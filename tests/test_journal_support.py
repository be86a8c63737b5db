"""Helpers for the journal, crash and backpressure tests (no tests of its own).

- (the HTTP endpoint actions are sent to, `Target`, is in `http_target`);
- `DaemonProcess`: `zoomrules run` as a real subprocess against a Simulator;
- `JournalView`: read-only looks into the journal database from outside.
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from conftest import example, write_rules
from daemon_process import poll_until, simulator_env
from http_target import IDEMPOTENCY_HEADER

from engine.simulator import Simulator


async def wait_until(predicate: Callable[[], bool], timeout: float, what: str = "") -> None:
    """Poll a condition that has no event to wait on (another process's state)."""
    await poll_until(predicate, timeout)


def meeting_events(
    count: int, name: str = "meeting.started", start: int = 0
) -> list[dict[str, Any]]:
    """`count` distinct events of Zoom's documented shape."""
    base = example(name)
    out = []
    for i in range(start, start + count):
        body = {**base, "event_ts": 1626230691572 + i}
        obj = {**base["payload"]["object"], "uuid": f"uuid-{i}", "id": str(10_000_000 + i)}
        body["payload"] = {**base["payload"], "object": obj}
        out.append(body)
    return out


def http_actions(target: str, paths: Sequence[str], action: str = "") -> str:
    """One `http` action per path of `target`, keyed by the event's id."""
    return "".join(
        f"""
  [[rule.action]]
  type = "http"
  url = "{target}/{path}"
  headers = {{ {IDEMPOTENCY_HEADER} = "{{{{ zoomrules.event_id }}}}" }}
  json = {{ id = "{{{{ payload.object.id }}}}" }}
  {action}
"""
        for path in paths
    )


def rules_text(
    target: str,
    *,
    paths: tuple[str, ...] = ("a",),
    heartbeat: str = "30s",
    engine: str = "",
    action: str = "",
    when: str = "",
) -> str:
    actions = http_actions(target, paths, action)
    return f"""
version = 1

[zoom]
client_id     = "${{ZOOM_CLIENT_ID}}"
client_secret = "${{ZOOM_CLIENT_SECRET}}"
endpoint      = "${{ZOOM_WS_ENDPOINT}}"
heartbeat_interval = "{heartbeat}"

[engine]
state_dir = "/nonexistent/overridden/by/ZOOMRULES_STATE_DIR"
retry_backoff = "10ms"
retry_backoff_cap = "50ms"
{engine}

[[rule]]
name = "started"
on   = ["meeting.started"]
{f"when = {when!r}" if when else ""}
{actions}
"""


def daemon_env(sim: Simulator, state_dir: Path) -> dict[str, str]:
    return simulator_env(sim, state_dir)


class JournalView:
    """Read-only queries on a journal another process writes (WAL allows it)."""

    def __init__(self, state_dir: Path) -> None:
        self.path = state_dir / "journal.db"

    def query(self, sql: str, *args: Any) -> list[tuple[Any, ...]]:
        if not self.path.exists():
            return []
        with contextlib.closing(sqlite3.connect(f"file:{self.path}?mode=ro", uri=True)) as conn:
            try:
                return conn.execute(sql, args).fetchall()
            except sqlite3.OperationalError:
                return []  # not created yet

    def scalar(self, sql: str, *args: Any) -> Any:
        rows = self.query(sql, *args)
        return rows[0][0] if rows else 0

    def events(self) -> int:
        return int(self.scalar("SELECT COUNT(*) FROM events"))

    def jobs(self, state: str) -> int:
        return int(self.scalar("SELECT COUNT(*) FROM jobs WHERE state = ?", state))


__all__ = [
    "JournalView",
    "daemon_env",
    "meeting_events",
    "rules_text",
    "wait_until",
    "write_rules",
]
