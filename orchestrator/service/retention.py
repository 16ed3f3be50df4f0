"""Retention: prune the checkpoints of finished workflows by a policy per status.

``Settings.retention_policy`` says, per status (completed, failed, cancelled), after how many
days a thread keeps only its latest checkpoint and after how many all of them go. A thread's
age is its workflow row's ``updated_at``: when the workflow last changed, which for a finished
one is when it ended (LangGraph's checkpoint rows carry no timestamp column; the ``ts`` inside
each checkpoint's JSON only says when that step ran).

Never pruned, whatever the policy says: running, interrupted and queued workflows; a thread
whose latest checkpoint holds a pending question; a thread with a queued or running run; named
checkpoints (a thread that has some keeps them and its latest, even past the delete age). The
workflow row is never touched, so a pruned workflow still shows its status and result.

Pruning goes in batches of ``retention_batch_size`` threads, each batch one short transaction
that locks its workflow rows ``FOR UPDATE SKIP LOCKED``: a thread another process is changing
is skipped (and taken by a later pass), and a run enqueued for a thread being pruned waits for
the batch (the run's row references the workflow row) instead of racing it. Inside it, a batch
is a few set-based statements whatever its size, not a transaction per thread; between
batches the pass rests as long as the last one took, leaving the database to the runs.

What comes from ``langgraph-checkpoint-postgres`` (3.2) and what is ours:

* "delete" runs its ``PRUNE_DELETE_THREADS_SQL`` as is (already one statement per table over
  ``thread_id = ANY``), but on the batch's connection, inside the transaction that holds the
  workflow rows, not on the saver's own.
* "keep_latest" keeps exactly what its ``aprune(strategy="keep_latest")`` keeps (``_keep_latest``
  in its ``base.py``): per namespace the latest checkpoint, plus its parent when it predates
  checkpoint format v4 and has pending sends (``__pregel_tasks`` writes); the namespace of a
  subgraph *call* (a ``:`` in it) goes whole once the root checkpoint the call started from is
  saved and not kept; a kept checkpoint whose parent goes loses its parent id; a deleted
  checkpoint's writes go (by checkpoint id: writes can commit before their checkpoint); its
  blobs go unless a kept checkpoint of the namespace references them. Threads using a
  ``DeltaChannel`` are left alone, as it refuses them: its ``PRUNE_DELTA_THREADS_SQL`` finds
  them, reused as is. Its other statements take one thread (``thread_id = %s``) and its
  ``aprune`` runs one repeatable-read transaction per thread (~25 ms each, 12 threads/s), so
  the batch forms below are ours: ``_HEADS_SQL`` is its ``PRUNE_HEADS_SQL`` over a batch, and
  ``_KEEP_SQL`` does what its ``PRUNE_UNKEPT/WRITES/CHECKPOINTS/PARENTS/REFERENCED_BLOBS/BLOBS``
  do, in one statement over a ``(thread, namespace, checkpoint)`` list of what is kept. One
  statement reads one snapshot, as its repeatable-read transaction does: a checkpoint saved
  meanwhile is neither seen nor deleted.
* Named checkpoints are ours: ``aprune`` would delete them. A thread that has some keeps, in
  the root namespace, its latest, its named ones and the parents their pending sends are read
  from; its other namespaces are left as they are (resuming from a named checkpoint may need a
  subgraph's older state).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from typing import Any

import psycopg
from langgraph._internal._constants import INTERRUPT, TASKS  # no public names in 1.x
from langgraph.checkpoint.postgres.base import PRUNE_DELETE_THREADS_SQL, PRUNE_DELTA_THREADS_SQL
from psycopg import AsyncConnection

from orchestrator.settings import PRUNABLE_STATUSES, RetentionRule, Settings
from orchestrator.state.db import Database, Row

__all__ = ["Retention", "RetentionPass", "PruneReport", "Tally"]

log = logging.getLogger(__name__)

#: a batch that ran into another transaction: rolled back and skipped, a later pass takes it
_SKIPPABLE = (psycopg.errors.SerializationFailure, psycopg.errors.DeadlockDetected)

_NEVER = "-infinity"  # before every updated_at: where the first batch starts

#: after each batch a pass rests this many times as long as the batch took, so it takes at
#: most about half of the database's time from the runs going on meanwhile (measured on 2
#: cores with 8 runners: without rest their p50 went up 1.2-1.6x during a pass)
_REST = 1.0

_LATEST_ROOT = ("(SELECT max(l.checkpoint_id) FROM checkpoints l "
                "WHERE l.thread_id = w.thread_id AND l.checkpoint_ns = '')")
_HAS_NAMED = "EXISTS (SELECT 1 FROM workflow_checkpoints n WHERE n.thread_id = w.thread_id)"

# what a thread must have left to prune, per action (so pruned threads are not taken again)
_PRUNABLE = {
    "delete": f"NOT {_HAS_NAMED} AND EXISTS (SELECT 1 FROM checkpoints c "
              "WHERE c.thread_id = w.thread_id)",
    "keep_latest": "(%(delete_age)s::float8 IS NULL OR "
                   "w.updated_at >= now() - make_interval(secs => %(delete_age)s) "
                   f"OR {_HAS_NAMED}) "
                   "AND EXISTS (SELECT 1 FROM checkpoints c WHERE c.thread_id = w.thread_id "
                   f"AND c.checkpoint_ns = '' AND c.checkpoint_id < {_LATEST_ROOT} "
                   "AND NOT EXISTS (SELECT 1 FROM workflow_checkpoints n "
                   "WHERE n.thread_id = c.thread_id AND n.checkpoint_id = c.checkpoint_id))",
}

# A lookup by primary key per thread (a scalar subquery, LIMIT 1): as a NOT EXISTS, PostgreSQL
# made it an anti join over a scan of every write of every thread (80 ms per batch at 200,000)
_NO_PENDING_QUESTION = (
    "(SELECT 1 FROM checkpoint_writes q WHERE q.thread_id = w.thread_id "
    f"AND q.checkpoint_ns = '' AND q.checkpoint_id = {_LATEST_ROOT} "
    f"AND q.channel = '{INTERRUPT}' LIMIT 1) IS NULL"
)
_NO_ACTIVE_RUN = ("NOT EXISTS (SELECT 1 FROM runs r WHERE r.thread_id = w.thread_id "
                  "AND r.status IN ('queued', 'running'))")

_COUNT_SQL = "SELECT count(*) AS n FROM checkpoints WHERE thread_id = ANY(%s)"

# a checkpoint older than format v4 reads its pending sends from its parent's writes (a lookup
# by primary key: see _HEADS_SQL)
_SENDS_PARENT = f"""CASE WHEN (c.checkpoint ->> 'v')::int < 4 AND (
        SELECT 1 FROM checkpoint_writes s
        WHERE s.thread_id = c.thread_id AND s.checkpoint_ns = c.checkpoint_ns
        AND s.checkpoint_id = c.parent_checkpoint_id AND s.channel = '{TASKS}' LIMIT 1
    ) IS NOT NULL THEN c.parent_checkpoint_id END"""

# PRUNE_HEADS_SQL over a batch: per thread and namespace the latest checkpoint, the parent its
# pending sends are read from, the root checkpoint a subgraph call started from and whether
# that one is saved. Lookups by primary key here are scalar subqueries with LIMIT 1: as EXISTS
# or a join, PostgreSQL planned them as hashes over scans of whole tables (70,000 checkpoints:
# 60 ms a batch, growing with the tables, not the batch).
_HEADS_SQL = f"""
SELECT h.thread_id, h.checkpoint_ns, h.checkpoint_id AS head,
    {_SENDS_PARENT} AS sends_parent,
    c.metadata -> 'parents' ->> '' AS root,
    (SELECT 1 FROM checkpoints r
     WHERE r.thread_id = h.thread_id AND r.checkpoint_ns = ''
     AND r.checkpoint_id = c.metadata -> 'parents' ->> '' LIMIT 1) IS NOT NULL AS root_saved
FROM (
    SELECT DISTINCT ON (thread_id, checkpoint_ns) thread_id, checkpoint_ns, checkpoint_id
    FROM checkpoints WHERE thread_id = ANY(%s)
    ORDER BY thread_id, checkpoint_ns DESC, checkpoint_id DESC
) AS h
CROSS JOIN LATERAL (
    SELECT thread_id, checkpoint_ns, checkpoint, parent_checkpoint_id, metadata
    FROM checkpoints
    WHERE thread_id = h.thread_id AND checkpoint_ns = h.checkpoint_ns
    AND checkpoint_id = h.checkpoint_id
    LIMIT 1
) AS c
"""

# the named root checkpoints of a batch's threads, with the parents their pending sends need
_NAMED_SQL = f"""
SELECT n.thread_id, n.checkpoint_id, p.sends_parent
FROM workflow_checkpoints n
LEFT JOIN LATERAL (
    SELECT {_SENDS_PARENT} AS sends_parent FROM checkpoints c
    WHERE c.thread_id = n.thread_id AND c.checkpoint_ns = '' AND c.checkpoint_id = n.checkpoint_id
) AS p ON true
WHERE n.thread_id = ANY(%s) AND n.checkpoint_ns = ''
"""

# The namespaces pruned (%(scope_*)s) and what each keeps (%(keep_*)s): the checkpoints of a
# pruned namespace not kept are what goes.
_GONE = """
scope AS (
    SELECT * FROM unnest(%(scope_t)s::text[], %(scope_ns)s::text[]) AS s(thread_id, checkpoint_ns)
), keep AS (
    SELECT * FROM unnest(%(keep_t)s::text[], %(keep_ns)s::text[], %(keep_id)s::text[])
        AS k(thread_id, checkpoint_ns, checkpoint_id)
), gone AS (
    SELECT c.thread_id, c.checkpoint_ns, c.checkpoint_id
    FROM scope s
    JOIN checkpoints c ON c.thread_id = s.thread_id AND c.checkpoint_ns = s.checkpoint_ns
    WHERE NOT EXISTS (SELECT 1 FROM keep k WHERE k.thread_id = c.thread_id
                      AND k.checkpoint_ns = c.checkpoint_ns AND k.checkpoint_id = c.checkpoint_id)
)"""

_WOULD_KEEP_SQL = f"WITH {_GONE} SELECT count(*) AS n FROM gone"

# PRUNE_WRITES/CHECKPOINTS/PARENTS/REFERENCED_BLOBS/BLOBS_SQL for a batch, in one statement
# (one snapshot). What the checkpoints kept reference is read before the deletes, which this
# statement's own reads do not see: the same as reading what is left after them. The parents'
# NOT IN (a hashed subplan; a NULL parent is left alone, as LangGraph's "<> ALL" does) rather
# than a NOT EXISTS, which was planned as a nested loop over the kept list: batch size squared.
_KEEP_SQL = f"""
WITH {_GONE}, writes AS (
    DELETE FROM checkpoint_writes w USING gone g
    WHERE w.thread_id = g.thread_id AND w.checkpoint_ns = g.checkpoint_ns
    AND w.checkpoint_id = g.checkpoint_id
), freed AS (
    DELETE FROM checkpoints c USING gone g
    WHERE c.thread_id = g.thread_id AND c.checkpoint_ns = g.checkpoint_ns
    AND c.checkpoint_id = g.checkpoint_id
    RETURNING c.thread_id, c.checkpoint_ns, c.checkpoint -> 'channel_versions' AS versions
), parents AS (
    UPDATE checkpoints c SET parent_checkpoint_id = NULL FROM keep k
    WHERE c.thread_id = k.thread_id AND c.checkpoint_ns = k.checkpoint_ns
    AND c.checkpoint_id = k.checkpoint_id
    AND (c.thread_id, c.checkpoint_ns, c.parent_checkpoint_id) NOT IN (SELECT * FROM keep)
), garbage AS (
    SELECT f.thread_id, f.checkpoint_ns, v.key AS channel, v.value AS version
    FROM freed f CROSS JOIN LATERAL jsonb_each_text(f.versions) AS v
    EXCEPT
    SELECT c.thread_id, c.checkpoint_ns, v.key, v.value
    FROM keep k
    JOIN checkpoints c ON c.thread_id = k.thread_id AND c.checkpoint_ns = k.checkpoint_ns
        AND c.checkpoint_id = k.checkpoint_id
    CROSS JOIN LATERAL jsonb_each_text(c.checkpoint -> 'channel_versions') AS v
), blobs AS (
    DELETE FROM checkpoint_blobs b USING garbage g
    WHERE b.thread_id = g.thread_id AND b.checkpoint_ns = g.checkpoint_ns
    AND b.channel = g.channel AND b.version = g.version
)
SELECT count(*) AS n FROM freed
"""

# PRUNE_SUBGRAPH_CALLS_SQL over a batch: the (thread, namespace) pairs of finished calls
_CALLS = ("unnest(%(calls_t)s::text[], %(calls_ns)s::text[]) AS d(thread_id, checkpoint_ns) "
          "WHERE x.thread_id = d.thread_id AND x.checkpoint_ns = d.checkpoint_ns")
_CALLS_SQL = tuple(f"DELETE FROM {table} x USING {_CALLS}"
                   for table in ("checkpoints", "checkpoint_writes", "checkpoint_blobs"))
_WOULD_CALLS_SQL = f"SELECT count(*) AS n FROM checkpoints x, {_CALLS}"


@dataclass
class Tally:
    """What one action did (or would do) to the threads of one status."""

    status: str
    action: str  # delete | keep_latest
    older_than_days: float
    threads: int = 0  # pruned (dry run: would be)
    checkpoints: int = 0  # deleted (dry run: would be)
    skipped: int = 0  # changed by someone else meanwhile, or a DeltaChannel: left as they are


@dataclass
class PruneReport:
    dry_run: bool
    tallies: list[Tally] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def threads(self) -> int:
        return sum(t.threads for t in self.tallies)

    @property
    def checkpoints(self) -> int:
        return sum(t.checkpoints for t in self.tallies)

    def to_dict(self) -> dict[str, Any]:
        return {"dry_run": self.dry_run, "threads": self.threads,
                "checkpoints": self.checkpoints, "seconds": round(self.seconds, 3),
                "tallies": [asdict(t) for t in self.tallies]}


@dataclass
class _Plan:
    """What keep_latest does to a batch: the namespaces pruned and the checkpoints each keeps,
    the subgraph calls' namespaces deleted whole."""

    scope: list[tuple[str, str]] = field(default_factory=list)
    keep: list[tuple[str, str, str]] = field(default_factory=list)
    calls: list[tuple[str, str]] = field(default_factory=list)

    def params(self) -> dict[str, list[str]]:
        return {**_columns("scope", ("t", "ns"), self.scope),
                **_columns("keep", ("t", "ns", "id"), self.keep),
                **_columns("calls", ("t", "ns"), self.calls)}


class Retention:
    """One retention pass over a namespace: :meth:`run`."""

    def __init__(self, db: Database, settings: Settings) -> None:
        self.db = db
        self.settings = settings

    async def run(self, *, dry_run: bool = False) -> PruneReport:
        """Prune what the policy says (``dry_run``: only count it; nothing changes).

        Per status, deletion first (threads past ``delete_after_days`` without named
        checkpoints), then keep-latest (threads past the smaller of the two ages).
        """
        started = time.perf_counter()
        report = PruneReport(dry_run)
        for status in PRUNABLE_STATUSES:
            rule = self.settings.retention_policy.get(status)
            if rule is None:
                continue
            for action, days in _actions(rule):
                tally = Tally(status, action, days)
                await self._prune(tally, rule.delete_after_days, dry_run=dry_run)
                report.tallies.append(tally)
        report.seconds = time.perf_counter() - started
        return report

    async def _prune(self, tally: Tally, delete_after_days: float | None, *,
                     dry_run: bool) -> None:
        """Batch after batch, in (updated_at, thread_id) order, so every thread is looked at
        once per pass even when it cannot be pruned. Keep-latest leaves out the threads the
        delete action is for (a dry run has not deleted them)."""
        delete_age = None if delete_after_days is None else delete_after_days * 86_400.0
        query = _select_sql(tally.action, lock=not dry_run)
        after: tuple[Any, str] = (_NEVER, "")
        while True:
            params = {"ns": self.settings.namespace, "status": tally.status,
                      "age": tally.older_than_days * 86_400.0, "after_ts": after[0],
                      "after_id": after[1], "limit": self.settings.retention_batch_size,
                      "delete_age": delete_age}
            rows: list[Row] = []
            started = time.perf_counter()
            try:
                async with self.db.transaction() as conn:
                    rows = await (await conn.execute(query, params)).fetchall()
                    if not rows:
                        return
                    pruned, gone, skipped = await _prune_batch(conn, tally.action, rows,
                                                               dry_run=dry_run)
            except _SKIPPABLE as exc:
                if not rows:
                    raise
                log.info("retention skipped a batch of %d threads: %s", len(rows), exc)
                pruned, gone, skipped = 0, 0, len(rows)
            tally.threads += pruned
            tally.checkpoints += gone
            tally.skipped += skipped
            after = (rows[-1]["updated_at"], rows[-1]["thread_id"])
            if len(rows) < self.settings.retention_batch_size:
                return
            await asyncio.sleep((time.perf_counter() - started) * _REST)


async def _prune_batch(conn: AsyncConnection[Row], action: str, rows: list[Row], *,
                       dry_run: bool) -> tuple[int, int, int]:
    """One batch in the transaction holding its workflow rows: (threads pruned, checkpoints
    deleted, threads skipped)."""
    ids = [r["thread_id"] for r in rows]
    if action == "delete":
        if dry_run:
            return len(ids), await _count(conn, _COUNT_SQL, (ids,)), 0
        deleted = [(await conn.execute(sql, (ids,), prepare=False)).rowcount
                   for sql in PRUNE_DELETE_THREADS_SQL]
        return len(ids), deleted[0], 0  # the first statement is the checkpoints'
    delta = {r["thread_id"] for r in await _rows(conn, PRUNE_DELTA_THREADS_SQL, (ids, ids))}
    if delta:
        log.info("retention left threads that use a DeltaChannel as they are: %s",
                 ", ".join(sorted(delta)))
    named = {r["thread_id"] for r in rows if r["named"] and r["thread_id"] not in delta}
    plain = [t for t in ids if t not in delta and t not in named]
    plan = await _plan(conn, plain, sorted(named))
    params = plan.params()
    if dry_run:
        gone = await _count(conn, _WOULD_KEEP_SQL, params)
        if plan.calls:
            gone += await _count(conn, _WOULD_CALLS_SQL, params)
        return len(ids) - len(delta), gone, len(delta)
    gone = 0
    if plan.calls:
        gone += (await conn.execute(_CALLS_SQL[0], params, prepare=False)).rowcount
        for sql in _CALLS_SQL[1:]:
            await conn.execute(sql, params, prepare=False)
    gone += await _count(conn, _KEEP_SQL, params)
    return len(ids) - len(delta), gone, len(delta)


async def _plan(conn: AsyncConnection[Row], plain: list[str], named: list[str]) -> _Plan:
    """What keep_latest keeps: LangGraph's ``_keep_latest`` for the plain threads; the root
    namespace's latest and named checkpoints (with their sends' parents) for the others."""
    plan = _Plan()
    if not plain and not named:
        return plan
    kept: dict[tuple[str, str], set[str]] = defaultdict(set)
    heads = await _rows(conn, _HEADS_SQL, ([*plain, *named],))
    for h in heads:
        kept[(h["thread_id"], h["checkpoint_ns"])].update(
            i for i in (h["head"], h["sends_parent"]) if i)
    plain_set = set(plain)
    calls = {(h["thread_id"], h["checkpoint_ns"]) for h in heads
             if h["thread_id"] in plain_set and ":" in h["checkpoint_ns"] and h["root_saved"]
             and h["root"] not in kept[(h["thread_id"], "")]}
    for n in await _rows(conn, _NAMED_SQL, (named,)) if named else []:
        kept[(n["thread_id"], "")].update(i for i in (n["checkpoint_id"], n["sends_parent"]) if i)
    for (thread_id, ns), ids in kept.items():
        if (thread_id, ns) in calls or (thread_id not in plain_set and ns != ""):
            continue
        plan.scope.append((thread_id, ns))
        plan.keep.extend((thread_id, ns, i) for i in sorted(ids))
    plan.calls = sorted(calls)
    return plan


class RetentionPass:
    """The cluster sweeper's retention job: the ``run`` of its ``PeriodicPass``, called every
    ``retention_interval`` under the sweeper lock.

    Each call starts a pass in the background and returns at once, so a long pass never holds
    up the sweep of dead runners' runs; it returns what the previous pass deleted (checkpoints),
    for the sweeper's log. A call while a pass is still going starts none. Two passes at once
    (another process took the sweeper lock over) would be safe too: their batches lock
    disjoint rows.
    """

    def __init__(self, db: Database, settings: Settings) -> None:
        self.retention = Retention(db, settings)
        self._task: asyncio.Task[PruneReport] | None = None

    async def __call__(self) -> int:
        if self._task is not None and not self._task.done():
            return 0
        deleted = self._collect()
        self._task = asyncio.create_task(self.retention.run(), name="retention-pass")
        return deleted

    async def aclose(self) -> None:
        """Stop a pass in flight (its open batch rolls back; finished batches stay done)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task

    def _collect(self) -> int:
        if self._task is None or self._task.cancelled():
            return 0
        if (exc := self._task.exception()) is not None:  # the next interval tries again
            log.warning("retention pass failed: %s: %s", type(exc).__name__, exc)
            return 0
        report = self._task.result()
        return report.checkpoints


def _actions(rule: RetentionRule) -> list[tuple[str, float]]:
    actions = []
    if rule.delete_after_days is not None:
        actions.append(("delete", rule.delete_after_days))
    ages = [d for d in (rule.keep_latest_after_days, rule.delete_after_days) if d is not None]
    if ages:  # past the delete age, a thread with named checkpoints keeps those and its latest
        actions.append(("keep_latest", min(ages)))
    return actions


def _select_sql(action: str, *, lock: bool) -> str:
    guards = [_PRUNABLE[action], _NO_PENDING_QUESTION, _NO_ACTIVE_RUN]
    return f"""
SELECT w.thread_id, w.updated_at, {_HAS_NAMED} AS named
FROM workflows w
WHERE w.namespace = %(ns)s AND w.status = %(status)s
AND w.updated_at < now() - make_interval(secs => %(age)s)
AND (w.updated_at, w.thread_id) > (%(after_ts)s::timestamptz, %(after_id)s)
AND {" AND ".join(guards)}
ORDER BY w.updated_at, w.thread_id
LIMIT %(limit)s
{"FOR UPDATE OF w SKIP LOCKED" if lock else ""}"""


def _columns(prefix: str, names: tuple[str, ...],
             tuples: list[tuple[str, ...]]) -> dict[str, list[str]]:
    """Rows as one array per column, for ``unnest(%(prefix_name)s::text[], ...)``."""
    return {f"{prefix}_{name}": [t[i] for t in tuples] for i, name in enumerate(names)}


# Unprepared, as LangGraph runs its prune statements: planned knowing the arrays' sizes.
async def _rows(conn: AsyncConnection[Row], sql: str, params: Any) -> list[Row]:
    return await (await conn.execute(sql, params, prepare=False)).fetchall()


async def _count(conn: AsyncConnection[Row], sql: str, params: Any) -> int:
    return int((await _rows(conn, sql, params))[0]["n"])
