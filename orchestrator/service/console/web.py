"""What every console page and action shares: the templates, the sign-in guard, role and CSRF
checks, and turning the error tree into a page.

A page is ``page(ctx, handler)``: a Starlette endpoint that sends a request without a session
to ``/login`` (a page) or answers 401 (an htmx fragment or an action), refuses a role below the
page's with 403, and for a POST checks the session's CSRF token before the handler runs.
Handlers get a :class:`View` and return ``view.render(template, **values)`` or any response.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, quote

from jinja2 import Environment, FileSystemLoader, StrictUndefined, select_autoescape
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response

from orchestrator.errors import Forbidden, OrchestratorError
from orchestrator.service import audit
from orchestrator.service.auth import ROLES, check_role
from orchestrator.service.console.session import CSRF_HEADER, Session, check_csrf, current
from orchestrator.service.openapi import http_status

if TYPE_CHECKING:
    from orchestrator.service.app import ServerContext

__all__ = ["TEMPLATES", "View", "page", "templates", "waited"]

log = logging.getLogger(__name__)

TEMPLATES = Path(__file__).with_name("templates")

def waited(since: datetime | None, now: datetime | None = None) -> str:
    """``since`` as a short age: ``42s``, ``7m``, ``3h 5m``, ``2d 4h``."""
    if since is None:
        return ""
    seconds = max(0, int(((now or datetime.now(UTC)) - since).total_seconds()))
    if seconds < 60:
        return f"{seconds}s"
    minutes, hours, days = seconds // 60, seconds // 3600, seconds // 86400
    if hours == 0:
        return f"{minutes}m"
    if days == 0:
        return f"{hours}h {minutes % 60}m"
    return f"{days}d {hours % 24}h"


def _environment() -> Environment:
    env = Environment(loader=FileSystemLoader(TEMPLATES), autoescape=select_autoescape(["html"]),
                      undefined=StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    env.filters["waited"] = waited
    env.filters["urlquote"] = lambda s: quote(str(s), safe="")
    return env


templates = _environment()


@dataclass
class View:
    """One console request as a handler sees it."""

    ctx: ServerContext
    request: Request
    session: Session
    form: dict[str, str]

    @property
    def can_act(self) -> bool:
        """Whether this session may press action buttons (operator or above)."""
        return ROLES.index(self.session.identity.role) >= ROLES.index("operator")

    @property
    def is_htmx(self) -> bool:
        return self.request.headers.get("hx-request") == "true"

    def param(self, name: str) -> str:
        return str(self.request.path_params[name])

    def render(self, template: str, status: int = 200, **values: Any) -> HTMLResponse:
        html = templates.get_template(template).render(
            me=self.session.identity, csrf=self.session.csrf, can_act=self.can_act,
            path=self.request.url.path, **values)
        return HTMLResponse(html, status_code=status)

    async def audit(self, action: str, target: str, detail: dict[str, Any]) -> None:
        """Record an action taken from the console, by the session's token name, from the
        client's address."""
        client = self.request.client
        await audit.record(self.ctx.orch.runtime.db, actor=self.session.identity.name,
                           action=action, target=target, detail=detail,
                           source=client.host if client else "unknown",
                           namespace=self.ctx.orch.settings.namespace)


Handler = Callable[[View], Awaitable[Response]]


def page(ctx: ServerContext, handler: Handler, *, role: str = "viewer"
         ) -> Callable[[Request], Awaitable[Response]]:
    """A console endpoint: signed in, role ``role`` or above, CSRF-checked when it is a POST.

    Actions (POST) need ``role="operator"``: a viewer's session is refused with 403 even
    though its pages show no button for it.
    """

    async def endpoint(request: Request) -> Response:
        session = await current(ctx, request)
        fragment = request.headers.get("hx-request") == "true"
        if session is None:
            if request.method == "GET" and not fragment:
                target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
                return RedirectResponse(f"/login?next={quote(target, safe='')}", 303)
            return _message(401, "Signed out", "Your session ended: sign in again at /login.")
        form: dict[str, str] = {}
        try:
            if request.method == "POST":
                form = dict(parse_qsl((await request.body()).decode("utf-8", "replace"),
                                      keep_blank_values=True))
                check_csrf(session, request.headers.get(CSRF_HEADER) or form.get("csrf"))
            check_role(session.identity, role)
            return await handler(View(ctx, request, session, form))
        except Forbidden as exc:
            return _message(403, "Not allowed", str(exc))
        except OrchestratorError as exc:
            return _message(http_status(exc), "Cannot do that", str(exc))
        except Exception as exc:
            log.exception("%s %s failed", request.method, request.url.path)
            return _message(500, "Failed", f"{type(exc).__name__}: {exc}; the server's log has "
                            "the details")

    endpoint.__name__ = handler.__name__.lstrip("_")
    endpoint.__doc__ = handler.__doc__
    return endpoint


def _message(status: int, title: str, text: str) -> HTMLResponse:
    html = templates.get_template("message.html").render(title=title, text=text)
    return HTMLResponse(html, status_code=status)
