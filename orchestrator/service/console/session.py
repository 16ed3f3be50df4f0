"""Sign-in sessions of the console, and who a request is (bearer token or session cookie).

The console asks for an API token once (``/login``) and keeps a session instead of the token:
the browser holds a random session id in the cookie ``orchestrator_session`` (HttpOnly, so no
script reads it; SameSite=Strict, so no other site's page sends it; Secure; Path=/), and the
database keeps only the id's SHA-256 with the token's name, role and hash. A session lives as
long as its token: revoking the token (or giving its name to a new token) ends it at its next
request, since a session is only found joined to an active token of the same hash.

Every POST a session makes carries the session's CSRF token (a form's hidden ``csrf`` field,
or the ``X-CSRF-Token`` header htmx adds from the page's ``<body hx-headers>``): SameSite
already keeps other sites' requests cookie-less, the token keeps that true in browsers that
ignore SameSite.
"""

from __future__ import annotations

import hmac
import secrets
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING

from starlette.requests import Request
from starlette.responses import Response

from orchestrator.errors import Forbidden
from orchestrator.service.auth import Identity, TokenStore, hash_token

if TYPE_CHECKING:
    from orchestrator.service.app import ServerContext

__all__ = ["COOKIE", "CSRF_HEADER", "SESSION_TTL", "Session", "open_session", "close_session",
           "current", "identify", "authenticate", "check_csrf", "set_cookie", "clear_cookie"]

COOKIE = "orchestrator_session"
CSRF_HEADER = "X-CSRF-Token"
#: how long a sign-in lasts (then the console asks for the token again)
SESSION_TTL = timedelta(hours=12)


@dataclass(frozen=True)
class Session:
    """A signed-in browser: who it acts as, and the CSRF token its POSTs must carry."""

    identity: Identity
    csrf: str


async def open_session(ctx: ServerContext, token: str) -> tuple[str, Session]:
    """A new session for ``token``; returns the id for the cookie (never stored) with it.

    Raises:
        Unauthorized: the token is unknown here or revoked.
    """
    db, namespace = ctx.orch.runtime.db, ctx.orch.settings.namespace
    identity = await TokenStore(db, namespace).authenticate(f"Bearer {token}")
    session_id, csrf = secrets.token_urlsafe(32), secrets.token_urlsafe(24)
    await db.execute("DELETE FROM console_sessions WHERE expires_at < now()")
    await db.execute(
        "INSERT INTO console_sessions (id_hash, namespace, token_name, token_hash, role, csrf, "
        "expires_at) VALUES (%s, %s, %s, %s, %s, %s, now() + %s)",
        (hash_token(session_id), namespace, identity.name, hash_token(token.strip()),
         identity.role, csrf, SESSION_TTL),
    )
    return session_id, Session(identity, csrf)


async def close_session(ctx: ServerContext, request: Request) -> None:
    """Forget the request's session (sign out)."""
    session_id = request.cookies.get(COOKIE)
    if session_id:
        await ctx.orch.runtime.db.execute("DELETE FROM console_sessions WHERE id_hash = %s",
                                          (hash_token(session_id),))


async def current(ctx: ServerContext, request: Request) -> Session | None:
    """The request's session: None without the cookie, or when it expired or its token was
    revoked."""
    session_id = request.cookies.get(COOKIE)
    if not session_id:
        return None
    row = await ctx.orch.runtime.db.fetchone(
        """
        SELECT s.token_name, s.role, s.csrf FROM console_sessions s
        JOIN api_tokens t ON t.token_hash = s.token_hash AND t.namespace = s.namespace
        WHERE s.id_hash = %s AND s.namespace = %s AND s.expires_at > now()
          AND t.revoked_at IS NULL""",
        (hash_token(session_id), ctx.orch.settings.namespace),
    )
    if row is None:
        return None
    return Session(Identity(row["token_name"], row["role"]), row["csrf"])


async def identify(ctx: ServerContext, request: Request) -> Identity | None:
    """Who the request's session cookie signs in as (None: no valid session)."""
    session = await current(ctx, request)
    return session.identity if session else None


async def authenticate(ctx: ServerContext, request: Request) -> Identity:
    """Who a request to the API or the event stream is: its bearer token when it sends an
    ``Authorization`` header, else its console session; a session's request that changes
    something (any method but GET/HEAD) must carry the CSRF header.

    Raises:
        Unauthorized: neither a valid token nor a valid session.
        Forbidden: a session's change without its CSRF token.
    """
    header = request.headers.get("authorization")
    store = TokenStore(ctx.orch.runtime.db, ctx.orch.settings.namespace)
    if header is not None:
        return await store.authenticate(header)
    session = await current(ctx, request)
    if session is None:
        return await store.authenticate(None)  # raises: says how to send a token
    if request.method not in ("GET", "HEAD"):
        check_csrf(session, request.headers.get(CSRF_HEADER))
    return session.identity


def check_csrf(session: Session, sent: str | None) -> None:
    """Raises :class:`Forbidden` unless ``sent`` is the session's CSRF token."""
    if not sent or not hmac.compare_digest(sent.encode(), session.csrf.encode()):
        raise Forbidden("this request lacks the console's CSRF token (the page's `csrf` form "
                        f"field or the {CSRF_HEADER} header); reload the page and try again")


def set_cookie(response: Response, session_id: str) -> None:
    response.set_cookie(COOKIE, session_id, max_age=int(SESSION_TTL.total_seconds()), path="/",
                        secure=True, httponly=True, samesite="strict")


def clear_cookie(response: Response) -> None:
    response.delete_cookie(COOKIE, path="/", secure=True, httponly=True, samesite="strict")
