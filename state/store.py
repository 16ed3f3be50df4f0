"""The ``workflows`` table: an index of runs with optimistic locking, and named checkpoints.

Every update names the version it read; if someone else updated first, the update changes
nothing and raises :class:`StaleWorkflowVersion`.
"""

from __future__ import annotations

import logging
from contextvars import ContextVar
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal, Protocol

import psycopg
from orchestrator.state.db import Database, Row
from orchestrator.state.errors import (
    CheckpointNotFound,
    StaleWorkflowVersion,
    WorkflowExists,
    WorkflowNotFound,
)
from psycopg.types.json import Jsonb

__all__ = ["WorkflowRecord", "WorkflowStateManager", "WorkflowStatus", "NamedCheckpoint",
           "WriteFence", "WRITE_FENCE", "FENCE_CALL", "INSERT_WORKFLOW"]

log = logging.getLogger(__name__)

# queued: submitted to `orchestrator serve`, no runner has started it yet
WorkflowStatus = Literal["queued", "running", "interrupted", "completed", "failed", "cancelled"]
STATUSES: tuple[str, ...] = ("queued", "running", "interrupted", "completed", "failed",
                             "cancelled")


class WriteFence(Protocol):
    """What every write made for a thread checks first, in the write's own transaction: the
    lease of the service's run that executes the thread
    (:class:`orchestrator.service.fencing.Fence`)."""

    @property
    def params(self) -> tuple[Any, ...]:
        """The parameters of :data:`FENCE_CALL`."""
        ...

    async def check(self, cur: Any) -> None:
        """Send the fence's check on ``cur``, first in the caller's pipeline (its writes
        follow on the same cursor)."""
        ...

    def cursor(self, cur: Any) -> Any:
        """``cur`` (in the caller's pipeline) with its first write checking the fence."""
        ...

    def refusal(self, exc: BaseException, what: str) -> BaseException | None:
        """The error to raise instead of ``exc`` when ``exc`` is the check's refusal (counted
        and logged); ``None`` for any other error."""
        ...

    def ending(self, outcome: str) -> tuple[str, tuple[Any, ...]]:
        """CTEs (and their parameters) that end the fenced run, its workflow left
        ``outcome``, after a CTE ``wf`` (the workflow's last write) and only if it wrote."""
        ...

    def ended(self, outcome: str) -> None:
        """Told that a write ended the run (with the CTEs of :meth:`ending`)."""
        ...


#: The check as a ``FROM`` item of a write's own statement (with :attr:`WriteFence.params`):
#: one row when the run's lease still holds, else it raises (``sql/006_runs.sql``), taking
#: a share lock on the run's row until the write commits.
FENCE_CALL = "orchestrator_fence(%s::bigint, %s::bigint, %s::text)"

#: A new workflow row at version 1 (thread id, namespace, type, status, input, owner); nothing
#: when the thread id is taken. Also the first half of the service's submit (one statement
#: with its run: :meth:`orchestrator.service.queue.RunQueue.submit`).
INSERT_WORKFLOW = """
    INSERT INTO workflows (thread_id, namespace, workflow_type, status, input, owner,
                           heartbeat_at)
    VALUES (%s, %s, %s, %s, %s, %s, now())
    ON CONFLICT (thread_id) DO NOTHING"""

#: The fence of the run the current task executes, set by the service around a run; ``None``
#: everywhere else (the CLI, Python use), where writes are unfenced.
WRITE_FENCE: ContextVar[WriteFence | None] = ContextVar("orchestrator_write_fence", default=None)

WORKFLOW_COLUMNS = _COLUMNS = (
    "thread_id, namespace, workflow_type, status, current_step, participating_agents, input, "
    "result, error, owner, heartbeat_at, version, created_at, updated_at, attempt"
)
# the columns an UPDATE ... FROM returns (qualified: the FROM item has columns of its own)
_UPDATED_COLUMNS = ", ".join(f"workflows.{c}" for c in _COLUMNS.split(", "))
_UPDATABLE = frozenset(
    {"status", "current_step", "participating_agents", "result", "error", "owner", "heartbeat_at",
     "attempt"}
)
_JSON = frozenset({"result", "error"})


@dataclass(frozen=True)
class WorkflowRecord:
    thread_id: str
    namespace: str
    workflow_type: str
    status: str
    current_step: str | None
    participating_agents: list[str]
    input: dict[str, Any]
    result: Any
    error: dict[str, Any] | None
    owner: str | None
    heartbeat_at: datetime | None
    version: int
    created_at: datetime
    updated_at: datetime
    #: how many times the orchestrator started running the graph (run, resume, recover);
    #: agent calls carry it, so a stored error is never replayed to a later attempt
    attempt: int = 1

    @classmethod
    def from_row(cls, row: Row) -> WorkflowRecord:
        return cls(**row)

    def to_dict(self) -> dict[str, Any]:
        data = dict(self.__dict__)
        for key in ("heartbeat_at", "created_at", "updated_at"):
            value = data[key]
            data[key] = value.isoformat() if value is not None else None
        return data


@dataclass(frozen=True)
class NamedCheckpoint:
    thread_id: str
    name: str
    checkpoint_ns: str
    checkpoint_id: str
    created_at: datetime = field(compare=False)


class WorkflowStateManager:
    """CRUD over the ``workflows`` table for one namespace."""

    def __init__(self, db: Database, namespace: str) -> None:
        self.db = db
        self.namespace = namespace

    async def create(
        self,
        thread_id: str,
        workflow_type: str,
        input: dict[str, Any],
        *,
        owner: str | None,
    ) -> WorkflowRecord:
        """Insert a new workflow at version 1, ``running`` under ``owner`` (the service queues
        one with its run: :meth:`orchestrator.service.queue.RunQueue.submit`).

        Raises:
            WorkflowExists: a workflow with this thread id already exists (a ValueError).
        """
        query = f"{INSERT_WORKFLOW} RETURNING {_COLUMNS}"
        row = await self.db.fetchone(
            query, (thread_id, self.namespace, workflow_type, "running", Jsonb(input), owner))
        if row is None:
            raise WorkflowExists(thread_id)
        return WorkflowRecord.from_row(row)

    async def get(self, thread_id: str) -> WorkflowRecord:
        row = await self.db.fetchone(
            f"SELECT {_COLUMNS} FROM workflows WHERE thread_id = %s AND namespace = %s",
            (thread_id, self.namespace),
        )
        if row is None:
            raise WorkflowNotFound(thread_id)
        return WorkflowRecord.from_row(row)

    async def find(self, thread_id: str) -> WorkflowRecord | None:
        try:
            return await self.get(thread_id)
        except WorkflowNotFound:
            return None

    async def update(self, thread_id: str, expected_version: int, *, last: bool = False,
                     **changes: Any) -> WorkflowRecord:
        """Compare-and-set: apply ``changes`` only if the row is still at ``expected_version``.

        ``heartbeat_at="now"`` sets the database's time; ``attempt="next"`` counts one more
        attempt. Inside a run of the service (:data:`WRITE_FENCE` set) the update is made only
        if the run's lease still holds, checked in the same transaction; and ``last`` (the
        run's last write, with the workflow's ``status``) ends the run in the same statement.

        Returns:
            The updated record, at ``expected_version + 1``.

        Raises:
            StaleWorkflowVersion: the row was updated by someone else since it was read.
            WorkflowNotFound: there is no such workflow.
            LeaseLost: (in the service) the run's lease is lost; nothing was changed.
        """
        unknown = set(changes) - _UPDATABLE
        if unknown:
            raise ValueError(f"cannot update workflow columns {sorted(unknown)}")
        assignments = []
        params: list[Any] = []
        for key in sorted(changes):
            value = changes[key]
            if key == "heartbeat_at" and value == "now":
                assignments.append("heartbeat_at = now()")
                continue
            if key == "attempt" and value == "next":
                assignments.append("attempt = attempt + 1")
                continue
            assignments.append(f"{key} = %s")
            params.append(Jsonb(value) if key in _JSON and value is not None else value)
        assignments += ["version = version + 1", "updated_at = now()"]
        # in a run of the service, the fence's check is the statement's FROM item: one
        # statement checks and updates (a refused check changes nothing)
        fence = WRITE_FENCE.get()
        query = f"""
            UPDATE workflows SET {", ".join(assignments)}
            {"" if fence is None else f"FROM {FENCE_CALL} AS fence"}
            WHERE thread_id = %s AND namespace = %s AND version = %s
            RETURNING {_UPDATED_COLUMNS}"""
        values: tuple[Any, ...] = (*params, *(() if fence is None else fence.params), thread_id,
                                   self.namespace, expected_version)
        ending = fence if last else None  # the run's last write ends the run too
        if ending is not None:
            if "status" not in changes:
                raise ValueError("a run's last write sets the workflow's status")
            ctes, more = ending.ending(changes["status"])
            query = f"WITH wf AS ({query}), {ctes} SELECT wf.* FROM wf LEFT JOIN told ON true"
            values += more
        try:
            row = await self.db.fetchone(query, values)
        except psycopg.Error as exc:
            if fence is None or (refused := fence.refusal(exc, "workflow")) is None:
                raise
            raise refused from None
        if row is not None:
            if ending is not None:
                ending.ended(changes["status"])
            return WorkflowRecord.from_row(row)
        current = await self.get(thread_id)  # raises WorkflowNotFound
        raise StaleWorkflowVersion(thread_id, expected_version, current.version)

    async def list(
        self,
        status: str | None = None,
        workflow_type: str | None = None,
        *,
        limit: int = 100,
    ) -> list[WorkflowRecord]:
        """Most recently updated first."""
        rows = await self.db.fetch(
            f"""
            SELECT {_COLUMNS} FROM workflows
            WHERE namespace = %s
              AND (%s::text IS NULL OR status = %s)
              AND (%s::text IS NULL OR workflow_type = %s)
            ORDER BY updated_at DESC, thread_id
            LIMIT %s""",
            (self.namespace, status, status, workflow_type, workflow_type, limit),
        )
        return [WorkflowRecord.from_row(r) for r in rows]

    async def heartbeat(self, owner: str) -> int:
        """Refresh the lease of every running workflow ``owner`` runs; returns how many.

        A heartbeat is not a state change, so it does not bump ``version``.
        """
        return await self.db.execute(
            "UPDATE workflows SET heartbeat_at = now() "
            "WHERE namespace = %s AND owner = %s AND status = 'running'",
            (self.namespace, owner),
        )

    async def in_service_queue(self, thread_id: str) -> bool:
        """Whether the thread has a queued or running run in the service's queue (then only the
        service may run it)."""
        row = await self.db.fetchone(
            "SELECT EXISTS (SELECT 1 FROM runs WHERE thread_id = %s "
            "AND status IN ('queued', 'running')) AS busy", (thread_id,))
        return bool(row and row["busy"])

    async def running_candidates(self) -> list[tuple[WorkflowRecord, float | None]]:
        """Running workflows with how long their owner has been silent (seconds).

        Workflows with an open run in the service's queue are the service's to continue (its
        sweeper hands a dead runner's runs to another): they are not candidates."""
        rows = await self.db.fetch(
            f"SELECT {_COLUMNS}, now() - heartbeat_at AS silent_for FROM workflows w "
            "WHERE namespace = %s AND status = 'running' AND NOT EXISTS ("
            "  SELECT 1 FROM runs r WHERE r.thread_id = w.thread_id"
            "    AND r.status IN ('queued', 'running')) "
            "ORDER BY created_at",
            (self.namespace,),
        )
        records: list[tuple[WorkflowRecord, float | None]] = []
        for row in rows:
            silent = row.pop("silent_for")
            record = WorkflowRecord.from_row(row)
            records.append((record, silent.total_seconds() if silent is not None else None))
        return records

    async def name_checkpoint(
        self, thread_id: str, name: str, checkpoint_id: str, checkpoint_ns: str = ""
    ) -> None:
        """Give a LangGraph checkpoint id a label (replacing an earlier one of that name)."""
        await self.db.execute(
            """
            INSERT INTO workflow_checkpoints (thread_id, name, checkpoint_ns, checkpoint_id)
            VALUES (%s, %s, %s, %s)
            ON CONFLICT (thread_id, name) DO UPDATE
            SET checkpoint_ns = EXCLUDED.checkpoint_ns, checkpoint_id = EXCLUDED.checkpoint_id,
                created_at = now()""",
            (thread_id, name, checkpoint_ns, checkpoint_id),
        )

    async def named_checkpoints(self, thread_id: str) -> list[NamedCheckpoint]:
        rows = await self.db.fetch(
            "SELECT thread_id, name, checkpoint_ns, checkpoint_id, created_at "
            "FROM workflow_checkpoints WHERE thread_id = %s ORDER BY created_at, name",
            (thread_id,),
        )
        return [NamedCheckpoint(**r) for r in rows]

    async def named_checkpoint(self, thread_id: str, name: str) -> NamedCheckpoint:
        for cp in await self.named_checkpoints(thread_id):
            if cp.name == name:
                return cp
        raise CheckpointNotFound(f"workflow {thread_id} has no checkpoint named {name!r}; "
                                 "named_checkpoints() lists the names it has")
