"""The ledger: one ``model_calls`` row per model call really made, written together with the
settling of the call's budget reservation (one statement, one round trip).

Exactly once: the row's key is (request id, execution, sequence). A handler answered from the
response store runs no code, so it records nothing; one re-executed after a crash is a new
execution (``RequestContext.execution``) that really called the model again, and is recorded
again; the same execution writing its row twice (a retried write) keeps one.

Off the call's path: inside :func:`batched` (the worker wraps every handler in it), a call's
row and settle are queued for the ledger's background writer, which writes a batch in one
statement (rows inserted, reservations released, costs added per scope in the scopes' lock
order). It writes when a :func:`batched` block ends (the handler is done: its rows now), when
``batch_size`` rows are queued, or ``linger`` seconds after the first queued row. Not at once
per call: the settle locks the same budget rows as the next call's reservation until it
commits, so a write per call would put the next reservation behind it. Leaving
:func:`batched` waits until the rows queued inside it are written, so the worker stores a
request's answer only after its ledger rows; the worker drains the queue when it stops
(:meth:`Ledger.drain`). Until a row is written its reservation still holds the
estimate, so the budgets stay on the safe side. A write that fails because the database is
away keeps the rows queued (tried again with a backoff) and fails the handlers waiting for
them; a batch the database refuses is written row by row, and a row refused alone is dropped
and logged (as a call whose own write failed would have gone unrecorded). Outside :func:`batched` (a command
calling a handler locally) a call writes its row itself before returning.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from psycopg import OperationalError
from psycopg.types.json import Jsonb

from orchestrator.llm.budget import Reservation, gauge
from orchestrator.state.db import Database

__all__ = ["CallRecord", "Ledger", "batched"]

log = logging.getLogger(__name__)


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


_TYPES = {"thread_id": "text", "workflow_type": "text", "node": "text", "agent_type": "text",
          "request_id": "text", "execution": "text", "sequence": "integer", "model": "text",
          "provider": "text", "input_tokens": "integer", "cached_tokens": "integer",
          "output_tokens": "integer", "reasoning_tokens": "integer", "cost_usd": "numeric",
          "price_source": "text", "latency_ms": "double precision", "prompt": "text",
          "tier": "text", "purpose": "text", "reason": "text"}
_COLUMNS = list(CallRecord.__dataclass_fields__)
assert list(_TYPES) == _COLUMNS
_KEY = "request_id, execution, sequence"

# One statement per batch. The batch arrives as a JSON array of rows, each with its
# reservation (rid) and that reservation's scopes; a row already recorded (its key exists)
# adds nothing to what was spent, but its reservation is released all the same. The
# workflow's type comes from its row when the caller does not know it.
_WRITE = f"""
WITH batch AS (
    SELECT * FROM jsonb_to_recordset(%(rows)s::jsonb) AS r(
        {", ".join(f"{c} {t}" for c, t in _TYPES.items())}, rid bigint, scopes text[])),
recorded AS (
    INSERT INTO model_calls (namespace, {", ".join(_COLUMNS)})
    SELECT %(ns)s, {", ".join(
        "coalesce(b.workflow_type, (SELECT w.workflow_type FROM workflows w "
        "WHERE w.thread_id = b.thread_id))" if c == "workflow_type" else f"b.{c}"
        for c in _COLUMNS)}
    FROM batch b
    ON CONFLICT ({_KEY}) DO NOTHING
    RETURNING {_KEY}, cost_usd),
spent AS (
    SELECT s AS scope, sum(r.cost_usd) AS amount
    FROM recorded r
    JOIN (SELECT DISTINCT ON ({_KEY}) {_KEY}, scopes FROM batch) b USING ({_KEY}),
        unnest(b.scopes) s
    WHERE r.cost_usd IS NOT NULL GROUP BY s),
gone AS (
    DELETE FROM model_reservations
    WHERE id IN (SELECT rid FROM batch WHERE rid IS NOT NULL)
    RETURNING scopes, amount_usd),
freed AS (
    SELECT s AS scope, sum(g.amount_usd) AS amount FROM gone g, unnest(g.scopes) s GROUP BY s),
per AS (
    SELECT scope, coalesce(sum(sp.amount), 0) AS spent, coalesce(sum(f.amount), 0) AS freed
    FROM (SELECT scope FROM spent UNION SELECT scope FROM freed) k
    LEFT JOIN spent sp USING (scope) LEFT JOIN freed f USING (scope) GROUP BY scope),
locked AS (
    SELECT b.scope FROM model_budgets b JOIN per p USING (scope)
    WHERE b.namespace = %(ns)s ORDER BY b.scope FOR UPDATE OF b)
UPDATE model_budgets b
SET reserved_usd = greatest(b.reserved_usd - p.freed, 0), spent_usd = b.spent_usd + p.spent,
    updated_at = now()
FROM per p JOIN locked l USING (scope)
WHERE b.namespace = %(ns)s AND b.scope = p.scope
RETURNING b.scope, b.limit_usd - b.spent_usd - b.reserved_usd AS remaining
"""

_Queued = tuple[CallRecord, Reservation | None]

#: the writes a :func:`batched` block waits for, with their ledgers (None: outside one, calls
#: write themselves)
_waiting: ContextVar[list[tuple[Ledger, asyncio.Future[None]]] | None] = ContextVar(
    "ledger_waiting", default=None)


def _dumps(obj: Any) -> str:
    return json.dumps(obj, default=str)  # Decimal costs as exact strings


class Ledger:
    """Writes the ledger rows of one namespace (and settles their reservations)."""

    #: the longest pause between tries of a failed write, seconds
    max_backoff = 5.0
    #: how long the first queued row waits for more before the writer writes it, seconds
    linger = 0.02
    #: this many queued rows are written at once
    batch_size = 200

    def __init__(self, db: Database, namespace: str) -> None:
        self.db = db
        self.namespace = namespace
        self._queue: list[_Queued] = []
        self._queued: asyncio.Future[None] | None = None  # done when the queue is written
        self._writer: asyncio.Task[None] | None = None
        self._now = asyncio.Event()  # write without lingering: someone waits

    async def record(self, row: CallRecord, reservation: Reservation | None) -> None:
        """Record ``row`` and settle ``reservation`` (if any) to its cost: queued for the
        background writer inside :func:`batched`, written before returning outside it."""
        waiting = _waiting.get()
        if waiting is None:
            await self._write([(row, reservation)])
            return
        self._queue.append((row, reservation))
        waiting.append((self, self._pending()))
        if len(self._queue) >= self.batch_size:
            self._now.set()
        if self._writer is None or self._writer.done():
            self._writer = asyncio.get_running_loop().create_task(
                self._write_queued(), name="ledger-writer")

    def _pending(self) -> asyncio.Future[None]:
        """The future of the queued rows' write (made with the first of them)."""
        if self._queued is None:
            self._queued = asyncio.get_running_loop().create_future()
        return self._queued

    async def drain(self) -> None:
        """Wait until every queued row is written, trying failed writes again (the worker's
        stop; its caller bounds the wait)."""
        while self._writer is not None and not self._writer.done():
            self._now.set()
            await asyncio.shield(self._writer)

    async def _write_queued(self) -> None:
        pause = 0.05
        while self._queue:
            if not self._now.is_set():
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self.linger):
                        await self._now.wait()
            self._now.clear()
            batch, done = self._queue, self._queued
            self._queue, self._queued = [], None
            assert done is not None
            try:
                await self._write(batch)
            except OperationalError as exc:  # the database is away: kept for the next try
                self._queue[:0] = batch  # in front of what queued meanwhile
                self._pending()
                log.warning("writing %d ledger row(s) failed (%s); trying again in %.2fs",
                            len(batch), exc, pause)
                done.set_exception(exc)
                done.exception()  # retrieved: a batch nobody waits for is not an error
                await asyncio.sleep(pause)
                pause = min(pause * 2, self.max_backoff)
                continue
            except Exception:  # a row the database refuses: not the others with it
                await self._write_each(batch)
            pause = 0.05
            done.set_result(None)

    async def _write_each(self, batch: list[_Queued]) -> None:
        """Write a refused batch's rows one by one, dropping (and logging) those refused."""
        for queued in batch:
            try:
                await self._write([queued])
            except OperationalError:
                self._queue.insert(0, queued)  # away after all: the next try
                self._pending()
            except Exception:
                row = queued[0]
                log.exception("ledger row (request %s, execution %s, sequence %d) refused: "
                              "dropped", row.request_id, row.execution, row.sequence)

    async def _write(self, batch: list[_Queued]) -> None:
        rows = []
        for row, reservation in batch:
            fields = dict(row.__dict__)  # flat: no asdict
            if reservation is not None:
                fields.update(rid=reservation.id, scopes=reservation.scopes)
            rows.append(fields)
        for settled in await self.db.fetch(_WRITE, {"ns": self.namespace,
                                                    "rows": Jsonb(rows, dumps=_dumps)}):
            gauge(settled["scope"], settled["remaining"])


@asynccontextmanager
async def batched() -> AsyncIterator[None]:
    """Model calls inside queue their ledger rows for the background writer; leaving (with a
    result or an exception, not when cancelled) waits until those rows are written, and
    raises what failed their write."""
    waiting: list[tuple[Ledger, asyncio.Future[None]]] = []
    token = _waiting.set(waiting)
    try:
        yield
    except asyncio.CancelledError:
        raise
    except BaseException:
        await _written(waiting)
        raise
    finally:
        _waiting.reset(token)
    await _written(waiting)


async def _written(waiting: list[tuple[Ledger, asyncio.Future[None]]]) -> None:
    for ledger, _ in waiting:
        ledger._now.set()
    for _, future in dict.fromkeys(waiting):  # each batch once, in order
        await asyncio.shield(future)
