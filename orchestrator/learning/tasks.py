"""Plan task outcomes: one ``learn_tasks`` row per attempt of a ``plan_execution`` task, and
the reads the duration estimator (:mod:`orchestrator.learning.durations`) learns from.

Written by the ``work`` node when an attempt ends (:func:`record_attempt`): passed QA,
failed (at development or QA) or taken from the result cache. Once per attempt: the row's key
is (namespace, thread, task, attempt) and the insert does nothing on a conflict, so a node run
again after a crash or a resume adds nothing. A task attempt lasts seconds to minutes, so the
one insert is written at once (not through a batched writer). Recording never fails the run: an
error is logged and counted in ``orchestrator_learning_record_failures_total``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from psycopg.types.json import Jsonb

from orchestrator.learning.store import recording
from orchestrator.runtime import current_runtime
from orchestrator.state.db import Database

__all__ = ["TaskAttempt", "TaskSample", "attempt_of", "insert_attempt", "insert_attempts",
           "kind_samples", "record_attempt", "samples_by_key"]

# the newest successes per key the estimator looks at: old ones stop counting as a file changes
HISTORY = 50


@dataclass(frozen=True)
class TaskAttempt:
    """One attempt of a plan task, as ``learn_tasks`` stores it."""

    thread_id: str
    task_id: str
    attempt: int
    repo: str
    kind: str
    file: str
    size: int
    dependencies: int
    tier: str | None
    seconds: float
    status: str  # passed | failed | cached
    qa_first_time: bool
    request_id: str | None = None  # the developer's request: its ledger row names the prompt


@dataclass(frozen=True)
class TaskSample:
    """A successful attempt's duration, the task's size then, and when it was recorded."""

    seconds: float
    size: int
    recorded_at: datetime


_INSERT = """
INSERT INTO learn_tasks (namespace, thread_id, task_id, attempt, repo, kind, file, size,
                         dependencies, tier, prompt_version, seconds, status, qa_first_time)
SELECT %(namespace)s, r.thread_id, r.task_id, r.attempt, r.repo, r.kind, r.file, r.size,
       r.dependencies, r.tier,
       (SELECT prompt FROM model_calls m WHERE m.request_id = r.request_id
         ORDER BY m.id DESC LIMIT 1),
       r.seconds, r.status, r.qa_first_time
  FROM jsonb_to_recordset(%(rows)s::jsonb) AS r(
       thread_id text, task_id text, attempt integer, repo text, kind text, file text,
       size integer, dependencies integer, tier text, seconds double precision, status text,
       qa_first_time boolean, request_id text)
ON CONFLICT (namespace, thread_id, task_id, attempt) DO NOTHING
"""


async def insert_attempts(db: Database, namespace: str, attempts: Iterable[TaskAttempt]) -> int:
    """Store attempts in one statement; how many were new (one stored before, by a node run
    again, is left as it is). The prompt version is looked up from the ledger row of the
    attempt's developer request (``model_calls``), when a model wrote it."""
    rows = [attempt.__dict__ for attempt in attempts]
    if not rows:
        return 0
    return await db.execute(_INSERT, {"namespace": namespace, "rows": Jsonb(rows)})


async def insert_attempt(db: Database, namespace: str, attempt: TaskAttempt) -> bool:
    """Store one attempt; False when it was already stored (the node ran again)."""
    return await insert_attempts(db, namespace, [attempt]) == 1


def attempt_of(job: Mapping[str, Any], record: Mapping[str, Any],
               request_id: str | None = None) -> TaskAttempt:
    """The :class:`TaskAttempt` of a ``work`` job (what dispatch sent) and the attempt's
    record in the task's state (``n``, ``outcome``, ``cache_hit``, ``seconds``)."""
    task = job["task"]
    status = ("cached" if record.get("cache_hit") else
              "passed" if record["outcome"] == "passed" else "failed")
    return TaskAttempt(
        thread_id=str(job.get("thread_id") or ""), task_id=task["id"], attempt=int(record["n"]),
        repo=job["repo"], kind=task["kind"], file=task["file"], size=int(job.get("size") or 0),
        dependencies=len((job.get("record") or {}).get("deps") or []), tier=job.get("tier"),
        seconds=max(float(record["seconds"]), 0.0), status=status,
        qa_first_time=status == "passed" and int(record["n"]) == 1, request_id=request_id)


async def record_attempt(job: Mapping[str, Any], record: Mapping[str, Any],
                         request_id: str | None = None) -> None:
    """Store the attempt of a ``work`` job in the run's database; never raises (an error is
    logged and counted under ``task``: learning must not fail the run)."""
    async with recording("task", thread=job.get("thread_id"), task=job["task"].get("id"),
                         attempt=record.get("n")):
        rt = await current_runtime()
        await insert_attempt(rt.db, rt.settings.namespace, attempt_of(job, record, request_id))


async def samples_by_key(db: Database, namespace: str, repo: str,
                         keys: Iterable[tuple[str, str]]) -> dict[tuple[str, str],
                                                                 list[TaskSample]]:
    """The newest successful durations (at most ``HISTORY``) of each ``(kind, file)`` of
    ``repo``, newest first."""
    keys = sorted(set(keys))
    if not keys:
        return {}
    rows = await db.fetch(
        """
        SELECT k.kind, k.file, s.seconds, s.size, s.recorded_at
          FROM unnest(%s::text[], %s::text[]) AS k(kind, file)
          CROSS JOIN LATERAL (
                SELECT seconds, size, recorded_at FROM learn_tasks t
                 WHERE t.namespace = %s AND t.repo = %s AND t.kind = k.kind
                   AND t.file = k.file AND t.status = 'passed'
                 ORDER BY t.recorded_at DESC, t.id DESC LIMIT %s) AS s
        """,
        ([k for k, _ in keys], [f for _, f in keys], namespace, repo, HISTORY))
    out: dict[tuple[str, str], list[TaskSample]] = {key: [] for key in keys}
    for row in rows:
        out[(row["kind"], row["file"])].append(
            TaskSample(row["seconds"], row["size"], row["recorded_at"]))
    return out


async def kind_samples(db: Database, namespace: str, repo: str,
                       kinds: Iterable[str]) -> dict[str, list[float]]:
    """Per kind, the median successful duration of each file of ``repo`` (one value per
    file, so a file done often does not stand for the whole kind)."""
    kinds = sorted(set(kinds))
    if not kinds:
        return {}
    rows = await db.fetch(
        """
        SELECT kind, percentile_cont(0.5) WITHIN GROUP (ORDER BY seconds) AS seconds
          FROM learn_tasks
         WHERE namespace = %s AND repo = %s AND kind = ANY(%s) AND status = 'passed'
         GROUP BY kind, file
        """, (namespace, repo, kinds))
    out: dict[str, list[float]] = {kind: [] for kind in kinds}
    for row in rows:
        out[row["kind"]].append(float(row["seconds"]))
    return out
