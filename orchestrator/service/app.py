"""The HTTP API of ``orchestrator serve`` (Starlette, served by uvicorn in ``server.py``).

``create_app(ctx)`` builds the application from a :class:`ServerContext` that the server
opens once (the facade, the run service, the hooks config, the readiness check).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

if TYPE_CHECKING:
    from orchestrator.facade import Orchestrator

__all__ = ["ServerContext", "create_app"]


@dataclass
class ServerContext:
    """What every request handler needs, opened once by the server."""

    orch: Orchestrator
    runs: Any  # orchestrator.service.runs.RunService
    hooks: Any | None  # orchestrator.service.hooks.HooksConfig
    ready: Callable[[], Awaitable[bool]]


def create_app(ctx: ServerContext) -> Starlette:
    """The Starlette application serving the API for ``ctx``."""

    async def healthz(request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def readyz(request: Request) -> Response:
        ok = await ctx.ready()
        return JSONResponse({"ready": ok}, status_code=200 if ok else 503)

    async def metrics(request: Request) -> Response:
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    routes = [
        Route("/healthz", healthz, methods=["GET"]),
        Route("/readyz", readyz, methods=["GET"]),
        Route("/metrics", metrics, methods=["GET"]),
    ]
    app = Starlette(routes=routes)
    app.state.ctx = ctx
    return app
