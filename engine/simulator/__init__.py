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
"""

from engine.simulator.feed import EventFeed, Sent, builtin_events, parse_events
from engine.simulator.server import ApiCall, SimConnection, SimResponse, Simulator

__all__ = [
    "ApiCall",
    "EventFeed",
    "Sent",
    "SimConnection",
    "SimResponse",
    "Simulator",
    "builtin_events",
    "parse_events",
]
