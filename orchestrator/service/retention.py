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
the batch (the run's row references the workflow row) instead of racing it. Threads without
named checkpoints are pruned by ``langgraph-checkpoint-postgres``'s own ``aprune`` ("delete":
all rows of the batch in one transaction; "keep_latest": one repeatable-read transaction per
thread, which also keeps the parent a pending ``Send`` is read from and deletes the blobs and
writes only older checkpoints referenced). ``aprune`` would delete named checkpoints, so threads
that have some are pruned here with the same statements and a kept set that adds them (root
namespace only: their subgraph namespaces are left as they are).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import psycopg
from langgraph._internal._constants import INTERRUPT, TASKS  # no public names in 1.x
from langgraph.checkpoint.postgres.aio import AsyncPostgresSaver
from langgraph.checkpoint.postgres.base import (
    PRUNE_BLOBS_SQL,
    PRUNE_CHECKPOINTS_SQL,
    PRUNE_PARENTS_SQL,
    PRUNE_REFERENCED_BLOBS_SQL,
    PRUNE_SNAPSHOT_SQL,
    PRUNE_UNKEPT_SQL,
    PRUNE_WRITES_SQL,
)
from psycopg import AsyncConnection

from orchestrator.settings import PRUNABLE_STATUSES, RetentionRule, Settings
from orchestrator.state.checkpointer import make_checkpointer
from orchestrator.state.db import Database, Row

__all__ = ["Retention", "RetentionPass", "PruneReport", "Tally"]

log = logging.getLogger(__name__)

#: a concurrent change of the thread (or a thread LangGraph cannot keep_latest): skip it, a
#: later pass takes it again
_SKIPPABLE = (NotImplementedError, psycopg.errors.SerializationFailure,
              psycopg.errors.DeadlockDetected)

_NEVER = "-infinity"  # before every updated_at: where the first batch starts

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

_NO_PENDING_QUESTION = (
    "NOT EXISTS (SELECT 1 FROM checkpoint_writes q WHERE q.thread_id = w.thread_id "
    f"AND q.checkpoint_ns = '' AND q.channel = '{INTERRUPT}' AND q.checkpoint_id = {_LATEST_ROOT})"
)
_NO_ACTIVE_RUN = ("NOT EXISTS (SELECT 1 FROM runs r WHERE r.thread_id = w.thread_id "
                  "AND r.status IN ('queued', 'running'))")

_COUNT_SQL = "SELECT count(*) AS n FROM checkpoints WHERE thread_id = ANY(%s)"
# what keep_latest would delete: all but each namespace's latest and the named ones
_WOULD_KEEP_LATEST_SQL = """
SELECT count(*) AS n FROM checkpoints c
WHERE c.thread_id = ANY(%s)
AND c.checkpoint_id <> (SELECT max(l.checkpoint_id) FROM checkpoints l
                        WHERE l.thread_id = c.thread_id AND l.checkpoint_ns = c.checkpoint_ns)
AND NOT EXISTS (SELECT 1 FROM workflow_checkpoints n
                WHERE n.thread_id = c.thread_id AND n.checkpoint_id = c.checkpoint_id)
"""
_KEPT_ROOT_SQL = """
SELECT checkpoint_id FROM workflow_checkpoints WHERE thread_id = %s AND checkpoint_ns = ''
UNION
SELECT max(checkpoint_id) FROM checkpoints WHERE thread_id = %s AND checkpoint_ns = ''
"""
# a checkpoint older than format v4 reads its pending sends from its parent's writes
_SENDS_PARENTS_SQL = f"""
SELECT c.parent_checkpoint_id AS checkpoint_id FROM checkpoints c
WHERE c.thread_id = %s AND c.checkpoint_ns = '' AND c.checkpoint_id = ANY(%s)
AND (c.checkpoint ->> 'v')::int < 4
AND EXISTS (SELECT 1 FROM checkpoint_writes w
            WHERE w.thread_id = c.thread_id AND w.checkpoint_ns = ''
            AND w.checkpoint_id = c.parent_checkpoint_id AND w.channel = '{TASKS}')
"""


@dataclass
class Tally:
    """What one action did (or would do) to the threads of one status."""

    status: str
    action: str  # delete | keep_latest
    older_than_days: float
    threads: int = 0
    checkpoints: int = 0  # deleted (dry run: would be, an estimate)
    skipped: int = 0  # changed by someone else meanwhile: left to a later pass


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


class Retention:
    """One retention pass over a namespace: :meth:`run`."""

    def __init__(self, db: Database, settings: Settings,
                 saver: AsyncPostgresSaver | None = None) -> None:
        self.db = db
        self.settings = settings
        self.saver = saver or make_checkpointer(db)

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
            async with self.db.transaction() as conn:
                rows = await (await conn.execute(query, params)).fetchall()
                if not rows:
                    return
                await self._prune_batch(conn, tally, rows, dry_run=dry_run)
            after = (rows[-1]["updated_at"], rows[-1]["thread_id"])
            if len(rows) < self.settings.retention_batch_size:
                return

    async def _prune_batch(self, conn: AsyncConnection[Row], tally: Tally, rows: list[Row], *,
                           dry_run: bool) -> None:
        ids = [r["thread_id"] for r in rows]
        before = await _count(conn, _COUNT_SQL, ids)
        if dry_run:
            gone = before if tally.action == "delete" else await _count(
                conn, _WOULD_KEEP_LATEST_SQL, ids)
        else:
            if tally.action == "delete":
                await self.saver.aprune(ids, strategy="delete")
            else:
                plain = [r["thread_id"] for r in rows if not r["named"]]
                tally.skipped += await self._keep_latest(plain)
                for row in rows:
                    if row["named"]:
                        tally.skipped += await self._keep_latest_and_named(row["thread_id"])
            gone = before - await _count(conn, _COUNT_SQL, ids)
        tally.threads += len(ids)
        tally.checkpoints += gone

    async def _keep_latest(self, thread_ids: list[str]) -> int:
        """LangGraph's keep_latest (one transaction per thread); returns the threads skipped."""
        try:
            await self.saver.aprune(thread_ids, strategy="keep_latest")
            return 0
        except _SKIPPABLE:  # one thread spoiled the batch: thread by thread, skipping those
            skipped = 0
            for thread_id in thread_ids:
                try:
                    await self.saver.aprune([thread_id], strategy="keep_latest")
                except _SKIPPABLE as exc:
                    log.info("retention skipped thread %s: %s", thread_id, exc)
                    skipped += 1
            return skipped

    async def _keep_latest_and_named(self, thread_id: str) -> int:
        """keep_latest with the thread's named checkpoints kept too (and the parents their
        pending sends are read from), in the root namespace; returns 1 when skipped."""
        try:
            async with self.db.connection() as conn, conn.transaction():
                await conn.execute(PRUNE_SNAPSHOT_SQL)
                kept = [r["checkpoint_id"] for r in await _rows(
                    conn, _KEPT_ROOT_SQL, (thread_id, thread_id)) if r["checkpoint_id"]]
                kept += [r["checkpoint_id"] for r in await _rows(
                    conn, _SENDS_PARENTS_SQL, (thread_id, kept)) if r["checkpoint_id"]]
                unkept = [r["checkpoint_id"] for r in await _rows(
                    conn, PRUNE_UNKEPT_SQL, (thread_id, "", kept))]
                if not unkept:
                    return 0
                await conn.execute(PRUNE_WRITES_SQL, (thread_id, "", unkept), prepare=False)
                freed = await _rows(conn, PRUNE_CHECKPOINTS_SQL, (thread_id, "", kept))
                await conn.execute(PRUNE_PARENTS_SQL, (thread_id, "", kept, kept), prepare=False)
                referenced = {(r["channel"], r["version"]) for r in await _rows(
                    conn, PRUNE_REFERENCED_BLOBS_SQL, (thread_id, ""))}
                garbage: dict[str, list[str]] = {}
                for r in freed:
                    if (r["channel"], r["version"]) not in referenced:
                        garbage.setdefault(r["channel"], []).append(r["version"])
                for channel, versions in garbage.items():
                    await conn.execute(PRUNE_BLOBS_SQL, (thread_id, "", channel, versions),
                                       prepare=False)
            return 0
        except _SKIPPABLE as exc:
            log.info("retention skipped thread %s: %s", thread_id, exc)
            return 1


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


async def _rows(conn: AsyncConnection[Row], sql: str, params: Any) -> list[Row]:
    return await (await conn.execute(sql, params, prepare=False)).fetchall()


async def _count(conn: AsyncConnection[Row], sql: str, ids: list[str]) -> int:
    return int((await _rows(conn, sql, (ids,)))[0]["n"])
