"""Fenced writes: a runner that lost a run's lease can no longer write for its thread.

A runner executes a run under ``(run_id, lease_epoch, runner)``; every claim of the run bumps
the epoch. While it executes, :func:`fenced` sets that :class:`Fence` for the task, and every
checkpoint write (:class:`orchestrator.state.checkpointer.FencedSaver`) and workflow-row update
(:meth:`orchestrator.state.store.WorkflowStateManager.update`) runs ``orchestrator_fence()``
(``sql/006_runs.sql``) in the write's own transaction, before it writes anything: the run must
still be ``running`` under that runner and epoch with an unexpired lease. If not, the
transaction is rolled back and the write refused with :class:`LeaseLost`, logged and counted
(``orchestrator_fenced_writes_refused_total``). The check holds a share lock on the run's row
until the write commits, so a takeover (sweep, then a claim with a new epoch) happens wholly
before or wholly after each write.

Each write is one statement that checks and writes: ``orchestrator_fence(...)``
(``FENCE_CALL``) is a ``FROM`` item of the workflow row's ``UPDATE`` and of the checkpoint
writes the saver sends as one statement (:mod:`orchestrator.state.checkpointer`). A saver write
of another shape goes as a pipeline (one implicit transaction) on :meth:`Fence.cursor`, whose
first statement carries the check: folded into an ``INSERT ... VALUES (...)`` as ``INSERT ...
SELECT ... FROM orchestrator_fence(...)``, or sent before any other statement.

A run's last write (its workflow's final status) also ends the run, in the same statement
(:meth:`Fence.ending`): the runner then has nothing more to record.

Outside the service no fence is set and writes are exactly as before.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import psycopg
from psycopg import sql

from orchestrator.errors import LeaseLost
from orchestrator.metrics import FENCED_WRITES_REFUSED
from orchestrator.state.store import WRITE_FENCE

from .queue import end_run, run_status

if TYPE_CHECKING:
    from .queue import RunRecord

__all__ = ["Fence", "fenced", "FENCE_SQLSTATE"]

log = logging.getLogger(__name__)

#: What ``orchestrator_fence()`` raises when the lease is not held.
FENCE_SQLSTATE = "OF001"
_CHECK = "SELECT orchestrator_fence({}, {}, {})"
# An INSERT whose rows are one VALUES list of placeholders (LangGraph's saver's statements)
_INSERT_VALUES = re.compile(r"(\s*INSERT\s+INTO\s+\w+\s*\([^)]*\))\s*VALUES\s*"
                            r"\(((?:\s*%s\s*,)*\s*%s\s*)\)(.*)", re.S | re.I)


@dataclass(eq=False)
class Fence:
    """The lease a runner executes one run under."""

    thread_id: str
    run_id: int
    epoch: int
    runner: str
    #: the run's namespace (its runners are told when it ends); needed by :meth:`ending`
    namespace: str | None = None
    #: the outcome recorded by the write that ended the run (:meth:`ended`), if one did
    ended_as: str | None = field(default=None, init=False)

    @classmethod
    def of(cls, run: RunRecord, runner: str) -> Fence:
        """The fence of ``run`` as ``runner`` claimed it."""
        return cls(run.thread_id, run.run_id, run.lease_epoch, runner, run.namespace)

    @property
    def params(self) -> tuple[int, int, str]:
        """The parameters of ``FENCE_CALL`` (:mod:`orchestrator.state.store`)."""
        return self.run_id, self.epoch, self.runner

    async def check(self, cur: psycopg.AsyncCursor[Any]) -> None:
        """Send the check on ``cur``: a statement of literals made once per run, so each write
        pays no parameter conversion for it (the client's CPU is what a fenced write costs)."""
        await cur.execute(self._check)

    @functools.cached_property
    def _check(self) -> bytes:
        return sql.SQL(_CHECK).format(sql.Literal(self.run_id), sql.Literal(self.epoch),
                                      sql.Literal(self.runner)).as_bytes()

    @functools.cached_property
    def _fenced_queries(self) -> dict[str, str | None]:
        return {}

    def fenced_query(self, query: str) -> str | None:
        """``query`` with the check folded in, when it is an ``INSERT ... VALUES (%s, ...)``:
        its row is selected from ``orchestrator_fence(...)`` (one row, or the error), so the
        statement checks the lease before it writes. None for any other statement."""
        cache = self._fenced_queries
        if query not in cache:
            found = _INSERT_VALUES.fullmatch(query)
            call = self._check.decode()[len("SELECT "):].replace("%", "%%")
            cache[query] = (f"{found.group(1)} SELECT {found.group(2)} FROM {call} AS fence"
                            f"{found.group(3)}" if found else None)
        return cache[query]

    def cursor(self, cur: psycopg.AsyncCursor[Any]) -> _FencingCursor:
        """``cur`` (in a pipeline: one implicit transaction) with its first write checking the
        lease: folded into the statement when :meth:`fenced_query` can, else sent before it."""
        return _FencingCursor(cur, self)

    def ending(self, outcome: str) -> tuple[str, tuple[Any, ...]]:
        """The CTEs (and their parameters) that end the run, its workflow left ``outcome``,
        in the statement of the workflow's last write: that write is a CTE ``wf`` returning
        the row, and the run ends only when it does (the fence's check, a ``FROM`` item of
        ``wf``, holds the run's row until the statement commits)."""
        if self.namespace is None:
            raise ValueError(f"the fence of run {self.run_id} has no namespace: make it with "
                             "Fence.of(run, runner) to end the run in its last write")
        return (end_run(after=" AND EXISTS (SELECT 1 FROM wf)"),
                (run_status(outcome), outcome, self.run_id, self.runner, self.epoch,
                 self.namespace))

    def ended(self, outcome: str) -> None:
        """Note that a write ended the run, leaving its workflow ``outcome``."""
        self.ended_as = outcome

    def refusal(self, exc: BaseException, what: str) -> LeaseLost | None:
        """``LeaseLost`` (counted, logged) when ``exc`` is the check's refusal, else None."""
        if not isinstance(exc, psycopg.Error) or exc.sqlstate != FENCE_SQLSTATE:
            return None
        FENCED_WRITES_REFUSED.labels(what).inc()
        log.warning("refused a %s write of workflow %s: run %s no longer holds its lease "
                    "(epoch %s, runner %s)", what, self.thread_id, self.run_id, self.epoch,
                    self.runner)
        return LeaseLost(self.thread_id, self.run_id, self.epoch)


class _FencingCursor:
    """A cursor whose first statement checks a :class:`Fence` (see :meth:`Fence.cursor`); the
    statements after it run in the same transaction, under the share lock the check took."""

    def __init__(self, cur: psycopg.AsyncCursor[Any], fence: Fence) -> None:
        self._cur = cur
        self._fence = fence
        self._checked = False

    def __getattr__(self, name: str) -> Any:
        return getattr(self._cur, name)

    async def _first(self, query: Any) -> Any:
        self._checked = True
        fenced = self._fence.fenced_query(query) if isinstance(query, str) else None
        if fenced is None:
            await self._fence.check(self._cur)
            return query
        return fenced

    async def execute(self, query: Any, params: Any = None, **kwargs: Any) -> Any:
        if not self._checked:
            if params is None:  # no placeholders to fold the check into: it goes first
                self._checked = True
                await self._fence.check(self._cur)
            else:
                query = await self._first(query)
        return await self._cur.execute(query, params, **kwargs)

    async def executemany(self, query: Any, params_seq: Any, **kwargs: Any) -> Any:
        if not self._checked:
            params_seq = list(params_seq)
            if params_seq:  # no rows, no statement: the next one checks
                query = await self._first(query)
        return await self._cur.executemany(query, params_seq, **kwargs)


@contextlib.contextmanager
def fenced(fence: Fence) -> Iterator[None]:
    """Fence every checkpoint and workflow write made in this context (and the tasks it
    starts) with ``fence``."""
    token = WRITE_FENCE.set(fence)
    try:
        yield
    finally:
        WRITE_FENCE.reset(token)
