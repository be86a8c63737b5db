"""A local stand-in for Zoom: OAuth, the event WebSocket and the REST API.

Everything listens on 127.0.0.1, on ports chosen by the OS unless given.
Tests, `zoomrules demo` and `zoomrules simulate` drive it through its async
API::

    async with Simulator(client_id="id", client_secret="secret") as sim:
        ...  # point the daemon at sim.oauth_url / sim.ws_endpoint / sim.api_base_url
        await sim.wait_connected()
        await sim.send_event({"event": "meeting.started", ...})

`EventFeed` (in `feed`) plays a list of events through it: in order, by
name, on a schedule, or when asked over its HTTP control endpoint.
`WebhookSender` (in `webhook`) is Zoom's other way of delivering: it POSTs
events to a webhook endpoint, signed as Zoom signs them.
"""

from engine.simulator.feed import EventFeed, Sent, builtin_events, parse_events
from engine.simulator.server import ApiCall, SimConnection, SimResponse, Simulator
from engine.simulator.webhook import Delivery, UrlValidation, WebhookSender

__all__ = [
    "ApiCall",
    "Delivery",
    "EventFeed",
    "Sent",
    "SimConnection",
    "SimResponse",
    "Simulator",
    "UrlValidation",
    "WebhookSender",
    "builtin_events",
    "parse_events",
]
