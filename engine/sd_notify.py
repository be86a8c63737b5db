"""systemd's service notifications (sd_notify(3)): ready, status, watchdog, reloading, stopping.

Under a unit with `Type=notify` systemd sets `NOTIFY_SOCKET`, and the
daemon tells it, one datagram each:

- `READY=1` once it runs (rules loaded, journal open, sources started) and
  every source delivers (`DaemonState.readiness()`), or `READY_WAIT`
  seconds after it runs, whichever comes first. Start-up must not hang on
  Zoom: a `systemctl start` that waited for a connection Zoom refuses would
  fail the unit after `TimeoutStartSec` and restart it in a loop, each
  restart asking Zoom for a new token. Whether it delivers is what `STATUS=`
  (and `/-/ready`) says.
- `STATUS=...` whenever the one-line summary changes (checked every
  `STATUS_EVERY` seconds): what `systemctl status` shows.
- `WATCHDOG=1` every half of `WATCHDOG_USEC` (the unit's `WatchdogSec=`),
  from a task of the event loop: a loop that stops turning stops the pings,
  and systemd restarts the daemon. Pings go on until the process ends
  (draining jobs included), as systemd keeps watching while it stops.
- `RELOADING=1` with `MONOTONIC_USEC` (what `Type=notify-reload` of systemd
  253 and later matches against its SIGHUP), then `READY=1`, around a reload.
- `STOPPING=1` when a graceful stop begins.

Without `NOTIFY_SOCKET` nothing is sent. The address is a path or, with a
leading `@`, an abstract socket name.

Written here rather than taken from a library: the protocol is one
datagram of `KEY=value` lines on a Unix socket, documented as a stable
interface with a reference implementation in sd_notify(3) for programs
that do not link libsystemd. `systemd-python` builds against libsystemd's
headers (a C toolchain and libsystemd-dev wherever it is installed), and
`sdnotify` has had no release since 2017; neither knows the event loop
(the send is a non-blocking `sendto` either way).
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from contextlib import asynccontextmanager, contextmanager

import anyio

from engine.daemon_state import DaemonState

__all__ = ["READY_WAIT", "STATUS_EVERY", "SystemdNotifier"]

log = logging.getLogger("zoomrules.systemd")

#: Longest the daemon waits for every source to deliver before it says
#: READY=1 anyway (systemd's default TimeoutStartSec is 90 s).
READY_WAIT = 15.0
#: How often the status line is recomputed (sent only when it changed).
STATUS_EVERY = 1.0
#: How often readiness is checked while waiting to say READY=1.
_READY_POLL = 0.05


class SystemdNotifier:
    """Notifications to systemd at `address`; does nothing when it is None."""

    def __init__(self, address: str | None, *, watchdog: float | None = None) -> None:
        #: As given in NOTIFY_SOCKET (for messages).
        self.address = address
        #: Seconds between watchdog pings (half of WATCHDOG_USEC); None: no pings.
        self.watchdog = watchdog if address is not None else None
        self._target = _socket_address(address) if address is not None else None
        self._sock: socket.socket | None = None
        self._failed = False
        #: READY=1 was sent (and STOPPING=1 not yet).
        self._ready = False
        self._stopping = False
        self._status = ""

    @classmethod
    def from_environment(cls, env: Mapping[str, str]) -> SystemdNotifier:
        """From NOTIFY_SOCKET, WATCHDOG_USEC and WATCHDOG_PID (a disabled
        notifier without NOTIFY_SOCKET; a warning for what cannot be used)."""
        address = env.get("NOTIFY_SOCKET") or None
        if address is not None and not address.startswith(("/", "@")):
            log.warning(
                "NOTIFY_SOCKET=%r: only a socket path or an abstract name (@name) is "
                "supported; not notifying systemd",
                address,
            )
            address = None
        return cls(address, watchdog=_watchdog_interval(env))

    @property
    def enabled(self) -> bool:
        return self._target is not None

    # -- what the daemon says ----------------------------------------------------

    def send(self, *lines: str) -> None:
        """One notification: `KEY=value` lines (nothing if disabled)."""
        if self._target is None:
            return
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
                self._sock.setblocking(False)
            self._sock.sendto("\n".join(lines).encode(), self._target)
        except OSError as exc:
            # Said once: systemd's socket does not come and go, so the
            # first failure is what an operator needs to see.
            if not self._failed:
                self._failed = True
                log.warning(
                    "cannot notify systemd at NOTIFY_SOCKET=%r (%s); going on without",
                    self.address, os.strerror(exc.errno) if exc.errno else exc,
                )  # fmt: skip

    def stopping(self) -> None:
        """A graceful stop begins (once)."""
        if not self._stopping:
            self._stopping = True
            self._ready = False
            self.send("STOPPING=1", "STATUS=stopping")

    @contextmanager
    def reloading(self) -> Iterator[None]:
        """Around a reload: RELOADING=1 first, READY=1 after (only once the
        daemon said READY=1: a reload while it starts does not end start-up)."""
        announce = self._ready
        if announce:
            self.send(
                "RELOADING=1",
                f"MONOTONIC_USEC={time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000}",
                "STATUS=reloading the rule files",
            )
        try:
            yield
        finally:
            if announce and not self._stopping:
                self._status = ""  # said again with READY=1
                self.send("READY=1")

    # -- running ----------------------------------------------------------------

    @asynccontextmanager
    async def running(self, state: DaemonState) -> AsyncIterator[None]:
        """While the daemon runs in the block: READY=1, the status, the
        watchdog; STOPPING=1 at the end if not said before."""
        if not self.enabled:
            yield
            return
        try:
            async with anyio.create_task_group() as tg:
                if self.watchdog is not None:
                    tg.start_soon(self._ping, self.watchdog)
                tg.start_soon(self._report, state)
                try:
                    yield
                finally:
                    tg.cancel_scope.cancel()
        finally:
            self.stopping()
            if self._sock is not None:
                self._sock.close()
                self._sock = None

    async def _ping(self, interval: float) -> None:
        while True:
            self.send("WATCHDOG=1")
            await anyio.sleep(interval)

    async def _report(self, state: DaemonState) -> None:
        """READY=1 (see the module's docstring), then the status as it changes."""
        await _poll(lambda: not state.readiness().starting)
        with anyio.move_on_after(READY_WAIT):
            # Not ready without a source: none started yet, or every one
            # ended (credentials refused: the daemon is about to exit).
            await _poll(
                lambda: (now := state.readiness()).ready and bool(state.sources) or now.stopping
            )
        if self._stopping:
            return
        self._status = status = status_line(state)
        self._ready = True
        self.send("READY=1", f"STATUS={status}")
        while True:
            await anyio.sleep(STATUS_EVERY)
            status = status_line(state)
            if status != self._status and not self._stopping:
                self._status = status
                self.send(f"STATUS={status}")


async def _poll(predicate: Callable[[], bool]) -> None:
    """Return once `predicate()` holds, checking every `_READY_POLL` seconds:
    readiness is made of every part's state, which no one event announces."""
    while True:
        if predicate():
            return
        await anyio.sleep(_READY_POLL)


def status_line(state: DaemonState) -> str:
    """What `systemctl status` shows: sources delivering, rules, events, and
    the first reason the daemon is not ready, if any."""
    readiness = state.readiness()
    if readiness.stopping:
        return "stopping"
    sources = state.sources
    delivering = elsewhere = 0
    for source in sources:
        health = source.health()
        delivering += health.up
        elsewhere += health.elsewhere
    parts = [f"{delivering}/{len(sources)} sources delivering"]
    if elsewhere:
        parts[0] += f" ({elsewhere} on another node)"
    pipeline = state.pipeline
    parts.append(f"{len(state.loaded.rules)} rules")
    parts.append(f"{pipeline.stats.events if pipeline is not None else 0} events")
    line = ", ".join(parts)
    if not state.last_reload_ok:
        line += "; the last reload failed (see the log)"
    if not readiness.ready and readiness.reasons:
        more = len(readiness.reasons) - 1
        line += f"; not ready: {readiness.reasons[0]}" + (f" (+{more} more)" if more else "")
    return line


def _socket_address(address: str) -> str | bytes:
    """NOTIFY_SOCKET as `sendto` takes it: `@name` is the abstract name `\\0name`."""
    if address.startswith("@"):
        return b"\0" + address[1:].encode()
    return address


def _watchdog_interval(env: Mapping[str, str]) -> float | None:
    """Half of WATCHDOG_USEC, if the watchdog is this process's (WATCHDOG_PID)."""
    usec = env.get("WATCHDOG_USEC")
    if not usec:
        return None
    pid = env.get("WATCHDOG_PID")
    if pid and pid != str(os.getpid()):
        return None  # meant for another process (the one that exec'd us kept it)
    try:
        value = int(usec)
    except ValueError:
        value = 0
    if value <= 0:
        log.warning(
            "WATCHDOG_USEC=%r is not a positive whole number of microseconds; "
            "not sending watchdog pings",
            usec,
        )
        return None
    return value / 2 / 1e6
