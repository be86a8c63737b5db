"""The simulator in a process of its own: the remote Zoom for end-to-end benchmarks.

    python -m benchmarks.zoom_process --events 50000

Started by `benchmarks/listener.py` (run from the repository root). On
start it prints one JSON line with the simulator's URLs and credentials;
then it answers commands, one JSON object per line on stdin, with one JSON
line each on stdout, until stdin closes:

- `{"op": "token"}`: a valid access token (`{"token": ...}`);
- `{"op": "wait_connected", "count": N}`: wait until N connections in all
  were accepted and one is live (`{"accepted": N}`);
- `{"op": "send"}`: write every benchmark frame to the live connection,
  pre-serialized (`Simulator.send_wire`), and answer `{"sent": N}` when the
  last one is in the socket;
- `{"op": "gap"}`: reset the live connection's TCP connection and time,
  here, until the next connection is accepted (`{"gap": seconds}`).

The frames are built here from the same seeded workload as the parent's
rules, so they need not cross the pipe.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import anyio
import orjson

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.workload import choose_names, events  # noqa: E402
from engine.simulator import Simulator  # noqa: E402


def frames_for(count: int) -> list[bytes]:
    """The benchmark's frames: `count` corpus events over 50 event names."""
    names = choose_names(50)
    return [Simulator.encode_event(body) for body in events(count, names)]


async def answer(sim: Simulator, wire: list[bytes], command: dict[str, Any]) -> dict[str, Any]:
    op = command["op"]
    if op == "token":
        return {"token": sim.issue_token()}
    if op == "wait_connected":
        await sim.wait_connected(count=command["count"], timeout=60)
        return {"accepted": sim.accepted_connections}
    if op == "send":
        return {"sent": await sim.send_wire(wire)}
    if op == "gap":
        accepted = sim.accepted_connections
        start = time.perf_counter()
        await sim.drop(reset=True)
        await sim.wait_for(
            lambda: sim.accepted_connections > accepted and sim.live is not None,
            timeout=60,
        )
        return {"gap": time.perf_counter() - start}
    raise ValueError(f"unknown command {op!r}")


async def main_async(count: int) -> None:
    wire = Simulator.wire_frames(frames_for(count))
    stdin = anyio.wrap_file(sys.stdin.buffer)
    async with Simulator() as sim:
        hello = {
            "client_id": sim.client_id,
            "client_secret": sim.client_secret,
            "ws_endpoint": sim.ws_endpoint,
            "oauth_url": sim.oauth_url,
            "api_base_url": sim.api_base_url,
            "frames": len(wire),
        }
        print(orjson.dumps(hello).decode(), flush=True)
        while line := await stdin.readline():
            reply = await answer(sim, wire, orjson.loads(line))
            print(orjson.dumps(reply).decode(), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=50_000)
    args = parser.parse_args()
    anyio.run(main_async, args.events)


if __name__ == "__main__":
    main()
