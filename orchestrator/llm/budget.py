"""Budgets that hold: a call reserves its worst-case cost before it runs and settles to its
real cost after, on every budget scope it falls in.

A scope is a row of ``model_budgets`` (limit, reserved, spent): a workflow
(``thread:<id>``, the workflow's ``budget_usd``), the namespace's day
(``namespace:<YYYY-MM-DD>``, ``ORCHESTRATOR_DAILY_BUDGET_USD``) or an agent type's day
(``agent:<type>:<YYYY-MM-DD>``, ``ORCHESTRATOR_AGENT_DAILY_BUDGET_USD``). Reserving is one
statement: it locks the scopes' rows in a fixed order (no deadlock between callers), checks
``spent + reserved + estimate <= limit`` on each with the rows' current values, and only when
all fit adds the estimate to each and records the reservation. So concurrent callers never
settle more than the limit plus one call's estimate (the estimate may be short of the real
cost). A reservation that finds no room returns nothing; only then are the rows read to say
why (a scope's first call makes its row; a full scope first releases expired reservations).
Settling (release the reservation, add the cost) is one statement too, joined with the
ledger's insert, and off the call's path (:mod:`orchestrator.llm.ledger`). A caller that dies
never settles: its reservation expires, and the next reservation that finds a scope full
releases the expired ones first.

The reservation is on every call's path, so it is one round trip, and its commit does not
wait for the disk (``synchronous_commit`` off for that transaction alone): other callers see
it the moment it commits, which is what keeps them under the limit. What it gives up: if the
PostgreSQL server itself crashes within a fraction of a second of a reservation (before the
WAL writer or any later synchronous commit flushes it), the reservation is lost with the
estimate it added (never one without the other), and the call it let through is settled all
the same (its cost added, nothing to release). The ledger's writes commit synchronously.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from orchestrator.metrics import MODEL_BUDGET_REMAINING
from orchestrator.state.db import Database

__all__ = ["Scope", "Reservation", "BudgetRefused", "Budgets", "day_scopes", "gauge"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Scope:
    key: str
    limit: Decimal


@dataclass(frozen=True)
class Reservation:
    id: int
    scopes: tuple[str, ...]
    amount: Decimal


class BudgetRefused(Exception):
    """The estimate does not fit in ``scope`` (what :func:`model_call` turns into the policy's
    decision, or ``budget_exceeded``)."""

    def __init__(self, scope: str, limit: Decimal, spent: Decimal, reserved: Decimal,
                 estimate: Decimal) -> None:
        super().__init__(f"budget {scope} is exhausted: ${spent:.6f} spent and ${reserved:.6f} "
                         f"reserved of ${limit:.6f}; this call may cost up to ${estimate:.6f}")
        self.scope, self.limit, self.spent = scope, limit, spent
        self.reserved, self.estimate = reserved, estimate

    def details(self) -> dict[str, Any]:
        return {"scope": self.scope, "limit": float(self.limit), "spent": float(self.spent),
                "reserved": float(self.reserved), "estimate": float(self.estimate)}


def day_scopes(agent_type: str, daily: float | None,
               agent_daily: dict[str, float]) -> list[Scope]:
    """Today's (UTC) namespace and agent-type scopes that have a limit."""
    day = datetime.now(UTC).date().isoformat()
    scopes = []
    if daily is not None:
        scopes.append(Scope(f"namespace:{day}", Decimal(str(daily))))
    if agent_type in agent_daily:
        scopes.append(Scope(f"agent:{agent_type}:{day}", Decimal(str(agent_daily[agent_type]))))
    return scopes


def gauge(scope: str, remaining: Decimal) -> None:
    """Set the remaining-budget gauge of a day scope (per-thread scopes would be a label per
    workflow: they are left out)."""
    kind, _, rest = scope.partition(":")
    if kind == "namespace":
        MODEL_BUDGET_REMAINING.labels("namespace").set(float(remaining))
    elif kind == "agent":
        MODEL_BUDGET_REMAINING.labels(f"agent:{rest.rpartition(':')[0]}").set(float(remaining))


# Reserving: lock the scopes' rows in name order (no deadlock between callers), check every
# scope with the rows' current values, and only when all fit add the estimate to each (and
# take the settings' limit) and record the reservation; its id comes back, or no row.
# Committed asynchronously (set_config(..., true): this transaction only): visible to every
# other caller at once, as a synchronous commit is, without waiting for the disk; see the
# module's docstring.
_RESERVE = """
WITH locked AS (
    SELECT b.scope, b.spent_usd + b.reserved_usd + %(est)s <= w.limit_usd AS fits, w.limit_usd
    FROM model_budgets b
    JOIN unnest(%(scopes)s::text[], %(limits)s::numeric[]) AS w(scope, limit_usd)
        ON b.namespace = %(ns)s AND b.scope = w.scope
    ORDER BY b.scope FOR UPDATE OF b),
verdict AS (SELECT count(*) = %(n)s AND bool_and(fits) AS fits FROM locked),
taken AS (
    UPDATE model_budgets b
    SET reserved_usd = b.reserved_usd + %(est)s, limit_usd = l.limit_usd, updated_at = now()
    FROM locked l, verdict v
    WHERE v.fits AND b.namespace = %(ns)s AND b.scope = l.scope)
INSERT INTO model_reservations (namespace, scopes, amount_usd, expires_at)
SELECT %(ns)s, %(scopes)s::text[], %(est)s, now() + make_interval(secs => %(ttl)s)
FROM verdict v WHERE v.fits AND set_config('synchronous_commit', 'off', true) = 'off'
RETURNING id
"""

# Why a reservation found no room: the scopes' rows as they are (a missing row is a scope's
# first call)
_STATE = """
SELECT scope, spent_usd, reserved_usd FROM model_budgets
WHERE namespace = %(ns)s AND scope = ANY(%(scopes)s::text[])
"""

_CREATE = """
INSERT INTO model_budgets (namespace, scope, limit_usd)
SELECT %(ns)s, scope, limit_usd FROM unnest(%(scopes)s::text[], %(limits)s::numeric[])
    AS w(scope, limit_usd)
ON CONFLICT (namespace, scope) DO NOTHING
"""

_RELEASE_EXPIRED = """
WITH gone AS (
    DELETE FROM model_reservations
    WHERE namespace = %(ns)s AND expires_at < now() AND scopes && %(scopes)s::text[]
    RETURNING scopes, amount_usd),
per AS (
    SELECT s AS scope, sum(g.amount_usd) AS amount FROM gone g, unnest(g.scopes) s GROUP BY s),
locked AS (
    SELECT b.scope FROM model_budgets b JOIN per p ON p.scope = b.scope
    WHERE b.namespace = %(ns)s ORDER BY b.scope FOR UPDATE OF b)
UPDATE model_budgets b SET reserved_usd = greatest(b.reserved_usd - p.amount, 0),
    updated_at = now()
FROM per p JOIN locked l ON l.scope = p.scope
WHERE b.namespace = %(ns)s AND b.scope = p.scope
"""


class Budgets:
    """Reservations on the budget scopes of one namespace."""

    def __init__(self, db: Database, namespace: str) -> None:
        self.db = db
        self.namespace = namespace

    async def reserve(self, scopes: list[Scope], estimate: Decimal,
                      ttl: float = 900.0) -> Reservation | None:
        """Reserve ``estimate`` on every scope, or on none.

        Returns:
            The reservation to settle, or None when there is no scope to reserve on.

        Raises:
            BudgetRefused: a scope cannot take the estimate (the first such, by name).
        """
        if not scopes:
            return None
        scopes = sorted(scopes, key=lambda s: s.key)
        keys = [s.key for s in scopes]
        params = {"ns": self.namespace, "scopes": keys, "limits": [s.limit for s in scopes],
                  "n": len(scopes), "est": estimate, "ttl": ttl}
        released = False
        over: tuple[Scope, Decimal, Decimal] | None = None
        for _ in range(4):  # at most: make the rows, release expired reservations, twice
            row = await self.db.fetchone(_RESERVE, params)
            if row is not None:
                return Reservation(int(row["id"]), tuple(keys), estimate)
            state = {r["scope"]: r for r in await self.db.fetch(_STATE, params)}
            if len(state) < len(scopes):  # a scope's first call: make its row, then again
                await self.db.execute(_CREATE, params)
                continue
            over = next(((s, state[s.key]["spent_usd"], state[s.key]["reserved_usd"])
                         for s in scopes if state[s.key]["spent_usd"]
                         + state[s.key]["reserved_usd"] + estimate > s.limit), None)
            if over is None:  # room was made meanwhile: again
                continue
            if not released:  # full: perhaps of reservations whose callers died
                released = True
                if await self._release_expired(params):
                    continue
            break
        if over is None:  # four races lost: the first scope stands for them
            over = (scopes[0], Decimal(0), Decimal(0))
        scope, spent, reserved = over
        gauge(scope.key, scope.limit - spent - reserved)
        raise BudgetRefused(scope.key, scope.limit, spent, reserved, estimate)

    async def _release_expired(self, params: dict[str, Any]) -> int:
        from psycopg.errors import DeadlockDetected

        try:
            return await self.db.execute(_RELEASE_EXPIRED, params)
        except DeadlockDetected:  # a settle of the same reservation won: nothing to do
            return 0

    async def release(self, reservation: Reservation) -> None:
        """Give a reservation back unused (the call failed before it cost anything known)."""
        await self.db.execute(SETTLE_ONLY, {"ns": self.namespace, "rid": reservation.id,
                                            "scopes": list(reservation.scopes)})


#: settle without a ledger row: the reservation released, nothing spent
SETTLE_ONLY = """
WITH gone AS (DELETE FROM model_reservations WHERE id = %(rid)s RETURNING amount_usd),
locked AS (
    SELECT scope FROM model_budgets WHERE namespace = %(ns)s AND scope = ANY(%(scopes)s::text[])
    ORDER BY scope FOR UPDATE)
UPDATE model_budgets b
SET reserved_usd = greatest(b.reserved_usd - coalesce((SELECT amount_usd FROM gone), 0), 0),
    updated_at = now()
FROM locked l WHERE b.namespace = %(ns)s AND b.scope = l.scope
"""
