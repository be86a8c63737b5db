"""The rules daemon: Zoom WebSocket listeners feeding the pipeline, plus signals.

Shutdown (SIGTERM/SIGINT): stop reading from Zoom first, then give jobs in
flight `[engine] shutdown_grace` to finish, then cancel what is left.
SIGHUP: reload the rule files; an invalid file keeps the old rules and logs
every problem. The WebSocket connections stay up across a reload.
"""

from __future__ import annotations

import gc
import logging
import signal
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path

import anyio
from anyio.abc import TaskGroup

from engine.config import Config
from engine.errors import AuthError, ConfigError, DaemonError
from engine.loader import LoadedRules, load_rules
from engine.pipeline import Pipeline
from engine.problems import Problem
from engine.runtime import Runtime, open_services, running_engine
from engine.services import Services
from engine.sources import EventSource, build_sources

log = logging.getLogger("zoomrules.daemon")


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
        self.sources: list[EventSource] = []
        self.reloads = 0
        self.failed_reloads = 0
        self._stop = anyio.Event()
        self._ready = anyio.Event()

    # -- control (also used by tests and `demo`) ------------------------------

    def stop(self) -> None:
        """Begin a graceful shutdown."""
        self._stop.set()

    async def wait_ready(self) -> None:
        await self._ready.wait()

    async def reload(self) -> bool:
        """Re-read the rule files; keep the old rules if the new ones are invalid."""
        try:
            fresh = await anyio.to_thread.run_sync(lambda: load_rules(self.paths, env=self.env))
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
        old_zoom, new_zoom = self.loaded.config.zoom, fresh.config.zoom
        if old_zoom != new_zoom:
            log.warning("[zoom] settings changed; connections keep the old ones until a restart")
        assert self.runtime is not None
        self.runtime.pipeline.replace_rules(fresh)
        self.loaded = fresh
        self.reloads += 1
        log.info(
            "reloaded %d rules from %s", len(fresh.rules), ", ".join(map(str, fresh.config.files))
        )
        return True

    # -- running --------------------------------------------------------------

    async def run(self) -> None:
        config = self.loaded.config
        if config.zoom is None or not config.zoom.subscriptions:
            raise ConfigError(
                [
                    Problem(
                        None, None, "[zoom]", None,
                        "no subscription to listen to: add a [zoom] section with endpoint, "
                        "client_id and client_secret (or set ZOOM_WS_ENDPOINT, ZOOM_CLIENT_ID "
                        "and ZOOM_CLIENT_SECRET)",
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

    async def _run(self, config: Config) -> None:
        journal = config.engine.journal
        async with (
            open_services(config) as services,
            running_engine(self.loaded, services, journal=journal) as runtime,
        ):
            self.runtime = runtime
            async with anyio.create_task_group() as tg:
                if self.handle_signals:
                    tg.start_soon(self._signals)
                failure = await self._listen(services, runtime)
                tg.cancel_scope.cancel()
            if failure is not None:
                raise failure
            log.info(
                "stopped reading from Zoom; waiting for %d job(s) in flight",
                runtime.pipeline.dispatcher.in_flight,
            )

    async def _listen(self, services: Services, runtime: Runtime) -> AuthError | None:
        """Run every event source until stop() or a fatal auth error."""
        failure: AuthError | None = None

        async def listen(source: EventSource, scope: TaskGroup) -> None:
            nonlocal failure
            try:
                # Through the journal when it is on: reading a source never
                # waits for actions.
                await source.run(runtime.intake)
            except AuthError as exc:
                # Which subscription, what Zoom said, what to check: one line.
                failure = AuthError(f"{source.name}: {exc}")
                log.critical("%s", failure)
                scope.cancel_scope.cancel()

        self.sources = build_sources(self.loaded.config, services)
        async with anyio.create_task_group() as tg:
            for source in self.sources:
                tg.start_soon(listen, source, tg)
            log.info(
                "zoomrules running: %d rules, %d source(s)",
                len(self.loaded.rules),
                len(self.sources),
            )
            self._ready.set()
            tg.start_soon(self._cancel_on_stop, tg)
        return failure

    async def _cancel_on_stop(self, tg: TaskGroup) -> None:
        await self._stop.wait()
        tg.cancel_scope.cancel()

    async def _signals(self) -> None:
        with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
            async for signum in signals:
                if signum == signal.SIGHUP:
                    log.info("SIGHUP: reloading rules")
                    await self.reload()
                else:
                    log.info("%s: shutting down", signal.Signals(signum).name)
                    self.stop()
