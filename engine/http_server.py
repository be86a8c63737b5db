"""The daemon's one HTTP server: every part that answers HTTP mounts its routes here.

Off unless `[http] listen` is configured. Parts (health checks, metrics,
the status page, the webhook source) each contribute Starlette routes,
before or while it runs (a reload may add or remove a source's); the
daemon runs it in its task group, so it stops with the daemon. The socket is bound before anything is served, so a
port in use is one clear error at start, and port 0 (tests) tells the real
port at once.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
from collections.abc import Iterator, Sequence

import anyio
import uvicorn
from anyio.abc import TaskStatus
from starlette.applications import Starlette
from starlette.routing import BaseRoute

from engine.config import HttpConfig
from engine.errors import DaemonError

log = logging.getLogger("zoomrules.http")

#: How long requests in progress may finish when the daemon stops.
SHUTDOWN_GRACE = 3


class _Server(uvicorn.Server):
    """uvicorn without its own signal handlers: the daemon handles signals."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


class HttpServer:
    """Routes from every part, served on `[http] listen` while `run` runs."""

    def __init__(self, config: HttpConfig) -> None:
        self.config = config
        self.app = Starlette()
        #: The port bound (the configured one, or the OS's choice for 0).
        self.port = config.port
        self._sock: socket.socket | None = None

    def mount(self, routes: Sequence[BaseRoute]) -> None:
        """Serve `routes` from now on."""
        self.app.router.routes.extend(routes)

    def unmount(self, routes: Sequence[BaseRoute]) -> None:
        """Stop serving `routes` (mounted before)."""
        for route in routes:
            self.app.router.routes.remove(route)

    def listen(self) -> None:
        """Bind the socket (DaemonError if it cannot be): before `run`, so a
        port in use stops the daemon with one clear line."""
        family = socket.AF_INET6 if ":" in self.config.host else socket.AF_INET
        try:
            sock = socket.create_server((self.config.host, self.config.port), family=family)
        except OSError as exc:
            why = os.strerror(exc.errno) if exc.errno else str(exc)
            raise DaemonError(
                f"[http] listen: cannot listen on {self.config.host}:{self.config.port}: "
                f"{why}. Fix: choose another port, or stop what uses it"
            ) from None
        # asyncio turns Nagle's algorithm off (TCP_NODELAY) on accepted
        # connections only when the listening socket says it is TCP, and
        # create_server leaves its protocol 0: every answer then waited for
        # the client's delayed ACK (40 ms each on Linux) before its body went.
        self._sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP, sock.detach())
        self.port = self._sock.getsockname()[1]

    def close(self) -> None:
        """Close the socket (if `run` never served it)."""
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Serve until cancelled (after `listen`); started once serving."""
        sock = self._sock
        assert sock is not None, "listen() first"
        config = uvicorn.Config(
            self.app,
            log_config=None,  # the daemon's logging (and its redaction) applies
            access_log=False,
            lifespan="off",
            timeout_graceful_shutdown=SHUTDOWN_GRACE,
        )
        server = _Server(config)
        with sock:
            async with anyio.create_task_group() as tg:
                tg.start_soon(_serve_until_told, server, sock)
                log.info("serving HTTP on %s:%d", self.config.host, self.port)
                task_status.started()
                try:
                    await anyio.sleep_forever()
                finally:
                    # Requests in progress finish (up to SHUTDOWN_GRACE);
                    # the task group waits for that.
                    server.should_exit = True


async def _serve_until_told(server: uvicorn.Server, sock: socket.socket) -> None:
    # Shielded: uvicorn shuts down cleanly only when told (`should_exit`),
    # not when cancelled mid-request.
    with anyio.CancelScope(shield=True):
        await server.serve([sock])
