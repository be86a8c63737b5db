"""Reading rule files: TOML, `${VAR}` interpolation, structure and type checks.

This module checks everything that needs no plugin: sections, keys, types,
durations, environment variables. Expressions, templates and action
parameters are checked when the rules are compiled (`engine.ruleset`),
which reports its problems in the same form, so a broken file shows all
its mistakes at once.
"""

from __future__ import annotations

import importlib.util
import os
import re
import socket
import tomllib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal, TypeVar

import tomli

from engine.durations import Rate, parse_duration, parse_rate, parse_size
from engine.errors import ConfigError
from engine.events import DEFAULT_PER_DELIVERY
from engine.nesting import MAX_TOML_NESTING, toml_too_deep
from engine.problems import Problem, did_you_mean
from engine.redact import register_secret
from engine.sourcemap import Locator, SourceMap

DEFAULT_OAUTH_URL = "https://zoom.us/oauth/token"
DEFAULT_API_BASE_URL = "https://api.zoom.us/v2"
DEFAULT_STATE_DIR = "/var/lib/zoomrules"

#: Keys of `[[rule.action]]` that the engine handles for every action type.
COMMON_ACTION_KEYS = ("type", "timeout", "retries", "continue_on_error")

_CLUSTER_NAME = re.compile(r"[A-Za-z0-9_-]+")
_WEBHOOK_NAME = re.compile(r"[A-Za-z0-9._-]+")
#: A URL path of the characters RFC 3986 allows unescaped (no `%`, `?`,
#: `#`, and no `{}`, which Starlette would read as parameters).
_URL_PATH = re.compile(r"/[A-Za-z0-9._~!$&'()*+,;=:@/-]*")

_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}|\$\$")


@dataclass(frozen=True)
class Subscription:
    """One Zoom event subscription = one WebSocket connection."""

    name: str
    endpoint: str
    client_id: str
    client_secret: str = field(repr=False)
    account_id: str | None
    oauth_url: str


#: How long Zoom keeps retrying a webhook delivery it got no 200/204 for:
#: three retries, 5, 20 and 60 minutes apart (each after the one before).
#: A retry within `[engine] dedup_window` of the first delivery is dropped.
ZOOM_WEBHOOK_RETRY_SPAN = (5 + 20 + 60) * 60.0


@dataclass(frozen=True)
class WebhookConfig:
    """One `[zoom.webhook]` endpoint: where Zoom POSTs events, and the
    secret token it signs them with."""

    name: str
    #: The URL path served on the daemon's HTTP server (`[http] listen`).
    path: str
    secret_token: str = field(repr=False)
    #: Largest request body read; a larger one is refused unread (413).
    max_body: int = 1 << 20
    #: A request whose `x-zm-request-timestamp` is further than this from
    #: now (past or future, seconds) is refused: a replayed request.
    max_age: float = 300.0


@dataclass(frozen=True)
class ZoomConfig:
    #: The WebSocket subscriptions; none when only webhooks deliver.
    subscriptions: tuple[Subscription, ...]
    api_base_url: str = DEFAULT_API_BASE_URL
    heartbeat_interval: float = 30.0
    max_frame_size: int = 1 << 20
    api_rate: Rate | None = None
    #: A subscription without a connection for at least this long (seconds)
    #: emits `zoomrules.connection_gap` once it is back; None: never.
    gap_threshold: float | None = 10.0
    #: Webhook endpoints (`[zoom.webhook]`), served by the daemon's HTTP server.
    webhooks: tuple[WebhookConfig, ...] = ()

    @property
    def default(self) -> Subscription:
        """The subscription whose credentials the Zoom API actions use
        (check `subscriptions` first: webhooks alone have none)."""
        return self.subscriptions[0]


@dataclass(frozen=True)
class EngineConfig:
    state_dir: Path = Path(DEFAULT_STATE_DIR)
    max_concurrency: int = 32
    plugins: tuple[str, ...] = ()
    shutdown_grace: float = 10.0
    evaluator: str = "compiled"
    action_timeout: float = 30.0
    action_retries: int = 3
    retry_backoff: float = 1.0
    retry_backoff_cap: float = 60.0
    journal: bool = True
    retention: float = 7 * 86400.0
    dedup_window: float = 86400.0
    #: Which `engine.journal` backend keeps the journal.
    journal_backend: str = "sqlite"
    #: Bytes of events (their JSON) held in memory while not yet journaled;
    #: past this, intake waits (the socket is not read).
    journal_buffer: int = 64 << 20
    #: Fields Zoom varies between deliveries of one occurrence, left out of
    #: the event's id: event-name glob -> dotted paths (see engine.events).
    per_delivery_fields: tuple[tuple[str, tuple[str, ...]], ...] = DEFAULT_PER_DELIVERY


@dataclass(frozen=True)
class ClusterConfig:
    """`[cluster]`: several daemons sharing NATS JetStream (docs/cluster.md)."""

    servers: tuple[str, ...]
    #: Prefix of every stream, bucket and consumer of this cluster.
    name: str = "zoomrules"
    #: This daemon's name among the nodes (default: the host's name).
    node: str = ""
    #: How long a lease on a subscription lasts without renewal: a standby
    #: takes over at most this long after its holder died.
    lease_ttl: float = 15.0
    #: Replicas of every stream and bucket (1 for a single NATS server).
    replicas: int = 1
    #: How long a node may hold an event without news before another node
    #: takes it over (it says "in progress" every third of this while busy).
    ack_wait: float = 30.0
    credentials: str | None = None
    user: str | None = None
    password: str | None = field(default=None, repr=False)
    token: str | None = field(default=None, repr=False)
    tls_ca: str | None = None
    tls_cert: str | None = None
    tls_key: str | None = None


#: Settings whose `${VAR}` values operators need to read in logs: paths,
#: durations and names, not credentials.
_PLAIN_CLUSTER_KEYS = frozenset(
    {"servers", "name", "node", "lease_ttl", "replicas", "ack_wait", "credentials", "tls"}
)


def _host_port(text: str) -> tuple[str, int] | None:
    """("host", port) of "host:port" or "[v6]:port"; None if it is not one."""
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        return None
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        return None  # a bare IPv6 address: its port would be ambiguous
    return host, int(port)


#: `[zoom.webhook]` settings that are not secrets (the secret token is).
_PLAIN_WEBHOOK_KEYS = frozenset({"name", "path", "max_body", "max_age"})


def _plain_setting(path: tuple[Any, ...]) -> bool:
    if not path:
        return False
    if path[0] in ("engine", "http"):
        return True
    if path[:2] == ("zoom", "webhook"):
        return path[-1] in _PLAIN_WEBHOOK_KEYS
    return path[0] == "cluster" and len(path) > 1 and path[1] in _PLAIN_CLUSTER_KEYS


#: Most events the status page may keep: each is explained again whenever
#: the page is shown.
MAX_RECENT_EVENTS = 1000


@dataclass(frozen=True)
class HttpConfig:
    """`[http]`: the daemon's HTTP server (metrics, health, status page, webhooks)."""

    host: str = "127.0.0.1"
    port: int = 9464
    #: How many of the last events the status page explains (0: none kept).
    recent_events: int = 50


@dataclass(frozen=True)
class ThrottleSpec:
    key: str
    limit: int
    per: float


#: The temporal forms a rule may take (docs/correlation.md), by the key it is
#: written under: `unless` (absence), `then` (sequence), `count`.
ABSENCE, SEQUENCE, COUNT = "absence", "sequence", "count"
TEMPORAL_FORMS: dict[str, str] = {"unless": ABSENCE, "then": SEQUENCE, "count": COUNT}
#: What an absence rule does when a connection gap overlaps its window.
GAP_CHOICES = ("mark", "suppress", "fire")
#: How long past a window's end its state waits for events that happened in
#: it but arrive late (Zoom's event time, `event_ts`, is when it happened).
DEFAULT_GRACE = 10.0
#: Open correlations one rule keeps at most; past it the oldest is dropped.
DEFAULT_MAX_OPEN = 100_000


@dataclass(frozen=True)
class CorrelationSpec:
    """A rule's temporal form: after the opening event (the rule's `on` and
    `when`), what it waits for, counts, or must not see, per value of `key`."""

    #: ABSENCE, SEQUENCE or COUNT.
    form: str
    #: The key it is written under ("unless", "then", "count"), for messages.
    table: str
    #: The correlation key, a JMESPath expression over the opening event.
    key: str
    #: The window, in seconds of event time from the opening event.
    within: float
    #: `unless` / `then`: the follow-up event's names (globs), condition, and
    #: key expression (None: the rule's `key`).
    follow_on: tuple[str, ...] = ()
    follow_when: str | None = None
    follow_key: str | None = None
    #: `count`: how many events within the window fire the rule.
    times: int = 0
    grace: float = DEFAULT_GRACE
    #: `unless`: one of GAP_CHOICES.
    on_gap: str = "mark"
    max_open: int = DEFAULT_MAX_OPEN


@dataclass(frozen=True)
class ActionSpec:
    type: str
    params: dict[str, Any]
    timeout: float | None  # None: [engine] action_timeout
    retries: int | None  # None: [engine] action_retries
    continue_on_error: bool
    index: int
    #: Parameters whose `${VAR}` was missing (already reported; not checked again).
    unresolved: frozenset[str] = frozenset()
    #: Parameters holding a placeholder for a `${VAR}` left unset while
    #: checking (`missing_env="placeholder"`): compiled as they are, not
    #: type-checked, and the action's own validation is skipped (warned).
    placeholders: frozenset[str] = frozenset()
    locator: Locator | None = field(default=None, compare=False, repr=False)

    @property
    def line(self) -> int | None:
        return self.locator.line() if self.locator else None


@dataclass(frozen=True)
class RuleSpec:
    name: str
    on: tuple[str, ...]
    when: str | None
    enabled: bool
    stop: bool
    throttle: ThrottleSpec | None
    description: str
    actions: tuple[ActionSpec, ...]
    file: Path | None
    index: int  # position among all rules, file order
    locator: Locator | None = field(default=None, compare=False, repr=False)
    #: Set for a temporal rule (`unless`, `then` or `count`, with `key`).
    correlation: CorrelationSpec | None = None

    @property
    def line(self) -> int | None:
        return self.locator.line() if self.locator else None

    def key_line(self, key: str) -> int | None:
        """Line of a key as messages name it ("when", "action[1].body", ...)."""
        return self.locator.line(key) if self.locator else None

    @property
    def where(self) -> str:
        # A rule without a name is shown by its position ("rule #2").
        return f"rule {self.name}" if self.name.startswith("#") else f"rule '{self.name}'"


@dataclass(frozen=True)
class Config:
    files: tuple[Path, ...]
    zoom: ZoomConfig | None
    engine: EngineConfig
    notifiers: dict[str, tuple[str, ...]]
    rules: tuple[RuleSpec, ...]
    #: `[cluster]`, when several daemons share NATS JetStream; None: one process.
    cluster: ClusterConfig | None = None
    #: `[http]`, when the daemon serves HTTP; None: no server.
    http: HttpConfig | None = None
    #: Things worth knowing that do not stop the files from being used
    #: (e.g. a `${VAR}` left unset while checking): `check --strict` fails on them.
    warnings: tuple[Problem, ...] = ()
    #: Where each `[notifiers]` name is written: name -> (file, line).
    notifier_lines: dict[str, tuple[Path, int | None]] = field(default_factory=dict)

    def notifier_where(self, name: str) -> tuple[Path | None, int | None]:
        """The file and line of a `[notifiers]` name (None, None if unknown)."""
        return self.notifier_lines.get(name, (None, None))


# --------------------------------------------------------------------------
# reading files


def expand_paths(paths: Sequence[str | Path]) -> list[Path]:
    """Files named directly, plus `*.toml` (sorted) in each directory named."""
    out: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            out.extend(sorted(p for p in path.glob("*.toml") if p.is_file()))
        else:
            out.append(path)
    return out


#: What to do with a `${VAR}` whose variable is unset (and has no default):
#: "error" (running: the value is needed) or "placeholder" (checking or
#: testing without the production secrets: keep `${VAR}` as the value, warn).
MissingEnv = Literal["error", "placeholder"]


def read_config(
    paths: Sequence[str | Path],
    env: Mapping[str, str] | None = None,
    *,
    missing_env: MissingEnv = "error",
) -> tuple[Config, list[Problem]]:
    """Read and check the rule files; returns the config and every problem found.

    The returned config is only meaningful when the problem list is empty.
    """
    env = os.environ if env is None else env
    files = expand_paths(paths)
    problems: list[Problem] = []
    if not files:
        problems.append(Problem(None, None, "command line", None, "no rule files found"))
    builder = _Builder(env, problems, missing_env)
    for path in files:
        builder.add_file(path)
    builder.check_together()
    problems.sort(key=lambda p: (str(p.file), p.line or 0))
    return builder.finish(tuple(files)), problems


def load_config(paths: Sequence[str | Path], env: Mapping[str, str] | None = None) -> Config:
    config, problems = read_config(paths, env)
    if problems:
        raise ConfigError(problems)
    return config


def parse_toml(text: str) -> dict[str, Any]:
    """`tomllib.loads(text)`, three times faster.

    `tomli` 2.2 and 2.3 are the TOML 1.0 parser the standard library's
    `tomllib` was made from, compiled with mypyc (later versions read
    TOML 1.1, which `tomllib` here rejects). A text it cannot read goes to
    `tomllib`, so a broken file's error is the standard library's own.
    """
    try:
        return tomli.loads(text)
    except Exception:  # noqa: BLE001 - tomllib decides, and words the error
        return tomllib.loads(text)


# --------------------------------------------------------------------------
# the checker


@dataclass
class _Ctx:
    """Where we are while checking: for messages."""

    file: Path
    smap: SourceMap
    where: str
    path: tuple[str | int, ...]
    key_prefix: str = ""


class _Builder:
    def __init__(
        self, env: Mapping[str, str], problems: list[Problem], missing_env: MissingEnv = "error"
    ) -> None:
        self.env = env
        self.problems = problems
        self.missing_env = missing_env
        self.warnings: list[Problem] = []
        #: Keys holding a placeholder for an unset ${VAR} (placeholder mode).
        self.placeholder_paths: set[tuple[Path, tuple[str | int, ...]]] = set()
        self.notifier_lines: dict[str, tuple[Path, int | None]] = {}
        self.zoom: ZoomConfig | None = None
        self.zoom_file: Path | None = None
        self.cluster: ClusterConfig | None = None
        self.cluster_file: Path | None = None
        self.http: HttpConfig | None = None
        self.http_file: Path | None = None
        #: Where the first webhook is written (for problems found with the other sections).
        self.webhook_ctx: _Ctx | None = None
        self.engine: EngineConfig | None = None
        self.engine_file: Path | None = None
        self.engine_ctx: _Ctx | None = None
        self.notifiers: dict[str, tuple[str, ...]] = {}
        self.rules: list[RuleSpec] = []
        #: Rule name -> where it was first defined (file, line).
        self.rule_names: dict[str, tuple[Path, int | None]] = {}
        #: Keys whose ${VAR} was missing: later checks of them stay quiet.
        self.env_failed: set[tuple[Path, tuple[str | int, ...]]] = set()

    # -- reporting -----------------------------------------------------------

    def problem(self, ctx: _Ctx, key: str | int | None, message: str) -> None:
        found = self._problem(ctx, key, message)
        if found is not None:
            self.problems.append(found)

    def warn(self, ctx: _Ctx, key: str | int | None, message: str) -> None:
        """A problem that does not stop the files from being used (`check --strict` fails)."""
        found = self._problem(ctx, key, message)
        if found is not None:
            self.warnings.append(found)

    def _problem(self, ctx: _Ctx, key: str | int | None, message: str) -> Problem | None:
        path = ctx.path + ((key,) if key is not None else ())
        if (ctx.file, path) in self.env_failed:
            return None  # the missing environment variable was already reported
        shown = None if key is None else f"{ctx.key_prefix}{key}"
        return Problem(ctx.file, ctx.smap.line_of(path), ctx.where, shown, message)

    # -- files ---------------------------------------------------------------

    def add_file(self, path: Path) -> None:
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            self.problems.append(Problem(path, None, "file", None, f"cannot read: {exc.strerror}"))
            return
        except UnicodeDecodeError as exc:
            self.problems.append(Problem(path, None, "file", None, f"not UTF-8: {exc}"))
            return
        deep = toml_too_deep(text)
        if deep is not None:
            self.problems.append(
                Problem(
                    path, deep, "TOML syntax", None,
                    f"arrays or inline tables nested more than {MAX_TOML_NESTING} levels deep",
                )
            )  # fmt: skip
            return
        try:
            data = parse_toml(text)
        except RecursionError:  # the scan above makes this unreachable; kept as a net
            self.problems.append(Problem(path, None, "TOML syntax", None, "nested too deeply"))
            return
        except tomllib.TOMLDecodeError as exc:
            line = re.search(r"line (\d+)", str(exc))
            self.problems.append(
                Problem(path, int(line.group(1)) if line else None, "TOML syntax", None, str(exc))
            )
            return
        smap = SourceMap.scan(text)
        top = _Ctx(path, smap, "top level", ())
        self._raw = data
        if _may_hold_dollar(text):
            data = self.interpolate(data, top, ())
        self.check_top(data, top)

    def interpolate(self, value: Any, ctx: _Ctx, path: tuple[str | int, ...]) -> Any:
        """Replace `${VAR}` / `${VAR:-default}` in every string; `$$` is a literal `$`."""
        if isinstance(value, str):
            return self._interpolate_str(value, ctx, path)
        if isinstance(value, dict):
            return {k: self.interpolate(v, ctx, path + (k,)) for k, v in value.items()}
        if isinstance(value, list):
            return [self.interpolate(v, ctx, path + (i,)) for i, v in enumerate(value)]
        return value

    def _interpolate_str(self, text: str, ctx: _Ctx, path: tuple[str | int, ...]) -> str:
        if "$" not in text:
            return text

        def replace(match: re.Match[str]) -> str:
            if match.group(0) == "$$":
                return "$"
            name, default = match.group(1), match.group(2)
            value = self.env.get(name)
            if value is None or (value == "" and default is not None):
                if default is not None:
                    return default
                where = _describe_path(path, getattr(self, "_raw", None))
                if self.missing_env == "placeholder":
                    # Checked without it: the key keeps `${NAME}` and its own
                    # checks stay quiet (the value is not known).
                    self.env_failed.add((ctx.file, path))
                    self.placeholder_paths.add((ctx.file, path))
                    self.warnings.append(
                        Problem(
                            ctx.file, ctx.smap.line_of(path), where[0], where[1],
                            f"environment variable {name} is not set; checked with a placeholder",
                        )
                    )  # fmt: skip
                    return match.group(0)
                self.env_failed.add((ctx.file, path))
                self.problems.append(
                    Problem(
                        ctx.file,
                        ctx.smap.line_of(path),
                        where[0],
                        where[1],
                        f"environment variable {name} is not set "
                        f"(set it, or write ${{{name}:-default}})",
                    )
                )
                return ""
            if not _plain_setting(path):
                # A value from the environment is a secret wherever it goes
                # (credentials, webhook URLs, API keys): masked in every log
                # line and in `test` and `check` output from now on.
                register_secret(value)
            return value

        return _VAR.sub(replace, text)

    # -- sections ------------------------------------------------------------

    def check_top(self, data: dict[str, Any], ctx: _Ctx) -> None:
        known = ("version", "zoom", "engine", "notifiers", "cluster", "http", "rule")
        self.unknown_keys(data, known, ctx)
        version = data.get("version", 1)
        if isinstance(version, str) and version.strip() == "1":
            self.problem(ctx, "version", "must be the number 1, without quotes (version = 1)")
        elif version != 1 or isinstance(version, bool):
            self.problem(
                ctx, "version", f"unsupported version {version!r}; this zoomrules reads version = 1"
            )
        if "zoom" in data and self.table(data["zoom"], ctx, "zoom"):
            self.check_zoom(data["zoom"], _Ctx(ctx.file, ctx.smap, "[zoom]", ("zoom",)))
        if "engine" in data and self.table(data["engine"], ctx, "engine"):
            self.check_engine(data["engine"], _Ctx(ctx.file, ctx.smap, "[engine]", ("engine",)))
        if "cluster" in data and self.table(data["cluster"], ctx, "cluster"):
            self.check_cluster(data["cluster"], _Ctx(ctx.file, ctx.smap, "[cluster]", ("cluster",)))
        if "http" in data and self.table(data["http"], ctx, "http"):
            self.check_http(data["http"], _Ctx(ctx.file, ctx.smap, "[http]", ("http",)))
        if "notifiers" in data and self.table(data["notifiers"], ctx, "notifiers"):
            self.check_notifiers(
                data["notifiers"], _Ctx(ctx.file, ctx.smap, "[notifiers]", ("notifiers",))
            )
        rules = data.get("rule", [])
        if not isinstance(rules, list) or not all(isinstance(r, dict) for r in rules):
            self.problem(ctx, "rule", "rules must be written as [[rule]] tables")
            return
        for index, rule in enumerate(rules):
            self.check_rule(rule, ctx, index)

    def table(self, value: Any, ctx: _Ctx, key: str) -> bool:
        if isinstance(value, dict):
            return True
        self.problem(ctx, key, f"must be a table ([{key}]), got {_type_name(value)}")
        return False

    def unknown_keys(self, data: Mapping[str, Any], known: Sequence[str], ctx: _Ctx) -> None:
        for key in data:
            if key not in known:
                self.problem(ctx, key, f"unknown key{did_you_mean(key, known)}")

    def check_zoom(self, data: dict[str, Any], ctx: _Ctx) -> None:
        if self.zoom_file is not None:
            self.problem(ctx, None, f"[zoom] is already defined in {self.zoom_file}")
            return
        self.zoom_file = ctx.file
        known = (
            "client_id", "client_secret", "endpoint", "account_id", "oauth_url",
            "api_base_url", "heartbeat_interval", "max_frame_size", "api_rate", "gap_threshold",
            "subscription", "webhook",
        )  # fmt: skip
        self.unknown_keys(data, known, ctx)
        get = _Getter(self, data, ctx)
        oauth_url = self.env.get("ZOOM_OAUTH_URL") or get.string("oauth_url", DEFAULT_OAUTH_URL)
        defaults = {
            "client_id": get.string("client_id", None),
            "client_secret": get.string("client_secret", None),
            "account_id": get.string("account_id", None) or None,
            "oauth_url": oauth_url,
        }
        webhooks = self.webhooks(data["webhook"], ctx) if "webhook" in data else []
        subscriptions: list[Subscription] = []
        raw_subs = data.get("subscription")
        if raw_subs is None:
            endpoint = self.env.get("ZOOM_WS_ENDPOINT") or get.string("endpoint", None)
            if endpoint or "webhook" not in data:
                sub = self.subscription("default", endpoint, defaults, ctx, top_level=True)
                if sub:
                    subscriptions.append(sub)
            elif defaults["client_id"] or defaults["client_secret"]:
                self.warn(
                    ctx, "client_id",
                    "is not used: with webhooks alone (no endpoint) the daemon fetches no Zoom "
                    "token, so zoom_api actions cannot call Zoom; add the WebSocket endpoint "
                    "for them",
                )  # fmt: skip
        elif not isinstance(raw_subs, list) or not all(isinstance(s, dict) for s in raw_subs):
            self.problem(ctx, "subscription", "write subscriptions as [[zoom.subscription]] tables")
        else:
            subscriptions.extend(self.subscriptions(raw_subs, defaults, ctx))
        self.zoom = ZoomConfig(
            subscriptions=tuple(subscriptions),
            api_base_url=(
                self.env.get("ZOOM_API_BASE_URL")
                or get.string("api_base_url", DEFAULT_API_BASE_URL)
            ).rstrip("/"),
            heartbeat_interval=get.duration("heartbeat_interval", 30.0, minimum=0.01),
            max_frame_size=get.convert("max_frame_size", 1 << 20, parse_size),
            api_rate=get.convert("api_rate", None, parse_rate),
            gap_threshold=get.convert("gap_threshold", 10.0, parse_gap_threshold),
            webhooks=tuple(webhooks),
        )

    def webhooks(self, raw: Any, ctx: _Ctx) -> list[WebhookConfig]:
        """`[zoom.webhook]` (one endpoint) or `[[zoom.webhook]]` (several)."""
        if isinstance(raw, dict):
            where = _Ctx(ctx.file, ctx.smap, "[zoom.webhook]", ("zoom", "webhook"))
            tables = [(raw, where, _given_name(raw, "default"))]
        elif isinstance(raw, list) and raw and all(isinstance(t, dict) for t in raw):
            tables = []
            for index, table in enumerate(raw):
                name = _given_name(table, f"webhook-{index + 1}")
                where = _Ctx(
                    ctx.file, ctx.smap, f"[[zoom.webhook]] '{name}'", ("zoom", "webhook", index)
                )
                tables.append((table, where, name))
        else:
            self.problem(
                ctx, "webhook",
                "write one endpoint as a [zoom.webhook] table, several as [[zoom.webhook]] tables",
            )  # fmt: skip
            return []
        self.webhook_ctx = tables[0][1]
        out: list[WebhookConfig] = []
        for table, where, name in tables:
            hook = self.webhook(table, where, name, several=len(tables) > 1)
            if hook is None:
                continue
            for other in out:
                if other.name == hook.name:
                    self.problem(where, "name", f"duplicate webhook name '{hook.name}'")
                elif other.path == hook.path:
                    self.problem(where, "path", f"{hook.path} is already webhook '{other.name}'")
            out.append(hook)
        return out

    def webhook(
        self, data: dict[str, Any], ctx: _Ctx, name: str, *, several: bool
    ) -> WebhookConfig | None:
        known = ("name", "path", "secret_token", "max_body", "max_age")
        self.unknown_keys(data, known, ctx)
        get = _Getter(self, data, ctx)
        get.string("name", name)  # a name that is not a string is reported
        named = _WEBHOOK_NAME.fullmatch(name) is not None
        if not named:
            self.problem(
                ctx, "name", "must be letters, digits, '.', '-' and '_' (the source is webhook:NAME)"
            )  # fmt: skip
        path = get.string("path", f"/zoom/webhook/{name}" if several else "/zoom/webhook")
        wrong = _webhook_path_problem(path)
        if wrong is not None and (named or "path" in data):  # not the bad name's again
            self.problem(ctx, "path", wrong)
        secret = get.string("secret_token", None)
        if not secret:
            self.problem(
                ctx, "secret_token",
                "is required: the Secret Token of the app's event subscriptions (the app's "
                'Features page), normally "${ZOOM_WEBHOOK_SECRET_TOKEN}"',
            )  # fmt: skip
        elif (ctx.file, ctx.path + ("secret_token",)) not in self.placeholder_paths:
            register_secret(secret)  # from the file or the environment: never logged
        max_body = get.convert("max_body", WebhookConfig.max_body, parse_size)
        max_age = get.duration("max_age", WebhookConfig.max_age, minimum=1.0)
        if not secret or wrong is not None:
            return None
        return WebhookConfig(name, path, secret, max_body=max_body, max_age=max_age)

    def subscriptions(
        self, raw_subs: list[dict[str, Any]], defaults: dict[str, Any], ctx: _Ctx
    ) -> list[Subscription]:
        out: list[Subscription] = []
        seen: set[str] = set()
        for index, raw in enumerate(raw_subs):
            name = _given_name(raw, f"subscription-{index + 1}")
            sub_ctx = _Ctx(
                ctx.file,
                ctx.smap,
                f"[[zoom.subscription]] '{name}'",
                ("zoom", "subscription", index),
            )
            known = ("name", "endpoint", "client_id", "client_secret", "account_id", "oauth_url")
            self.unknown_keys(raw, known, sub_ctx)
            if name in seen:
                self.problem(sub_ctx, "name", f"duplicate subscription name '{name}'")
            seen.add(name)
            get = _Getter(self, raw, sub_ctx)
            merged = {
                "client_id": get.string("client_id", defaults["client_id"]),
                "client_secret": get.string("client_secret", defaults["client_secret"]),
                "account_id": get.string("account_id", defaults["account_id"]) or None,
                "oauth_url": get.string("oauth_url", defaults["oauth_url"]),
            }
            sub = self.subscription(
                name, get.string("endpoint", None), merged, sub_ctx, top_level=False
            )
            if sub:
                out.append(sub)
        return out

    def subscription(
        self, name: str, endpoint: str | None, values: dict[str, Any], ctx: _Ctx, *, top_level: bool
    ) -> Subscription | None:
        missing = [k for k in ("client_id", "client_secret") if not values.get(k)]
        if not endpoint:
            missing.insert(0, "endpoint")
        for key in missing:
            hint = " (or ZOOM_WS_ENDPOINT)" if key == "endpoint" and top_level else ""
            self.problem(ctx, key, f"is required{hint}")
        if endpoint and not endpoint.startswith(("ws://", "wss://")):
            self.problem(
                ctx,
                "endpoint",
                "must be a ws:// or wss:// URL as copied from the Event subscription page",
            )
            return None
        if missing:
            return None
        return Subscription(name=name, endpoint=endpoint or "", **values)

    def check_engine(self, data: dict[str, Any], ctx: _Ctx) -> None:
        if self.engine_file is not None:
            self.problem(ctx, None, f"[engine] is already defined in {self.engine_file}")
            return
        self.engine_file = ctx.file
        self.engine_ctx = ctx
        defaults = EngineConfig()
        known = (
            "state_dir", "max_concurrency", "plugins", "shutdown_grace", "evaluator",
            "action_timeout", "action_retries", "retry_backoff", "retry_backoff_cap",
            "journal", "retention", "dedup_window", "journal_buffer", "per_delivery_fields",
        )  # fmt: skip
        self.unknown_keys(data, known, ctx)
        get = _Getter(self, data, ctx)
        state_dir = get.string("state_dir", str(defaults.state_dir))
        evaluator = get.string("evaluator", defaults.evaluator)
        if evaluator not in ("compiled", "interpreter"):
            self.problem(
                ctx, "evaluator", f"must be 'compiled' or 'interpreter', got {evaluator!r}"
            )
        self.engine = EngineConfig(
            state_dir=Path(state_dir),
            max_concurrency=get.integer("max_concurrency", defaults.max_concurrency, minimum=1),
            plugins=tuple(get.str_list("plugins", [])),
            shutdown_grace=get.duration("shutdown_grace", defaults.shutdown_grace),
            evaluator=evaluator,
            action_timeout=get.duration("action_timeout", defaults.action_timeout, minimum=0.001),
            action_retries=get.integer("action_retries", defaults.action_retries, minimum=0),
            retry_backoff=get.duration("retry_backoff", defaults.retry_backoff),
            retry_backoff_cap=get.duration("retry_backoff_cap", defaults.retry_backoff_cap),
            journal=get.boolean("journal", defaults.journal),
            retention=get.duration("retention", defaults.retention),
            dedup_window=get.duration("dedup_window", defaults.dedup_window),
            journal_buffer=get.convert("journal_buffer", defaults.journal_buffer, parse_size),
            per_delivery_fields=self.per_delivery_fields(data.get("per_delivery_fields"), ctx),
        )

    def per_delivery_fields(self, raw: Any, ctx: _Ctx) -> tuple[tuple[str, tuple[str, ...]], ...]:
        if raw is None:
            return EngineConfig.per_delivery_fields
        if not isinstance(raw, dict):
            self.problem(
                ctx, "per_delivery_fields",
                'must be a table: { "recording.*" = ["download_token"], ... }',
            )  # fmt: skip
            return EngineConfig.per_delivery_fields
        # A glob given replaces the default for that glob; the others stay.
        given = set(raw)
        out = [(glob, paths) for glob, paths in DEFAULT_PER_DELIVERY if glob not in given]
        for glob, paths in raw.items():
            if not isinstance(paths, list) or not all(
                isinstance(p, str) and p and all(p.split(".")) for p in paths
            ):
                self.problem(
                    _Ctx(ctx.file, ctx.smap, ctx.where, ctx.path + ("per_delivery_fields",),
                         "per_delivery_fields."),
                    glob, "must be a list of dotted field paths, e.g. [\"download_token\"]",
                )  # fmt: skip
                continue
            out.append((glob, tuple(paths)))
        return tuple(out)

    def check_http(self, data: dict[str, Any], ctx: _Ctx) -> None:
        if self.http_file is not None:
            self.problem(ctx, None, f"[http] is already defined in {self.http_file}")
            return
        self.http_file = ctx.file
        self.unknown_keys(data, ("listen", "recent_events"), ctx)
        get = _Getter(self, data, ctx)
        listen = get.string("listen", "127.0.0.1:9464") or ""
        recent = get.integer("recent_events", HttpConfig.recent_events, minimum=0)
        if recent > MAX_RECENT_EVENTS:
            self.problem(ctx, "recent_events", f"must be at most {MAX_RECENT_EVENTS}, got {recent}")
            recent = HttpConfig.recent_events
        address = _host_port(listen)
        if address is None:
            self.problem(
                ctx, "listen",
                f'must be "host:port" (e.g. "127.0.0.1:9464", "[::1]:9464"), got {listen!r}',
            )  # fmt: skip
            return
        self.http = HttpConfig(*address, recent_events=recent)

    def check_cluster(self, data: dict[str, Any], ctx: _Ctx) -> None:
        if self.cluster_file is not None:
            self.problem(ctx, None, f"[cluster] is already defined in {self.cluster_file}")
            return
        self.cluster_file = ctx.file
        known = (
            "servers", "name", "node", "lease_ttl", "replicas", "ack_wait", "credentials",
            "user", "password", "token", "tls",
        )  # fmt: skip
        self.unknown_keys(data, known, ctx)
        get = _Getter(self, data, ctx)
        servers = get.str_list("servers", [])
        if not servers:
            self.problem(ctx, "servers", 'is required: the NATS URLs, e.g. ["nats://nats-1:4222"]')
        for index, url in enumerate(servers):
            if not url.startswith(("nats://", "tls://", "ws://", "wss://")):
                self.problem(ctx, "servers", f"server {index + 1} must be a nats:// or tls:// URL")
        name = get.string("name", "zoomrules")
        if not _CLUSTER_NAME.fullmatch(name or ""):
            self.problem(ctx, "name", "must be letters, digits, - and _ (it prefixes stream names)")
        if importlib.util.find_spec("nats") is None:
            self.warnings.append(
                Problem(
                    ctx.file, ctx.smap.line_of(ctx.path), ctx.where, None,
                    "the cluster mode needs nats-py, which is not installed: "
                    "pip install 'zoomrules[cluster]'",
                )
            )  # fmt: skip
        tls = data.get("tls", {})
        if not isinstance(tls, dict):
            self.problem(ctx, "tls", "must be a table { ca = ..., cert = ..., key = ... }")
            tls = {}
        tls_ctx = _Ctx(ctx.file, ctx.smap, ctx.where, ctx.path + ("tls",), "tls.")
        self.unknown_keys(tls, ("ca", "cert", "key"), tls_ctx)
        tls_get = _Getter(self, tls, tls_ctx)
        self.cluster = ClusterConfig(
            servers=tuple(servers),
            name=name or "zoomrules",
            node=get.string("node", "") or socket.gethostname(),
            lease_ttl=get.duration("lease_ttl", 15.0, minimum=2.0),
            replicas=get.integer("replicas", min(3, max(1, len(servers))), minimum=1),
            ack_wait=get.duration("ack_wait", 30.0, minimum=1.0),
            credentials=get.string("credentials", None),
            user=get.string("user", None),
            password=get.string("password", None),
            token=get.string("token", None),
            tls_ca=tls_get.string("ca", None),
            tls_cert=tls_get.string("cert", None),
            tls_key=tls_get.string("key", None),
        )

    def check_notifiers(self, data: dict[str, Any], ctx: _Ctx) -> None:
        for name, urls in data.items():
            if isinstance(urls, str):
                urls = [urls]
            if not isinstance(urls, list) or not all(isinstance(u, str) for u in urls):
                self.problem(ctx, name, "must be an Apprise URL or a list of them")
                continue
            if name in self.notifiers:
                self.problem(ctx, name, "notifier is defined twice")
                continue
            self.notifiers[name] = tuple(u for u in urls if u)
            self.notifier_lines[name] = (ctx.file, ctx.smap.line_of(ctx.path + (name,)))

    # -- rules ---------------------------------------------------------------

    def check_rule(self, raw: dict[str, Any], top: _Ctx, index: int) -> None:
        name = raw.get("name")
        position = len(self.rules)
        label = f"rule '{name}'" if isinstance(name, str) and name else f"rule #{index + 1}"
        ctx = _Ctx(top.file, top.smap, label, ("rule", index))
        known = (
            "name", "on", "when", "enabled", "stop", "throttle", "description", "action",
            "key", *TEMPORAL_FORMS,
        )  # fmt: skip
        self.unknown_keys(raw, known, ctx)
        get = _Getter(self, raw, ctx)
        if not isinstance(name, str) or not name.strip():
            self.problem(ctx, "name", "every rule needs a non-empty name")
            name = f"#{index + 1}"
        elif name in self.rule_names:
            first, line = self.rule_names[name]
            where = f"{first}:{line}" if line else str(first)
            self.problem(ctx, "name", f"duplicate rule name (first defined at {where})")
        else:
            self.rule_names[name] = (top.file, top.smap.line_of(("rule", index)))
        on = raw.get("on")
        if isinstance(on, str):
            on = [on]
        if not isinstance(on, list) or not on or not all(isinstance(x, str) and x for x in on):
            self.problem(
                ctx, "on", "must be an event name or a non-empty list of them (globs allowed)"
            )
            on = []
        when = get.string("when", None)
        rule = _spec(
            RuleSpec,
            name=name,
            on=tuple(on),
            when=when if when and when.strip() else None,
            enabled=get.boolean("enabled", True),
            stop=get.boolean("stop", False),
            throttle=self.throttle(raw.get("throttle"), ctx),
            description=get.string("description", "") or "",
            actions=self.actions(raw.get("action"), ctx),
            file=top.file,
            index=position,
            locator=Locator(top.smap, ("rule", index)),
            correlation=self.correlation(raw, ctx),
        )
        self.rules.append(rule)

    def correlation(self, raw: dict[str, Any], ctx: _Ctx) -> CorrelationSpec | None:
        """The rule's temporal form (`unless`, `then` or `count`, with `key`), if any."""
        tables = [name for name in raw if name in TEMPORAL_FORMS]  # in the file's order
        if not tables:
            if "key" in raw:
                self.problem(
                    ctx, "key",
                    "a correlation key goes with a temporal form: unless = { ... }, "
                    "then = { ... } or count = { ... } (see docs/correlation.md)",
                )  # fmt: skip
            return None
        table = tables[0]
        for other in tables[1:]:
            self.problem(ctx, other, f"a rule has one temporal form, and this one has {table}")
        if "throttle" in raw:
            self.problem(
                ctx, "throttle",
                f"cannot be combined with {table}: a temporal rule fires once per "
                "correlation (count = { ... } is the way to fire on repeats)",
            )  # fmt: skip
        key = _Getter(self, raw, ctx).string("key", None)
        if not key or not key.strip():
            if "key" not in raw:
                self.problem(
                    ctx, "key",
                    f"is required with {table}: the JMESPath expression whose value ties the "
                    "events together, e.g. 'payload.object.uuid'",
                )  # fmt: skip
            elif isinstance(raw["key"], str):
                self.problem(ctx, "key", "must not be empty")
            key = ""
        body = raw[table]
        if not isinstance(body, dict):
            shape = "times = 3, within = '10m'" if table == "count" else "on = ..., within = '5m'"
            self.problem(ctx, table, f"must be a table {{ {shape} }}, got {_type_name(body)}")
            return None
        return self.temporal_form(table, body, key, ctx)

    def temporal_form(
        self, table: str, body: dict[str, Any], key: str, ctx: _Ctx
    ) -> CorrelationSpec:
        sub = _Ctx(ctx.file, ctx.smap, ctx.where, ctx.path + (table,), f"{table}.")
        form = TEMPORAL_FORMS[table]
        common = ("within", "grace", "max_open")
        known = ("times", *common) if form == COUNT else ("on", "when", "key", *common)
        if form == ABSENCE:
            known = (*known, "on_gap")
        for name in body:
            if name in known:
                continue
            if name == "on_gap":
                self.problem(
                    sub, name,
                    f"applies to unless only: a gap in the connection can hide the event an "
                    f"absence waits for; {table} has nothing to mark",
                )  # fmt: skip
            else:
                self.problem(sub, name, f"unknown key{did_you_mean(name, known)}")
        get = _Getter(self, body, sub)
        within = get.convert("within", None, _positive_duration)
        if "within" not in body:
            self.problem(sub, "within", "is required: how long the window lasts, e.g. '5m'")
        follow_on: list[str] = []
        times = 0
        if form == COUNT:
            times = get.integer("times", 0, minimum=2)
            if "times" not in body:
                self.problem(sub, "times", "is required: how many events fire the rule (2 or more)")
        else:
            on = body.get("on")
            follow_on = [on] if isinstance(on, str) else on if isinstance(on, list) else []
            if not follow_on or not all(isinstance(x, str) and x for x in follow_on):
                self.problem(
                    sub, "on",
                    "is required: the event name (or a list of them, globs allowed) to wait for",
                )  # fmt: skip
                follow_on = []
        when = get.string("when", None)
        follow_key = get.string("key", None)
        if follow_key is not None and not follow_key.strip():
            self.problem(sub, "key", "must not be empty (leave it out to use the rule's key)")
            follow_key = None
        on_gap = get.string("on_gap", "mark")
        if on_gap not in GAP_CHOICES:
            choices = ", ".join(repr(choice) for choice in GAP_CHOICES)
            self.problem(sub, "on_gap", f"must be one of {choices}, got {on_gap!r}")
            on_gap = "mark"
        return CorrelationSpec(
            form=form,
            table=table,
            key=key,
            within=within or 0.0,
            follow_on=tuple(follow_on),
            follow_when=when if when and when.strip() else None,
            follow_key=follow_key,
            times=times,
            grace=get.duration("grace", DEFAULT_GRACE),
            on_gap=on_gap,
            max_open=get.integer("max_open", DEFAULT_MAX_OPEN, minimum=1),
        )

    def throttle(self, raw: Any, ctx: _Ctx) -> ThrottleSpec | None:
        if raw is None:
            return None
        if not isinstance(raw, dict):
            self.problem(ctx, "throttle", "must be a table { key = ..., limit = N, per = '10m' }")
            return None
        sub = _Ctx(ctx.file, ctx.smap, ctx.where, ctx.path + ("throttle",), "throttle.")
        self.unknown_keys(raw, ("key", "limit", "per"), sub)
        get = _Getter(self, raw, sub)
        key = get.string("key", None)
        if not key:
            self.problem(
                sub, "key", "is required (a JMESPath expression, e.g. 'payload.object.uuid')"
            )
        return ThrottleSpec(
            key=key or "",
            limit=get.integer("limit", 1, minimum=1),
            per=get.duration("per", 60.0, minimum=0.001),
        )

    def actions(self, raw: Any, ctx: _Ctx) -> tuple[ActionSpec, ...]:
        if raw is None:
            self.problem(ctx, "action", "a rule needs at least one [[rule.action]]")
            return ()
        if not isinstance(raw, list) or not all(isinstance(a, dict) for a in raw):
            self.problem(ctx, "action", "actions must be written as [[rule.action]] tables")
            return ()
        out = []
        for index, action in enumerate(raw):
            sub = _Ctx(
                ctx.file, ctx.smap, ctx.where, ctx.path + ("action", index), f"action[{index + 1}]."
            )
            get = _Getter(self, action, sub)
            type_ = action.get("type")
            if not isinstance(type_, str) or not type_:
                self.problem(sub, "type", 'every action needs a type (e.g. type = "notify")')
                type_ = ""
            params = {k: v for k, v in action.items() if k not in COMMON_ACTION_KEYS}
            out.append(
                _spec(
                    ActionSpec,
                    type=type_,
                    params=params,
                    timeout=get.convert("timeout", None, _positive_duration),
                    retries=get.integer("retries", None, minimum=0),  # type: ignore[arg-type]
                    continue_on_error=get.boolean("continue_on_error", False),
                    index=index,
                    unresolved=(
                        self.unresolved(params, sub)
                        if self.env_failed and self.missing_env == "error"
                        else frozenset()
                    ),
                    placeholders=(
                        self.unresolved(params, sub) if self.placeholder_paths else frozenset()
                    ),
                    locator=Locator(ctx.smap, sub.path),
                )
            )
        return tuple(out)

    def unresolved(self, params: Mapping[str, Any], sub: _Ctx) -> frozenset[str]:
        """The parameters of the action at `sub` whose `${VAR}` was missing."""
        return frozenset(
            key
            for key in params
            if any(
                file == sub.file and failed[: len(sub.path) + 1] == sub.path + (key,)
                for file, failed in self.env_failed
            )
        )

    def check_together(self) -> None:
        """Problems of sections that only show once every file is read."""
        engine, ctx = self.engine, self.engine_ctx
        self.check_temporal_rules_have_a_home()
        if (
            self.cluster is not None
            and engine is not None
            and ctx is not None
            and not engine.journal
        ):
            self.problem(
                ctx, "journal",
                "cannot be false with [cluster]: the cluster's streams are its journal",
            )  # fmt: skip
        if self.webhook_ctx is not None:
            self.check_webhooks_together()

    def check_webhooks_together(self) -> None:
        """A webhook needs the HTTP server, and the journal to make its 200 mean
        "stored" and to drop Zoom's retries."""
        where = self.webhook_ctx
        assert where is not None
        if self.http is None:
            self.problem(
                where, None,
                "needs the daemon's HTTP server, which Zoom's requests reach (through a reverse "
                'proxy): add [http] listen = "127.0.0.1:9464"',
            )  # fmt: skip
        engine, ctx = self.engine or EngineConfig(), self.engine_ctx
        if not engine.journal:
            self.warn(
                ctx or where, "journal" if ctx else None,
                "is false while a webhook is configured: its 200 then does not mean the event is "
                "stored, and duplicates (Zoom's retries, the same event by WebSocket) fire again",
            )  # fmt: skip
        elif engine.dedup_window < ZOOM_WEBHOOK_RETRY_SPAN and ctx is not None:
            self.warn(
                ctx, "dedup_window",
                f"is shorter than Zoom's webhook retries ({ZOOM_WEBHOOK_RETRY_SPAN / 60:.0f} "
                "minutes after the first delivery): a retry after it fires rules again",
            )  # fmt: skip

    def check_temporal_rules_have_a_home(self) -> None:
        """Temporal rules keep their open correlations and deadlines in the
        journal (the single-process one, or a cluster's streams): not in
        memory (`journal = false`)."""
        journal_off = self.engine is not None and not self.engine.journal
        if self.cluster is not None or not journal_off:
            return
        for rule in self.rules:
            spec = rule.correlation
            if spec is None:
                continue
            message = (
                f"{spec.table} rules need [engine] journal = true (in {self.engine_file}): "
                "their open correlations and deadlines live in the journal, so that a "
                "restart loses none"
            )
            self.problems.append(
                Problem(rule.file, rule.key_line(spec.table) or rule.line, rule.where,
                        spec.table, message)
            )  # fmt: skip

    def finish(self, files: tuple[Path, ...]) -> Config:
        engine = self.engine or EngineConfig()
        if self.cluster is not None:
            # The cluster's journal is its streams.
            engine = replace(engine, journal_backend="jetstream")
        # The environment wins over the file, with or without an [engine].
        state_dir = self.env.get("ZOOMRULES_STATE_DIR")
        if state_dir:
            engine = replace(engine, state_dir=Path(state_dir))
        cluster = self.cluster
        node = self.env.get("ZOOMRULES_NODE")
        if cluster is not None and node:
            cluster = replace(cluster, node=node)
        return Config(
            files=files,
            zoom=self.zoom,
            engine=engine,
            notifiers=self.notifiers,
            rules=tuple(_with_action_defaults(rule, engine) for rule in self.rules),
            cluster=cluster,
            http=self.http,
            warnings=tuple(sorted(self.warnings, key=lambda p: (str(p.file), p.line or 0))),
            notifier_lines=self.notifier_lines,
        )


def zoom_from_environment(env: Mapping[str, str]) -> tuple[ZoomConfig | None, list[Problem]]:
    """A `[zoom]` made of the environment alone, for rule files without one.

    `ZOOM_WS_ENDPOINT`, `ZOOM_CLIENT_ID` and `ZOOM_CLIENT_SECRET` (and
    optionally `ZOOM_ACCOUNT_ID`, `ZOOM_OAUTH_URL`, `ZOOM_API_BASE_URL`) are
    what a `[zoom]` section would read from them anyway. None (and no
    problem) when ZOOM_WS_ENDPOINT is unset.
    """
    endpoint = env.get("ZOOM_WS_ENDPOINT")
    if not endpoint:
        return None, []
    where = "[zoom] (from the environment)"
    missing = [name for name in ("ZOOM_CLIENT_ID", "ZOOM_CLIENT_SECRET") if not env.get(name)]
    if missing:
        message = f"ZOOM_WS_ENDPOINT is set but {' and '.join(missing)} is not"
        return None, [Problem(None, None, where, None, message)]
    if not endpoint.startswith(("ws://", "wss://")):
        message = "ZOOM_WS_ENDPOINT must be a ws:// or wss:// URL as copied from the app's page"
        return None, [Problem(None, None, where, None, message)]
    for name in ("ZOOM_CLIENT_ID", "ZOOM_CLIENT_SECRET", "ZOOM_WS_ENDPOINT"):
        register_secret(env[name])
    subscription = Subscription(
        name="default",
        endpoint=endpoint,
        client_id=env["ZOOM_CLIENT_ID"],
        client_secret=env["ZOOM_CLIENT_SECRET"],
        account_id=env.get("ZOOM_ACCOUNT_ID") or None,
        oauth_url=env.get("ZOOM_OAUTH_URL") or DEFAULT_OAUTH_URL,
    )
    api = (env.get("ZOOM_API_BASE_URL") or DEFAULT_API_BASE_URL).rstrip("/")
    return ZoomConfig(subscriptions=(subscription,), api_base_url=api), []


def _given_name(table: Mapping[str, Any], default: str) -> str:
    """A table's `name` if it is a string, else `default`."""
    name = table.get("name")
    return name if isinstance(name, str) else default


def _webhook_path_problem(path: str) -> str | None:
    """Why `path` cannot be a webhook's URL path; None if it can."""
    if not _URL_PATH.fullmatch(path):
        return (
            f'must be a URL path such as "/zoom/webhook": starting with /, without spaces, '
            f"%, ?, # or braces, got {path!r}"
        )
    if path == "/-" or path.startswith("/-/"):
        return "must not be under /-/, where the daemon serves its own pages (health checks)"
    return None


def _may_hold_dollar(text: str) -> bool:
    """Whether a string read from this TOML text can hold a `$`: written as
    is, or as one of TOML's escapes for it. Without one, `${VAR}`
    interpolation has nothing to do (and walking every value costs)."""
    return "$" in text or "\\u0024" in text or "\\U00000024" in text


def _with_action_defaults(rule: RuleSpec, engine: EngineConfig) -> RuleSpec:
    """Fill action timeouts/retries left unset from [engine], wherever [engine] was.

    In place: the builder made these specs and nothing else holds them yet
    (a copy of each rule and action cost a tenth of reading a large file).
    """
    for action in rule.actions:
        fields = action.__dict__
        if fields["timeout"] is None:
            fields["timeout"] = engine.action_timeout
        if fields["retries"] is None:
            fields["retries"] = engine.action_retries
    return rule


_Spec = TypeVar("_Spec", RuleSpec, ActionSpec)


def _spec(cls: type[_Spec], **fields: Any) -> _Spec:
    """`cls(**fields)` for the rule and action specs, given every field:
    five times faster than a frozen dataclass's `__init__`, which sets each
    field through `object.__setattr__` (a tenth of reading a large file).
    The classes have no `__post_init__`, so the fields are the whole object
    (tests/test_config.py compares both ways)."""
    spec = object.__new__(cls)
    object.__setattr__(spec, "__dict__", fields)
    return spec


def _positive_duration(value: Any) -> float:
    seconds = parse_duration(value)
    if seconds <= 0:
        raise ValueError("must be a positive duration like '20s'")
    return seconds


class _Getter:
    """Typed reads from one table, reporting problems instead of raising."""

    def __init__(self, builder: _Builder, data: Mapping[str, Any], ctx: _Ctx) -> None:
        self.builder, self.data, self.ctx = builder, data, ctx

    def _bad(self, key: str, expected: str) -> None:
        value = self.data[key]
        self.builder.problem(
            self.ctx, key, f"must be {expected}, got {_type_name(value)} {value!r}"
        )

    def string(self, key: str, default: Any) -> Any:
        if key not in self.data:
            return default
        if not isinstance(self.data[key], str):
            self._bad(key, "a string")
            return default
        return self.data[key]

    def boolean(self, key: str, default: bool) -> bool:
        if key not in self.data:
            return default
        value = self.data[key]
        if not isinstance(value, bool):
            self._bad(key, "true or false")
            return default
        return value

    def integer(self, key: str, default: int, *, minimum: int | None = None) -> int:
        if key not in self.data:
            return default
        value = self.data[key]
        if not isinstance(value, int) or isinstance(value, bool):
            self._bad(key, "an integer")
            return default
        if minimum is not None and value < minimum:
            self.builder.problem(self.ctx, key, f"must be at least {minimum}, got {value}")
            return default
        return value

    def duration(self, key: str, default: float, *, minimum: float = 0.0) -> float:
        value: float = self.convert(key, default, parse_duration)
        if value < minimum:
            self.builder.problem(self.ctx, key, f"must be at least {minimum:g}s")
            return default
        return value

    def convert(self, key: str, default: Any, parse: Callable[[Any], Any]) -> Any:
        if key not in self.data:
            return default
        try:
            return parse(self.data[key])
        except ValueError as exc:
            self.builder.problem(self.ctx, key, str(exc))
            return default

    def str_list(self, key: str, default: list[str]) -> list[str]:
        if key not in self.data:
            return default
        value = self.data[key]
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            self._bad(key, "a list of strings")
            return default
        return value


def parse_gap_threshold(value: object) -> float | None:
    """`[zoom] gap_threshold`: a duration, or `"off"` (None: no gap events)."""
    if isinstance(value, str) and value.strip().lower() == "off":
        return None
    try:
        return parse_duration(value)
    except ValueError:
        raise ValueError(
            f"expected a duration like '10s', '1m', '0s' (every reconnect), or 'off', got {value!r}"
        ) from None


def _type_name(value: Any) -> str:
    return {
        bool: "boolean", int: "integer", float: "float", str: "string", list: "array", dict: "table",
    }.get(type(value), type(value).__name__)  # fmt: skip


def _describe_path(
    path: tuple[str | int, ...], raw: Mapping[str, Any] | None = None
) -> tuple[str, str | None]:
    """("rule 'x'" or 'rule #2', 'action[1].command') style description of a raw TOML path."""
    if len(path) >= 2 and path[0] == "rule" and isinstance(path[1], int):
        rest = path[2:]
        key = ""
        for part in rest:
            if isinstance(part, int):
                key = f"{key}[{part + 1}]"
            else:
                key = f"{key}.{part}" if key else str(part)
        label = f"rule #{path[1] + 1}"
        rules = raw.get("rule") if raw is not None else None
        if isinstance(rules, list) and path[1] < len(rules) and isinstance(rules[path[1]], dict):
            name = rules[path[1]].get("name")
            if isinstance(name, str) and name.strip():
                label = f"rule '{name}'"
        return label, key or None
    if path and isinstance(path[0], str) and path[0] in ("zoom", "engine", "notifiers"):
        return f"[{path[0]}]", ".".join(str(p) for p in path[1:]) or None
    return "top level", ".".join(str(p) for p in path) or None


__all__ = [
    "ActionSpec",
    "ClusterConfig",
    "Config",
    "ConfigError",
    "CorrelationSpec",
    "EngineConfig",
    "Problem",
    "RuleSpec",
    "Subscription",
    "ThrottleSpec",
    "WebhookConfig",
    "ZoomConfig",
    "expand_paths",
    "load_config",
    "parse_toml",
    "read_config",
]
