"""The console of ``orchestrator serve``: server-rendered pages (Jinja2) under ``/console/``,
live through one EventSource on ``/events`` and htmx re-fetching the fragment an event touches.

``routes(ctx)`` gives the sign-in (``/login``, ``/logout``), every page and action, and the
static files (``/console/static/``: our CSS and script, and the vendored htmx, its SSE
extension and uPlot: no CDN, no external URL). Sessions and who a request is:
:mod:`.session`; what the pages share: :mod:`.web`.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import parse_qsl

from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

from orchestrator.errors import Forbidden, Unauthorized
from orchestrator.service.console import inbox, ops, pages, session
from orchestrator.service.console.web import templates

if TYPE_CHECKING:
    from orchestrator.service.app import ServerContext

__all__ = ["routes"]

STATIC = Path(__file__).with_name("static")


def routes(ctx: ServerContext) -> list[BaseRoute]:
    """Every route of the console, to mount beside the API."""

    async def login_form(request: Request) -> Response:
        """The sign-in form"""
        return _login(_next(request.query_params.get("next")))

    async def login(request: Request) -> Response:
        """Sign in with an API token: sets the session cookie"""
        form = dict(parse_qsl((await request.body()).decode("utf-8", "replace")))
        target = _next(form.get("next"))
        try:
            session_id, _ = await session.open_session(ctx, form.get("token", ""))
        except Unauthorized:
            return _login(target, "That token is unknown to this server or was revoked.", 401)
        response = RedirectResponse(target, 303)
        session.set_cookie(response, session_id)
        return response

    async def logout(request: Request) -> Response:
        """Sign out: ends the session"""
        current = await session.current(ctx, request)
        if current is not None:
            form = dict(parse_qsl((await request.body()).decode("utf-8", "replace")))
            try:
                session.check_csrf(current, request.headers.get(session.CSRF_HEADER)
                                   or form.get("csrf"))
            except Forbidden as exc:
                return HTMLResponse(str(exc), status_code=403)
        await session.close_session(ctx, request)
        response = RedirectResponse("/login", 303)
        session.clear_cookie(response)
        return response

    found: list[BaseRoute] = [
        Route("/login", login_form, methods=["GET"]),
        Route("/login", login, methods=["POST"]),
        Route("/logout", logout, methods=["POST"]),
        *pages.routes(ctx),
        *inbox.routes(ctx),
        *ops.routes(ctx),
        Mount("/console/static", StaticFiles(directory=STATIC), name="console-static"),
    ]
    for route in found:  # pages, not API: /openapi.json leaves them out
        if isinstance(route, Route):
            route.include_in_schema = False
    return found


def _next(target: str | None) -> str:
    """Where to go after signing in: a path of this server, never another site."""
    if not target or not target.startswith("/") or target.startswith("//"):
        return "/console/"
    return target


def _login(target: str, error: str = "", status: int = 200) -> HTMLResponse:
    html = templates.get_template("login.html").render(next=target, error=error)
    return HTMLResponse(html, status_code=status)
