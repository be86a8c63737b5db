"""`zoomrules simulate`: a local Zoom to try one's own rules against, with `zoomrules run`.

    zoomrules simulate [--port 9590] [--events FILE.jsonl | -] [--every 2s [--loop]]
                       [--env-file PATH] [--webhook [URL]]

Runs the simulator (OAuth endpoint, event WebSocket, REST API stand-in) on
127.0.0.1 until Ctrl-C or SIGTERM, and prints the environment that points
`zoomrules run` at it. It sends the built-in demo scenario or the events of
`--events`: one every `--every`, and whenever asked — Enter or `send NAME`
on its terminal, or `POST /_sim/next`, `/_sim/send/NAME`, `/_sim/send` (an
event body) and `/_sim/send-all` on its HTTP port from anywhere else.
With `--webhook`, each event is also POSTed to the daemon's webhook
endpoint, signed as Zoom signs (the secret token is in the environment
printed), as for an app subscribed both ways.
"""

from __future__ import annotations

import argparse
import math
import os
import shlex
import signal
import sys
import tempfile
import time
from collections.abc import Callable, Mapping
from contextlib import AsyncExitStack
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import anyio

from engine.commands.base import EXIT_FAILURE, EXIT_INVALID, EXIT_OK, Command
from engine.durations import parse_duration

if TYPE_CHECKING:
    from anyio import CancelScope

    from engine.simulator import EventFeed, Sent, SimConnection, Simulator

#: HTTP (OAuth, REST API, control endpoint) on this port, events on the next.
DEFAULT_PORT = 9590

#: The simulator's credentials: fixed, so the printed environment stays the
#: same from one start to the next and a running daemon reconnects after a
#: restart. They open nothing but this local simulator.
CLIENT_ID = "simulate-client-id"
CLIENT_SECRET = "simulate-client-secret"
ACCOUNT_ID = "simulate-account"
SUBSCRIPTION_ID = "simulate-subscription"
WEBHOOK_SECRET_TOKEN = "simulate-webhook-secret-token"
#: Where `--webhook` POSTs without a URL: a `[zoom.webhook]` of default path
#: on the daemon's default `[http] listen`.
DEFAULT_WEBHOOK_URL = "http://127.0.0.1:9464/zoom/webhook"

TERMINAL_HELP = (
    "Enter: send the next event · send NAME: the next event of that name · all: every "
    "event · list · status · help · quit (or Ctrl-C)"
)


def duration_arg(*, positive: bool = False) -> Callable[[str], float]:
    """An argparse `type=` for durations whose error names the option and the accepted forms."""

    def duration(text: str) -> float:
        try:
            seconds = parse_duration(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
        if positive and seconds <= 0:
            raise argparse.ArgumentTypeError(f"must be longer than 0, got {text!r}")
        return seconds

    return duration


def _port(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a port number, got {text!r}") from None
    if not 0 <= port <= 65534:
        raise argparse.ArgumentTypeError(
            f"expected 0 (any free ports) or a port from 1 to 65534, got {port}"
        )
    return port


def _url(text: str) -> str:
    url = urlsplit(text)
    if url.scheme not in ("http", "https") or not url.hostname:
        raise argparse.ArgumentTypeError(
            f"expected an http:// or https:// URL such as {DEFAULT_WEBHOOK_URL}, got {text!r}"
        )
    return text


def read_events(name: str | None) -> tuple[list[dict[str, Any]], list[str]]:
    """The events to send: the built-in scenario (None), a file, or '-' for stdin."""
    from engine.simulator import builtin_events, parse_events

    if name is None:
        return builtin_events(), []
    try:
        data = sys.stdin.buffer.read() if name == "-" else Path(name).read_bytes()
    except OSError as exc:
        return [], [f"{name}: cannot read: {exc.strerror}"]
    shown = "<stdin>" if name == "-" else name
    events, errors = parse_events(data, shown)
    if not events and not errors:
        errors.append(f"{shown}: no events (one Zoom event object per line)")
    return events, errors


def environment(sim: Simulator, state_dir: str, *, webhook: bool = False) -> dict[str, str]:
    """What `zoomrules run` needs in its environment to use `sim` instead of Zoom."""
    env = {
        "ZOOM_CLIENT_ID": sim.client_id,
        "ZOOM_CLIENT_SECRET": sim.client_secret,
        "ZOOM_ACCOUNT_ID": ACCOUNT_ID,
        "ZOOM_WS_ENDPOINT": sim.ws_endpoint,
        "ZOOM_OAUTH_URL": sim.oauth_url,
        "ZOOM_API_BASE_URL": sim.api_base_url,
        "ZOOMRULES_STATE_DIR": state_dir,
    }
    if webhook:
        env["ZOOM_WEBHOOK_SECRET_TOKEN"] = WEBHOOK_SECRET_TOKEN
    return env


def write_env_file(path: Path, env: Mapping[str, str]) -> None:
    """`KEY=value` lines (shell-quoted), readable by its owner only."""
    lines = [
        "# zoomrules simulate: load with `set -a; . FILE; set +a`, then `zoomrules run`",
        *(f"{key}={shlex.quote(value)}" for key, value in env.items()),
    ]
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        os.fchmod(fd, 0o600)  # an existing file keeps its mode otherwise
        handle.write("\n".join(lines) + "\n")


@dataclass
class Options:
    port: int
    every: float | None
    loop: bool
    env_file: Path | None
    source: str  # what the events are, for people
    terminal: bool  # read commands from the terminal
    webhook: str | None = None  # also POST each event here


def _say(text: str = "") -> None:
    print(text, flush=True)


def _clock() -> str:
    return time.strftime("%H:%M:%S")


def _print_sent(sent: Sent) -> None:
    _say(f"{_clock()} {sent.describe()}")


async def simulate(options: Options, events: list[dict[str, Any]]) -> int:
    from engine.simulator import EventFeed, Simulator, WebhookSender

    ws_port = options.port + 1 if options.port else 0
    sim = Simulator(
        client_id=CLIENT_ID,
        client_secret=CLIENT_SECRET,
        subscription_id=SUBSCRIPTION_ID,
        http_port=options.port,
        ws_port=ws_port,
    )
    webhook = (
        WebhookSender(options.webhook, WEBHOOK_SECRET_TOKEN)
        if options.webhook is not None
        else None
    )
    feed = EventFeed(sim, events, on_sent=_print_sent, webhook=webhook)
    sim.add_routes(feed.routes())
    # For the daemon's journal: your [engine] state_dir may be a production
    # journal, or /var/lib/zoomrules, which you cannot write to.
    state_dir = tempfile.mkdtemp(prefix="zoomrules-simulate-")
    try:
        async with AsyncExitStack() as stack:
            try:
                await stack.enter_async_context(sim)
            except OSError as exc:
                ports = f"{options.port} and {ws_port}" if options.port else "free ports"
                print(
                    f"zoomrules: simulate: cannot listen on 127.0.0.1 ({ports}): "
                    f"{exc.strerror or exc}; is another `zoomrules simulate` running? "
                    f"Choose others with --port (0: any free ones)",
                    file=sys.stderr,
                )
                return EXIT_FAILURE
            if webhook is not None:
                await stack.enter_async_context(webhook)
            env = environment(sim, state_dir, webhook=webhook is not None)
            status = await _serve(sim, feed, options, env)
    finally:
        left = _remove_if_empty(state_dir)
    if status == EXIT_OK:
        _summary(sim, feed, state_dir if left else None)
    return status


async def _serve(sim: Simulator, feed: EventFeed, options: Options, env: Mapping[str, str]) -> int:
    if options.env_file is not None:
        try:
            write_env_file(options.env_file, env)
        except OSError as exc:
            print(f"zoomrules: {options.env_file}: cannot write: {exc.strerror}", file=sys.stderr)
            return EXIT_FAILURE
    _introduce(sim, feed, options, env)
    async with anyio.create_task_group() as tg:
        tg.start_soon(_stop_on_signal, tg.cancel_scope)
        tg.start_soon(_watch_connections, sim)
        if options.every is not None:
            tg.start_soon(partial(feed.run_schedule, options.every, loop=options.loop))
        if options.terminal:
            tg.start_soon(_read_terminal, feed, tg.cancel_scope)
    return EXIT_OK


def _remove_if_empty(path: str) -> bool:
    """Remove `path` if no daemon used it; True if it is left."""
    try:
        os.rmdir(path)
    except OSError:
        return True
    return False


def _introduce(sim: Simulator, feed: EventFeed, options: Options, env: Mapping[str, str]) -> None:
    control = f"http://{sim.host}:{sim.http_port}/_sim"
    _say(
        f"zoomrules simulate: a local Zoom on {sim.host}: OAuth and REST API on port "
        f"{sim.http_port}, the event WebSocket on port {sim.ws_port}."
    )
    _say("Point `zoomrules run` at it: in another terminal, paste")
    _say()
    for key, value in env.items():
        _say(f"export {key}={shlex.quote(value)}")
    _say()
    if options.env_file is not None:
        shown = str(options.env_file)
        shown = shlex.quote(shown if "/" in shown else f"./{shown}")  # `.` searches PATH
        _say(f"(or, from the file written: set -a; . {shown}; set +a)")
    _say("then: zoomrules run -c rules.toml")
    _say()
    if options.webhook is not None:
        _say(f"Each event also goes to the webhook {options.webhook}: your rules need")
        _say('  [zoom.webhook] secret_token = "${ZOOM_WEBHOOK_SECRET_TOKEN}"')
        _say("  and an [http] listen that serves that URL (the journal keeps each event once).")
        _say()
    _say(f"Events: {options.source}, {len(feed.events)} event(s): {', '.join(feed.names())}")
    if options.every is not None:
        how = "over and over" if options.loop else "once through"
        _say(f"One every {options.every:g}s, {how}, from when a client connects.")
    if options.terminal:
        _say(TERMINAL_HELP)
    name = feed.names()[0] if feed.events else "NAME"
    examples = [
        (f"curl -X POST {control}/next", "the next event"),
        (f"curl -X POST {control}/send/{name}", "the next one of that name"),
        (f"curl -X POST {control}/send-all", "every event"),
        (f"curl --data-binary @event.json {control}/send", "your own event(s)"),
    ]
    width = max(len(command) for command, _ in examples)
    _say("Or from another terminal:" if options.terminal else "Send events from another terminal:")
    for command, what in examples:
        _say(f"  {command:<{width}}  # {what}")
    _say("Ctrl-C or SIGTERM stops it.")


async def _stop_on_signal(scope: CancelScope) -> None:
    with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async for signum in signals:
            after_echo = "\n" if signum == signal.SIGINT else ""  # past the terminal's ^C
            _say(f"{after_echo}{_clock()} {signal.Signals(signum).name}: stopping")
            scope.cancel()
            return


async def _watch_connections(sim: Simulator) -> None:
    """A line when a client connects or goes away."""
    live = None
    while True:
        await sim.wait_for(partial(_changed, sim, live), timeout=math.inf)
        live = sim.live
        if live is not None:
            _say(f"{_clock()} client connected (connection {live.id})")
        else:
            _say(f"{_clock()} client disconnected; events sent now are dropped")


def _changed(sim: Simulator, seen: SimConnection | None) -> bool:
    return sim.live is not seen


async def _read_terminal(feed: EventFeed, stop: CancelScope) -> None:
    """Commands typed on the terminal, one a line; end of input (Ctrl-D) stops."""
    fd = sys.stdin.fileno()
    buffer = b""
    while True:
        await anyio.wait_readable(fd)
        if not _in_foreground(fd):
            return  # reading now would stop us (SIGTTIN): leave the terminal alone
        chunk = os.read(fd, 4096)
        if not chunk:
            stop.cancel()
            return
        buffer += chunk
        while b"\n" in buffer:
            line, buffer = buffer.split(b"\n", 1)
            if not await terminal_command(feed, line.decode(errors="replace")):
                stop.cancel()
                return


def _in_foreground(fd: int) -> bool:
    """Whether `fd` is the terminal we were started from, and we are its foreground job.

    Not when started in the background (`zoomrules simulate &`: reading would
    stop us), nor from a terminal that is not ours (a test runner's, inherited
    by a process in a session of its own).
    """
    try:
        return os.tcgetpgrp(fd) == os.getpgrp()
    except OSError:
        return False


async def terminal_command(feed: EventFeed, line: str) -> bool:
    """Run one typed command; False to stop the simulator."""
    words = line.split()
    command = words[0].lower() if words else "next"
    try:
        if command in ("next", "n"):
            await feed.send_next(via="terminal")
        elif command in ("send", "s") and len(words) == 2:
            await feed.send_named(words[1], via="terminal")
        elif command == "all":
            await feed.send_all(via="terminal")
        elif command in ("list", "ls"):
            for index, event in enumerate(feed.events):
                mark = "  <- next" if index == feed.position else ""
                _say(f"  {index + 1:>3}  {event['event']}{mark}")
        elif command == "status":
            status = feed.status()
            state = "a client is connected" if status["connected"] else "no client connected"
            _say(
                f"  {state}; {status['sent']} sent, {status['delivered']} delivered, "
                f"{status['dropped']} dropped"
            )
        elif command in ("quit", "exit", "q"):
            return False
        else:
            if command not in ("help", "?", "h"):
                _say(f"  unknown command {line.strip()!r}")
            _say(f"  {TERMINAL_HELP}")
    except LookupError as exc:
        _say(f"  {exc}")
    return True


def _summary(sim: Simulator, feed: EventFeed, state_dir: str | None) -> None:
    nobody = "no client connected" + (", no webhook took it" if feed.webhook else "")
    dropped = f", {feed.dropped} dropped ({nobody})" if feed.dropped else ""
    _say(
        f"zoomrules simulate: stopped. {feed.sent} event(s) sent: {feed.delivered} delivered"
        f"{dropped}; {sim.accepted_connections} client connection(s), "
        f"{len(sim.issued_tokens)} access token(s) issued, {len(sim.api_calls)} REST call(s) "
        "answered."
    )
    if state_dir is not None:
        _say(f"The daemon's state directory {state_dir} is left for you to look at (or remove).")


def handle(args: argparse.Namespace) -> int:
    if args.loop and args.every is None:
        print("zoomrules: simulate: --loop repeats the schedule: give --every too", file=sys.stderr)
        return EXIT_INVALID
    events, errors = read_events(args.events)
    if errors:
        for error in errors[:20]:
            print(f"zoomrules: {error}", file=sys.stderr)
        if len(errors) > 20:
            print(f"zoomrules: ... and {len(errors) - 20} more invalid line(s)", file=sys.stderr)
        return EXIT_INVALID
    if args.events is None:
        source = "the built-in demo scenario"
    else:
        source = "standard input" if args.events == "-" else args.events
    options = Options(
        port=args.port,
        every=args.every,
        loop=args.loop,
        env_file=args.env_file,
        source=source,
        webhook=args.webhook,
        terminal=(
            args.events != "-"
            and sys.stdin is not None
            and sys.stdin.isatty()
            and _in_foreground(sys.stdin.fileno())
        ),
    )
    return anyio.run(simulate, options, events)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--port",
        type=_port,
        default=DEFAULT_PORT,
        help=f"OAuth and REST API on this port, the event WebSocket on the next one "
        f"(default {DEFAULT_PORT}; 0: any free ports)",
    )
    parser.add_argument(
        "--events",
        metavar="FILE.jsonl",
        help="the events to send: one Zoom event object per line, or - for standard input "
        "(default: the built-in demo scenario, a meeting's life)",
    )
    parser.add_argument(
        "--every",
        type=duration_arg(positive=True),
        metavar="DURATION",
        help="send the next event every DURATION (e.g. '2s'), from when a client connects; "
        "default: only when asked",
    )
    parser.add_argument(
        "--loop",
        action="store_true",
        help="with --every: start again from the first event after the last",
    )
    parser.add_argument(
        "--webhook",
        nargs="?",
        type=_url,
        const=DEFAULT_WEBHOOK_URL,
        metavar="URL",
        help="also POST each event to this webhook endpoint, signed as Zoom signs "
        f"(default URL {DEFAULT_WEBHOOK_URL}); the secret token is in the environment printed",
    )
    parser.add_argument(
        "--env-file",
        type=Path,
        metavar="PATH",
        help="also write the environment to PATH (mode 0600), for `set -a; . PATH; set +a`",
    )


COMMAND = Command(
    "simulate",
    "run a local Zoom (OAuth, event WebSocket, REST API) to try rules against with `run`",
    handle,
    add_arguments,
    needs_config=False,
)
