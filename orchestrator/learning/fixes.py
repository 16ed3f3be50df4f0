"""Fix outcomes (table ``learn_fixes``, sql/015): what QA found, how the developer fixed it,
with which prompt version and tier, and whether QA then passed the file; and the past fixes
most like a failure at hand.

``plan_execution``'s work node (``orchestrator.workflows.plan_work``) calls two functions:

* :func:`similar_for_job` before a fix attempt: the repository's past failures most similar
  to the one QA just found (trigram similarity, :mod:`orchestrator.learning.similar`) that
  were fixed, with their diff and the prompt version that fixed them; the fix request carries
  them to the developer (``Develop.similar``), whose prompt shows them.
* :func:`record_fix_for_job` once the fix attempt's QA result is known: one row per attempt
  (natural key: namespace, thread, task, attempt; ``ON CONFLICT DO NOTHING``, so a node run
  again after a crash or resume records once).

Neither ever fails the workflow: a write error is logged and counted
(``orchestrator_learning_record_failures_total``), a read error logged, and the fix goes on
without past fixes.
``orchestrator learn stats`` reads :func:`fix_stats`; ``orchestrator learn reset`` calls
:func:`reset_fixes`.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from orchestrator.learning.similar import failure_key, rank, trgm_available
from orchestrator.learning.store import recording
from orchestrator.state.db import Database

__all__ = ["failure_text", "fix_stats", "record_fix", "record_fix_for_job",
           "repo_key", "reset_fixes", "similar_fixes", "similar_for_job"]

log = logging.getLogger(__name__)

#: how much of a failure is kept and compared; how many past fixes a request carries
_FAILURE_CHARS, _OUTPUT_TAIL = 4_000, 1_500
LIMIT, MIN_SCORE = 3, 0.25
#: the newest fixed failures of a repository compared in Python (a few thousand: milliseconds)
_CANDIDATES = 2_000


def failure_text(evidence: dict[str, Any] | None) -> str:
    """What QA found, as one text: the reason, each finding (code and message), the failing
    tests and the end of their output (4,000 characters at most)."""
    evidence = evidence or {}
    lines = [str(evidence.get("reason") or "")]
    for finding in evidence.get("findings") or []:
        if isinstance(finding, dict):
            lines.append(f"{finding.get('code') or ''} {finding.get('message') or ''}".strip())
    tests = evidence.get("tests")
    if isinstance(tests, dict):
        lines.extend(str(f) for f in tests.get("failures") or [])
        lines.append(str(tests.get("output_tail") or "")[-_OUTPUT_TAIL:])
    return "\n".join(line for line in lines if line)[:_FAILURE_CHARS]


def repo_key(repo: str) -> str:
    """How a repository is keyed in the records: its resolved path."""
    return os.path.realpath(repo)


async def similar_fixes(db: Database, namespace: str, repo: str, failure: str, *,
                        limit: int = LIMIT, min_score: float = MIN_SCORE,
                        backend: str = "auto") -> list[dict[str, Any]]:
    """The repository's fixed failures most similar to ``failure``, most similar first: dicts
    in the shape of ``orchestrator.contracts.developer.PastFix``.

    Args:
        backend: ``python`` compares trigram sets here over the newest 2,000 fixed failures;
            ``trgm`` has PostgreSQL's ``pg_trgm`` do it over all of them (the same figure);
            ``auto`` uses ``pg_trgm`` when it is installed, else Python.
    """
    repo = repo_key(repo)
    key = failure_key(failure, repo=repo)
    if backend == "auto":
        backend = "trgm" if await trgm_available(db) else "python"
    if backend == "trgm":
        rows = await db.fetch(
            """SELECT file, kind, failure, fix, prompt, tier, first_time,
                      similarity(failure_key, %(key)s) AS score
               FROM learn_fixes
               WHERE namespace = %(ns)s AND repo = %(repo)s AND fixed
                 AND similarity(failure_key, %(key)s) >= %(min)s
               ORDER BY score DESC, recorded_at DESC, id DESC LIMIT %(limit)s""",
            {"ns": namespace, "repo": repo, "key": key, "min": min_score, "limit": limit})
        return [{**r, "score": round(float(r["score"]), 4)} for r in rows]
    if backend != "python":
        raise ValueError(f"backend {backend!r}: use auto, python or trgm")
    rows = await db.fetch(
        """SELECT file, kind, failure, failure_key, fix, prompt, tier, first_time
           FROM learn_fixes WHERE namespace = %s AND repo = %s AND fixed
           ORDER BY recorded_at DESC, id DESC LIMIT %s""",
        (namespace, repo, _CANDIDATES))
    best = rank(key, rows, text=lambda r: r["failure_key"], limit=limit, min_score=min_score)
    return [{**{k: v for k, v in s.item.items() if k != "failure_key"},
             "score": round(s.score, 4)} for s in best]


async def record_fix(db: Database, namespace: str, *, thread_id: str, task_id: str,
                     attempt: int, repo: str, file: str, kind: str | None, failure: str,
                     fix: str, action: str | None, prompt: str | None, tier: str | None,
                     model: str | None, fixed: bool, first_time: bool) -> bool:
    """Record one fix attempt's outcome; False when it was recorded already (a re-run).
    ``first_time`` counts only for a fix that ``fixed`` the file."""
    repo = repo_key(repo)
    touched = await db.execute(
        """INSERT INTO learn_fixes (namespace, thread_id, task_id, attempt, repo, file, kind,
                                    failure, failure_key, fix, action, prompt, tier, model,
                                    fixed, first_time)
           VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)
           ON CONFLICT (namespace, thread_id, task_id, attempt) DO NOTHING""",
        (namespace, thread_id, task_id, attempt, repo, file, kind, failure[:_FAILURE_CHARS],
         failure_key(failure, repo=repo), fix, action, prompt, tier, model, fixed,
         fixed and first_time))
    return touched == 1


def _fix_number(record: dict[str, Any]) -> int:
    """Which fix of the current failure this attempt is: 1 + the failed attempts since the
    last one that passed (a task's attempts as plan_execution records them)."""
    failed = 0
    for earlier in reversed(record.get("attempts") or []):
        if earlier.get("outcome") != "failed":
            break
        failed += 1
    return max(failed, 1)


async def similar_for_job(job: dict[str, Any]) -> list[dict[str, Any]]:
    """For a work job that is a fix (it carries QA's evidence): the repository's past fixes
    most like this failure; [] for a first attempt, or when they cannot be read."""
    if not job.get("evidence"):
        return []
    from orchestrator.runtime import current_runtime

    try:
        rt = await current_runtime()
        return await similar_fixes(rt.db, rt.settings.namespace, job["repo"],
                                   failure_text(job["evidence"]))
    except Exception:  # noqa: BLE001 - a fix without past fixes is still a fix
        log.exception("past fixes for task %s of %s could not be read",
                      job["task"].get("id"), job.get("thread_id"))
        return []


async def record_fix_for_job(job: dict[str, Any], develop: dict[str, Any] | None, *,
                             fixed: bool) -> None:
    """Record the outcome of a work job that was a fix, once QA has checked it (``fixed``:
    QA passed the file). Nothing for a first attempt or a develop step that did not fix
    (no ``develop`` result); never raises."""
    if not job.get("evidence") or not develop:
        return
    from orchestrator.runtime import current_runtime

    task = job["task"]
    async with recording("fix", thread=job.get("thread_id"), task=task.get("id")):
        rt = await current_runtime()
        await record_fix(
            rt.db, rt.settings.namespace, thread_id=str(job.get("thread_id") or ""),
            task_id=str(task.get("id") or task["file"]), attempt=int(job["attempt"]),
            repo=job["repo"], file=task["file"], kind=task.get("kind"),
            failure=failure_text(job["evidence"]),
            fix=develop.get("diff") or develop.get("detail") or "",
            action=develop.get("action"), prompt=develop.get("prompt"),
            tier=develop.get("tier") or job.get("tier"), model=develop.get("model"),
            fixed=fixed, first_time=fixed and _fix_number(job.get("record") or {}) == 1)


_WHERE = """namespace = %(ns)s AND (%(repo)s::text IS NULL OR repo = %(repo)s)
            AND (%(kind)s::text IS NULL OR kind = %(kind)s)"""


async def fix_stats(db: Database, namespace: str, *, repo: str | None = None,
                    kind: str | None = None) -> dict[str, list[dict[str, Any]]]:
    """Fix success rates grouped by prompt version, by tier and by task kind: per group the
    attempts, how many fixed the file, how many at the first try, and the two rates.
    A fix made without a model counts under the prompt ``(no model)``."""
    found: dict[str, list[dict[str, Any]]] = {}
    for by, column in (("prompt", "coalesce(prompt, '(no model)')"),
                       ("tier", "coalesce(tier, '-')"), ("kind", "coalesce(kind, '-')")):
        rows = await db.fetch(
            f"""SELECT {column} AS key, count(*) AS attempts,
                       count(*) FILTER (WHERE fixed) AS fixed,
                       count(*) FILTER (WHERE first_time) AS first_time
                FROM learn_fixes WHERE {_WHERE} GROUP BY 1 ORDER BY 1""",
            {"ns": namespace, "repo": repo and repo_key(repo), "kind": kind})
        found[by] = [{by: r["key"], "attempts": r["attempts"], "fixed": r["fixed"],
                      "first_time": r["first_time"],
                      "fixed_rate": round(r["fixed"] / r["attempts"], 4),
                      "first_time_rate": round(r["first_time"] / r["attempts"], 4)}
                     for r in rows]
    return found


async def reset_fixes(db: Database, namespace: str, *, repo: str | None = None) -> int:
    """Forget the recorded fixes of the namespace (of one repository with ``repo``);
    returns how many rows went."""
    return await db.execute(
        "DELETE FROM learn_fixes WHERE namespace = %s AND (%s::text IS NULL OR repo = %s)",
        (namespace, repo and repo_key(repo), repo and repo_key(repo)))
