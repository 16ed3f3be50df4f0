"""The runs list's query: one page of workflows, those that need someone first.

"Needs attention", in this order: waiting for an answer (``interrupted``), dead (the thread's
latest run failed past its attempts), failed, retrying (a queued run that was tried before).
Those come first, the longest waiting on top; then every other workflow, most recently
changed first. The flags come from the few dead and retried runs (a partial index of
sql/011); the other workflows are read in index order, only as many as the page shows, so a
page costs about the same with 100 workflows or 10,000 (``python -m bench --only console``).
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
    #: a running plan's ETA, as :func:`orchestrator.service.console.learning.eta_of` shows it
    eta: dict[str, Any] | None = None


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


#: a workflow flagged by its runs (dead, or queued again after a failed attempt), per row:
#: the rest of the list reads only the rows it shows, each probing the small partial index
_FLAGGED = """EXISTS (
    SELECT 1 FROM runs r WHERE r.namespace = w.namespace AND r.thread_id = w.thread_id
      AND (r.status = 'dead' OR (r.status = 'queued' AND r.attempts >= 1))
      AND (r.status <> 'dead' OR NOT EXISTS (
            SELECT 1 FROM runs later WHERE later.thread_id = r.thread_id
            AND later.run_id > r.run_id AND later.status <> 'cancelled')))"""


async def list_runs(db: Database, namespace: str, *, status: str | None = None,
                    workflow: str | None = None, search: str | None = None, page: int = 1,
                    size: int = 50) -> RunsPage:
    """One page of the runs list.

    Three light statements instead of one sort of every row: the page's slice of the
    attention rows (few: hashed against the flagged runs), then the rest of the page from the
    other workflows in index order (``updated_at DESC``), then the count.

    Args:
        status: a workflow status, or ``attention`` for the runs that need someone.
        workflow: a workflow type.
        search: part of a thread id, or text in the input, result or error.
        page: 1-based.
    """
    offset = (page - 1) * size
    where, params = [], {"ns": namespace, "limit": size, "offset": offset}
    if status and status != "attention":
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
    attention = f"{_ROWS}{filters} AND (w.status IN ('interrupted', 'failed') OR f.flag IS NOT NULL)"
    flagged = await db.fetch(
        f"""WITH {_FLAGS},
        listed AS ({attention})
        SELECT *, count(*) OVER () AS n FROM listed
        ORDER BY array_position(ARRAY['waiting','dead','failed','retrying'], attention),
                 updated_at ASC, thread_id
        LIMIT %(limit)s OFFSET %(offset)s""",
        params,
    )
    if flagged:
        n_flagged = int(flagged[0]["n"])
    else:
        row = await db.fetchone(f"WITH {_FLAGS} SELECT count(*) AS n FROM ({attention}) x",
                                params)
        n_flagged = int(row["n"]) if row else 0
    if status == "attention":
        return RunsPage([_row(r) for r in flagged], n_flagged, page, size)
    rest_filters = filters + f" AND w.status NOT IN ('interrupted', 'failed') AND NOT {_FLAGGED}"
    rest = await db.fetch(
        f"""SELECT w.thread_id, w.workflow_type, w.status, w.current_step, w.created_at,
                   w.updated_at, NULL::int AS attempts, NULL::text AS attention
            FROM workflows w WHERE w.namespace = %(ns)s{rest_filters}
            ORDER BY w.updated_at DESC, w.thread_id
            LIMIT %(rest_limit)s OFFSET %(rest_offset)s""",
        {**params, "rest_limit": size - len(flagged),
         "rest_offset": max(0, offset - n_flagged)},
    ) if len(flagged) < size else []
    # attention rows and the rest split the filtered rows: count them all, no flag probes
    counted = await db.fetchone(
        f"SELECT count(*) AS n FROM workflows w WHERE w.namespace = %(ns)s{filters}", params)
    total = int(counted["n"]) if counted else 0
    return RunsPage([_row(r) for r in [*flagged, *rest]], total, page, size)


async def run_row(db: Database, namespace: str, thread_id: str) -> RunRow | None:
    """One workflow's row of the list (a live update re-renders just that row)."""
    row = await db.fetchone(f"WITH {_FLAGS} {_ROWS} AND w.thread_id = %(thread)s",
                            {"ns": namespace, "thread": thread_id})
    return _row(row) if row else None


def _row(r: dict[str, Any]) -> RunRow:
    return RunRow(r["thread_id"], r["workflow_type"], r["status"], r["current_step"],
                  r["attention"], r["attempts"], r["created_at"], r["updated_at"])
