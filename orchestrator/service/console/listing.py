"""The runs list's query: one page of workflows, those that need someone first.

"Needs attention", in this order: waiting for an answer (``interrupted``), dead (the thread's
latest run failed past its attempts), failed, retrying (a queued run that was tried before).
Those come first, the longest waiting on top; then every other workflow, most recently
changed first. One statement: the flags come from the few dead and retried runs (partial
indexes of sql/011) hashed against the page's workflows, so the cost grows with the
namespace's workflows (one index scan and a sort), not with a lookup per row.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from orchestrator.state.db import Database

__all__ = ["ATTENTION", "RunRow", "RunsPage", "list_runs", "run_row"]

#: the attention flags, most urgent first
ATTENTION = ("waiting", "dead", "failed", "retrying")


@dataclass(frozen=True)
class RunRow:
    thread_id: str
    workflow_type: str
    status: str
    current_step: str | None
    attention: str | None
    attempts: int | None
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True)
class RunsPage:
    rows: list[RunRow]
    total: int
    page: int
    size: int

    @property
    def pages(self) -> int:
        return max(1, -(-self.total // self.size))


_FLAGS = """
    flags AS (
        SELECT DISTINCT ON (r.thread_id) r.thread_id,
               CASE WHEN r.status = 'dead' THEN 'dead' ELSE 'retrying' END AS flag, r.attempts
        FROM runs r
        WHERE r.namespace = %(ns)s
          AND (r.status = 'dead' OR (r.status = 'queued' AND r.attempts >= 1))
          -- a dead run replayed since is no longer the thread's trouble
          AND (r.status <> 'dead' OR NOT EXISTS (
                SELECT 1 FROM runs later WHERE later.thread_id = r.thread_id
                AND later.run_id > r.run_id AND later.status <> 'cancelled'))
        ORDER BY r.thread_id, r.run_id DESC
    )"""

_ROWS = """
    SELECT w.thread_id, w.workflow_type, w.status, w.current_step, w.created_at, w.updated_at,
           f.attempts,
           CASE WHEN w.status = 'interrupted' THEN 'waiting'
                WHEN f.flag = 'dead' THEN 'dead'
                WHEN w.status = 'failed' THEN 'failed'
                ELSE f.flag END AS attention
    FROM workflows w LEFT JOIN flags f ON f.thread_id = w.thread_id
    WHERE w.namespace = %(ns)s"""


async def list_runs(db: Database, namespace: str, *, status: str | None = None,
                    workflow: str | None = None, search: str | None = None, page: int = 1,
                    size: int = 50) -> RunsPage:
    """One page of the runs list.

    Args:
        status: a workflow status, or ``attention`` for the runs that need someone.
        workflow: a workflow type.
        search: part of a thread id, or text in the input, result or error.
        page: 1-based.
    """
    where, params = [], {"ns": namespace, "limit": size, "offset": (page - 1) * size}
    if status == "attention":
        where.append("(w.status IN ('interrupted', 'failed') OR f.flag IS NOT NULL)")
    elif status:
        where.append("w.status = %(status)s")
        params["status"] = status
    if workflow:
        where.append("w.workflow_type = %(workflow)s")
        params["workflow"] = workflow
    if search:
        where.append("(w.thread_id ILIKE %(like)s OR w.input::text ILIKE %(like)s "
                     "OR w.result::text ILIKE %(like)s OR w.error::text ILIKE %(like)s)")
        params["like"] = "%" + search.replace("\\", "\\\\").replace("%", "\\%").replace(
            "_", "\\_") + "%"
    filters = "".join(f" AND {w}" for w in where)
    rows = await db.fetch(
        f"""WITH {_FLAGS},
        listed AS ({_ROWS}{filters})
        SELECT *, count(*) OVER () AS total FROM listed
        ORDER BY (attention IS NULL),
                 array_position(ARRAY['waiting','dead','failed','retrying'], attention),
                 CASE WHEN attention IS NOT NULL THEN updated_at END ASC,
                 updated_at DESC, thread_id
        LIMIT %(limit)s OFFSET %(offset)s""",
        params,
    )
    total = int(rows[0]["total"]) if rows else await _count(db, filters, params)
    return RunsPage([_row(r) for r in rows], total, page, size)


async def run_row(db: Database, namespace: str, thread_id: str) -> RunRow | None:
    """One workflow's row of the list (a live update re-renders just that row)."""
    row = await db.fetchone(f"WITH {_FLAGS} {_ROWS} AND w.thread_id = %(thread)s",
                            {"ns": namespace, "thread": thread_id})
    return _row(row) if row else None


async def _count(db: Database, filters: str, params: dict[str, Any]) -> int:
    """The total when the page is past the end (no row carried it)."""
    row = await db.fetchone(f"WITH {_FLAGS} SELECT count(*) AS n FROM ({_ROWS}{filters}) x",
                            params)
    return int(row["n"]) if row else 0


def _row(r: dict[str, Any]) -> RunRow:
    return RunRow(r["thread_id"], r["workflow_type"], r["status"], r["current_step"],
                  r["attention"], r["attempts"], r["created_at"], r["updated_at"])
