"""Bearer tokens and roles of the HTTP API: viewer < operator < admin.

A token is 32 random bytes (``secrets.token_urlsafe``), printed once when it is created; the
database keeps only its SHA-256. A slow password hash (bcrypt, argon2) protects *guessable*
secrets against a stolen table; a 256-bit random token cannot be guessed, so one SHA-256 is as
safe here, and it lets a request find its token by an indexed lookup of the hash instead of
trying every stored hash in turn.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from orchestrator.errors import Forbidden, InvalidInput, Unauthorized
from orchestrator.state.db import Database

__all__ = ["ROLES", "Identity", "TokenInfo", "TokenStore", "check_role", "hash_token"]

#: the roles, lowest first: each may do what the ones before it may
ROLES = ("viewer", "operator", "admin")
_PREFIX = "orch_"  # recognisable in a leaked log or a secret scanner


@dataclass(frozen=True)
class Identity:
    """Who a request is: the token's name and role."""

    name: str
    role: str


@dataclass(frozen=True)
class TokenInfo:
    name: str
    role: str
    created_by: str | None
    created_at: datetime
    revoked_at: datetime | None

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "role": self.role, "created_by": self.created_by,
                "created_at": self.created_at.isoformat(),
                "revoked_at": self.revoked_at.isoformat() if self.revoked_at else None}


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def check_role(identity: Identity, needed: str) -> None:
    """Raises :class:`Forbidden` unless ``identity``'s role is ``needed`` or above."""
    if ROLES.index(identity.role) < ROLES.index(needed):
        raise Forbidden(f"token {identity.name!r} has role {identity.role}; this needs "
                        f"{needed} or above (`orchestrator token create --role {needed}`)")


class TokenStore:
    """The tokens of one namespace, in ``api_tokens``."""

    def __init__(self, db: Database, namespace: str) -> None:
        self.db = db
        self.namespace = namespace

    async def create(self, role: str, name: str | None = None, *,
                     by: str | None = None) -> tuple[TokenInfo, str]:
        """A new token of ``role``; returns it with its secret (shown once, never stored).

        A name of a revoked token may be used again; a name in use may not.

        Raises:
            InvalidInput: an unknown role, a bad name or a name in use.
        """
        if role not in ROLES:
            raise InvalidInput(f"role {role!r} is not one of {', '.join(ROLES)}")
        if name is None:
            name = f"{role}-{secrets.token_hex(3)}"
        if not name or len(name) > 100 or not name.isprintable() or name != name.strip():
            raise InvalidInput(f"token name {name[:100]!r} must be 1-100 printable characters "
                               "without surrounding spaces")
        secret = _PREFIX + secrets.token_urlsafe(32)
        row = await self.db.fetchone(
            """
            INSERT INTO api_tokens (namespace, name, token_hash, role, created_by)
            VALUES (%s, %s, %s, %s, %s)
            ON CONFLICT (namespace, name) DO UPDATE
                SET token_hash = EXCLUDED.token_hash, role = EXCLUDED.role,
                    created_by = EXCLUDED.created_by, created_at = now(), revoked_at = NULL
                WHERE api_tokens.revoked_at IS NOT NULL
            RETURNING name, role, created_by, created_at, revoked_at""",
            (self.namespace, name, hash_token(secret), role, by),
        )
        if row is None:
            raise InvalidInput(f"a token named {name!r} exists; revoke it first "
                               f"(`orchestrator token revoke {name}`) or pick another name")
        return TokenInfo(**row), secret

    async def list(self, *, include_revoked: bool = False) -> list[TokenInfo]:
        rows = await self.db.fetch(
            """
            SELECT name, role, created_by, created_at, revoked_at FROM api_tokens
            WHERE namespace = %s AND (%s OR revoked_at IS NULL) ORDER BY created_at, name""",
            (self.namespace, include_revoked),
        )
        return [TokenInfo(**r) for r in rows]

    async def revoke(self, name: str) -> bool:
        """Revoke the token ``name`` at once (its next request gets 401); False when no
        active token has that name."""
        return bool(await self.db.execute(
            "UPDATE api_tokens SET revoked_at = now() "
            "WHERE namespace = %s AND name = %s AND revoked_at IS NULL",
            (self.namespace, name),
        ))

    async def authenticate(self, authorization: str | None) -> Identity:
        """The identity of an ``Authorization: Bearer TOKEN`` header.

        Raises:
            Unauthorized: no header, not a bearer token, or a token unknown here or revoked.
        """
        scheme, _, token = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise Unauthorized("this needs a token: send `Authorization: Bearer TOKEN` (the "
                               "CLI: --token or ORCHESTRATOR_TOKEN); create one with "
                               "`orchestrator token create --role viewer`")
        row = await self.db.fetchone(
            "SELECT name, role FROM api_tokens "
            "WHERE namespace = %s AND token_hash = %s AND revoked_at IS NULL",
            (self.namespace, hash_token(token.strip())),
        )
        if row is None:
            raise Unauthorized("the token is unknown to this server or was revoked; "
                               "`orchestrator token ls` lists the active ones")
        return Identity(row["name"], row["role"])
