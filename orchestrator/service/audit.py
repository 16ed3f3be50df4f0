"""The audit trail: who changed what, when, and from where (``audit_log``).

Everything that changes something calls :func:`record` after the change: the HTTP handlers
(source: the client's address), the CLI commands that change state directly (source
``cli@<host>``, see :func:`cli_source`) and the webhooks (``github:<delivery id>``).
"""

from __future__ import annotations

import getpass
import json
import socket
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from orchestrator.state.db import Database

__all__ = ["AuditEntry", "record", "entries", "cli_actor", "cli_source"]


@dataclass(frozen=True)
class AuditEntry:
    id: int
    namespace: str | None
    at: datetime
    actor: str
    action: str
    target: str
    detail: dict[str, Any]
    source: str

    def to_dict(self) -> dict[str, Any]:
        return {**self.__dict__, "at": self.at.isoformat()}


async def record(db: Database, *, actor: str, action: str, target: str, detail: dict[str, Any],
                 source: str, namespace: str | None = None) -> int:
    """Append one entry; returns its id.

    Args:
        actor: who: a token's name, ``user`` of the CLI, a GitHub login.
        action: what, as ``noun.verb``: ``run.submit``, ``run.resume``, ``token.create``...
        target: what it was done to: a thread id, a run id, a token name.
        detail: what else says what happened (the answer given, the run id queued).
        source: from where: a client address, ``cli@<host>``, ``github:<delivery id>``.
        namespace: the deployment's namespace (``settings.namespace``); entries without one
            show in every namespace's trail.
    """
    row = await db.fetchone(
        "INSERT INTO audit_log (namespace, actor, action, target, detail, source) "
        "VALUES (%s, %s, %s, %s, %s::jsonb, %s) RETURNING id",
        (namespace, actor, action, target, json.dumps(detail, default=str), source),
    )
    assert row is not None
    return int(row["id"])


async def entries(db: Database, namespace: str, *, limit: int = 100,
                  target: str | None = None) -> list[AuditEntry]:
    """The newest ``limit`` entries of ``namespace`` (and those without one), newest first."""
    rows = await db.fetch(
        """
        SELECT id, namespace, at, actor, action, target, detail, source FROM audit_log
        WHERE (namespace = %s OR namespace IS NULL) AND (%s::text IS NULL OR target = %s)
        ORDER BY id DESC LIMIT %s""",
        (namespace, target, target, limit),
    )
    return [AuditEntry(**r) for r in rows]


def cli_actor() -> str:
    """Who runs this CLI command: the operating-system user."""
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no name for the uid (a bare container)
        return "unknown"


def cli_source() -> str:
    return f"cli@{socket.gethostname()}"
