"""A node's link to its cluster's NATS JetStream: the connection, and the cluster's names.

Every stream, bucket and consumer of a cluster is named after `[cluster]
name`, so several clusters can share one NATS system:

    <name>_EVENTS   stream  <name>.events.in     every Zoom event, once (deduplicated by id)
    <name>_RETRY    stream  <name>.retry.<job>   dead letters re-queued by `dlq retry` (work queue)
    <name>_DLQ      stream  <name>.dlq.<job>     dead letters, one message per job
    <name>_leases   bucket  subscription -> holder (bucket TTL = lease_ttl)
    <name>_nodes    bucket  node -> what it runs (bucket TTL = lease_ttl)
    <name>_progress bucket  job -> next action (for a job taken over mid-way)
    <name>_marks    bucket  name -> time (e.g. when a subscription was last connected)
    <name>_limits   bucket  shared throttle windows and rate budgets
    <name>_correlator   bucket  who runs the temporal rules (a lease; TTL = lease_ttl)
    <name>_correlations bucket  their open correlations, a snapshot (engine.journal.jetstream)

Nothing here acts on events: the journal backend (`engine.journal.jetstream`),
the leases (`engine.leases`) and the shared limits (`engine.shared_limits`)
each take what they need from a `NatsLink`.
"""

from __future__ import annotations

import logging
import ssl
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from typing import Any

import anyio

from engine.config import ClusterConfig, EngineConfig
from engine.errors import JournalError
from engine.logs import LogLimiter
from engine.redact import redact

log = logging.getLogger("zoomrules.cluster")

#: How long connecting to NATS may take at start before the daemon gives up.
CONNECT_TIMEOUT = 20.0
#: Commands that only look at a cluster (`dlq`, `journal stats`, `cluster
#: status`, `replay`) give up sooner: a person or a monitoring script waits.
LOOK_TIMEOUT = 5.0
#: ... and after this many refused attempts per server, not at the timeout:
#: a server that refuses connections does so at once.
LOOK_ATTEMPTS = 2
#: Buckets whose keys have no life of their own are still bounded in time.
_MARK_AGE = 30 * 86400.0
_LIMIT_AGE = 7 * 86400.0
#: NATS's error code for "stream name already in use with a different configuration".
_ALREADY_IN_USE = 10058


@dataclass(frozen=True)
class Names:
    """Every name a cluster uses, from its prefix."""

    prefix: str

    @property
    def events(self) -> str:
        return f"{self.prefix}_EVENTS"

    @property
    def retry(self) -> str:
        return f"{self.prefix}_RETRY"

    @property
    def dlq(self) -> str:
        return f"{self.prefix}_DLQ"

    @property
    def events_subject(self) -> str:
        return f"{self.prefix}.events.in"

    def retry_subject(self, job_id: int) -> str:
        return f"{self.prefix}.retry.{job_id}"

    def dlq_subject(self, job_id: int) -> str:
        return f"{self.prefix}.dlq.{job_id}"

    @property
    def matchers(self) -> str:
        """The durable consumer every node matches events through."""
        return "matchers"

    @property
    def retriers(self) -> str:
        return "retriers"

    def bucket(self, kind: str) -> str:
        return f"{self.prefix}_{kind}"


class NatsLink:
    """One node's connection and JetStream context, with the cluster's settings."""

    def __init__(self, nc: Any, cluster: ClusterConfig, engine: EngineConfig) -> None:
        self.nc = nc
        self.js = nc.jetstream(timeout=5.0)
        self.cluster = cluster
        self.engine = engine
        self.names = Names(cluster.name)
        self._buckets: dict[str, Any] = {}

    @property
    def node(self) -> str:
        return self.cluster.node

    @property
    def connected(self) -> bool:
        return bool(self.nc.is_connected)

    @property
    def connected_url(self) -> str:
        """The server this node talks to now (without credentials)."""
        url = self.nc.connected_url
        # host:port, not a URL: log lines mask URLs (they may hold credentials).
        return f"{url.hostname}:{url.port}" if url is not None else "(none)"

    async def bucket(self, kind: str) -> Any:
        """The key-value bucket `kind` (leases, nodes, progress, marks, limits, firings...)."""
        found = self._buckets.get(kind)
        if found is None:
            found = self._buckets[kind] = await self.js.key_value(self.names.bucket(kind))
        return found

    async def ensure(self) -> None:
        """Create (or bring up to date) every stream, bucket and consumer."""
        from nats.js.api import (
            AckPolicy,
            ConsumerConfig,
            KeyValueConfig,
            RetentionPolicy,
            StorageType,
            StreamConfig,
        )

        names, cluster, engine = self.names, self.cluster, self.engine
        replicas = cluster.replicas
        # Duplicates are found within the journal's window, bounded to a day:
        # the server keeps every id of the window in memory.
        window = max(120.0, min(engine.dedup_window, 86400.0))
        streams = [
            StreamConfig(
                name=names.events, subjects=[names.events_subject],
                retention=RetentionPolicy.LIMITS, max_age=engine.retention,
                duplicate_window=window, storage=StorageType.FILE, num_replicas=replicas,
            ),
            StreamConfig(
                # The window also keeps a temporal rule's firing queued once
                # when a node taking over the rules queues it again.
                name=names.retry, subjects=[f"{names.prefix}.retry.*"],
                retention=RetentionPolicy.WORK_QUEUE, storage=StorageType.FILE,
                duplicate_window=window, num_replicas=replicas,
            ),
            StreamConfig(
                # No max_age: dead letters stay until retried or purged, as
                # in the SQLite journal (retention does not remove them).
                name=names.dlq, subjects=[f"{names.prefix}.dlq.*"],
                retention=RetentionPolicy.LIMITS, max_msgs_per_subject=1,
                storage=StorageType.FILE, num_replicas=replicas,
            ),
        ]  # fmt: skip
        for config in streams:
            await self._stream(config)
        buckets = [
            KeyValueConfig(bucket=names.bucket("leases"), ttl=cluster.lease_ttl,
                           history=1, replicas=replicas),
            KeyValueConfig(bucket=names.bucket("nodes"), ttl=cluster.lease_ttl,
                           history=1, replicas=replicas),
            KeyValueConfig(bucket=names.bucket("progress"), ttl=engine.retention,
                           history=1, replicas=replicas),
            KeyValueConfig(bucket=names.bucket("marks"), ttl=_MARK_AGE, history=1,
                           replicas=replicas),
            KeyValueConfig(bucket=names.bucket("limits"), ttl=_LIMIT_AGE, history=1,
                           replicas=replicas),
            KeyValueConfig(bucket=names.bucket("correlator"), ttl=cluster.lease_ttl,
                           history=1, replicas=replicas),
            # The temporal rules' firings queued, by key: one job per firing
            # for as long as its event is kept (engine.journal.jetstream.store).
            KeyValueConfig(bucket=names.bucket("firings"), ttl=engine.retention,
                           history=1, replicas=replicas),
            # No TTL: a correlation may stay open for days (its window).
            KeyValueConfig(bucket=names.bucket("correlations"), history=1,
                           replicas=replicas),
        ]  # fmt: skip
        for bucket in buckets:
            await self._bucket(bucket)
        consumers = [
            (names.events, ConsumerConfig(
                durable_name=names.matchers, ack_policy=AckPolicy.EXPLICIT,
                ack_wait=cluster.ack_wait, max_deliver=-1, max_ack_pending=20_000,
                num_replicas=replicas)),
            (names.retry, ConsumerConfig(
                durable_name=names.retriers, ack_policy=AckPolicy.EXPLICIT,
                ack_wait=cluster.ack_wait, max_deliver=-1, num_replicas=replicas)),
        ]  # fmt: skip
        for stream, consumer in consumers:
            await self.js.add_consumer(stream, consumer)

    async def _bucket(self, config: Any) -> None:
        """Create a bucket, or bring an existing one to `config` (a changed
        `lease_ttl`, `replicas` or `retention`): NATS refuses to create a
        bucket again with other settings."""
        from nats.js.errors import BadRequestError

        try:
            await self.js.create_key_value(config)
            return
        except BadRequestError as exc:
            if exc.err_code != _ALREADY_IN_USE:
                raise
        info = await self.js.stream_info(f"KV_{config.bucket}")
        stream = info.config
        stream.max_age = config.ttl
        # nats-py's own rule for a bucket's duplicate window.
        stream.duplicate_window = min(config.ttl, 120.0) if config.ttl else 120.0
        stream.num_replicas = config.replicas
        await self.js.update_stream(stream)
        log.info("cluster: bucket %s updated to the configured settings", config.bucket)

    async def require(self) -> None:
        """Raise JournalError unless the cluster's streams exist (a node created them)."""
        from nats.js.errors import NotFoundError

        servers = ", ".join(self.cluster.servers)
        try:
            await self.js.stream_info(self.names.events)
        except NotFoundError:
            raise JournalError(
                f"cluster {self.names.prefix!r} has no streams on NATS at {servers}: no node "
                "has run yet (the first `zoomrules run` creates them). Fix: start a node, "
                "or check [cluster] name"
            ) from None
        except Exception as exc:  # noqa: BLE001 - one clear line for the command
            raise JournalError(
                f"NATS at {servers} does not answer JetStream requests ({_why(exc)}). "
                "Fix: enable JetStream on the servers"
            ) from None

    async def _stream(self, config: Any) -> None:
        from nats.js.errors import NotFoundError

        try:
            await self.js.stream_info(config.name)
        except NotFoundError:
            await self.js.add_stream(config)
            return
        await self.js.update_stream(config)


async def entries(bucket: Any) -> list[Any]:
    """Every live entry of a key-value bucket (none if it is empty)."""
    from nats.js.errors import KeyNotFoundError, NoKeysError

    try:
        keys = await bucket.keys()
    except NoKeysError:
        return []
    found = []
    for key in keys:
        try:
            entry = await bucket.get(key)
        except KeyNotFoundError:  # gone meanwhile
            continue
        if entry.value:
            found.append(entry)
    return found


def _tls(cluster: ClusterConfig) -> ssl.SSLContext | None:
    if not (cluster.tls_ca or cluster.tls_cert):
        return None
    context = ssl.create_default_context(cafile=cluster.tls_ca)
    if cluster.tls_cert:
        context.load_cert_chain(cluster.tls_cert, cluster.tls_key)
    return context


#: nats-py reports each failed reconnect attempt (two a second while NATS is
#: away): one line now and then is enough, and it reconnects by itself.
_error_logs = LogLimiter(log)


def _why(exc: BaseException) -> str:
    return redact(str(exc)) or type(exc).__name__


class _Errors:
    """NATS's error callback: the last error, for the message if connecting
    fails; logged too unless `quiet` (a command says what failed itself, and
    is not told of disconnections either)."""

    def __init__(self, *, quiet: bool) -> None:
        self.quiet = quiet
        self.last: str | None = None

    async def record(self, exc: Exception) -> None:
        self.last = _why(exc)
        if not self.quiet:
            _error_logs.log(logging.WARNING, "error", "NATS: %s", self.last)


async def _disconnected() -> None:
    log.warning("NATS: disconnected; reconnecting")


async def _reconnected() -> None:
    log.info("NATS: reconnected")


def _options(cluster: ClusterConfig, errors: _Errors, *, attempts: int) -> dict[str, Any]:
    options: dict[str, Any] = {
        "servers": list(cluster.servers),
        "name": f"zoomrules {cluster.node}",
        "reconnect_time_wait": 0.5,
        # -1: once connected, reconnect forever (the node waits for NATS
        # rather than dying); the first connect is bounded by the caller.
        "max_reconnect_attempts": attempts,
        "connect_timeout": 2,
        # A bound method: nats-py takes only coroutine functions.
        "error_cb": errors.record,
        "allow_reconnect": True,
    }
    if not errors.quiet:
        options.update(disconnected_cb=_disconnected, reconnected_cb=_reconnected)
    if cluster.credentials:
        options["user_credentials"] = cluster.credentials
    if cluster.user:
        options["user"] = cluster.user
        options["password"] = cluster.password or ""
    if cluster.token:
        options["token"] = cluster.token
    tls = _tls(cluster)
    if tls is not None:
        options["tls"] = tls
    return options


async def _open(cluster: ClusterConfig, timeout: float, attempts: int, *, quiet: bool) -> Any:
    """A connection to one of the cluster's servers (JournalError if none answers in time)."""
    try:
        import nats
    except ImportError:
        raise JournalError(
            "[cluster] needs nats-py, which is not installed. Fix: pip install 'zoomrules[cluster]'"
        ) from None

    errors = _Errors(quiet=quiet)
    nc = None
    failure: str | None = None
    with anyio.move_on_after(timeout):
        try:
            nc = await nats.connect(**_options(cluster, errors, attempts=attempts))
        except Exception as exc:  # noqa: BLE001 - every server refused: said below
            failure = _why(exc)
    if nc is None:
        why = errors.last or failure or f"no answer within {timeout:g}s"
        raise JournalError(
            f"cannot reach NATS at {', '.join(cluster.servers)} ({why}). "
            "Fix: check [cluster] servers, credentials and TLS, and that NATS runs with JetStream"
        )
    return nc


@asynccontextmanager
async def connect(
    cluster: ClusterConfig,
    engine: EngineConfig,
    *,
    timeout: float = CONNECT_TIMEOUT,
    attempts: int = -1,
    create: bool = True,
    quiet: bool = False,
) -> AsyncIterator[NatsLink]:
    """Connect to the cluster's NATS servers for the block (JournalError if they
    cannot be reached within `timeout`, or after `attempts` refusals per server).

    `create`: set up the cluster's streams, buckets and consumers (a node);
    else only check that they exist (a command that looks). `quiet`: NATS's
    errors are not logged (the command reports the one that matters)."""
    nc = await _open(cluster, timeout, attempts, quiet=quiet)
    link = NatsLink(nc, cluster, engine)
    try:
        await (_create(link) if create else link.require())
        yield link
    finally:
        with anyio.CancelScope(shield=True), anyio.move_on_after(5):
            try:
                await nc.close()
            except Exception as exc:  # noqa: BLE001 - closing a connection already lost
                log.debug("NATS: close failed (%s)", exc)


def look(cluster: ClusterConfig, engine: EngineConfig) -> AbstractAsyncContextManager[NatsLink]:
    """A command's connection to look at a cluster: quick to give up, creates
    nothing (JournalError when NATS or the cluster's streams are not there)."""
    return connect(
        cluster, engine, timeout=LOOK_TIMEOUT, attempts=LOOK_ATTEMPTS, create=False, quiet=True
    )


async def _create(link: NatsLink) -> None:
    try:
        await link.ensure()
    except Exception as exc:  # noqa: BLE001 - one clear line, the daemon stops
        raise JournalError(
            f"NATS at {', '.join(link.cluster.servers)} refused the cluster's streams: "
            f"{_why(exc)}. Fix: enable JetStream on the servers; with one server, set "
            "[cluster] replicas = 1"
        ) from None
