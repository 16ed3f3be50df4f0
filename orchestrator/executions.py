"""The execution ledger: with a bus secret, each signed request message runs at most once.

The response store in Redis makes execution effectively once, but whoever can write to Redis
can delete a stored response and copy a captured signed request back into its stream. The
ledger keeps, in PostgreSQL (where a Redis writer cannot reach), the signature of every signed
request message a worker started, inserted before its handler runs: a message whose signature
is already there is refused (``already_executed``), not run again. A new message for the same
request (a requester's re-send, a workflow's resume, ``dlq replay``) is signed anew and runs.

Inserts made by many handlers at once go out together (one statement per batch), and rows are
pruned once their request can no longer run: after its deadline (or the response retention
for a request without one), plus a margin for clock skew.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from orchestrator.state.db import Database

from .bus.batching import Coalescer
from .messages import AgentRequest

__all__ = ["ExecutionLedger", "EarlierStart"]

log = logging.getLogger(__name__)

#: Rows outlive their request's deadline by this much (clocks of workers and the database
#: may disagree).
_SKEW = timedelta(minutes=10)
_PRUNE_EVERY_S = 60.0


@dataclass(frozen=True)
class EarlierStart:
    """Who started a signed request message before, and when."""

    owner: str
    started_at: datetime | None


class ExecutionLedger:
    """The signatures of signed request messages started in ``namespace``."""

    def __init__(self, db: Database, namespace: str, *, retention: float) -> None:
        self.db = db
        self.namespace = namespace
        self.retention = timedelta(seconds=retention)
        self._inserts: Coalescer[tuple[str, AgentRequest, str], EarlierStart | None] = (
            Coalescer(self._flush, "execution-ledger"))
        self._pruned_at = time.monotonic()

    async def start(self, signature: bytes, request: AgentRequest, owner: str
                    ) -> EarlierStart | None:
        """Record that ``owner`` starts the message signed ``signature``: None when this is its
        first start, else who started it before (then it must not run)."""
        return await self._inserts.submit((signature.decode(), request, owner))

    async def _flush(self, items: list[tuple[str, AgentRequest, str]]
                     ) -> list[EarlierStart | None]:
        now = datetime.now(UTC)
        expires = [(request.deadline or now + self.retention) + _SKEW for _, request, _ in items]
        rows = await self.db.fetch(
            """
            INSERT INTO bus_executions (namespace, signature, request_id, attempt, owner,
                                        expires_at)
            SELECT %s, * FROM unnest(%s::text[], %s::text[], %s::int[], %s::text[],
                                     %s::timestamptz[])
            ON CONFLICT DO NOTHING
            RETURNING signature""",
            (self.namespace, [sig for sig, _, _ in items],
             [request.request_id for _, request, _ in items],
             [request.attempt for _, request, _ in items], [owner for _, _, owner in items],
             expires),
        )
        inserted = {row["signature"] for row in rows}
        outcomes: list[EarlierStart | None] = []
        earlier: dict[str, EarlierStart] = {}
        seen: set[str] = set()
        for sig, _, owner in items:
            if sig in inserted and sig not in seen:
                seen.add(sig)
                outcomes.append(None)
                earlier[sig] = EarlierStart(owner, now)  # for a copy in this same batch
            else:
                outcomes.append(earlier.get(sig) or EarlierStart("", None))
        missing = [sig for sig, _, _ in items if sig not in inserted]
        if missing:  # the rare path: a message already started; say by whom
            for row in await self.db.fetch(
                "SELECT signature, owner, started_at FROM bus_executions "
                "WHERE namespace = %s AND signature = ANY(%s)", (self.namespace, missing)):
                found = EarlierStart(row["owner"], row["started_at"])
                outcomes = [found if sig == row["signature"] and outcome is not None else outcome
                            for (sig, _, _), outcome in zip(items, outcomes, strict=True)]
        if time.monotonic() - self._pruned_at > _PRUNE_EVERY_S:
            self._pruned_at = time.monotonic()
            try:
                await self.prune()
            except Exception as exc:  # pruning is housekeeping: the next batch tries again
                log.warning("pruning the execution ledger failed: %s", exc)
        return outcomes

    async def prune(self) -> int:
        """Delete the rows of requests that can no longer run; returns how many."""
        return await self.db.execute(
            "DELETE FROM bus_executions WHERE namespace = %s AND expires_at < now()",
            (self.namespace,))

    async def close(self) -> None:
        await self._inserts.close()
