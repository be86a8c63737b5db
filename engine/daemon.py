"""The rules daemon: event sources feeding the engine, plus signals.

Shutdown (SIGTERM/SIGINT): stop reading from Zoom first, then give jobs in
flight `[engine] shutdown_grace` to finish, then cancel what is left.
SIGHUP: reload the rule files and everything built from them
(`engine.reload` says what waits for a restart); an invalid file keeps
everything as it was and logs every problem. Connections whose settings did
not change stay up; those that did are replaced (`engine.source_set`).

Sources report their connections to one `ConnectionGaps`, kept in the
runtime's marks (the journal), which outlives reloads: a subscription that
had no connection for `[zoom] gap_threshold` emits a gap event once back.
"""

from __future__ import annotations

import gc
import logging
import os
import signal
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path

import anyio
import anyio.lowlevel

from engine.config import Config
from engine.correlate import Correlations
from engine.daemon_state import STARTING, STOPPING, Readiness
from engine.dispatch import Dispatcher
from engine.errors import AuthError, ConfigError, DaemonError
from engine.health import routes as health_routes
from engine.http_server import HttpServer
from engine.journal.store import JournalStore
from engine.loader import LoadedRules, load_rules
from engine.metrics import routes as metrics_routes
from engine.pipeline import Pipeline
from engine.problems import Problem
from engine.reload import needs_restart
from engine.runtime import Runtime, open_services, refresh_services, running_engine
from engine.sd_notify import SystemdNotifier
from engine.services import Services
from engine.source_set import SourceSet
from engine.sources import LIVE_EVERY, ConnectionGaps, EventSource, build_sources, mark_interval
from engine.status_page import routes as status_routes

log = logging.getLogger("zoomrules.daemon")

#: How long a stopping daemon may take to record when its sources were last
#: connected (the journal's queue could be full).
_MARKS_FLUSH_TIMEOUT = 5.0


#: CPython's cyclic garbage collector runs a pass every GC_GENERATION0
#: container objects allocated and not yet freed (700 by default). Decoded
#: events are hundreds of dicts and lists each, freed by reference counting
#: once their jobs finish, but the events waiting in the dispatcher's queue
#: and websockets' buffer are alive at every pass, which traverses them all
#: again: about 10% of the daemon's time per event at the default. Passes
#: every 10,000 take that to nothing measurable.
GC_GENERATION0 = 10_000


@contextmanager
def fewer_gc_passes() -> Iterator[None]:
    """Raise the collector's first threshold while the daemon runs (restored after)."""
    saved = gc.get_threshold()
    gc.set_threshold(max(saved[0], GC_GENERATION0), *saved[1:])
    try:
        yield
    finally:
        gc.set_threshold(*saved)


class Daemon:
    def __init__(
        self,
        paths: Sequence[str | Path],
        loaded: LoadedRules,
        *,
        env: Mapping[str, str] | None = None,
        handle_signals: bool = True,
    ) -> None:
        self.paths = list(paths)
        self.loaded = loaded
        self.env = env
        self.handle_signals = handle_signals
        self.runtime: Runtime | None = None
        self._services: Services | None = None
        self._sources = SourceSet(_no_sink)
        #: When each source was last connected; gaps become events (set by `_listen`).
        self.gaps: ConnectionGaps | None = None
        self.reloads = 0
        self.failed_reloads = 0
        self.started_at = time.time()
        self.last_reload_at: float | None = None
        self.last_reload_ok = True
        self.last_reload_success_at = self.started_at
        #: Ready, status, watchdog, reloading and stopping, told to systemd.
        self.systemd = SystemdNotifier.from_environment(os.environ if env is None else env)
        #: The HTTP server, when `[http]` is configured (set by `_run`).
        self.http: HttpServer | None = None
        self._serving = anyio.Event()
        self._stop = anyio.Event()
        self._ready = anyio.Event()

    # -- control (also used by tests and `demo`) ------------------------------

    def stop(self) -> None:
        """Begin a graceful shutdown."""
        self._stop.set()
        self.systemd.stopping()

    async def wait_ready(self) -> None:
        await self._ready.wait()

    async def wait_serving(self) -> HttpServer:
        """The HTTP server, once it listens (`[http]` must be configured)."""
        await self._serving.wait()
        assert self.http is not None
        return self.http

    async def reload(self) -> bool:
        """Re-read the rule files; keep the old rules if the new ones are invalid."""
        self.last_reload_at = time.time()
        with self.systemd.reloading():
            self.last_reload_ok = ok = await self._reload()
        if ok:
            self.last_reload_success_at = self.last_reload_at
        return ok

    async def _reload(self) -> bool:
        try:
            fresh = await anyio.to_thread.run_sync(
                lambda: load_rules(self.paths, env=self.env, set_identity=False)
            )
        except ConfigError as exc:
            self.failed_reloads += 1
            log.error("reload failed; keeping the previous rules (%d problems)", len(exc.problems))
            for problem in exc.problems:
                log.error("  %s", problem)
            return False
        except Exception:  # noqa: BLE001 - a reload never takes the daemon down
            self.failed_reloads += 1
            log.exception("reload failed; keeping the previous rules")
            return False
        assert self.runtime is not None and self._services is not None
        await self._apply(fresh)
        return True

    async def _apply(self, fresh: LoadedRules) -> None:
        """Put a freshly loaded configuration to work, and say what took effect."""
        assert self.runtime is not None and self._services is not None
        old = self.loaded.config
        refresh_services(self._services, fresh.config)
        dispatcher = self.runtime.pipeline.dispatcher
        dispatcher.backoff = fresh.config.engine.retry_backoff
        dispatcher.backoff_cap = fresh.config.engine.retry_backoff_cap
        self.runtime.pipeline.replace_rules(fresh)
        self.loaded = fresh
        if self.gaps is not None:
            _configure_gaps(self.gaps, fresh.config)
        changes = await self._sources.replace(self._build_sources(fresh.config))
        self.reloads += 1
        files = ", ".join(map(str, fresh.config.files))
        log.info("reloaded %d rules and their settings from %s", len(fresh.rules), files)
        for name in changes.replacing:
            log.info("reload: %s: new settings; reconnecting", name)
        for name in changes.started:
            log.info("reload: %s: new; connecting", name)
        for name in changes.stopped:
            log.info("reload: %s: no longer configured; disconnected", name)
        for key in needs_restart(old, fresh.config):
            log.warning("reload: %s changed: it takes effect at the next restart", key)

    # -- running --------------------------------------------------------------

    async def run(self) -> None:
        config = self.loaded.config
        if config.zoom is None or not (config.zoom.subscriptions or config.zoom.webhooks):
            raise ConfigError(
                [
                    Problem(
                        None, None, "[zoom]", None,
                        "no subscription to listen to: add a [zoom] section with endpoint, "
                        "client_id and client_secret (or set ZOOM_WS_ENDPOINT, ZOOM_CLIENT_ID "
                        "and ZOOM_CLIENT_SECRET), or a [zoom.webhook]",
                    )
                ]
            )  # fmt: skip
        with fewer_gc_passes():
            await self._run(config)
        store = self.runtime.store if self.runtime is not None else None
        if store is not None and store.counters.unwritten:
            raise DaemonError(
                f"{store.counters.unwritten} event(s) read from Zoom could not be journaled "
                "before the daemon stopped (the journal's storage refused writes): see the "
                "log for their ids"
            )
        log.info("zoomrules stopped")

    @property
    def pipeline(self) -> Pipeline | None:
        return self.runtime.pipeline if self.runtime is not None else None

    @property
    def dispatcher(self) -> Dispatcher | None:
        return self.runtime.pipeline.dispatcher if self.runtime is not None else None

    @property
    def store(self) -> JournalStore | None:
        return self.runtime.store if self.runtime is not None else None

    @property
    def correlations(self) -> Correlations | None:
        runtime = self.runtime
        if runtime is None:
            return None
        if runtime.cluster is not None and runtime.cluster.correlator is not None:
            # A cluster's temporal rules run on the node holding their lease.
            return runtime.cluster.correlator.correlations
        return runtime.feed.correlations if runtime.feed is not None else None

    def readiness(self) -> Readiness:
        """Ready: running, the journal writing, every source delivering
        here or (in a cluster) on another node."""
        if self.runtime is None or not self._ready.is_set():
            return Readiness(False, (STARTING,))
        if self._stop.is_set():
            return Readiness(False, (STOPPING,))
        reasons = []
        if not self.sources:
            reasons.append("no event source is running")
        store = self.runtime.store
        if store is not None and not (journal := store.health()).ok:
            reasons.append(f"journal: {journal.detail}")
        for source in self.sources:
            health = source.health()
            if not (health.up or health.elsewhere):
                reasons.append(f"{source.name}: {health.detail}")
        return Readiness(not reasons, tuple(reasons))

    async def _run(self, config: Config) -> None:
        if config.http is not None:
            # First: a port in use stops the daemon before it reads Zoom.
            self.http = HttpServer(config.http)
            self.http.mount([*health_routes(self), *metrics_routes(self)])
            self.http.mount(status_routes(self))
            self.http.listen()
        try:
            async with self.systemd.running(self):
                await self._run_engine(config)
        finally:
            if self.http is not None:
                self.http.close()

    async def _run_engine(self, config: Config) -> None:
        journal = config.engine.journal
        async with (
            open_services(config) as services,
            running_engine(self.loaded, services, journal=journal) as runtime,
        ):
            self.runtime = runtime
            if config.http is not None and config.http.recent_events:
                runtime.pipeline.keep_recent(config.http.recent_events)  # the status page's
            async with anyio.create_task_group() as tg:
                if self.handle_signals:
                    tg.start_soon(self._signals)
                if self.http is not None:
                    await tg.start(self.http.run)
                    self._serving.set()
                failure = await self._listen(services, runtime)
                tg.cancel_scope.cancel()
            if failure is not None:
                raise failure
            log.info(
                "stopped reading from Zoom; waiting for %d job(s) in flight",
                runtime.pipeline.dispatcher.in_flight,
            )

    @property
    def sources(self) -> list[EventSource]:
        return self._sources.sources

    async def _listen(self, services: Services, runtime: Runtime) -> AuthError | None:
        """Run every event source until stop() or credentials refused at start-up."""
        # Through the journal when it is on: reading a source never waits for actions.
        self._sources = SourceSet(runtime.intake)
        self._services = services
        self.gaps = gaps = ConnectionGaps(runtime.marks)
        _configure_gaps(gaps, self.loaded.config)
        if runtime.cluster is not None:
            # The correlator node learns from these marks whether absences
            # may be decided (engine.correlator.SharedWatch).
            gaps.live_every = LIVE_EVERY
        if runtime.feed is not None:
            # Absences ask the sources whether a gap overlapped their window.
            runtime.feed.watch_sources(gaps)
        sources = self._build_sources(self.loaded.config)
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._announce, len(sources))
                tg.start_soon(gaps.run)
                failure = await self._sources.run(sources, self._stop)
                tg.cancel_scope.cancel()
        finally:
            # Every connection is closed: record when each was last up, so
            # that the next start measures its gap from there.
            with anyio.CancelScope(shield=True), anyio.move_on_after(_MARKS_FLUSH_TIMEOUT):
                await gaps.flush()
        return failure

    def _build_sources(self, config: Config) -> list[EventSource]:
        assert self._services is not None and self.runtime is not None
        cluster, store = self.runtime.cluster, self.runtime.store
        return build_sources(
            config, self._services, gaps=self.gaps, leases=cluster.leases if cluster else None,
            http=self.http, intake=store.health if store is not None else None,
            durable=store.append_durably if store is not None else None,
        )  # fmt: skip

    async def _announce(self, count: int) -> None:
        await anyio.lowlevel.checkpoint()  # once the sources have started
        log.info("zoomrules running: %d rules, %d source(s)", len(self.loaded.rules), count)
        self._ready.set()

    async def _signals(self) -> None:
        with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
            async for signum in signals:
                if signum == signal.SIGHUP:
                    log.info("SIGHUP: reloading rules")
                    await self.reload()
                else:
                    log.info("%s: shutting down", signal.Signals(signum).name)
                    self.stop()


def _configure_gaps(gaps: ConnectionGaps, config: Config) -> None:
    """The `[zoom]` settings of gap events (they change on reload, without reconnecting)."""
    if config.zoom is not None:
        gaps.threshold = config.zoom.gap_threshold
        gaps.mark_every = mark_interval(config.zoom.heartbeat_interval)


async def _no_sink(event: object) -> None:
    raise RuntimeError("the daemon is not running")
