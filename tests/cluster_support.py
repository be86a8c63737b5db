"""Helpers for the cluster tests (no tests of its own).

- `cluster_rules`: a rule file with `[cluster]` whose rule sends one HTTP
  request per action to a `Target`, with `zoomrules.event_id` as its
  idempotency key;
- `Node`: one `zoomrules run` process of a cluster (a `DaemonProcess` with
  its own node name), and who holds what, read from its log.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path

from conftest import write_rules
from daemon_process import DaemonProcess, daemon_process, simulator_env
from test_journal_support import http_actions

from engine.simulator import Simulator

#: Short enough that failovers happen within a test, long enough for a
#: loaded CI machine to renew in time.
LEASE_TTL = "3s"
ACK_WAIT = "3s"


def _subscriptions(sims: Sequence[Simulator]) -> str:
    if len(sims) == 1:
        return 'endpoint = "${ZOOM_WS_ENDPOINT}"\n'
    return "".join(
        f"""
[[zoom.subscription]]
name = "sub-{index}"
endpoint = "{sim.ws_endpoint}"
oauth_url = "{sim.oauth_url}"
"""
        for index, sim in enumerate(sims)
    )


def cluster_rules(
    directory: Path,
    target: str,
    servers: Sequence[str],
    *,
    sims: Sequence[Simulator] = (),
    paths: Sequence[str] = ("a",),
    name: str = "t",
    lease_ttl: str = LEASE_TTL,
    ack_wait: str = ACK_WAIT,
    replicas: int = 1,
    engine: str = "",
    zoom: str = "",
    rule: str = "",
    action: str = "",
    extra: str = "",
) -> Path:
    """A cluster's rule file; with several `sims`, one subscription on each.
    `zoom`, `engine` and `rule` add lines to their sections; `extra` adds
    rules after the first."""
    actions = http_actions(target, paths, action)
    server_list = ", ".join(f'"{url}"' for url in servers)
    zoom_endpoint = "" if len(sims) > 1 else 'endpoint = "${ZOOM_WS_ENDPOINT}"'
    subscriptions = _subscriptions(sims) if len(sims) > 1 else ""
    text = f"""
version = 1

[zoom]
client_id     = "${{ZOOM_CLIENT_ID}}"
client_secret = "${{ZOOM_CLIENT_SECRET}}"
{zoom_endpoint}
{zoom}
{subscriptions}

[cluster]
servers   = [{server_list}]
name      = "{name}"
lease_ttl = "{lease_ttl}"
ack_wait  = "{ack_wait}"
replicas  = {replicas}

[engine]
state_dir = "/nonexistent/overridden/by/ZOOMRULES_STATE_DIR"
retry_backoff = "10ms"
retry_backoff_cap = "50ms"
shutdown_grace = "2s"
{engine}

[[rule]]
name = "started"
on   = ["meeting.started"]
{rule}
{actions}
{extra}
"""
    return write_rules(directory, text, "cluster.toml")


_TOOK = re.compile(r"(\S+): this node took the lease")
_SERVING = re.compile(r"serving HTTP on 127\.0\.0\.1:(\d+)")


class Node:
    """One node of a test cluster: `zoomrules run` under its own name."""

    def __init__(self, name: str, daemon: DaemonProcess) -> None:
        self.name = name
        self.daemon = daemon

    def takeovers(self, subscription: str = "") -> int:
        """Times this node took a lease (of `subscription`, if named), from its log."""
        return sum(
            1
            for line in self.daemon.stderr
            if (found := _TOOK.search(line)) and subscription in found.group(1)
        )

    async def wait_holding(
        self, subscription: str = "", count: int = 1, timeout: float = 30
    ) -> None:
        await self.daemon.wait_for(lambda: self.takeovers(subscription) >= count, timeout)

    def log(self) -> str:
        return self.daemon.output()

    def http_port(self) -> int:
        """The port of its `[http]` server (`listen = "127.0.0.1:0"`), from its log."""
        found = _SERVING.search(self.log())
        assert found is not None, f"{self.name} serves no HTTP:\n{self.log()}"
        return int(found.group(1))


def _with_servers(rules: Path, name: str, servers: Sequence[str]) -> Path:
    """A copy of `rules` for node `name` that lists only `servers`."""
    listed = ", ".join(f'"{url}"' for url in servers)
    text = re.sub(r"servers\s*=\s*\[[^\]]*\]", f"servers = [{listed}]", rules.read_text())
    path = rules.with_name(f"{name}.toml")
    path.write_text(text)
    return path


@asynccontextmanager
async def cluster_nodes(
    count: int,
    rules: Path,
    sim: Simulator,
    state: Path,
    *,
    start: bool = True,
    servers: Sequence[Sequence[str]] | None = None,
    env: Mapping[str, str] | None = None,
) -> AsyncIterator[list[Node]]:
    """`count` nodes (node-1, node-2, ...) running `rules`; each is killed on exit.

    `servers[i]`, when given, replaces the rule file's NATS servers for node
    i (through a rule file of its own); `env` is more of every node's environment."""
    async with AsyncExitStack() as stack:
        nodes = []
        for index in range(count):
            name = f"node-{index + 1}"
            node_rules = rules if servers is None else _with_servers(rules, name, servers[index])
            node_env = simulator_env(sim, state / name, ZOOMRULES_NODE=name, **(env or {}))
            daemon = await stack.enter_async_context(
                daemon_process(
                    ["run", "--log-level", "debug", "-c", str(node_rules)], node_env, start=start
                )
            )
            nodes.append(Node(name, daemon))
        try:
            yield nodes
        finally:
            # Each node's whole log, for a failure's post-mortem.
            for node in nodes:
                log = state / f"{node.name}.log"
                log.parent.mkdir(parents=True, exist_ok=True)
                log.write_text(node.log())
