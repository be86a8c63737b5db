"""Events for the simulator to send: a list of Zoom event objects, played in
order, by name, all at once, or on a schedule; plus the HTTP control
endpoint (`/_sim/...`) that lets another process ask for them.

`zoomrules simulate` drives one `EventFeed` from its schedule, its terminal
and the control endpoint; everything goes through `send`, which stamps
`event_ts` with the time of sending (as Zoom does: a resent event is a new
event, not a redelivery the journal would drop) and counts what reached a
connected client and what was dropped because none was connected. Given a
`WebhookSender`, the feed also POSTs each event to a webhook endpoint, as a
Zoom app subscribed both ways does: the same occurrence twice, which the
daemon's journal keeps once.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from typing import Any

import anyio
import httpx
import orjson
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from engine.errors import InvalidEvent
from engine.events import Event
from engine.logs import shorten
from engine.simulator.server import Simulator
from engine.simulator.webhook import WebhookSender

__all__ = ["EventFeed", "Sent", "builtin_events", "parse_events"]

#: Where the control endpoint lives on the simulator's HTTP port.
CONTROL_PREFIX = "/_sim"


def builtin_events() -> list[dict[str, Any]]:
    """The demo scenario: a meeting's life, from Zoom's published example events."""
    text = resources.files("engine").joinpath("data/demo_events.json").read_text()
    events: list[dict[str, Any]] = json.loads(text)
    return events


def parse_events(data: bytes, name: str) -> tuple[list[dict[str, Any]], list[str]]:
    """Events from JSON Lines (one object a line), or one JSON object or array.

    Returns the events and one message per invalid line (`name:line: why`)
    or element (`name: event #n: why`); blank lines are skipped.
    """
    try:
        whole = orjson.loads(data)
    except orjson.JSONDecodeError:
        whole = None
    else:
        if isinstance(whole, dict | list):
            return _checked_document(whole, name)
    events: list[dict[str, Any]] = []
    errors: list[str] = []
    for lineno, line in enumerate(data.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            events.append(Event.from_json(line, source="simulate").body)
        except InvalidEvent as exc:
            errors.append(f"{name}:{lineno}: {exc}")
    return events, errors


def _checked_document(
    whole: dict[str, Any] | list[Any], name: str
) -> tuple[list[dict[str, Any]], list[str]]:
    items = whole if isinstance(whole, list) else [whole]
    events: list[dict[str, Any]] = []
    errors: list[str] = []
    for number, item in enumerate(items, start=1):
        try:
            events.append(Event.from_body(item, source="simulate").body)
        except InvalidEvent as exc:
            where = f"event #{number}: " if isinstance(whole, list) else ""
            errors.append(f"{name}: {where}{exc}")
    return events, errors


@dataclass(frozen=True)
class Sent:
    """One event the feed sent."""

    name: str
    #: False: neither a WebSocket client nor the webhook took it (dropped).
    delivered: bool
    via: str  # who asked: "schedule", "terminal", "http"
    index: int | None  # its position in the feed's events (0-based); None if from elsewhere
    total: int  # how many events the feed holds
    #: With a webhook: how it answered ("200", "401 <why>", "not reached: <why>").
    webhook: str | None = None
    #: With a webhook: whether a WebSocket client got the event too.
    websocket: bool = False

    def describe(self) -> str:
        where = f" [{self.index + 1}/{self.total}]" if self.index is not None else ""
        if self.webhook is not None:
            ws = "delivered" if self.websocket else "no client"
            head = "sent   " if self.delivered else "DROPPED"
            return (
                f"{head} {self.name}{where} via {self.via}: WebSocket {ws}, webhook {self.webhook}"
            )
        if self.delivered:
            return f"sent    {self.name}{where} via {self.via}"
        return f"DROPPED {self.name}{where} via {self.via}: no client connected"

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"event": self.name, "delivered": self.delivered, "index": self.index}
        if self.webhook is not None:
            out["webhook"] = self.webhook
        return out


class EventFeed:
    """Sends `events` through `sim`; `on_sent` hears of every event sent."""

    def __init__(
        self,
        sim: Simulator,
        events: list[dict[str, Any]],
        *,
        stamp: bool = True,
        on_sent: Callable[[Sent], None] | None = None,
        webhook: WebhookSender | None = None,
    ) -> None:
        self.sim = sim
        #: Where each event is POSTed too, if anywhere.
        self.webhook = webhook
        self.events = list(events)
        self.stamp = stamp
        self.on_sent = on_sent
        self.position = 0  # the next event `send_next` sends
        self.sent = 0
        self.delivered = 0
        self.dropped = 0
        self.schedule_done = False
        self._by_name: dict[str, int] = {}  # name -> how many of that name were sent
        self._last_ts = 0

    def names(self) -> list[str]:
        """The event names the feed holds, each once, in order."""
        return list(dict.fromkeys(event["event"] for event in self.events))

    # -- sending ------------------------------------------------------------

    def _stamped(self, body: dict[str, Any]) -> dict[str, Any]:
        if not self.stamp:
            return body
        now = max(int(time.time() * 1000), self._last_ts + 1)  # unique, increasing
        self._last_ts = now
        return {**body, "event_ts": now}

    async def send(self, body: dict[str, Any], *, via: str, index: int | None = None) -> Sent:
        """Send one event object to the connected client (dropped if there is
        none), and to the webhook if there is one."""
        stamped = self._stamped(body)
        websocket = await self.sim.send_event(stamped) == 1
        name = str(body.get("event"))
        if self.webhook is None:
            sent = Sent(name, websocket, via, index, len(self.events))
        else:
            answer, accepted = await self._post(self.webhook, stamped)
            delivered = websocket or accepted
            sent = Sent(name, delivered, via, index, len(self.events), answer, websocket)
        self.sent += 1
        if sent.delivered:
            self.delivered += 1
        else:
            self.dropped += 1
        if self.on_sent is not None:
            self.on_sent(sent)
        return sent

    @staticmethod
    async def _post(webhook: WebhookSender, body: dict[str, Any]) -> tuple[str, bool]:
        """How the webhook answered `body`, and whether it took it."""
        try:
            delivery = await webhook.deliver(body)
        except httpx.TimeoutException:
            return f"no answer within {webhook.timeout:g}s (Zoom would deliver it again)", False
        except httpx.HTTPError as exc:
            return f"not reached: {shorten(str(exc) or type(exc).__name__, 120)}", False
        text = delivery.response.text.strip()
        answer = f"{delivery.status} {shorten(text, 120)}" if text else str(delivery.status)
        return answer, delivery.accepted

    async def send_next(self, *, via: str) -> Sent:
        """The next event in order; after the last, the first again."""
        if not self.events:
            raise LookupError("there are no events to send")
        index = self.position
        self.position = (index + 1) % len(self.events)
        return await self.send(self.events[index], via=via, index=index)

    async def send_named(self, name: str, *, via: str) -> Sent:
        """The next event called `name` (each call takes the next one of that name)."""
        indices = [i for i, event in enumerate(self.events) if event["event"] == name]
        if not indices:
            known = ", ".join(self.names()) or "none"
            raise LookupError(f"no event named {name!r} (known: {known})")
        count = self._by_name.get(name, 0)
        self._by_name[name] = count + 1
        index = indices[count % len(indices)]
        return await self.send(self.events[index], via=via, index=index)

    async def send_all(self, *, via: str) -> list[Sent]:
        """Every event, in order, from the first."""
        return [
            await self.send(event, via=via, index=index) for index, event in enumerate(self.events)
        ]

    async def run_schedule(self, every: float, *, loop: bool) -> None:
        """One event every `every` seconds, from when a client first connects.

        Once through the events, or forever with `loop`.
        """
        await self.sim.wait_for(lambda: self.sim.live is not None, timeout=math.inf)
        count = 0
        start = anyio.current_time()
        while loop or count < len(self.events):
            count += 1
            await anyio.sleep_until(start + count * every)
            await self.send_next(via="schedule")
        self.schedule_done = True

    # -- the HTTP control endpoint -------------------------------------------

    def routes(self) -> list[BaseRoute]:
        """`/_sim/...` routes for the simulator's HTTP side (`Simulator.add_routes`)."""
        prefix = CONTROL_PREFIX
        return [
            Route(f"{prefix}/next", self._http_next, methods=["POST"]),
            Route(f"{prefix}/send", self._http_send, methods=["POST"]),
            Route(f"{prefix}/send/{{name}}", self._http_send_named, methods=["POST"]),
            Route(f"{prefix}/send-all", self._http_send_all, methods=["POST"]),
            Route(f"{prefix}/status", self._http_status, methods=["GET"]),
        ]

    def status(self) -> dict[str, Any]:
        return {
            "connected": self.sim.live is not None,
            "connections": self.sim.accepted_connections,
            "sent": self.sent,
            "delivered": self.delivered,
            "dropped": self.dropped,
            "next": self.position,
            "events": [event["event"] for event in self.events],
        }

    @staticmethod
    def _answer(sent: list[Sent]) -> Response:
        """200 when every event reached a client, 409 when some were dropped."""
        dropped = sum(not s.delivered for s in sent)
        body = {
            "sent": [s.as_dict() for s in sent],
            "delivered": len(sent) - dropped,
            "dropped": dropped,
        }
        return JSONResponse(body, status_code=409 if dropped else 200)

    async def _http_next(self, request: Request) -> Response:
        try:
            return self._answer([await self.send_next(via="http")])
        except LookupError as exc:
            return JSONResponse({"error": str(exc)}, status_code=404)

    async def _http_send_named(self, request: Request) -> Response:
        try:
            return self._answer([await self.send_named(request.path_params["name"], via="http")])
        except LookupError as exc:
            return JSONResponse({"error": str(exc)}, status_code=404)

    async def _http_send_all(self, request: Request) -> Response:
        return self._answer(await self.send_all(via="http"))

    async def _http_send(self, request: Request) -> Response:
        events, errors = parse_events(await request.body(), "request body")
        if errors or not events:
            problem = "; ".join(errors) or "request body: no event (send a Zoom event object)"
            return JSONResponse({"error": problem}, status_code=400)
        return self._answer([await self.send(event, via="http") for event in events])

    async def _http_status(self, request: Request) -> Response:
        return JSONResponse(self.status())
