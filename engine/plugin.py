"""The public API for plugin authors: the one module a plugin imports.

Everything a plugin needs to add action types and JMESPath functions is
here, and only here; the rest of `engine` may change between releases
without notice. The built-in actions in `plugins/` import nothing else.

    from engine.plugin import ActionContext, ActionType, Param, hookimpl

    async def run(params, ctx: ActionContext) -> str:
        return f"hello {params['who']}"

    @hookimpl
    def zoomrules_action_types() -> list[ActionType]:
        return [ActionType(name="hello", run=run, params=[Param("who", str, required=True)])]

What each name is for:

- `hookimpl`: marks a plugin's hook implementations (pluggy project
  `zoomrules`); the hooks are `zoomrules_action_types()` and
  `zoomrules_jmespath_functions()`.
- `ActionType`, `Param`, `ActionRun`, `ParamType`: declaring an action and its
  parameters (checked by `zoomrules check`).
- `ActionContext`, `ActionError`: what `run` gets besides its parameters, and
  how it reports a failure (retryable or not, `retry_after`).
- `JMESPathFunction`: an extra function for conditions and templates.
- `Config`, `ConfigIssue`: the whole configuration (rules, `[notifiers]`,
  `[zoom]`, `[engine]`) as the optional hook `zoomrules_check_config(config)`
  sees it, and what it returns for each problem it finds there.
- `Event`, `META_KEY`: the event being handled, and the key (`zoomrules`)
  under which the engine's metadata is visible to templates.
- `Services`, `TokenProvider`, `RateLimiter`: what the running engine shares
  with actions (the HTTP client, the Zoom token, the configuration, a
  per-plugin scratch space, and `rate_limiter(name, rate)`: a budget shared
  by every job of the daemon, or of the whole cluster).
- `Template`, `Quote`, `to_text`: rendering parameters declared `raw=True`
  (e.g. with shell or URL quoting) and spelling values as text the way
  templates do.
- `parse_retry_after`, `redact_url`, `shorten`: reading a server's
  Retry-After (seconds or an HTTP date), showing a URL in logs and errors
  without its path or query (where webhook secrets live), and cutting a
  value down to one short line for a log message.

`tests/test_exported_members.py` pins this list: adding a name is a
decision, removing one a breaking change.
"""

from __future__ import annotations

from engine.config import Config
from engine.errors import ActionError
from engine.events import META_KEY, Event
from engine.expr.templates import Quote, Template, to_text
from engine.hookspecs import (
    ActionContext,
    ActionRun,
    ActionType,
    ConfigIssue,
    JMESPathFunction,
    Param,
    ParamType,
    hookimpl,
)
from engine.logs import shorten
from engine.rate_limit import RateLimiter
from engine.redact import redact_url
from engine.retry import parse_retry_after
from engine.services import Services, TokenProvider

__all__ = [
    "META_KEY",
    "ActionContext",
    "ActionError",
    "ActionRun",
    "ActionType",
    "Config",
    "ConfigIssue",
    "Event",
    "JMESPathFunction",
    "Param",
    "ParamType",
    "Quote",
    "RateLimiter",
    "Services",
    "Template",
    "TokenProvider",
    "hookimpl",
    "parse_retry_after",
    "redact_url",
    "shorten",
    "to_text",
]
