"""systemd notifications: a fake NOTIFY_SOCKET receives what the daemon tells systemd.

READY=1 with the status once Zoom accepted the connection (or, if it does
not, after `READY_WAIT` anyway), STATUS= as things change, WATCHDOG=1 at
half of WATCHDOG_USEC, RELOADING=1 with MONOTONIC_USEC then READY=1 around
a reload, STOPPING=1 at a stop. In this process and as a real subprocess.
"""

from __future__ import annotations

import logging
import os
import signal
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
import pytest
from anyio.abc import UNIXDatagramSocket
from conftest import write_rules
from daemon_process import daemon_process, simulator_env
from test_journal_support import meeting_events

import engine.sd_notify
from engine.commands.base import fatal_error
from engine.daemon import Daemon
from engine.errors import AuthError
from engine.loader import load_rules
from engine.sd_notify import SystemdNotifier
from engine.simulator import Simulator

pytestmark = pytest.mark.anyio

RULES = """
    version = 1
    [zoom]
    client_id = "${ZOOM_CLIENT_ID}"
    client_secret = "${ZOOM_CLIENT_SECRET}"
    endpoint = "${ZOOM_WS_ENDPOINT}"
    [engine]
    state_dir = "${ZOOMRULES_STATE_DIR}"

    [[rule]]
    name = "started"
    on = ["meeting.started"]
      [[rule.action]]
      type = "print"
      message = "started"
    """

Message = dict[str, str]


class FakeSystemd:
    """A NOTIFY_SOCKET: every datagram received, as its KEY=value fields."""

    def __init__(self, sock: UNIXDatagramSocket, address: str) -> None:
        self.sock = sock
        self.address = address
        self.messages: list[Message] = []
        self._changed = anyio.Event()

    async def receive(self) -> None:
        async for data, _ in self.sock:
            fields = dict(line.split("=", 1) for line in data.decode().splitlines())
            self.messages.append(fields)
            self._changed.set()
            self._changed = anyio.Event()

    def said(self, key: str, value: str | None = None) -> list[Message]:
        return [m for m in self.messages if key in m and (value is None or m[key] == value)]

    def index(self, key: str, value: str, after: int = -1) -> int:
        """Where the first message with `key=value` after `after` is (-1: none)."""
        for position, message in enumerate(self.messages):
            if position > after and message.get(key) == value:
                return position
        return -1

    async def wait_for(self, check: Callable[[], bool], timeout: float = 20) -> None:
        try:
            with anyio.fail_after(timeout):
                while not check():
                    await self._changed.wait()
        except TimeoutError:
            raise AssertionError(f"systemd was never told; it got {self.messages}") from None


@asynccontextmanager
async def fake_systemd(address: str) -> AsyncIterator[FakeSystemd]:
    bind = b"\0" + address[1:].encode() if address.startswith("@") else address
    sock = await anyio.create_unix_datagram_socket(local_path=bind)
    async with sock, anyio.create_task_group() as tg:
        systemd = FakeSystemd(sock, address)
        tg.start_soon(systemd.receive)
        try:
            yield systemd
        finally:
            tg.cancel_scope.cancel()


def abstract_name() -> str:
    return f"@zoomrules-test-{os.getpid()}-{uuid.uuid4().hex[:8]}"


async def test_ready_status_watchdog_reload_and_stop(tmp_path: Path) -> None:
    async with Simulator() as sim, fake_systemd(str(tmp_path / "notify")) as systemd:
        rules = write_rules(tmp_path, RULES)
        env = simulator_env(
            sim, tmp_path / "state",
            NOTIFY_SOCKET=systemd.address, WATCHDOG_USEC="200000", WATCHDOG_PID=str(os.getpid()),
        )  # fmt: skip
        daemon = Daemon([rules], load_rules([rules], env=env), env=env, handle_signals=False)
        async with anyio.create_task_group() as tg:
            tg.start_soon(daemon.run)
            await systemd.wait_for(lambda: bool(systemd.said("READY", "1")))
            ready = systemd.said("READY", "1")[0]
            assert ready["STATUS"] == "1/1 sources delivering, 1 rules, 0 events"
            assert sim.accepted_connections == 1  # READY=1 came once Zoom accepted it

            # Pinged every 0.1 s (half of 0.2 s): a few while we wait for them.
            await systemd.wait_for(lambda: len(systemd.said("WATCHDOG", "1")) >= 5)

            await sim.send_events(meeting_events(2))
            await systemd.wait_for(
                lambda: bool(systemd.said("STATUS", "1/1 sources delivering, 1 rules, 2 events"))
            )

            before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
            assert await daemon.reload()
            reloading = systemd.index("RELOADING", "1")
            assert reloading >= 0
            assert int(systemd.messages[reloading]["MONOTONIC_USEC"]) >= before
            await systemd.wait_for(lambda: systemd.index("READY", "1", after=reloading) > 0)

            daemon.stop()
        assert systemd.said("STOPPING", "1")
        assert systemd.said("STOPPING", "1")[0]["STATUS"] == "stopping"
        assert len(systemd.said("STOPPING")) == 1


async def test_ready_after_a_while_when_zoom_refuses_with_the_reason_in_the_status(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Start-up must not wait for Zoom: READY=1 comes after READY_WAIT anyway.
    monkeypatch.setattr(engine.sd_notify, "READY_WAIT", 0.5)
    async with Simulator() as sim, fake_systemd(abstract_name()) as systemd:
        sim.refuse_connections(count=1000)
        rules = write_rules(tmp_path, RULES)
        env = simulator_env(sim, tmp_path / "state", NOTIFY_SOCKET=systemd.address)
        daemon = Daemon([rules], load_rules([rules], env=env), env=env, handle_signals=False)
        async with anyio.create_task_group() as tg:
            tg.start_soon(daemon.run)
            await systemd.wait_for(lambda: bool(systemd.said("READY", "1")))
            status = systemd.said("READY", "1")[0]["STATUS"]
            assert status.startswith("0/1 sources delivering, 1 rules, 0 events; not ready: ")
            assert "zoom:default: handshake refused with HTTP 503" in status
            assert not systemd.said("WATCHDOG")  # no WATCHDOG_USEC: no pings
            daemon.stop()
        assert systemd.said("STOPPING", "1")


async def test_a_fatal_error_still_tells_systemd_stopping(
    tmp_path: Path,
) -> None:
    async with Simulator() as sim, fake_systemd(abstract_name()) as systemd:
        sim.fail_oauth(count=1, status=401)
        rules = write_rules(tmp_path, RULES)
        env = simulator_env(sim, tmp_path / "state", NOTIFY_SOCKET=systemd.address)
        daemon = Daemon([rules], load_rules([rules], env=env), env=env, handle_signals=False)
        with pytest.raises(BaseException) as raised:  # noqa: B017 - what the CLI reads of it, below
            await daemon.run()
        # What the command line reads to exit with status 3 (credentials).
        assert isinstance(fatal_error(raised.value), AuthError)
        await systemd.wait_for(lambda: bool(systemd.said("STOPPING", "1")))
        assert not systemd.said("READY")


async def test_the_daemon_process_notifies_systemd(tmp_path: Path) -> None:
    async with Simulator() as sim, fake_systemd(abstract_name()) as systemd:
        rules = write_rules(tmp_path, RULES)
        env = simulator_env(
            sim, tmp_path / "state", NOTIFY_SOCKET=systemd.address, WATCHDOG_USEC="400000"
        )
        async with daemon_process(["run", "-c", str(rules)], env) as daemon:
            await systemd.wait_for(lambda: bool(systemd.said("READY", "1")), timeout=30)
            await systemd.wait_for(lambda: len(systemd.said("WATCHDOG", "1")) >= 3)
            daemon.send_signal(signal.SIGHUP)
            await systemd.wait_for(lambda: bool(systemd.said("RELOADING", "1")))
            reloading = systemd.index("RELOADING", "1")
            await systemd.wait_for(lambda: systemd.index("READY", "1", after=reloading) > 0)
            assert await daemon.stop() == 0
        assert systemd.said("STOPPING", "1")


def test_nothing_is_sent_without_notify_socket() -> None:
    notifier = SystemdNotifier.from_environment({"WATCHDOG_USEC": "200000"})
    assert not notifier.enabled
    assert notifier.watchdog is None
    notifier.send("READY=1")  # nothing to send it to, and no error


def test_what_cannot_be_used_is_said(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, "zoomrules.systemd")
    vsock = SystemdNotifier.from_environment({"NOTIFY_SOCKET": "vsock:2:1234"})
    assert not vsock.enabled
    assert "NOTIFY_SOCKET='vsock:2:1234': only a socket path or an abstract name" in caplog.text

    bad = SystemdNotifier.from_environment({"NOTIFY_SOCKET": "@x", "WATCHDOG_USEC": "soon"})
    assert bad.enabled and bad.watchdog is None
    assert "WATCHDOG_USEC='soon' is not a positive whole number of microseconds" in caplog.text

    # The watchdog of another process (WATCHDOG_PID): not ours to ping.
    other = SystemdNotifier.from_environment(
        {"NOTIFY_SOCKET": "@x", "WATCHDOG_USEC": "200000", "WATCHDOG_PID": str(os.getpid() + 1)}
    )
    assert other.watchdog is None
    ours = SystemdNotifier.from_environment(
        {"NOTIFY_SOCKET": "@x", "WATCHDOG_USEC": "200000", "WATCHDOG_PID": str(os.getpid())}
    )
    assert ours.watchdog == pytest.approx(0.1)


def test_a_socket_that_is_not_there_is_said_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, "zoomrules.systemd")
    notifier = SystemdNotifier.from_environment({"NOTIFY_SOCKET": str(tmp_path / "gone")})
    notifier.send("READY=1")
    notifier.send("STATUS=still")
    assert caplog.text.count("cannot notify systemd at NOTIFY_SOCKET=") == 1


def test_the_shipped_unit_is_notify_with_a_watchdog() -> None:
    unit = (Path(__file__).resolve().parents[1] / "contrib" / "zoomrules.service").read_text()
    settings = {
        key: value
        for key, _, value in (line.partition("=") for line in unit.splitlines())
        if not key.startswith("#")
    }
    assert settings["Type"] == "notify"
    assert settings["NotifyAccess"] == "main"
    assert settings["WatchdogSec"] == "30"
    # What the unit had before stays: no restart on a bad configuration or credentials.
    assert settings["RestartPreventExitStatus"] == "2 3"
    assert settings["ExecReload"] == "/bin/kill -HUP $MAINPID"
