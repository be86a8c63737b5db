"""What a reload can apply to a running daemon, and what waits for a restart.

A SIGHUP reload rebuilds everything made from the rule files: rules,
plugins, notifiers and every other setting actions read from the
configuration (the daemon hands actions the new one), the Zoom API's base
URL and rate, the dispatcher's retry backoff; and subscriptions whose
endpoint, credentials, heartbeat or frame size changed are reconnected.
What the running engine was built around (its journal, its pool of
workers, its cluster) takes effect at the next start: `needs_restart` names each such
key that changed, so the log can say so key by key.
"""

from __future__ import annotations

from engine.config import Config, EngineConfig

__all__ = ["RESTART_KEYS", "needs_restart"]

#: `[engine]` settings read once, when the engine starts.
RESTART_KEYS: tuple[str, ...] = (
    "state_dir",
    "journal",
    "journal_backend",
    "journal_buffer",
    "retention",
    "dedup_window",
    "max_concurrency",
    "shutdown_grace",
    # Event ids must stay the same under a running journal.
    "per_delivery_fields",
)


def needs_restart(old: Config, new: Config) -> list[str]:
    """The keys (as `[engine] key`) whose new values apply only after a
    restart; the whole `[cluster]` (the node's NATS link) and `[http]` (its
    listening socket) are two of them."""
    keys = [
        f"[engine] {key}"
        for key in RESTART_KEYS
        if _engine_value(old.engine, key) != _engine_value(new.engine, key)
    ]
    if old.cluster != new.cluster:
        keys.append("[cluster]")
    if old.http != new.http:
        keys.append("[http]")
    return keys


def _engine_value(engine: EngineConfig, key: str) -> object:
    return getattr(engine, key)
