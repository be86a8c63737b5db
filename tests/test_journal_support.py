"""Helpers for the journal, crash and backpressure tests (no tests of its own).

- `Target`: an HTTP endpoint in the test process that counts requests by
  their idempotency header, can answer slowly, stall, or fail;
- `DaemonProcess`: `zoomrules run` as a real subprocess against a Simulator;
- `JournalView`: read-only looks into the journal database from outside.
"""

from __future__ import annotations

import contextlib
import sqlite3
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
from anyio.abc import SocketAttribute, SocketStream
from anyio.streams.buffered import BufferedByteReceiveStream
from conftest import example, write_rules
from daemon_process import poll_until, simulator_env

from engine.simulator import Simulator

IDEMPOTENCY_HEADER = "x-idempotency-key"


async def wait_until(predicate: Callable[[], bool], timeout: float, what: str = "") -> None:
    """Poll a condition that has no event to wait on (another process's state)."""
    await poll_until(predicate, timeout)


class Target:
    """An action target: counts (path, idempotency key) of every request it gets."""

    def __init__(self, delay: float = 0.0) -> None:
        self.delay = delay
        self.status = 200
        self.counts: Counter[tuple[str, str]] = Counter()
        #: (path, key) -> monotonic time its first response was sent.
        self.completed: dict[tuple[str, str], float] = {}
        self.received = 0
        self._open = anyio.Event()
        self._open.set()
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stall(self) -> None:
        """Hold every request (from now on) until `release()`."""
        self._open = anyio.Event()

    def release(self) -> None:
        self._open.set()

    async def _answer(self, path: str, key: str) -> bytes:
        self.received += 1
        await self._open.wait()
        if self.delay:
            await anyio.sleep(self.delay)
        if self.status >= 400:
            return _response(self.status, b"down")
        self.counts[(path, key)] += 1
        self.completed.setdefault((path, key), time.monotonic())
        return _response(200, b"{}")

    async def _serve_client(self, client: SocketStream) -> None:
        """A minimal HTTP/1.1 keep-alive server (uvicorn is too slow for a burst)."""
        buffered = BufferedByteReceiveStream(client)
        async with client:
            with contextlib.suppress(
                anyio.EndOfStream, anyio.IncompleteRead, anyio.BrokenResourceError, OSError
            ):
                while True:
                    head = (await buffered.receive_until(b"\r\n\r\n", 65536)).decode()
                    request_line, *lines = head.split("\r\n")
                    headers = {
                        name.strip().lower(): value.strip()
                        for name, _, value in (line.partition(":") for line in lines)
                    }
                    length = int(headers.get("content-length", "0"))
                    if length:
                        await buffered.receive_exactly(length)
                    path = request_line.split(" ")[1]
                    await client.send(await self._answer(path, headers.get(IDEMPOTENCY_HEADER, "")))

    @asynccontextmanager
    async def serve(self) -> AsyncIterator[Target]:
        listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)
        self.port = listener.extra(SocketAttribute.local_port)
        async with listener, anyio.create_task_group() as tg:
            tg.start_soon(listener.serve, self._serve_client)
            try:
                yield self
            finally:
                self.release()
                tg.cancel_scope.cancel()


def _response(status: int, body: bytes) -> bytes:
    return (
        f"HTTP/1.1 {status} X\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body


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
    "Target",
    "daemon_env",
    "meeting_events",
    "rules_text",
    "wait_until",
    "write_rules",
]
