"""The `zoomrules` command line.

Every subcommand takes its options after its name:
`zoomrules check -c rules.toml`. Exit codes: 0 success, 1 runtime failure,
2 invalid configuration or usage.
"""

from __future__ import annotations

import argparse
import logging
import sys
import traceback
from collections.abc import Callable, Sequence

from engine import __version__
from engine.commands import (
    check,
    cluster,
    demo,
    dlq,
    journal,
    plugins,
    replay,
    run,
    simulate,
    test,
    timers,
)
from engine.commands.base import (
    DEFAULT_CONFIG,
    EXIT_FAILURE,
    EXIT_INTERRUPTED,
    EXIT_OK,
    Command,
    exit_status,
    fatal_error,
)
from engine.logs import LogFormat
from engine.redact import redact

#: Every subcommand, in the order `zoomrules --help` lists them.
COMMANDS: list[Command] = [
    run.COMMAND, check.COMMAND, test.COMMAND, replay.COMMAND, plugins.COMMAND,
    dlq.COMMAND, journal.COMMAND, timers.COMMAND, cluster.COMMAND, demo.COMMAND,
    simulate.COMMAND,
]  # fmt: skip


def _common(parser: argparse.ArgumentParser, *, config: bool = True) -> None:
    if config:
        parser.add_argument(
            "-c",
            "--config",
            action="append",
            metavar="PATH",
            help=f"rule file or directory of *.toml (repeatable; default ./{DEFAULT_CONFIG})",
        )
    parser.add_argument(
        "--log-level",
        choices=("debug", "info", "warning", "error"),
        default="info",
        help="log verbosity (default info)",
    )
    parser.add_argument(
        "--log-format",
        choices=("text", "json"),
        default="text",
        help="human-readable text or JSON lines (default text)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="zoomrules",
        description="Turn Zoom events into automated actions with declarative TOML rules.",
    )
    parser.add_argument("--version", action="version", version=f"zoomrules {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for command in COMMANDS:
        p = sub.add_parser(command.name, help=command.help, description=command.help)
        _common(p, config=command.needs_config)
        command.add_arguments(p)
        p.set_defaults(handler=command.handler)
    return parser


#: Libraries whose INFO lines (one per request, per notification, per
#: connection) drown the daemon's own: WARNING and up only, except at debug.
THIRD_PARTY_LOGGERS = (
    "httpx", "httpcore", "websockets", "apprise", "uvicorn", "uvicorn.error", "uvicorn.access",
    "nats",
)  # fmt: skip


def setup_logging(level: str, fmt: LogFormat) -> None:
    from engine.logs import configure_logging

    configure_logging(level, fmt)
    if level != "debug":
        # Per-request lines from the HTTP client and the simulator's servers
        # drown the daemon's own messages; they stay available at debug.
        for library in THIRD_PARTY_LOGGERS:
            logging.getLogger(library).setLevel(logging.WARNING)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    setup_logging(args.log_level, args.log_format)
    handler: Callable[[argparse.Namespace], int] = args.handler
    try:
        return handler(args)
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # `zoomrules test ... | head`: the reader went away; not our error.
        sys.stderr.close()
        return EXIT_OK
    except BaseException as exc:  # noqa: BLE001 - one line and a status, not a traceback
        return _fail(exc, debug=args.log_level == "debug")
    finally:
        logging.shutdown()


def _fail(exc: BaseException, *, debug: bool) -> int:
    """One line saying what failed, and the documented status; the traceback
    only at `--log-level debug` (or for anything that is not an error)."""
    if not isinstance(exc, Exception | BaseExceptionGroup):
        raise exc  # SystemExit and the like
    error = fatal_error(exc)
    if debug:
        traceback.print_exception(exc)
    if error is None:
        print(
            f"zoomrules: internal error: {type(exc).__name__}: {redact(str(exc))} "
            "(a bug: please report it; --log-level debug shows the traceback)",
            file=sys.stderr,
        )
        return EXIT_FAILURE
    print(f"zoomrules: {redact(str(error))}", file=sys.stderr)
    return exit_status(error)


if __name__ == "__main__":
    sys.exit(main())
