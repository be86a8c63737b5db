"""`shell`: run a local program for an event.

    [[rule.action]]
    type    = "shell"
    command = ["/usr/local/bin/on-vip", "{{ payload.object.id }}"]

By default there is no shell: each list item becomes exactly one argv entry,
whatever the event put into it (`$(...)`, quotes, `; rm -rf`, newlines).
`shell = true` is the explicit opt-in for a single command string run by
`/bin/sh -c`; every interpolated value is then `shlex.quote`d while the
string is rendered, so event data is still only ever data.

The child runs in its own session (process group) with a minimal
environment. When the job is cancelled (the engine's timeout) or the program
fails, the whole group is terminated, then killed, so nothing it spawned
outlives the action.

Event data never chooses what runs or where: `validate` (so `zoomrules
check`) refuses a `{{ }}` that the quoting of `shell = true` cannot protect
(inside quotes, backquotes, here-documents, comments, `$(( ))`; as a program
name, an `eval` argument or a redirection target: `plugins._shell_syntax`),
a templated program name without a fixed absolute directory, a `{{ }}` in the
script of `sh -c` in the list form, and templated loader variables (`PATH`,
`LD_*`, ...). A templated program path or `cwd` must stay under the directory
written before its first `{{` (`plugins._paths`), checked when the action
runs. Logs and messages show at most a short line of what the program printed.
"""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import signal
import subprocess
from collections.abc import Mapping
from typing import Any

import anyio
import anyio.abc
import orjson

from engine.plugin import ActionContext, ActionError, ActionType, Param, hookimpl, shorten
from plugins import _paths, _shell_syntax
from plugins._http_common import EXCERPT_CHARS, excerpt, log_extra, scalar_text

NAME = "shell"
SHELL = "/bin/sh"
#: Output kept per stream and returned to later actions; the rest is read and dropped.
CAPTURE_BYTES = 64 * 1024
#: Output shown in logs and failure messages: one line of at most this many characters
#: (the program may print event data, and a log line must stay one short line).
LOG_CHARS = EXCERPT_CHARS
#: How long the group gets between SIGTERM and SIGKILL.
TERM_GRACE = 2.0
#: How long to wait for SIGKILLed processes to be gone, and how often to look.
KILL_WAIT = 2.0
GROUP_POLL = 0.02
#: After the program exits, how long to wait for its pipes to close (a
#: background child may hold them open forever).
DRAIN_GRACE = 0.5

#: Environment variables that make programs load or run other files.
LOADER_VARIABLES = frozenset(
    {
        "PATH", "BASH_ENV", "ENV", "PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "PERL5LIB",
        "PERL5OPT", "PERLLIB", "RUBYLIB", "RUBYOPT", "NODE_OPTIONS", "NODE_PATH", "GCONV_PATH",
    }
)  # fmt: skip
LOADER_PREFIXES = ("LD_", "DYLD_")
_PROGRAM_EXAMPLE = "/usr/local/lib/zoomrules/{{ ... }}"


def validate(params: Mapping[str, Any]) -> list[str]:
    errors: list[str] = []
    command = params.get("command")
    if params.get("shell", False) is True:
        if not isinstance(command, str) or not command.strip():
            errors.append("command: with shell = true, must be one non-empty string")
        else:
            errors.extend(
                f"command: {shorten(found.template, 60)} {_shell_syntax.PLACES[found.place]}"
                for found in _shell_syntax.misplaced(command)
            )
    elif not isinstance(command, list) or not command:
        errors.append(
            "command: must be a non-empty list of arguments (or set shell = true for a string)"
        )
    elif not all(isinstance(arg, str) for arg in command):
        errors.append("command: every argument must be a string")
    else:
        errors.extend(_check_argv(command))
    errors.extend(_paths.check_source("cwd", params.get("cwd"), "/srv/zoomrules/work/{{ ... }}"))
    env = params.get("env")
    if env is not None:
        if not isinstance(env, dict):
            errors.append("env: must be a table of NAME = value")
        else:
            errors.extend(
                f"env: {key!r} is not a valid variable name"
                for key in env
                if not key or "=" in key or "\0" in key
            )
            errors.extend(
                f"env: a templated {key} would let event data choose what the program loads; "
                "write it literally"
                for key, value in env.items()
                if _is_loader_variable(key) and _paths.is_templated(value)
            )
    return errors


def _is_loader_variable(name: str) -> bool:
    return name in LOADER_VARIABLES or name.startswith(LOADER_PREFIXES)


def _check_argv(command: list[str]) -> list[str]:
    """Load-time problems of the list form: event data choosing a program or a script."""
    errors: list[str] = []
    program = command[0]
    if _paths.is_templated(program):
        base = _paths.literal_base(program)
        if not base.startswith("/") or not base.strip("/"):
            errors.append(
                "command[0]: event data must not choose the program: a templated program needs "
                f"a fixed absolute directory before its first {{{{ }}}} (e.g. {_PROGRAM_EXAMPLE})"
            )
        return errors
    name = os.path.basename(program)
    if name in _shell_syntax.WRAPPERS:
        # The wrapped program: its first argument that is not an option or NAME=value.
        for i, arg in enumerate(command[1:], 1):
            if arg.startswith("-") or re.match(r"[A-Za-z_][A-Za-z0-9_]*=", arg):
                continue
            if _paths.is_templated(arg):
                errors.append(
                    f"command[{i}]: event data must not choose the program run by {name}; "
                    "write the program literally"
                )
            break
    if name in _shell_syntax.SHELLS:
        for i, arg in enumerate(command[1:-1], 1):
            if _shell_syntax.SCRIPT_OPTION.fullmatch(arg):
                if _paths.is_templated(command[i + 1]):
                    errors.append(
                        f"command[{i + 1}]: a {{{{ }}}} in a script run by {name} -c is pasted "
                        'into shell code unquoted: pass the value as an argument ("$1") or use '
                        "shell = true"
                    )
                break
    return errors


def _text(value: Any) -> str:
    """One argv entry / env value from a rendered value (numbers and tables as JSON)."""
    return value if isinstance(value, str) else scalar_text(value)


def build_argv(params: Mapping[str, Any], root: Mapping[str, Any]) -> list[str]:
    """Render `command` (a raw Template, or a list of Templates or plain values) into argv.

    Blocking: a templated program path is resolved (symlinks) and must stay
    under its directory; the resolved path is what runs.
    """
    command = params["command"]
    if params.get("shell", False):
        rendered = command if isinstance(command, str) else command.render(root, quote=shlex.quote)
        return [SHELL, "-c", _text(rendered)]
    if not isinstance(command, list):
        # Only a list written in the rule: a whole-value template would let the event pick argv.
        raise ActionError(
            "command: must be a list of arguments (or set shell = true for a string)",
            retryable=False,
        )
    argv = []
    for i, arg in enumerate(command):
        if i == 0 and _paths.is_templated(arg):
            argv.append(_paths.confine("command[0]", arg, root))
        else:
            argv.append(_text(arg.render(root) if hasattr(arg, "render") else arg))
    if not argv or not argv[0]:
        raise ActionError("command: the program name is empty", retryable=False)
    return argv


def _prepare(params: Mapping[str, Any], root: Mapping[str, Any]) -> tuple[list[str], str | None]:
    """argv and the working directory, both checked (blocking: resolves paths)."""
    argv = build_argv(params, root)
    cwd = params.get("cwd")
    return argv, (None if cwd is None else _paths.confine("cwd", cwd, root) or None)


def build_env(params: Mapping[str, Any]) -> dict[str, str]:
    """PATH (so bare program names resolve) plus `env`; everything else only on request."""
    if params.get("inherit_env", False):
        env = dict(os.environ)
    else:
        env = {"PATH": os.environ.get("PATH", os.defpath)}
    for key, value in (params.get("env") or {}).items():
        env[str(key)] = _text(value)
    return env


class _Capture:
    """Reads a stream to the end, keeping at most `limit` bytes."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.data = bytearray()
        self.truncated = False
        self.done = anyio.Event()

    async def drain(self, stream: anyio.abc.ByteReceiveStream | None) -> None:
        try:
            if stream is None:
                return
            async for chunk in stream:
                room = self.limit - len(self.data)
                if room > 0:
                    self.data += chunk[:room]
                if len(chunk) > room:
                    self.truncated = True
        finally:
            self.done.set()

    def text(self) -> str:
        return self.data.decode("utf-8", errors="replace")


async def _feed(process: anyio.abc.Process, data: bytes | None) -> None:
    """Write stdin and close it; a program that does not read it is not an error."""
    if process.stdin is None:
        return
    try:
        if data:
            await process.stdin.send(data)
    except (anyio.BrokenResourceError, anyio.ClosedResourceError, BrokenPipeError):
        pass
    finally:
        await process.stdin.aclose()


def _signal_group(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def _group_alive(pgid: int) -> bool:
    """Whether any process of the group is still running.

    Zombies do not count: they are dead, and where PID 1 does not reap
    orphans (some containers) they would otherwise look alive forever.
    Linux reads /proc; elsewhere any member, zombie or not, counts.
    """
    try:
        entries = os.scandir("/proc")
    except OSError:
        try:
            os.killpg(pgid, 0)
        except (ProcessLookupError, PermissionError):
            return False
        return True
    with entries:
        for entry in entries:
            if entry.name.isdigit() and _running_in_group(entry.path, pgid):
                return True
    return False


def _running_in_group(proc_dir: str, pgid: int) -> bool:
    try:
        with open(f"{proc_dir}/stat", "rb") as handle:
            stat = handle.read()
    except OSError:
        return False
    # "pid (comm) state ppid pgrp ...": comm may hold spaces and parentheses.
    fields = stat.rsplit(b")", 1)[-1].split()
    return len(fields) > 2 and int(fields[2]) == pgid and fields[0] not in (b"Z", b"X")


async def _wait_group_gone(pgid: int, seconds: float) -> bool:
    # No event tells us when unrelated grandchildren die: poll, briefly.
    with anyio.move_on_after(seconds):
        while True:
            if not _group_alive(pgid):
                return True
            await anyio.sleep(GROUP_POLL)
    return False


async def kill_group(process: anyio.abc.Process) -> None:
    """SIGTERM the program's whole process group, SIGKILL what is left after a grace period.

    Shielded: this runs while the job is being cancelled and must finish.
    Returns once no member of the group is running any more, so nothing the
    action started outlives it. The group id is the child's pid because it
    started a new session.
    """
    pgid = process.pid
    with anyio.CancelScope(shield=True):
        _signal_group(pgid, signal.SIGTERM)
        if not await _wait_group_gone(pgid, TERM_GRACE):
            _signal_group(pgid, signal.SIGKILL)
            await _wait_group_gone(pgid, KILL_WAIT)
        await process.wait()


async def _run_process(
    argv: list[str],
    *,
    cwd: str | None,
    env: dict[str, str],
    stdin: bytes | None,
) -> tuple[int, _Capture, _Capture]:
    try:
        # Shielded: the child runs (and may start children of its own) before
        # open_process returns. Cancelled in between, asyncio would kill only
        # the child itself and leave its process group behind; shielded, the
        # cancellation lands below, where `kill_group` takes the whole group.
        with anyio.CancelScope(shield=True):
            process = await anyio.open_process(
                argv,
                stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                cwd=cwd,
                env=env,
                start_new_session=True,
            )
    except OSError as exc:  # missing program or cwd, not executable, name too long, ...
        program = shorten(argv[0], _paths.SHOWN + 100)
        reason = exc.strerror or type(exc).__name__
        raise ActionError(f"cannot start {program!r}: {reason}", retryable=False) from None
    except ValueError as exc:  # e.g. a NUL byte in an argument
        program = shorten(argv[0], _paths.SHOWN + 100)
        raise ActionError(f"cannot start {program!r}: {exc}", retryable=False) from None
    out, err = _Capture(CAPTURE_BYTES), _Capture(CAPTURE_BYTES)
    ok = False
    try:
        async with anyio.create_task_group() as readers:
            readers.start_soon(out.drain, process.stdout)
            readers.start_soon(err.drain, process.stderr)
            readers.start_soon(_feed, process, stdin)
            code = await process.wait()
            # A backgrounded grandchild can keep the pipes open: stop reading soon after exit.
            with anyio.move_on_after(DRAIN_GRACE):
                await out.done.wait()
                await err.done.wait()
            readers.cancel_scope.cancel()
        ok = code == 0
        return code, out, err
    finally:
        if not ok:
            await kill_group(process)
        with anyio.CancelScope(shield=True):
            await process.aclose()


async def run(params: Mapping[str, Any], ctx: ActionContext) -> dict[str, Any]:
    argv, cwd = await anyio.to_thread.run_sync(_prepare, params, ctx.root)
    env = build_env(params)
    stdin = orjson.dumps(ctx.event.body) if params.get("stdin") == "event" else None
    program = shorten(argv[0], _paths.SHOWN + 100) if not params.get("shell") else SHELL
    extra = log_extra(ctx, NAME, program=program)
    # Arguments and env values may hold secrets from ${VAR}: log the program and env names only.
    ctx.log.debug(
        "running %s (%d args, env: %s)",
        extra["program"],
        len(argv) - 1,
        ", ".join(sorted(env)),
        extra=extra,
    )
    code, out, err = await _run_process(argv, cwd=cwd, env=env, stdin=stdin)
    stdout, stderr = out.text(), err.text()
    ctx.log.debug(
        "exit %d; stdout: %s; stderr: %s",
        code,
        excerpt(stdout, LOG_CHARS),
        excerpt(stderr, LOG_CHARS),
        extra={**extra, "exit_code": code},
    )
    if code != 0:
        raise ActionError(f"{_describe_exit(code)}: {_last_words(stderr) or 'no stderr'}")
    return {"exit_code": code, "stdout": stdout, "stderr": stderr}


def _last_words(text: str) -> str:
    """The end of `text` as one line of at most LOG_CHARS characters (where errors are)."""
    line = " ".join(text[-8 * LOG_CHARS :].split())
    return line if len(line) <= LOG_CHARS else "…" + line[-(LOG_CHARS - 1) :]


def _describe_exit(code: int) -> str:
    if code < 0:
        try:
            return f"command killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"command killed by signal {-code}"
    return f"command exited with code {code}"


@hookimpl
def zoomrules_action_types() -> list[ActionType]:
    return [
        ActionType(
            name=NAME,
            run=run,
            description="Run a program (argv list; or a /bin/sh string with shell = true).",
            validate=validate,
            params=[
                Param(
                    "command",
                    (list, str),
                    required=True,
                    raw=True,
                    help="argv list, each item one argument; a string with shell = true",
                ),
                Param("shell", bool, default=False, help="run a string through /bin/sh -c"),
                Param("cwd", str, raw=True, help="working directory"),
                Param("env", dict, help="environment variables (templated values)"),
                Param("inherit_env", bool, default=False, help="pass the daemon's environment"),
                Param("stdin", str, choices=("event",), help='"event": the event JSON on stdin'),
            ],
        )
    ]
