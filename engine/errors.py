"""Every error the engine raises, with one root: `ZoomrulesError`.

    ZoomrulesError
    ├── ConfigError          rule files that cannot be used (carries every Problem)
    ├── PluginError          a plugin that cannot be loaded, or registers something invalid
    ├── ExpressionError      a JMESPath expression that cannot be compiled (also a ValueError)
    │   └── TemplateError    a `{{ }}` template that cannot be compiled
    ├── InvalidEvent         input that is not a Zoom event object (also a ValueError)
    ├── ActionError          raised by an action: failed, retry or not (the plugin API)
    │   └── ParamTypeError   a templated parameter rendered to the wrong type
    ├── ActionFailed         an action that failed for good (retries exhausted)
    ├── AuthError            Zoom refused the credentials: retrying cannot help
    ├── JournalError         the journal cannot be used (the message says how to recover)
    │   ├── JournalBusy      another process holds the journal
    │   ├── JournalWriterLost  the journal's writer process died or could not start
    │   └── CorrelationsTakenOver  another node runs the cluster's temporal rules now
    └── DaemonError          the daemon cannot go on

Catching `ZoomrulesError` catches everything the engine raises on purpose;
anything else is a bug. Control-flow exceptions that never leave their
module stay private there.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from engine.problems import Problem

__all__ = [
    "ActionError",
    "ActionFailed",
    "AuthError",
    "ConfigError",
    "CorrelationsTakenOver",
    "DaemonError",
    "ExpressionError",
    "InvalidEvent",
    "JournalBusy",
    "JournalError",
    "JournalWriterLost",
    "ParamTypeError",
    "PluginError",
    "TemplateError",
    "ZoomrulesError",
]


class ZoomrulesError(Exception):
    """The root of every error zoomrules raises."""


class ConfigError(ZoomrulesError):
    """A configuration that cannot be used; carries every problem found."""

    def __init__(self, problems: Sequence[Problem], warnings: Sequence[Problem] = ()) -> None:
        self.problems = list(problems)
        #: What was found besides (e.g. unset variables while checking).
        self.warnings = list(warnings)
        count = len(self.problems)
        header = f"{count} problem{'s' if count != 1 else ''} in the configuration"
        super().__init__(header + ":\n" + "\n".join(f"  {p}" for p in self.problems))


class PluginError(ZoomrulesError):
    """A plugin that cannot be loaded or that registers something invalid."""


class ExpressionError(ZoomrulesError, ValueError):
    """An expression that cannot be compiled (the message says why)."""


class TemplateError(ExpressionError):
    """A template that cannot be compiled."""


class InvalidEvent(ZoomrulesError, ValueError):
    """Input that is not a Zoom event object (the message says what is wrong)."""


class ActionError(ZoomrulesError):
    """An action failed; tells the dispatcher whether and when to retry.

    Any other exception from an action's `run` counts as a retryable failure
    too. The message must never contain secrets.
    """

    def __init__(
        self, message: str, *, retryable: bool = True, retry_after: float | None = None
    ) -> None:
        super().__init__(message)
        self.retryable = retryable
        #: Seconds the target asked us to wait (e.g. HTTP Retry-After); the
        #: dispatcher waits at least this long before the next attempt.
        self.retry_after = retry_after


class ParamTypeError(ActionError, ValueError):
    """A templated parameter rendered to a value of the wrong type (not retryable)."""

    def __init__(self, message: str) -> None:
        super().__init__(message, retryable=False)


class ActionFailed(ZoomrulesError):
    """An action that failed for good (retries exhausted or not retryable)."""

    def __init__(self, message: str, attempts: int) -> None:
        super().__init__(message)
        self.attempts = attempts


class AuthError(ZoomrulesError):
    """Zoom refused the credentials: a configuration problem, not transient."""


class JournalError(ZoomrulesError):
    """The journal cannot be used; the message says why and how to recover."""


class JournalBusy(JournalError):
    """Another process (a running daemon) holds the journal."""


class JournalWriterLost(JournalError):
    """The journal's writer process died or could not be started."""


class CorrelationsTakenOver(JournalError):
    """Another node saved the cluster's temporal rule state: this one no longer runs them."""


class DaemonError(ZoomrulesError):
    """The daemon cannot go on (bad credentials, no subscription)."""
