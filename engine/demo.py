"""`zoomrules demo`: the real daemon against the built-in simulator.

A newcomer sees rules fire within seconds, with no Zoom account: the
simulator plays a meeting's life (scheduled, started, people join — one of
them a VIP — someone leaves, it ends, the recording is ready), using Zoom's
published example events.

`demo -c rules.toml` plays the same scenario (or `--events`) to one's own
rules: the daemon's `[zoom]` is pointed at the simulator (one is added if
the files have none), its state lives in a temporary directory, and every
action runs for real except `zoom_api`, which the simulator answers.
"""

from __future__ import annotations

import os
import sys
import tempfile
from collections.abc import Mapping, Sequence
from importlib import resources
from pathlib import Path
from typing import Any

import anyio

from engine.daemon import Daemon
from engine.errors import ConfigError, DaemonError, ZoomrulesError
from engine.loader import LoadedRules, load_rules
from engine.problems import Problem
from engine.simulator import Simulator, builtin_events

#: Pause between scenario events, so a person can follow along.
STEP = 0.6
#: How long the daemon may take to fetch a token and connect.
CONNECT_TIMEOUT = 30.0

#: Added to one's own rule files when none of them has a [zoom] section.
SIMULATOR_ZOOM = """\
# Written by `zoomrules demo`: the rule files given have no [zoom]; this one
# points the daemon at the built-in simulator.
version = 1

[zoom]
client_id     = "${ZOOM_CLIENT_ID}"
client_secret = "${ZOOM_CLIENT_SECRET}"
endpoint      = "${ZOOM_WS_ENDPOINT}"
"""


def demo_rules_path() -> Path:
    return Path(str(resources.files("engine").joinpath("data/demo.toml")))


def demo_events() -> list[dict[str, Any]]:
    return builtin_events()


async def run_demo(
    duration: float | None,
    step: float = STEP,
    *,
    rules: Sequence[Path] | None = None,
    events: Sequence[dict[str, Any]] | None = None,
) -> Daemon:
    """Run the scenario; returns when it is over (or after `duration` seconds).

    `rules`: one's own rule files instead of the built-in ones; `events`:
    one's own events instead of the scenario. Raises ConfigError when the
    rules cannot be used, DaemonError when the daemon cannot run.
    """
    own = rules is not None or events is not None
    scenario = demo_events() if events is None else list(events)
    failure: ZoomrulesError | None = None
    daemon: Daemon | None = None
    with tempfile.TemporaryDirectory(prefix="zoomrules-demo-") as state_dir:
        async with Simulator(client_id="demo-client", client_secret="demo-secret") as sim:
            try:
                daemon = await _run(sim, Path(state_dir), duration, step, rules, scenario, own)
            except (ConfigError, DaemonError) as exc:
                failure = exc  # raised out here: the simulator's task group would wrap it
            calls = len(sim.api_calls)
    if failure is not None:
        raise failure
    assert daemon is not None
    print(f"\ndemo: done ({calls} Zoom API call(s) answered by the simulator).", flush=True)
    if own:
        _report(daemon)
    return daemon


async def _run(
    sim: Simulator,
    state_dir: Path,
    duration: float | None,
    step: float,
    rules: Sequence[Path] | None,
    scenario: Sequence[dict[str, Any]],
    own: bool,
) -> Daemon:
    """The daemon against `sim` while the scenario plays; returns once it has stopped."""
    env = {
        "ZOOM_CLIENT_ID": sim.client_id,
        "ZOOM_CLIENT_SECRET": sim.client_secret,
        "ZOOM_WS_ENDPOINT": sim.ws_endpoint,
        "ZOOM_OAUTH_URL": sim.oauth_url,
        "ZOOM_API_BASE_URL": sim.api_base_url,
        "ZOOMRULES_STATE_DIR": str(state_dir),
    }
    if rules is None:
        paths = [demo_rules_path()]
        loaded = load_rules(paths, env=env)
    else:
        # One's own files read the rest of the environment too
        # (`${SLACK_URL}`...); the simulator's values win.
        env = {**os.environ, **env, "ZOOM_ACCOUNT_ID": "demo-account"}
        paths, loaded = _own_rules(rules, env, sim, state_dir)
    daemon = Daemon(paths, loaded, env=env)
    failure: DaemonError | None = None
    async with anyio.create_task_group() as tg:

        async def run_daemon() -> None:
            nonlocal failure
            try:
                await daemon.run()
            except DaemonError as exc:
                failure = exc
            # Stopped (Ctrl-C) or failed: nobody left to play to.
            tg.cancel_scope.cancel()

        tg.start_soon(run_daemon)
        with anyio.move_on_after(duration):
            try:
                await sim.wait_connected(timeout=CONNECT_TIMEOUT)
            except TimeoutError:
                failure = DaemonError(
                    f"the daemon did not connect to the simulator within "
                    f"{CONNECT_TIMEOUT:g}s (its log above says why)"
                )
            else:
                await _play(sim, scenario, step, daemon if own else None)
        daemon.stop()
    if failure is not None:
        raise failure
    return daemon


async def _play(
    sim: Simulator, scenario: Sequence[dict[str, Any]], step: float, own: Daemon | None
) -> None:
    """Send the events, `step` apart; with one's own rules or events, say which."""
    if own is None:
        print(f"demo: simulator on {sim.ws_endpoint.split('?')[0]}; daemon connected\n", flush=True)
    else:
        files = ", ".join(str(p) for p in own.loaded.config.files)
        print(
            f"demo: simulator on {sim.ws_endpoint.split('?')[0]}; daemon connected with "
            f"{len(own.loaded.rules)} rule(s) from {files}; {len(scenario)} event(s) to send\n",
            flush=True,
        )
    for event in scenario:
        await anyio.sleep(step)
        delivered = await sim.send_event(event)
        if own is not None:
            dropped = "" if delivered else " (dropped: the daemon is not connected)"
            print(f"demo: sent {event.get('event')}{dropped}", flush=True)
    await anyio.sleep(step * 2)


def _own_rules(
    rules: Sequence[Path], env: Mapping[str, str], sim: Simulator, state_dir: Path
) -> tuple[list[Path], LoadedRules]:
    """One's own rule files, loaded and pointed at `sim` (ConfigError if they cannot be)."""
    paths = list(rules)
    loaded = load_rules(paths, env=env)
    if loaded.config.zoom is None:
        zoom_file = state_dir / "simulator-zoom.toml"
        zoom_file.write_text(SIMULATOR_ZOOM, encoding="utf-8")
        paths.append(zoom_file)
        loaded = load_rules(paths, env=env)
    zoom = loaded.config.zoom
    assert zoom is not None
    problems = [
        Problem(
            None,
            None,
            f"[[zoom.subscription]] '{sub.name}'" if sub.name != "default" else "[zoom]",
            "endpoint" if sub.endpoint != sim.ws_endpoint else "oauth_url",
            "demo plays its events to one subscription: write `endpoint = "
            '"${ZOOM_WS_ENDPOINT}"` in [zoom] (no [[zoom.subscription]] and no '
            "oauth_url) so that it reaches the simulator",
        )
        for sub in zoom.subscriptions
        if len(zoom.subscriptions) > 1 or sub.endpoint != sim.ws_endpoint
        or sub.oauth_url != sim.oauth_url
    ]  # fmt: skip
    if problems:
        raise ConfigError(problems)
    for warning in loaded.warnings:
        print(f"warning: {warning}", file=sys.stderr, flush=True)
    # Whatever credentials the files hold, the simulator takes them.
    sim.client_id = zoom.default.client_id
    sim.client_secret = zoom.default.client_secret
    return paths, loaded


def _report(daemon: Daemon) -> None:
    """Which of one's rules fired, and how their actions went."""
    pipeline = daemon.pipeline
    if pipeline is None:
        return
    stats = pipeline.dispatcher.stats
    if not stats.fired_by_rule:
        print("demo: no rule fired", flush=True)
    else:
        fired = ", ".join(f"{rule} {count}x" for rule, count in stats.fired_by_rule.items())
        print(f"demo: rules fired: {fired}", flush=True)
    for rule, count in pipeline.stats.throttled.items():
        print(f"demo: {rule} throttled {count}x", flush=True)
    failed = " (see the errors above)" if stats.actions_failed else ""
    print(
        f"demo: actions: {stats.actions_ok} ok, {stats.actions_failed} failed{failed}", flush=True
    )
