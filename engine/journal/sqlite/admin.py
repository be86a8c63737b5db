"""The SQLite journal as `zoomrules dlq` and `journal stats` see it, beside a daemon.

A connection of its own (WAL lets it read while the daemon writes); each
change is one short transaction, which waits (`BUSY_TIMEOUT_MS`) for the
daemon's writer rather than failing. It never creates a journal.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio

from engine.config import EngineConfig
from engine.events import Event
from engine.journal.sqlite.db import JournalDB
from engine.journal.sqlite.files import exclusive_lock, lock_holder
from engine.journal.store import DEAD, RETRY, CorrelationRow, JobRow


class SqliteAdmin:
    """`engine.journal.store.JournalAdmin` over one synchronous connection."""

    def __init__(self, db: JournalDB, state_dir: Path) -> None:
        self.db = db
        self.state_dir = state_dir
        self._limiter = anyio.CapacityLimiter(1)

    async def _run(self, fn: Any, *args: Any) -> Any:
        return await anyio.to_thread.run_sync(fn, *args, limiter=self._limiter)

    async def dead_letters(self, limit: int) -> list[JobRow]:
        rows: list[JobRow] = await self._run(lambda: self.db.jobs([DEAD, RETRY], limit=limit))
        return rows

    async def job(self, job_id: int) -> JobRow | None:
        row: JobRow | None = await self._run(self.db.job, job_id)
        return row

    async def dead_before(self, cutoff: float) -> list[int]:
        ids: list[int] = await self._run(self.db.dead_before, cutoff)
        return ids

    async def requeue(self, ids: Sequence[int]) -> int:
        now = time.time()

        def requeue() -> int:
            with self.db.transaction():
                return self.db.set_state(ids, RETRY, [DEAD], now)

        count: int = await self._run(requeue)
        return count

    async def purge(self, ids: Sequence[int]) -> int:
        def purge() -> int:
            with self.db.transaction():
                return self.db.delete_jobs(ids, [DEAD, RETRY])

        count: int = await self._run(purge)
        return count

    async def stats(self) -> dict[str, Any]:
        stats: dict[str, Any] = await self._run(self.db.stats)
        return stats

    def owner(self) -> str | None:
        with exclusive_lock(self.state_dir) as free:
            pass
        return None if free else f"pid {lock_holder(self.state_dir)}"

    async def seen_recently(self, event_id: str, now: float, window: float) -> bool:
        seen: bool = await self._run(self.db.seen_recently, event_id, now, window)
        return seen

    async def record_seen(self, event: Event) -> bool:
        # The lock for each write only, so a daemon can start during a long
        # replay; once it holds the lock its writer alone writes the file.
        def record() -> bool:
            with exclusive_lock(self.state_dir) as locked:
                if not locked:
                    return False
                with self.db.transaction():
                    self.db.record_seen(event)
                return True

        recorded: bool = await self._run(record)
        return recorded

    async def record_dead_letter(
        self,
        event: Event,
        rule: str,
        next_action: int,
        attempts: int,
        error: str,
        *,
        errors: int = 0,
    ) -> int | None:
        now = time.time()

        # As `record_seen`: the lock for this write only. Holding it is also
        # what makes `MAX(id) + 1` a safe job id: no daemon numbers jobs meanwhile.
        def record() -> int | None:
            with exclusive_lock(self.state_dir) as locked:
                if not locked:
                    return None
                with self.db.transaction():
                    return self.db.record_dead_letter(
                        event, rule, next_action, attempts, error, errors, now
                    )

        job_id: int | None = await self._run(record)
        return job_id

    # -- open correlations (`TimerAdmin`) -------------------------------------------

    async def correlations(self, rule: str | None, limit: int) -> list[CorrelationRow]:
        rows: list[CorrelationRow] = await self._run(
            lambda: self.db.correlations(rule, limit=limit)
        )
        return rows

    async def cancel_correlations(self, items: Sequence[tuple[str, str]]) -> int:
        # No daemon: deleted here, under the journal's lock. A daemon holds
        # them in memory: marked, for it to close (it polls, as for retries).
        def cancel() -> int:
            with exclusive_lock(self.state_dir) as free, self.db.transaction():
                return self.db.cancel_correlations(items, at_once=free)

        count: int = await self._run(cancel)
        return count


@asynccontextmanager
async def open_admin(engine: EngineConfig, **_options: object) -> AsyncIterator[SqliteAdmin]:
    """The existing journal in `[engine] state_dir` (JournalError if there is none)."""
    state_dir = engine.state_dir
    db = await anyio.to_thread.run_sync(lambda: JournalDB.open(state_dir, create=False))
    try:
        yield SqliteAdmin(db, state_dir)
    finally:
        db.close()
