"""The journal: durable events, jobs and dead letters, behind one interface.

`store` defines the interface (`JournalStore`, `JournalAdmin`) and its
values; each backend is a subpackage exposing `open_store(engine, **options)`
and `open_admin(engine)`, imported only when chosen (as anyio loads its
backends): `sqlite`, the embedded default, and `jetstream`, the cluster's
streams (`[cluster]`).
"""

from __future__ import annotations

import importlib
from contextlib import AbstractAsyncContextManager
from types import ModuleType
from typing import Any

from engine.config import EngineConfig
from engine.errors import JournalError
from engine.journal.store import (
    DEAD,
    DONE,
    FAILED,
    JOB_STATES,
    PENDING,
    RETRY,
    ActionOutcome,
    CorrelationLog,
    CorrelationRow,
    CorrelationSnapshot,
    EngineState,
    Firings,
    JobRow,
    JobStart,
    JournalAdmin,
    JournalCounters,
    JournalStore,
    StateStore,
    StoredEvent,
    StoreHealth,
    TimerAdmin,
)

__all__ = [
    "BACKENDS",
    "DEAD",
    "DONE",
    "FAILED",
    "JOB_STATES",
    "PENDING",
    "RETRY",
    "ActionOutcome",
    "CorrelationLog",
    "CorrelationRow",
    "CorrelationSnapshot",
    "EngineState",
    "Firings",
    "JobRow",
    "JobStart",
    "JournalAdmin",
    "JournalCounters",
    "JournalStore",
    "StateStore",
    "StoreHealth",
    "StoredEvent",
    "TimerAdmin",
    "backend",
    "open_journal",
    "open_journal_admin",
]

#: Backend name -> the module implementing it.
BACKENDS: dict[str, str] = {
    "sqlite": "engine.journal.sqlite",
    "jetstream": "engine.journal.jetstream",
}


def backend(name: str) -> ModuleType:
    """The backend module called `name`, imported on first use."""
    module = BACKENDS.get(name)
    if module is None:
        known = ", ".join(sorted(BACKENDS))
        raise JournalError(f"unknown journal backend {name!r} (known: {known})")
    return importlib.import_module(module)


def open_journal(engine: EngineConfig, **options: Any) -> AbstractAsyncContextManager[JournalStore]:
    """Open, lock and run the configured journal for a block (the daemon's side)."""
    opened: AbstractAsyncContextManager[JournalStore] = backend(engine.journal_backend).open_store(
        engine, **options
    )
    return opened


def open_journal_admin(
    engine: EngineConfig, **options: Any
) -> AbstractAsyncContextManager[JournalAdmin]:
    """Open the configured journal to look at it beside a running daemon
    (`cluster=` for the cluster backend)."""
    opened: AbstractAsyncContextManager[JournalAdmin] = backend(engine.journal_backend).open_admin(
        engine, **options
    )
    return opened
