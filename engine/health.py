"""Health checks over HTTP: `/-/healthy` (the process answers) and `/-/ready` (it does its job).

Named as Prometheus and Alertmanager name theirs. Ready means: rules
loaded, the journal open and writing, and every subscription connected, or
held by another node of the cluster. Not ready is a 503 whose body says
every reason, one per line, so a load balancer or an operator's `curl`
tells what is wrong.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import BaseRoute, Route

from engine.daemon_state import DaemonState

__all__ = ["routes"]


def routes(state: DaemonState) -> list[BaseRoute]:
    async def healthy(request: Request) -> Response:
        return PlainTextResponse("zoomrules is healthy.\n")

    async def ready(request: Request) -> Response:
        readiness = state.readiness()
        if readiness.ready:
            return PlainTextResponse("zoomrules is ready.\n")
        body = "zoomrules is not ready:\n" + "".join(f"- {why}\n" for why in readiness.reasons)
        return PlainTextResponse(body, status_code=503)

    return [
        Route("/-/healthy", healthy, methods=["GET", "HEAD"]),
        Route("/-/ready", ready, methods=["GET", "HEAD"]),
    ]
