"""Webhook intake: signed requests accepted end to end with the journal on, against the WebSocket.

    .venv/bin/python benchmarks/webhook.py [--events 5000] [--clients 8] [--rounds 5] [--write]

One daemon per run, in this process, as `zoomrules run` builds it: the
journal on (SQLite, its writer process), 100 rules (every event fires
exactly one, a no-op action), a `[zoom.webhook]` on the daemon's HTTP
server. A webhook run POSTs every event, signed as Zoom signs, from
`--clients` connections at once (keep-alive, one request at a time on
each, as Zoom's senders do); a WebSocket run sends the same events
through the simulator's WebSocket. Each is timed from the first event
sent to the last job done (events/s end to end); the webhook run also
reports when the last 200 came (requests/s answered). The runs alternate
within each round, so both see the same machine; medians over the rounds.
`--write` records the figures in benchmarks/RESULTS.md under `## Webhook`.

The clients are plain sockets writing pre-built requests and reading the
answers: they share this process's event loop with the daemon, as the
simulator does in the WebSocket run, at a small fraction of its cost.
"""

from __future__ import annotations

import argparse
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import anyio
import orjson
from anyio.streams.buffered import BufferedByteReceiveStream

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks._results import write_section  # noqa: E402
from benchmarks.journal import NoopPlugin, events, rules_file, simulator_env  # noqa: E402
from engine.daemon import Daemon  # noqa: E402
from engine.loader import load_rules  # noqa: E402
from engine.simulator import Simulator  # noqa: E402
from engine.webhook_signature import SIGNATURE_HEADER, TIMESTAMP_HEADER, sign  # noqa: E402

SECRET = "benchmark-webhook-secret"
PATH = "/zoom/webhook"
WEBHOOK = f"""
[zoom.webhook]
secret_token = "{SECRET}"
path = "{PATH}"
[http]
listen = "127.0.0.1:0"
"""
_LENGTH = re.compile(rb"content-length: *(\d+)", re.I)


def requests(bodies: list[dict[str, Any]]) -> list[bytes]:
    """Each event as the HTTP request Zoom sends: compact JSON, signed now."""
    out = []
    timestamp = str(int(time.time()))
    for event in bodies:
        body = orjson.dumps(event)
        head = (
            f"POST {PATH} HTTP/1.1\r\nhost: zoomrules\r\n"
            "content-type: application/json; charset=utf-8\r\n"
            f"{TIMESTAMP_HEADER}: {timestamp}\r\n"
            f"{SIGNATURE_HEADER}: {sign(SECRET, timestamp, body)}\r\n"
            f"content-length: {len(body)}\r\n\r\n"
        )
        out.append(head.encode() + body)
    return out


async def sender(port: int, batch: list[bytes]) -> None:
    """One keep-alive connection: each request, then its answer (which must be 200)."""
    async with await anyio.connect_tcp("127.0.0.1", port) as stream:
        answers = BufferedByteReceiveStream(stream)
        for request in batch:
            await stream.send(request)
            head = await answers.receive_until(b"\r\n\r\n", 65536)
            length = _LENGTH.search(head)
            await answers.receive_exactly(int(length.group(1)) if length else 0)
            if not head.startswith(b"HTTP/1.1 200 "):
                raise RuntimeError(f"the webhook answered {head.splitlines()[0]!r}")


async def run_once(via: str, count: int, rules: int, clients: int) -> dict[str, float]:
    """One daemon run: events/s end to end (and requests/s answered, by webhook)."""
    with tempfile.TemporaryDirectory(prefix="zoomrules-bench-") as tmp:
        directory = Path(tmp)
        async with Simulator() as sim:
            env = simulator_env(sim)
            path = rules_file(directory, rules, journal=True)
            path.write_text(path.read_text().replace("[engine]", WEBHOOK + "[engine]", 1))
            loaded = load_rules([path], env=env, extra_plugins=[NoopPlugin()])
            daemon = Daemon([path], loaded, env=env, handle_signals=False)
            bodies = events(count, rules)
            async with anyio.create_task_group() as tg:
                tg.start_soon(daemon.run)
                server = await daemon.wait_serving()
                await daemon.wait_ready()
                await sim.wait_connected(timeout=10)
                assert daemon.pipeline is not None
                stats = daemon.pipeline.dispatcher.stats
                figures: dict[str, float] = {}
                if via == "webhook":
                    wire = requests(bodies)
                    cpu, started = time.process_time(), time.perf_counter()
                    async with anyio.create_task_group() as senders:
                        for index in range(clients):
                            senders.start_soon(sender, server.port, wire[index::clients])
                    figures["answered"] = count / (time.perf_counter() - started)
                else:
                    frames = [Simulator.encode_event(body) for body in bodies]
                    cpu, started = time.process_time(), time.perf_counter()
                    assert await sim.send_frames(frames) == count
                while stats.jobs_done < count:  # noqa: ASYNC110 - a counter, no event to wait on
                    await anyio.sleep(0.001)
                figures["end_to_end"] = count / (time.perf_counter() - started)
                figures["cpu_us"] = (time.process_time() - cpu) / count * 1e6
                store = daemon.store
                assert store is not None and store.counters.duplicates == 0
                daemon.stop()
    return figures


async def measure(count: int, rules: int, clients: int, rounds: int) -> dict[str, Any]:
    await run_once("webhook", min(count, 500), rules, clients)  # warm up imports and caches
    ws, hooks, answered = [], [], []
    cpu: dict[str, list[float]] = {"websocket": [], "webhook": []}
    for round_ in range(rounds):
        order = ("websocket", "webhook") if round_ % 2 == 0 else ("webhook", "websocket")
        for via in order:
            figures = await run_once(via, count, rules, clients)
            cpu[via].append(figures["cpu_us"])
            if via == "webhook":
                hooks.append(figures["end_to_end"])
                answered.append(figures["answered"])
            else:
                ws.append(figures["end_to_end"])
        print(f"  round {round_ + 1}: WebSocket {ws[-1]:,.0f}/s, webhook {hooks[-1]:,.0f}/s end to end "
              f"({answered[-1]:,.0f} requests/s answered)")  # fmt: skip
    return {
        "websocket": statistics.median(ws),
        "webhook": statistics.median(hooks),
        "answered": statistics.median(answered),
        "ratio": statistics.median(h / w for h, w in zip(hooks, ws, strict=True)),
        "cpu_websocket": statistics.median(cpu["websocket"]),
        "cpu_webhook": statistics.median(cpu["webhook"]),
        "rounds": list(zip(ws, hooks, answered, strict=True)),
    }


def report(figures: dict[str, Any], count: int, rules: int, clients: int, rounds: int) -> str:
    runs = ", ".join(f"{w:,.0f} / {h:,.0f} ({a:,.0f})" for w, h, a in figures["rounds"])
    return f"""\
`benchmarks/webhook.py --events {count} --clients {clients} --rounds {rounds}`: the daemon
in one process with the journal on (SQLite, its writer process), {rules} rules, every
event firing one no-op action; {count} events per run, each run timed from the first
event sent to the last job done. Webhook: every event POSTed, signed, from {clients}
keep-alive connections at once; WebSocket (the baseline): the same events through the
simulator's WebSocket. Runs alternate within each round; medians over {rounds} rounds.

| intake | events/s end to end | CPU per event, daemon process |
| --- | ---: | ---: |
| WebSocket | {figures["websocket"]:,.0f} | {figures["cpu_websocket"]:,.0f} µs |
| webhook, {clients} clients | {figures["webhook"]:,.0f} | {figures["cpu_webhook"]:,.0f} µs |

Webhook requests answered 200: {figures["answered"]:,.0f}/s (each after the journal committed its
event). Webhook vs WebSocket, median of the rounds' ratios: {figures["ratio"]:.2f}.
Rounds (WebSocket / webhook end to end, webhook answered, per second): {runs}.
CPU per event is this process's time (the event loop, with the senders or the simulator,
which cost little) over the events: the journal's writer process is left out, alike for
both. It depends less on other work on the machine than the rates do.
"""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=int, default=5_000)
    parser.add_argument("--rules", type=int, default=100)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--write", action="store_true", help="update benchmarks/RESULTS.md")
    args = parser.parse_args()
    figures = anyio.run(measure, args.events, args.rules, args.clients, args.rounds)
    text = report(figures, args.events, args.rules, args.clients, args.rounds)
    print(text)
    if args.write:
        write_section("Webhook", text)
        print("written to benchmarks/RESULTS.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
