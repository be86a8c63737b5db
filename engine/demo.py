"""`zoomrules demo`: the real daemon against the built-in simulator.

A newcomer sees rules fire within seconds, with no Zoom account: the
simulator plays a meeting's life (scheduled, started, people join — one of
them a VIP — someone leaves, it ends, the recording is ready), using Zoom's
published example events.
"""

from __future__ import annotations

import json
import logging
import tempfile
from importlib import resources
from pathlib import Path
from typing import Any

import anyio

from engine.daemon import Daemon
from engine.loader import load_rules
from engine.simulator import Simulator

log = logging.getLogger("zoomrules.demo")

#: Pause between scenario events, so a person can follow along.
STEP = 0.6


def demo_rules_path() -> Path:
    return Path(str(resources.files("engine").joinpath("data/demo.toml")))


def demo_events() -> list[dict[str, Any]]:
    text = resources.files("engine").joinpath("data/demo_events.json").read_text()
    events: list[dict[str, Any]] = json.loads(text)
    return events


async def run_demo(duration: float | None, step: float = STEP) -> Daemon:
    """Run the scenario; returns when it is over (or after `duration` seconds)."""
    with tempfile.TemporaryDirectory(prefix="zoomrules-demo-") as state_dir:
        async with Simulator(client_id="demo-client", client_secret="demo-secret") as sim:
            env = {
                "ZOOM_CLIENT_ID": sim.client_id,
                "ZOOM_CLIENT_SECRET": sim.client_secret,
                "ZOOM_WS_ENDPOINT": sim.ws_endpoint,
                "ZOOM_OAUTH_URL": sim.oauth_url,
                "ZOOM_API_BASE_URL": sim.api_base_url,
                "ZOOMRULES_STATE_DIR": state_dir,
            }
            paths = [demo_rules_path()]
            daemon = Daemon(paths, load_rules(paths, env=env), env=env)
            async with anyio.create_task_group() as tg:
                tg.start_soon(daemon.run)
                with anyio.move_on_after(duration):
                    await sim.wait_connected(timeout=10)
                    print(
                        f"demo: simulator on {sim.ws_endpoint.split('?')[0]}; daemon connected\n",
                        flush=True,
                    )
                    for event in demo_events():
                        await anyio.sleep(step)
                        await sim.send_event(event)
                    await anyio.sleep(step * 2)
                daemon.stop()
            calls = len(sim.api_calls)
    print(f"\ndemo: done ({calls} Zoom API call(s) answered by the simulator).", flush=True)
    return daemon
