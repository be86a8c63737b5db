"""What a running daemon shows of itself to what observes it (health, metrics, status page).

`DaemonState` is the read-only view the daemon (`engine.daemon.Daemon`)
offers; the modules that answer HTTP take it and nothing else, so they
depend neither on the daemon nor on how it wires its parts.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from engine.correlate import Correlations
    from engine.dispatch import Dispatcher
    from engine.journal.store import JournalStore
    from engine.loader import LoadedRules
    from engine.pipeline import Pipeline
    from engine.sources.base import EventSource


#: The reason a daemon gives while it starts (rules loaded, the journal
#: and the sources not running yet), and once a graceful stop began.
STARTING = "starting"
STOPPING = "stopping"


@dataclass(frozen=True)
class Readiness:
    """Whether the daemon does its job now, and if not, every reason why."""

    ready: bool
    reasons: tuple[str, ...] = ()

    @property
    def starting(self) -> bool:
        return self.reasons == (STARTING,)

    @property
    def stopping(self) -> bool:
        return self.reasons == (STOPPING,)


class DaemonState(Protocol):
    """A running daemon, read-only."""

    #: When it started (epoch seconds).
    started_at: float
    #: The rules and configuration in use (replaced by a reload).
    loaded: LoadedRules
    reloads: int
    failed_reloads: int
    #: When the last reload was tried (epoch seconds), and whether it worked.
    last_reload_at: float | None
    last_reload_ok: bool
    #: When the rules in use were loaded: at start, or by the last reload
    #: that worked (epoch seconds).
    last_reload_success_at: float

    @property
    def sources(self) -> list[EventSource]: ...

    @property
    def pipeline(self) -> Pipeline | None: ...

    @property
    def dispatcher(self) -> Dispatcher | None: ...

    @property
    def store(self) -> JournalStore | None: ...

    @property
    def correlations(self) -> Correlations | None:
        """Temporal rules' open correlations (None: none run here: no
        journal, or a cluster node that does not hold the correlator lease)."""
        ...

    def readiness(self) -> Readiness: ...
