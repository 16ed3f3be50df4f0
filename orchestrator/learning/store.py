"""Outcome records and their statistics (tables of ``sql/013_outcomes.sql``).

Writers. Each record is one attempt of something under a natural key, inserted with ``ON
CONFLICT DO NOTHING``, so a node re-run after a crash or a resume adds nothing:

* :meth:`LearningStore.record_healing`: a ``self_healing`` fix and its verification, keyed by
  (thread, attempt number).
* :func:`record_call`: every agent call (``call_agent``), keyed by (request id, workflow
  attempt, status). Queued in memory and written by a background batched writer (one
  statement per batch): no database round trip on the call's path.
* :meth:`LearningStore.record_canary_stage` / :meth:`LearningStore.record_canary_end`: each
  observation of a canary stage, and how the rollout ended (the rollback's cause).
* :meth:`LearningStore.record_review`: the rules of a review a person approved in spite of
  (overrode) or rejected with (upheld).

Recording never fails a workflow: a write that raises is logged and counted
(``orchestrator_learning_record_failures_total{record=...}``), never raised (see
:func:`recording`, which other outcome writers use too).

Readers (for ``orchestrator learn stats`` and the console; each returns plain dicts, sorted):

* :meth:`LearningStore.healing_evidence`: verified successes and failures per action key, for
  one service and issue (what :mod:`orchestrator.learning.runbooks` orders by).
* :meth:`LearningStore.healing_stats`: per (service, issue, action key): attempts, verified,
  failed, success rate, median seconds to recover, last attempt.
* :meth:`LearningStore.call_stats`: per (agent type, request type): calls, per status,
  error rate, mean / median / p95 round trip in ms.
* :meth:`LearningStore.canary_stats`: per deployment: rollouts, completed, rolled back,
  stage observations by verdict, the latest rollback's cause.
* :meth:`LearningStore.review_stats`: per review rule: answers, overridden, upheld.
* :meth:`LearningStore.forget`: delete what was learned (one service's healing, or all).

Outside a workflow (the CLI) build the store from the settings' database:
``LearningStore(db, settings.namespace)`` with ``state.db.Database.connect``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import weakref
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from prometheus_client import Counter
from psycopg import OperationalError
from psycopg.types.json import Jsonb
from psycopg_pool import PoolClosed

from orchestrator.state.db import Database, Row

if TYPE_CHECKING:
    from orchestrator.messages import AgentRequest
    from orchestrator.runtime import Runtime

__all__ = ["HealingOutcome", "LearningStore", "RECORD_FAILURES", "flush_calls", "record_call",
           "recording", "run_store"]

log = logging.getLogger(__name__)

RECORD_FAILURES = Counter(
    "orchestrator_learning_record_failures_total",
    "Outcome records that could not be written (logged; the workflow went on)",
    ["record"],
)


@contextlib.asynccontextmanager
async def recording(record: str, **ids: Any) -> AsyncIterator[None]:
    """Run the block that writes an outcome record; an exception in it is logged (with
    ``ids``) and counted under ``record``, never raised. Cancellation still propagates."""
    try:
        yield
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        RECORD_FAILURES.labels(record).inc()
        log.warning("recording a %s outcome failed (%s): %s", record,
                    ", ".join(f"{k}={v}" for k, v in ids.items()) or "-", exc)


@dataclass(frozen=True)
class HealingOutcome:
    """One fix of ``self_healing`` and what verification then found.

    ``attempt`` is the fix's number in its thread (1, 2, ...); ``issue`` the diagnosed issue
    it treated; ``action_key`` names the action (:func:`orchestrator.learning.runbooks.action_key`);
    ``fix_ok`` whether the fix itself ran; ``verified`` whether the service was then healthy;
    ``recover_s`` the seconds from detection to that health (None when not healed).
    """

    thread_id: str
    attempt: int
    service: str
    issue: str
    action_key: str
    action: Mapping[str, Any]
    manual: bool
    fix_ok: bool
    verified: bool
    recover_s: float | None = None


_HEALING = """
INSERT INTO learn_healing (namespace, thread_id, attempt, service, issue, action_key, action,
                           manual, fix_ok, verified, recover_s)
VALUES (%(ns)s, %(thread_id)s, %(attempt)s, %(service)s, %(issue)s, %(action_key)s,
        %(action)s, %(manual)s, %(fix_ok)s, %(verified)s, %(recover_s)s)
ON CONFLICT (namespace, thread_id, attempt) DO NOTHING
"""

_CANARY = """
INSERT INTO learn_canary (namespace, thread_id, workflow_type, deployment, event, seq, percent,
                          verdict, reason, mode, holds)
VALUES (%(ns)s, %(thread_id)s, %(workflow_type)s, %(deployment)s, %(event)s, %(seq)s,
        %(percent)s, %(verdict)s, %(reason)s, %(mode)s, %(holds)s)
ON CONFLICT (namespace, thread_id, deployment, event, seq) DO NOTHING
"""

_REVIEW = """
INSERT INTO learn_reviews (namespace, thread_id, repo, branch, rule, findings, approved,
                           answered_by)
SELECT %(ns)s, %(thread_id)s, %(repo)s, %(branch)s, r.rule, r.findings, %(approved)s, %(by)s
FROM jsonb_to_recordset(%(rules)s::jsonb) AS r(rule text, findings integer)
ON CONFLICT (namespace, thread_id, branch, rule) DO NOTHING
"""


class LearningStore:
    """The outcome records of one namespace: writers (once per attempt) and readers."""

    def __init__(self, db: Database, namespace: str) -> None:
        self.db = db
        self.namespace = namespace

    # -- writers -----------------------------------------------------------------------------

    async def record_healing(self, outcome: HealingOutcome) -> bool:
        """Record a healing attempt; False when it was already recorded (or not written:
        see :func:`recording`)."""
        async with recording("healing", thread_id=outcome.thread_id, attempt=outcome.attempt):
            params = {**outcome.__dict__, "ns": self.namespace, "action": Jsonb(dict(outcome.action))}
            return await self.db.execute(_HEALING, params) == 1
        return False

    async def record_canary_stage(self, *, thread_id: str, deployment: str, seq: int,
                                  percent: int | None, verdict: str, reason: str | None,
                                  holds: int, workflow_type: str | None = None) -> bool:
        """Record the ``seq``-th observation of a rollout (its stage's ``percent``, the
        ``verdict`` and its reason, the holds of that stage so far)."""
        return await self._canary(thread_id=thread_id, workflow_type=workflow_type,
                                  deployment=deployment, event="stage", seq=seq,
                                  percent=percent, verdict=verdict, reason=reason, mode=None,
                                  holds=holds)

    async def record_canary_end(self, *, thread_id: str, deployment: str, verdict: str,
                                percent: int | None, reason: str | None = None,
                                mode: str | None = None,
                                workflow_type: str | None = None) -> bool:
        """Record how a rollout ended: ``completed`` or ``rolled_back`` (at ``percent``,
        ``mode`` automatic or manual, ``reason`` the cause)."""
        return await self._canary(thread_id=thread_id, workflow_type=workflow_type,
                                  deployment=deployment, event="end", seq=0, percent=percent,
                                  verdict=verdict, reason=reason, mode=mode, holds=None)

    async def _canary(self, **row: Any) -> bool:
        async with recording("canary", thread_id=row["thread_id"], deployment=row["deployment"]):
            return await self.db.execute(_CANARY, {**row, "ns": self.namespace}) == 1
        return False

    async def record_review(self, *, thread_id: str, repo: str, branch: str,
                            rules: Mapping[str, int], approved: bool, by: str | None) -> int:
        """Record a person's answer to a review of ``branch``: one row per rule with its
        count (``{}``: the review found nothing, recorded as the rule ``''``). Returns the
        rows written."""
        given = {rule: int(n) for rule, n in rules.items()} or {"": 0}
        async with recording("review", thread_id=thread_id, branch=branch):
            return await self.db.execute(_REVIEW, {
                "ns": self.namespace, "thread_id": thread_id, "repo": repo, "branch": branch,
                "approved": approved, "by": by,
                "rules": Jsonb([{"rule": r, "findings": n} for r, n in sorted(given.items())])})
        return 0

    # -- readers -----------------------------------------------------------------------------

    async def healing_evidence(self, service: str, issue: str) -> dict[str, tuple[int, int]]:
        """``{action_key: (verified, not verified)}`` of the attempts at ``issue`` on
        ``service``: what the runbook's order learns from."""
        rows = await self.db.fetch(
            "SELECT action_key, count(*) FILTER (WHERE verified) AS ok, "
            "count(*) FILTER (WHERE NOT verified) AS failed FROM learn_healing "
            "WHERE namespace = %s AND service = %s AND issue = %s GROUP BY action_key",
            (self.namespace, service, issue))
        return {r["action_key"]: (int(r["ok"]), int(r["failed"])) for r in rows}

    async def healing_stats(self, *, service: str | None = None,
                            kind: str | None = None) -> list[Row]:
        """Per (service, issue, action_key): ``attempts``, ``verified``, ``failed``,
        ``success_rate`` (verified / attempts), ``manual`` (attempts a person chose),
        ``median_recover_s`` (None when never healed), ``last_at`` (ISO); filtered by
        ``service`` and issue ``kind`` when given; sorted by service, issue, then the best
        success rate first."""
        rows = await self.db.fetch(
            "SELECT service, issue, action_key, count(*) AS attempts, "
            "count(*) FILTER (WHERE verified) AS verified, "
            "count(*) FILTER (WHERE NOT verified) AS failed, "
            "count(*) FILTER (WHERE manual) AS manual, "
            "percentile_cont(0.5) WITHIN GROUP (ORDER BY recover_s) AS median_recover_s, "
            "max(recorded_at) AS last_at FROM learn_healing WHERE namespace = %(ns)s "
            "AND (%(service)s::text IS NULL OR service = %(service)s) "
            "AND (%(kind)s::text IS NULL OR issue = %(kind)s) "
            "GROUP BY service, issue, action_key",
            {"ns": self.namespace, "service": service, "kind": kind})
        stats = [{**r, "success_rate": r["verified"] / r["attempts"],
                  "last_at": r["last_at"].isoformat()} for r in rows]
        return sorted(stats, key=lambda r: (r["service"], r["issue"], -r["success_rate"],
                                            r["action_key"]))

    async def call_stats(self, *, agent_type: str | None = None,
                         request_type: str | None = None) -> list[Row]:
        """Per (agent_type, request_type): ``calls``, ``statuses`` ({status: count}),
        ``error_rate`` (share not ``success``), ``mean_ms``, ``p50_ms``, ``p95_ms``; filtered
        when given; sorted by agent type and request type. Calls still queued in a process's
        writer are not in it yet (:func:`flush_calls`)."""
        params = {"ns": self.namespace, "agent": agent_type, "request": request_type}
        where = ("WHERE namespace = %(ns)s AND (%(agent)s::text IS NULL OR agent_type = %(agent)s) "
                 "AND (%(request)s::text IS NULL OR request_type = %(request)s)")
        rows = await self.db.fetch(
            "SELECT agent_type, request_type, count(*) AS calls, avg(ms) AS mean_ms, "
            "percentile_cont(0.5) WITHIN GROUP (ORDER BY ms) AS p50_ms, "
            "percentile_cont(0.95) WITHIN GROUP (ORDER BY ms) AS p95_ms "
            f"FROM learn_calls {where} GROUP BY agent_type, request_type "  # noqa: S608
            "ORDER BY agent_type, request_type", params)
        statuses: dict[tuple[str, str], dict[str, int]] = {}
        for r in await self.db.fetch(
                "SELECT agent_type, request_type, status, count(*) AS n "
                f"FROM learn_calls {where} GROUP BY 1, 2, 3", params):  # noqa: S608
            statuses.setdefault((r["agent_type"], r["request_type"]), {})[r["status"]] = r["n"]
        out = []
        for r in rows:
            counts = statuses.get((r["agent_type"], r["request_type"]), {})
            out.append({**r, "statuses": dict(sorted(counts.items())),
                        "error_rate": 1 - counts.get("success", 0) / r["calls"]})
        return out

    async def canary_stats(self, *, deployment: str | None = None) -> list[Row]:
        """Per deployment: ``rollouts`` (ended), ``completed``, ``rolled_back``,
        ``observations`` ({verdict: count} of the stage observations), ``last_rollback``
        (``{"percent", "mode", "reason", "at"}`` of the latest, or None); sorted by name."""
        params = {"ns": self.namespace, "dep": deployment}
        where = "WHERE namespace = %(ns)s AND (%(dep)s::text IS NULL OR deployment = %(dep)s)"
        rows = await self.db.fetch(
            "SELECT deployment, event, verdict, count(*) AS n FROM learn_canary "
            f"{where} GROUP BY 1, 2, 3", params)  # noqa: S608
        last = await self.db.fetch(
            "SELECT DISTINCT ON (deployment) deployment, percent, mode, reason, recorded_at "
            f"FROM learn_canary {where} AND event = 'end' AND verdict = 'rolled_back' "  # noqa: S608
            "ORDER BY deployment, recorded_at DESC", params)
        found: dict[str, dict[str, Any]] = {}
        for r in rows:
            dep = found.setdefault(r["deployment"], {
                "deployment": r["deployment"], "rollouts": 0, "completed": 0,
                "rolled_back": 0, "observations": {}, "last_rollback": None})
            if r["event"] == "end":
                dep["rollouts"] += r["n"]
                if r["verdict"] in ("completed", "rolled_back"):
                    dep[r["verdict"]] += r["n"]
            else:
                dep["observations"][r["verdict"]] = r["n"]
        for r in last:
            found[r["deployment"]]["last_rollback"] = {
                "percent": r["percent"], "mode": r["mode"], "reason": r["reason"],
                "at": r["recorded_at"].isoformat()}
        return [found[k] for k in sorted(found)]

    async def review_stats(self, *, repo: str | None = None) -> list[Row]:
        """Per review rule (``''``: reviews that found nothing): ``answers``, ``overridden``
        (approved in spite of it), ``upheld`` (rejected), ``override_rate``, ``findings``
        (total); sorted by the most answers first."""
        rows = await self.db.fetch(
            "SELECT rule, count(*) AS answers, count(*) FILTER (WHERE approved) AS overridden, "
            "count(*) FILTER (WHERE NOT approved) AS upheld, sum(findings) AS findings "
            "FROM learn_reviews WHERE namespace = %(ns)s "
            "AND (%(repo)s::text IS NULL OR repo = %(repo)s) GROUP BY rule",
            {"ns": self.namespace, "repo": repo})
        out = [{**r, "findings": int(r["findings"] or 0),
                "override_rate": r["overridden"] / r["answers"]} for r in rows]
        return sorted(out, key=lambda r: (-r["answers"], r["rule"]))

    async def forget(self, *, service: str | None = None) -> dict[str, int]:
        """Delete what was learned: ``service``'s healing records, or (None) every record of
        these tables in the namespace. Returns the rows deleted per table."""
        if service is not None:
            n = await self.db.execute(
                "DELETE FROM learn_healing WHERE namespace = %s AND service = %s",
                (self.namespace, service))
            return {"learn_healing": n}
        deleted = {}
        for table in ("learn_healing", "learn_calls", "learn_canary", "learn_reviews"):
            deleted[table] = await self.db.execute(
                f"DELETE FROM {table} WHERE namespace = %s", (self.namespace,))  # noqa: S608
        return deleted


async def run_store() -> tuple[LearningStore, str] | None:
    """The store of the graph run in progress and its thread id, or None outside a run (a
    node called directly): then there is nothing to record with."""
    from langgraph.config import get_config

    from orchestrator.runtime import current_runtime

    try:
        runtime = await current_runtime()
        thread_id = get_config().get("configurable", {}).get("thread_id")
    except RuntimeError:  # WrongContext is one; so is get_config outside a node
        return None
    if not thread_id:
        return None
    return LearningStore(runtime.db, runtime.settings.namespace), str(thread_id)


# -- agent calls: the background batched writer ---------------------------------------------

_CALLS = """
INSERT INTO learn_calls (namespace, thread_id, agent_type, request_type, request_id, attempt,
                         status, ms, recorded_at)
SELECT %(ns)s, r.thread_id, r.agent_type, r.request_type, r.request_id, r.attempt, r.status,
       r.ms, to_timestamp(r.at)
FROM jsonb_to_recordset(%(rows)s::jsonb) AS r(thread_id text, agent_type text,
    request_type text, request_id text, attempt integer, status text, ms double precision,
    at double precision)
ON CONFLICT (namespace, request_id, attempt, status) DO NOTHING
"""
_CALL_FIELDS = ("thread_id", "agent_type", "request_type", "request_id", "attempt", "status",
                "ms", "at")
_Call = tuple[str | None, str, str, str, int, str, float, float]


class CallRecorder:
    """Queues agent-call records and writes them in batches from one background task.

    :meth:`add` only appends to a list (and starts the writer when none runs): the call's
    path never waits on the database. The writer writes up to ``batch_size`` rows in one
    statement, ``linger`` seconds after the first queued row (so a burst of calls shares a
    statement). While the database is away the rows stay queued and the write is tried again
    with a backoff; beyond ``capacity`` queued rows new ones are dropped and counted, as is a
    batch the database refuses (each row then tried alone) or one whose pool closed.
    """

    linger = 0.05
    batch_size = 500
    capacity = 20_000
    max_backoff = 5.0

    def __init__(self, db: Database, namespace: str) -> None:
        self.db = db
        self.namespace = namespace
        self._queue: list[_Call] = []
        self._writer: asyncio.Task[None] | None = None

    def add(self, row: _Call) -> None:
        if len(self._queue) >= self.capacity:
            RECORD_FAILURES.labels("calls").inc()
            return
        self._queue.append(row)
        if self._writer is None:
            self._writer = asyncio.get_running_loop().create_task(self._run(),
                                                                  name="learn-calls-writer")

    async def flush(self) -> None:
        """Wait until what is queued now is written (or given up)."""
        while self._writer is not None:
            await asyncio.shield(self._writer)

    async def _run(self) -> None:
        pause = 0.05
        try:
            while self._queue:
                await asyncio.sleep(self.linger)
                batch, self._queue = self._queue[:self.batch_size], self._queue[self.batch_size:]
                try:
                    await self._write(batch)
                    pause = 0.05
                except PoolClosed:  # the process is closing: nothing can write them now
                    RECORD_FAILURES.labels("calls").inc(len(batch) + len(self._queue))
                    log.warning("%d agent call record(s) not written: the database pool "
                                "closed", len(batch) + len(self._queue))
                    self._queue = []
                except OperationalError as exc:  # the database is away: tried again
                    self._queue[:0] = batch
                    log.warning("writing %d agent call record(s) failed (%s); trying again "
                                "in %.2fs", len(batch), exc, pause)
                    await asyncio.sleep(pause)
                    pause = min(pause * 2, self.max_backoff)
                except Exception:  # a row the database refuses: not the others with it
                    for row in batch:
                        async with recording("calls", request_id=row[3]):
                            await self._write([row])
        finally:
            self._writer = None

    async def _write(self, batch: list[_Call]) -> None:
        rows = [dict(zip(_CALL_FIELDS, row, strict=True)) for row in batch]
        await self.db.execute(_CALLS, {"ns": self.namespace,
                                       "rows": Jsonb(rows, dumps=json.dumps)})


_recorders: weakref.WeakKeyDictionary[Runtime, CallRecorder] = weakref.WeakKeyDictionary()


def record_call(rt: Runtime, request: AgentRequest, status: str, seconds: float) -> None:
    """Queue the record of an agent call (``call_agent``'s hook: synchronous, no I/O, never
    raises)."""
    try:
        recorder = _recorders.get(rt)
        if recorder is None:
            recorder = _recorders[rt] = CallRecorder(rt.db, rt.settings.namespace)
        recorder.add((request.correlation_id, request.target, request.request_type,
                      request.request_id, request.attempt, status, seconds * 1000.0,
                      time.time()))
    except Exception:  # never the call's problem
        RECORD_FAILURES.labels("calls").inc()
        log.exception("queueing an agent call record failed")


async def flush_calls(rt: Runtime) -> None:
    """Wait until the agent-call records ``rt`` queued are written."""
    recorder = _recorders.get(rt)
    if recorder is not None:
        await recorder.flush()
