"""A local stand-in for Zoom: OAuth, the event WebSocket and the REST API.

Everything listens on 127.0.0.1 with ports chosen by the OS. Tests and
`zoomrules demo` drive it through its async API::

    async with Simulator(client_id="id", client_secret="secret") as sim:
        ...  # point the daemon at sim.oauth_url / sim.ws_endpoint / sim.api_base_url
        await sim.wait_connected()
        await sim.send_event({"event": "meeting.started", ...})
"""

from engine.simulator.server import ApiCall, SimConnection, SimResponse, Simulator

__all__ = ["ApiCall", "SimConnection", "SimResponse", "Simulator"]
