"""The daemon's HTTP server: `/-/healthy`, `/-/ready`, a port already in use, and no Nagle delay."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
import httpx
import pytest
from daemon_process import simulator_env

from engine.config import HttpConfig
from engine.daemon import Daemon
from engine.errors import DaemonError
from engine.http_server import HttpServer
from engine.loader import load_rules
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
[http]
listen = "127.0.0.1:PORT"

[[rule]]
name = "started"
on = ["meeting.started"]
  [[rule.action]]
  type = "print"
  message = "started"
"""


@asynccontextmanager
async def daemon_serving(
    tmp_path: Path, sim: Simulator, port: int = 0
) -> AsyncIterator[tuple[Daemon, httpx.AsyncClient]]:
    rules = tmp_path / "rules.toml"
    rules.write_text(RULES.replace("PORT", str(port)))
    env = simulator_env(sim, tmp_path / "state")
    daemon = Daemon([rules], load_rules([rules], env=env), env=env, handle_signals=False)
    async with anyio.create_task_group() as tg:
        tg.start_soon(daemon.run)
        server = await daemon.wait_serving()
        base = f"http://127.0.0.1:{server.port}"
        async with httpx.AsyncClient(base_url=base) as client:
            try:
                yield daemon, client
            finally:
                daemon.stop()


async def _wait_status(client: httpx.AsyncClient, status: int) -> None:
    """Poll `/-/ready` until it answers `status` (the daemon notices in its own time)."""
    with anyio.fail_after(20):
        while (await client.get("/-/ready")).status_code != status:  # noqa: ASYNC110
            await anyio.sleep(0.05)


async def test_ready_is_503_with_the_reason_until_zoom_accepts_the_connection(
    tmp_path: Path,
) -> None:
    async with Simulator() as sim:
        sim.refuse_connections(count=2)
        async with daemon_serving(tmp_path, sim) as (daemon, client):
            assert (await client.get("/-/healthy")).status_code == 200
            await sim.wait_for(lambda: sim.refused_handshakes >= 1, timeout=20)
            refused = await client.get("/-/ready")
            assert refused.status_code == 503
            assert "zoom:default" in refused.text

            await sim.wait_connected(timeout=30)
            await _wait_status(client, 200)
            ready = await client.get("/-/ready")
            assert ready.text == "zoomrules is ready.\n"

            # Zoom goes away: not ready again, saying why.
            sim.refuse_connections(count=1000)
            await sim.live.ws.close(1011, "server error")  # type: ignore[union-attr]
            await sim.wait_disconnected(timeout=20)
            await _wait_status(client, 503)


async def test_a_port_in_use_stops_the_daemon_with_one_clear_error(tmp_path: Path) -> None:
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        async with Simulator() as sim:
            rules = tmp_path / "rules.toml"
            rules.write_text(RULES.replace("PORT", str(port)))
            env = simulator_env(sim, tmp_path / "state")
            daemon = Daemon([rules], load_rules([rules], env=env), env=env, handle_signals=False)
            with pytest.raises(DaemonError, match=f"cannot listen on 127.0.0.1:{port}"):
                await daemon.run()


def test_answers_do_not_wait_for_nagle_s_algorithm() -> None:
    """asyncio turns TCP_NODELAY on for accepted connections only when the
    listening socket says it is TCP; without it, every answer of the server
    waited ~40 ms for the client's delayed ACK (benchmarks/webhook.py)."""
    server = HttpServer(HttpConfig("127.0.0.1", 0))
    server.listen()
    try:
        assert server._sock is not None and server._sock.proto == socket.IPPROTO_TCP
    finally:
        server.close()
