"""The ledger: one ``model_calls`` row per model call really made, written together with the
settling of the call's budget reservation (one statement, one round trip).

Exactly once: the row's key is (request id, execution, sequence). A handler answered from the
response store runs no code, so it records nothing; one re-executed after a crash is a new
execution (``RequestContext.execution``) that really called the model again, and is recorded
again; the same execution writing its row twice (a retried write) keeps one.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from orchestrator.llm.budget import Reservation, gauge
from orchestrator.state.db import Database

__all__ = ["CallRecord", "Ledger"]


@dataclass(frozen=True)
class CallRecord:
    """A ledger row. Tokens and cost are None when unknown, never 0."""

    thread_id: str | None
    workflow_type: str | None
    node: str | None
    agent_type: str
    request_id: str
    execution: str
    sequence: int
    model: str
    provider: str
    input_tokens: int | None
    cached_tokens: int | None
    output_tokens: int | None
    reasoning_tokens: int | None
    cost_usd: Decimal | None
    price_source: str | None
    latency_ms: float
    prompt: str | None
    tier: str | None
    purpose: str
    reason: str | None


_COLUMNS = [name for name in CallRecord.__dataclass_fields__]
# the workflow's type comes from its row when the caller does not know it
_VALUES = ", ".join(
    "coalesce(%(workflow_type)s, (SELECT workflow_type FROM workflows WHERE thread_id = "
    "%(thread_id)s))" if c == "workflow_type" else f"%({c})s" for c in _COLUMNS)
_INSERT = (f"INSERT INTO model_calls (namespace, {', '.join(_COLUMNS)}) "
           f"VALUES (%(ns)s, {_VALUES}) ON CONFLICT (request_id, execution, sequence) DO NOTHING")

_RECORD_AND_SETTLE = f"""
WITH recorded AS ({_INSERT} RETURNING cost_usd),
gone AS (DELETE FROM model_reservations WHERE id = %(rid)s RETURNING amount_usd),
locked AS (
    SELECT scope FROM model_budgets WHERE namespace = %(ns)s AND scope = ANY(%(scopes)s::text[])
    ORDER BY scope FOR UPDATE)
UPDATE model_budgets b
SET reserved_usd = greatest(b.reserved_usd - coalesce((SELECT amount_usd FROM gone), 0), 0),
    spent_usd = b.spent_usd + coalesce((SELECT cost_usd FROM recorded), 0),
    updated_at = now()
FROM locked l WHERE b.namespace = %(ns)s AND b.scope = l.scope
RETURNING b.scope, b.limit_usd - b.spent_usd - b.reserved_usd AS remaining
"""


class Ledger:
    """Writes the ledger rows of one namespace."""

    def __init__(self, db: Database, namespace: str) -> None:
        self.db = db
        self.namespace = namespace

    async def record(self, row: CallRecord, reservation: Reservation | None) -> None:
        """Insert ``row``; with a reservation, settle it to the row's cost in the same
        statement (a row already recorded adds nothing to what was spent)."""
        params: dict[str, Any] = {"ns": self.namespace, **row.__dict__}  # flat: no asdict
        if reservation is None:
            await self.db.execute(_INSERT, params)
            return
        params.update(rid=reservation.id, scopes=list(reservation.scopes))
        for settled in await self.db.fetch(_RECORD_AND_SETTLE, params):
            gauge(settled["scope"], settled["remaining"])
