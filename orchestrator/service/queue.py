"""The run queue of ``orchestrator serve``: PostgreSQL's ``runs`` table (``sql/006_runs.sql``).

A run is one thing to do to a workflow: ``start``, ``resume`` (with an answer), ``recover``,
``cancel``. Runners :meth:`~RunQueue.claim` runs with ``FOR UPDATE SKIP LOCKED`` (priority
first, then ``not_before``, then age; a thread's runs one at a time, in order), under a lease
of ``settings.run_lease`` seconds that every claim gives a new epoch, renewed by the runner's
heartbeat. A unique partial index is the guard of "at most one running run per thread": a
claim that would break it fails and the claimer skips that run. A run that raised goes back to
the queue after a doubling backoff until ``max_attempts``, then is ``dead`` (a dead letter:
listed, replayed as a new run, purged). The sweeper puts the runs of dead runners (expired
leases) back in the queue. Enqueueing sends ``NOTIFY orchestrator_runs`` in the enqueueing
transaction, so runners wake when the run is visible, not before.

Why our own queue rather than procrastinate or pgqueuer: neither gives a per-claim lease epoch
that a checkpoint write can be fenced against (see the service's note in the README).

Every runner-facing method takes the runner id and the run as claimed (its epoch), and does
nothing (``False``/``None``) when the lease is no longer that runner's.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from orchestrator.errors import InvalidInput, RunNotFound, WorkflowNotFound
from orchestrator.settings import Settings
from orchestrator.state.db import Database, Row
from orchestrator.state.errors import WorkflowExists
from orchestrator.state.store import INSERT_WORKFLOW, WORKFLOW_COLUMNS, WorkflowRecord

__all__ = ["RunQueue", "RunRecord", "ClaimedWorkflow", "CHANNEL", "RUN_KINDS", "RUN_STATUSES",
           "end_run", "run_status"]

log = logging.getLogger(__name__)

#: The LISTEN/NOTIFY channel; payloads are ``<namespace>`` (work was queued) or
#: ``<namespace>:cancel:<thread id>`` (stop that thread's running run).
CHANNEL = "orchestrator_runs"
RUN_KINDS = ("start", "resume", "recover", "cancel")
RUN_STATUSES = ("queued", "running", "succeeded", "failed", "dead", "cancelled")

_FIELDS = ("run_id, namespace, thread_id, kind, payload, status, priority, not_before, attempts, "
           "max_attempts, runner, lease_epoch, lease_expires_at, requested_by, created_at, "
           "started_at, finished_at, error, outcome")
# every statement that returns runs returns them with their workflow's type
_CHANGED = ", ".join("c." + f.strip() for f in _FIELDS.split(","))  # of "changed c"
_WITH_TYPE = f"SELECT {_CHANGED}, w.workflow_type " \
             "FROM changed c JOIN workflows w ON w.thread_id = c.thread_id"
_SELECT = f"SELECT {', '.join('r.' + f.strip() for f in _FIELDS.split(','))}, " \
          "w.workflow_type FROM runs r JOIN workflows w ON w.thread_id = r.thread_id"
_NOTIFY = f"SELECT pg_notify('{CHANNEL}', %s)"
_WORKFLOW_FIELDS = WORKFLOW_COLUMNS.split(", ")
# the workflow row as the claim leaves it (CTE "wf"), in columns of their own ("wf_<column>")
_QUALIFIED = ", ".join(f"w.{c}" for c in _WORKFLOW_FIELDS)
_CLAIMED = ", ".join(f"wf.{c} AS wf_{c}" for c in _WORKFLOW_FIELDS)
# A run's end (status, outcome; run, runner, epoch), as CTEs ``ended`` and ``told`` of a
# statement: the runners are told (NOTIFY, when it commits) only when a run of the thread
# waits behind it, now claimable (one for nothing would cost every runner a claim, and the
# commit the notify queue's lock). ``{after}``: more conditions of the run's UPDATE.
_END_RUN = f"""
    ended AS (
        UPDATE runs SET status = %s, outcome = %s, finished_at = now(), lease_expires_at = NULL
        WHERE run_id = %s AND runner = %s AND lease_epoch = %s AND status = 'running'{{after}}
        RETURNING thread_id),
    told AS (
        SELECT pg_notify('{CHANNEL}', %s) FROM ended e
        WHERE EXISTS (SELECT 1 FROM runs o WHERE o.thread_id = e.thread_id
                      AND o.status = 'queued'))"""
_CLAIM_TRIES = 3  # a claim that loses a race for a thread tries the next run this many times


@dataclass(frozen=True)
class RunRecord:
    """One row of the ``runs`` table, with its workflow's type."""

    run_id: int
    namespace: str
    thread_id: str
    workflow_type: str
    kind: str
    payload: dict[str, Any]
    status: str
    priority: int
    not_before: datetime
    attempts: int
    max_attempts: int
    runner: str | None
    lease_epoch: int
    lease_expires_at: datetime | None
    requested_by: str | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    error: dict[str, Any] | None
    outcome: str | None
    #: the workflow as the claim that returned this run left it (claims only)
    claimed: ClaimedWorkflow | None = field(default=None, compare=False, repr=False)

    @classmethod
    def from_row(cls, row: Row) -> RunRecord:
        return cls(**row)

    def to_dict(self) -> dict[str, Any]:
        data = dict(self.__dict__)
        del data["claimed"]
        for key, value in data.items():
            if isinstance(value, datetime):
                data[key] = value.isoformat()
        return data


@dataclass(frozen=True)
class ClaimedWorkflow:
    """A claimed run's workflow, read (and set ``running``) by the claim's own statement, so
    that the runner starts without reading it again."""

    #: the row after the claim
    record: WorkflowRecord
    #: its status before the claim (``queued``: never started)
    was: str
    #: whether the claim set it ``running`` for this attempt: it is a start, recover or resume
    #: of a workflow that is not ended (nor waiting for an answer, but for a resume)
    started: bool
    #: whether the thread has a checkpoint (a run got that far before)
    checkpointed: bool


def end_run(after: str = "") -> str:
    """The CTEs ``ended`` and ``told`` that end a run (see ``_END_RUN``); parameters: the
    run's status and outcome, its id, runner and epoch, then the namespace."""
    return _END_RUN.format(after=after)


def run_status(outcome: str) -> str:
    """The status of a run that ended leaving its workflow ``outcome``: ``failed`` when the
    workflow failed, else ``succeeded``."""
    return "failed" if outcome == "failed" else "succeeded"


class RunQueue:
    """The SQL of the run queue, for one namespace.

    Args:
        owner: the process the claimed runs execute in (its :attr:`Orchestrator.owner`), which
            a claim writes as their workflows' owner; default: the claiming runner's id.
    """

    def __init__(self, db: Database, settings: Settings, *, owner: str | None = None) -> None:
        self.db = db
        self.settings = settings
        self.namespace = settings.namespace
        self.owner = owner

    # -- enqueueing (RunService) ---------------------------------------------------------------

    async def submit(self, thread_id: str, workflow_type: str, input: dict[str, Any], *,
                     priority: int = 0, requested_by: str | None = None) -> RunRecord:
        """A new workflow (``queued``) and its start run, and the runners told: one statement,
        one round trip (a submit is on the path of every run: measured, the transaction of
        two statements took 3 round trips and ~1.5 ms on a loaded machine).

        Raises:
            WorkflowExists: the thread id is taken (nothing was stored).
        """
        row = await self.db.fetchone(
            f"""
            WITH wf AS ({INSERT_WORKFLOW} RETURNING thread_id, workflow_type),
            changed AS (
                INSERT INTO runs (namespace, thread_id, kind, payload, priority, max_attempts,
                                  requested_by, status)
                SELECT %s, wf.thread_id, 'start', '{{}}'::jsonb, %s, %s, %s, 'queued' FROM wf
                RETURNING {_FIELDS}),
            told AS (SELECT pg_notify('{CHANNEL}', %s) FROM changed)
            SELECT {_CHANGED}, wf.workflow_type
            FROM changed c JOIN wf ON wf.thread_id = c.thread_id LEFT JOIN told ON true""",
            (thread_id, self.namespace, workflow_type, "queued", Jsonb(input), None,
             self.namespace, priority, self.settings.run_max_attempts, requested_by,
             self.namespace),
        )
        if row is None:
            raise WorkflowExists(thread_id)
        return RunRecord.from_row(row)

    async def enqueue(
        self,
        conn: psycopg.AsyncConnection[Row],
        thread_id: str,
        kind: str,
        payload: dict[str, Any] | None = None,
        *,
        priority: int = 0,
        requested_by: str | None = None,
        done: str | None = None,
    ) -> RunRecord:
        """Queue a run on ``conn`` (the caller's transaction) and notify the runners when that
        transaction commits; or, with ``done`` (an outcome), record a run the caller did at
        once."""
        cur = await conn.execute(
            f"""
            WITH changed AS (
                INSERT INTO runs (namespace, thread_id, kind, payload, priority, max_attempts,
                                  requested_by, status, outcome, finished_at)
                VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s,
                        CASE WHEN %s::text IS NULL THEN NULL ELSE now() END)
                RETURNING {_FIELDS}),
            told AS (SELECT pg_notify('{CHANNEL}', %s) FROM changed WHERE %s::text IS NULL)
            {_WITH_TYPE} LEFT JOIN told ON true""",
            (self.namespace, thread_id, kind, Jsonb(payload or {}), priority,
             self.settings.run_max_attempts, requested_by,
             "queued" if done is None else "succeeded", done, done, self.namespace, done),
        )
        row = await cur.fetchone()
        assert row is not None
        return RunRecord.from_row(row)

    async def lock_thread(self, conn: psycopg.AsyncConnection[Row],
                          thread_id: str) -> WorkflowRecord:
        """The thread's workflow row, locked until ``conn``'s transaction ends: what queues
        runs of one thread takes turns.

        Raises:
            WorkflowNotFound: no such thread in this namespace.
        """
        cur = await conn.execute(
            f"SELECT {WORKFLOW_COLUMNS} FROM workflows WHERE thread_id = %s AND namespace = %s "
            "FOR NO KEY UPDATE", (thread_id, self.namespace))
        row = await cur.fetchone()
        if row is None:
            raise WorkflowNotFound(thread_id)
        return WorkflowRecord.from_row(row)

    async def cancel_queued(self, conn: psycopg.AsyncConnection[Row], thread_id: str) -> int:
        """Cancel the thread's queued runs; returns how many."""
        cur = await conn.execute(
            "UPDATE runs SET status = 'cancelled', outcome = 'cancelled', finished_at = now() "
            "WHERE thread_id = %s AND status = 'queued'", (thread_id,))
        return cur.rowcount

    async def notify_cancel(self, conn: psycopg.AsyncConnection[Row], thread_id: str) -> None:
        """Tell the runners (when ``conn``'s transaction commits) to stop the thread's run."""
        await conn.execute(_NOTIFY, (f"{self.namespace}:cancel:{thread_id}",))

    async def cancel_workflow(self, conn: psycopg.AsyncConnection[Row], thread_id: str) -> None:
        """End a workflow no run is executing ``cancelled``."""
        await conn.execute(
            "UPDATE workflows SET status = 'cancelled', owner = NULL, version = version + 1, "
            "updated_at = now() WHERE thread_id = %s AND status NOT IN ('completed', 'cancelled')",
            (thread_id,))

    async def open_runs(self, conn: psycopg.AsyncConnection[Row], thread_id: str) -> list[RunRecord]:
        """The thread's queued and running runs, oldest first, locked until ``conn``'s
        transaction ends against claims (``FOR KEY SHARE``: a claim's ``FOR UPDATE SKIP
        LOCKED`` passes them by).

        Not ``FOR UPDATE``: the caller holds the workflow's row (:meth:`lock_thread`), and a
        running run's fenced row write holds the run's row (the fence's share lock) while it
        waits for the workflow's; waiting for the run's row here would deadlock with it."""
        cur = await conn.execute(
            f"{_SELECT} WHERE r.thread_id = %s AND r.status IN ('queued', 'running') "
            "ORDER BY r.run_id FOR KEY SHARE OF r",
            (thread_id,),
        )
        return [RunRecord.from_row(r) for r in await cur.fetchall()]

    # -- runners -------------------------------------------------------------------------------

    async def claim(self, runner: str) -> RunRecord | None:
        """Claim the next runnable run for ``runner``, or ``None``; the run comes with its
        workflow (:attr:`RunRecord.claimed`), which the same statement sets ``running`` (owner
        :attr:`owner`, a new attempt unless it was never started) when the run is to go on
        with it: one round trip where reading the row, then writing it, took three.

        Runnable: queued, ``not_before`` passed, its thread has no running run and no older
        queued one. Two claimers can still pick two runs of one thread at once; the unique
        index refuses the second, which then tries the next run. A run whose workflow row is
        locked (a cancel or an enqueue of its thread in progress) waits for the next claim:
        the claim never waits for a row lock, so it cannot deadlock with them.
        """
        for _ in range(_CLAIM_TRIES):
            try:
                row = await self.db.fetchone(
                    f"""
                    WITH candidate AS (
                        SELECT r.run_id FROM runs r JOIN workflows w ON w.thread_id = r.thread_id
                        WHERE r.namespace = %(ns)s AND r.status = 'queued'
                          AND r.not_before <= now()
                          AND NOT EXISTS (
                              SELECT 1 FROM runs o
                              WHERE o.thread_id = r.thread_id
                                AND (o.status = 'running'
                                     OR (o.status = 'queued' AND o.run_id < r.run_id)))
                        ORDER BY r.priority DESC, r.not_before, r.run_id
                        LIMIT 1
                        FOR UPDATE OF r SKIP LOCKED FOR NO KEY UPDATE OF w SKIP LOCKED
                    ), changed AS (
                        UPDATE runs SET status = 'running', runner = %(runner)s,
                            lease_epoch = lease_epoch + 1, attempts = attempts + 1,
                            lease_expires_at = now() + %(lease)s * interval '1 second',
                            started_at = now()
                        FROM candidate WHERE runs.run_id = candidate.run_id
                        RETURNING runs.*
                    ), started AS (
                        UPDATE workflows w SET status = 'running', owner = %(owner)s,
                            heartbeat_at = now(), error = NULL,
                            attempt = w.attempt + CASE WHEN w.status = 'queued' THEN 0 ELSE 1 END,
                            version = w.version + 1, updated_at = now()
                        FROM changed c
                        WHERE w.thread_id = c.thread_id AND c.kind <> 'cancel'
                          AND w.status NOT IN ('completed', 'cancelled')
                          AND (w.status <> 'interrupted' OR c.kind = 'resume')
                        RETURNING {_QUALIFIED}
                    ), wf AS (
                        SELECT * FROM started
                        UNION ALL
                        SELECT {_QUALIFIED} FROM workflows w JOIN changed c
                            ON w.thread_id = c.thread_id
                        WHERE NOT EXISTS (SELECT 1 FROM started))
                    SELECT {_CHANGED}, b.workflow_type, b.status AS wf_was, {_CLAIMED},
                        EXISTS (SELECT 1 FROM started) AS wf_started,
                        EXISTS (SELECT 1 FROM checkpoints k WHERE k.thread_id = c.thread_id
                                AND k.checkpoint_ns = '') AS wf_checkpointed
                    FROM changed c JOIN workflows b ON b.thread_id = c.thread_id CROSS JOIN wf
                    """,
                    {"ns": self.namespace, "runner": runner, "lease": self.settings.run_lease,
                     "owner": self.owner or runner},
                )
            except psycopg.errors.UniqueViolation:
                log.debug("claim by %s lost a race for a thread; trying the next run", runner)
                continue
            return None if row is None else _claimed(row)
        return None

    async def renew(self, runner: str, held: dict[int, int]) -> set[int]:
        """Extend the leases ``runner`` still holds of ``held`` (``{run_id: epoch}``); returns
        their ids. A lease that expired is not revived: its writes were already refusable."""
        if not held:
            return set()
        ids, epochs = list(held), [held[i] for i in held]
        rows = await self.db.fetch(
            """
            UPDATE runs SET lease_expires_at = now() + %s * interval '1 second'
            WHERE status = 'running' AND runner = %s AND lease_expires_at > now()
              AND (run_id, lease_epoch) IN (SELECT * FROM unnest(%s::bigint[], %s::bigint[]))
            RETURNING run_id""",
            (self.settings.run_lease, runner, ids, epochs),
        )
        return {r["run_id"] for r in rows}

    async def finish(self, run: RunRecord, runner: str, *, outcome: str) -> bool:
        """Record that ``run`` ended, leaving its workflow ``outcome`` (its status): the run
        is ``failed`` when the workflow failed, else ``succeeded``."""
        return await self._end(run, runner, run_status(outcome), outcome)

    async def end_cancelled(self, run: RunRecord, runner: str) -> bool:
        """Record that ``runner`` stopped ``run`` on a cancel."""
        return await self._end(run, runner, "cancelled", "cancelled")

    async def _end(self, run: RunRecord, runner: str, status: str, outcome: str) -> bool:
        # one statement: the run ended and, when a run of the thread waits, the runners told
        row = await self.db.fetchone(
            f"WITH {end_run()} SELECT 1 AS ended FROM ended LEFT JOIN told ON true",
            (status, outcome, run.run_id, runner, run.lease_epoch, self.namespace),
        )
        return row is not None

    async def fail(self, run: RunRecord, runner: str, error: dict[str, Any]) -> RunRecord | None:
        """``run`` raised ``error``: back to the queue after ``run_retry_backoff * 2**(n-1)``
        seconds (n = attempts so far), or ``dead`` once it made ``max_attempts`` (its
        workflow is then ``failed`` too). ``None`` when the lease was no longer ``runner``'s."""
        async with self.db.transaction() as conn:
            cur = await conn.execute(
                f"""
                WITH changed AS (
                    UPDATE runs SET
                        status = CASE WHEN attempts < max_attempts THEN 'queued' ELSE 'dead' END,
                        not_before = now() + %s * power(2, greatest(attempts - 1, 0))
                                     * interval '1 second',
                        finished_at = CASE WHEN attempts < max_attempts THEN NULL ELSE now() END,
                        lease_expires_at = NULL, error = %s
                    WHERE run_id = %s AND runner = %s AND lease_epoch = %s AND status = 'running'
                    RETURNING {_FIELDS})
                {_WITH_TYPE}""",
                (self.settings.run_retry_backoff, Jsonb(error), run.run_id, runner,
                 run.lease_epoch),
            )
            row = await cur.fetchone()
            if row is None:
                return None
            failed = RunRecord.from_row(row)
            if failed.status == "dead":
                await self._fail_workflows(conn, [failed])
                log.warning("run %s of workflow %s is dead after %s attempts: %s",
                            failed.run_id, failed.thread_id, failed.attempts,
                            error.get("message"))
            else:
                log.info("run %s of workflow %s failed (attempt %s of %s), retried at %s: %s",
                         failed.run_id, failed.thread_id, failed.attempts, failed.max_attempts,
                         failed.not_before.isoformat(), error.get("message"))
            return failed

    async def release(self, run: RunRecord, runner: str) -> bool:
        """Hand ``run`` back at once (a draining runner): queued, this attempt not counted,
        in its old place (its ``not_before`` is kept: it goes before the runs queued since).
        A workflow its claim started from ``queued`` and that nothing wrote since is ``queued``
        again."""
        async with self.db.transaction() as conn:
            cur = await conn.execute(
                """
                UPDATE runs SET status = 'queued', attempts = greatest(attempts - 1, 0),
                    lease_expires_at = NULL
                WHERE run_id = %s AND runner = %s AND lease_epoch = %s AND status = 'running'""",
                (run.run_id, runner, run.lease_epoch),
            )
            if cur.rowcount:
                claimed = run.claimed
                if claimed is not None and claimed.started and claimed.was == "queued":
                    await conn.execute(
                        "UPDATE workflows SET status = 'queued', owner = NULL, "
                        "version = version + 1, updated_at = now() "
                        "WHERE thread_id = %s AND version = %s",
                        (run.thread_id, claimed.record.version))
                await conn.execute(_NOTIFY, (self.namespace,))
            return cur.rowcount == 1

    async def sweep(self) -> int:
        """Put the runs whose lease expired (their runner died or stalled) back in the queue,
        at once and in their old place (``not_before`` is kept, so under a backlog they go
        before the runs queued while they ran: recovery within lease + sweep interval); a run
        past ``max_attempts`` is ``dead`` instead. Returns how many were swept.

        The caller holds the cluster's sweeper lock. Runs in the middle of a fenced write are
        skipped (locked) and swept next time.
        """
        async with self.db.transaction() as conn:
            cur = await conn.execute(
                f"""
                WITH expired AS (
                    SELECT run_id FROM runs
                    WHERE namespace = %s AND status = 'running' AND lease_expires_at < now()
                    FOR UPDATE SKIP LOCKED
                ), changed AS (
                    UPDATE runs SET
                        status = CASE WHEN attempts < max_attempts THEN 'queued' ELSE 'dead' END,
                        finished_at = CASE WHEN attempts < max_attempts THEN NULL ELSE now() END,
                        error = CASE WHEN attempts < max_attempts THEN error ELSE %s END,
                        lease_expires_at = NULL
                    FROM expired WHERE runs.run_id = expired.run_id
                    RETURNING runs.*)
                {_WITH_TYPE}""",
                (self.namespace, Jsonb({"code": "lease_lost",
                                        "message": "its runner stopped renewing the lease"})),
            )
            swept = [RunRecord.from_row(r) for r in await cur.fetchall()]
            dead = [r for r in swept if r.status == "dead"]
            if dead:
                await self._fail_workflows(conn, dead)
            if swept:
                await conn.execute(_NOTIFY, (self.namespace,))
        for run in swept:
            log.warning("run %s of workflow %s: runner %s lost its lease (epoch %s); %s",
                        run.run_id, run.thread_id, run.runner, run.lease_epoch,
                        "dead" if run.status == "dead" else "queued again")
        return len(swept)

    async def _fail_workflows(self, conn: psycopg.AsyncConnection[Row],
                              dead: list[RunRecord]) -> None:
        """The workflows of dead runs that were waiting for them end ``failed``."""
        for run in dead:
            message = (run.error or {}).get("message", "")
            await conn.execute(
                """
                UPDATE workflows SET status = 'failed', owner = NULL, version = version + 1,
                    updated_at = now(), error = %s
                WHERE thread_id = %s AND status IN ('queued', 'running')""",
                (Jsonb({"code": (run.error or {}).get("code", "internal_error"),
                        "message": f"run {run.run_id} is dead after {run.attempts} attempts: "
                                   f"{message}"}), run.thread_id),
            )

    async def listen(self) -> AsyncIterator[str]:
        """Notifications for this namespace, as they come: ``"run"`` (work was queued or
        became claimable) or ``"cancel:<thread id>"``. Runs until the caller stops iterating;
        a lost connection raises (``psycopg.OperationalError``)."""
        conninfo = self.settings.database_url or self.db.pool.conninfo
        async with await psycopg.AsyncConnection.connect(conninfo, autocommit=True) as conn:
            await conn.execute(f"LISTEN {CHANNEL}")
            async for note in conn.notifies():
                namespace, _, rest = note.payload.partition(":")
                if namespace == self.namespace:
                    yield rest or "run"

    # -- reading and dead letters (RunService) -----------------------------------------------

    async def get(self, run_id: int) -> RunRecord:
        """Raises: RunNotFound."""
        row = await self.db.fetchone(f"{_SELECT} WHERE r.run_id = %s AND r.namespace = %s",
                                     (run_id, self.namespace))
        if row is None:
            raise RunNotFound(run_id)
        return RunRecord.from_row(row)

    async def list(self, *, status: str | None = None, workflow: str | None = None,
                   thread_id: str | None = None, limit: int = 100) -> list[RunRecord]:
        """Newest first."""
        if status is not None and status not in RUN_STATUSES:
            raise InvalidInput(f"run status {status!r} is not one of {', '.join(RUN_STATUSES)}")
        rows = await self.db.fetch(
            f"""{_SELECT}
            WHERE r.namespace = %s AND (%s::text IS NULL OR r.status = %s)
              AND (%s::text IS NULL OR w.workflow_type = %s)
              AND (%s::text IS NULL OR r.thread_id = %s)
            ORDER BY r.run_id DESC LIMIT %s""",
            (self.namespace, status, status, workflow, workflow, thread_id, thread_id, limit),
        )
        return [RunRecord.from_row(r) for r in rows]

    async def replay(self, run_id: int, *, requested_by: str | None) -> RunRecord:
        """A new queued run with a dead run's kind and payload (its workflow ``queued`` again
        if the dead run had failed it). The dead run stays, for the record, until purged.

        Raises:
            RunNotFound: no such run. InvalidInput: the run is not dead.
        """
        async with self.db.transaction() as conn:
            cur = await conn.execute(
                f"{_SELECT} WHERE r.run_id = %s AND r.namespace = %s FOR UPDATE OF r",
                (run_id, self.namespace))
            row = await cur.fetchone()
            if row is None:
                raise RunNotFound(run_id)
            dead = RunRecord.from_row(row)
            if dead.status != "dead":
                raise InvalidInput(f"run {run_id} is {dead.status}, not dead: only dead "
                                   "letters are replayed")
            await conn.execute(
                "UPDATE workflows SET status = 'queued', error = NULL, version = version + 1, "
                "updated_at = now() WHERE thread_id = %s AND status = 'failed'",
                (dead.thread_id,))
            replayed = await self.enqueue(conn, dead.thread_id, dead.kind, dead.payload,
                                          priority=dead.priority, requested_by=requested_by)
        log.info("replayed dead run %s of workflow %s as run %s", run_id, dead.thread_id,
                 replayed.run_id)
        return replayed

    async def purge(self, run_id: int | None = None) -> int:
        """Delete one dead run, or every dead run of the namespace; returns how many.

        Raises:
            RunNotFound: ``run_id`` names no dead run.
        """
        deleted = await self.db.execute(
            "DELETE FROM runs WHERE namespace = %s AND status = 'dead' "
            "AND (%s::bigint IS NULL OR run_id = %s)",
            (self.namespace, run_id, run_id),
        )
        if run_id is not None and deleted == 0:
            raise RunNotFound(run_id)
        return deleted


def _claimed(row: Row) -> RunRecord:
    """A claim's row: the run's columns, then its workflow's (``wf_``)."""
    run = {k: v for k, v in row.items() if not k.startswith("wf_")}
    workflow = {k[3:]: v for k, v in row.items() if k.startswith("wf_")}
    claimed = ClaimedWorkflow(
        record=WorkflowRecord.from_row({k: workflow.pop(k) for k in _WORKFLOW_FIELDS}),
        was=workflow["was"], started=workflow["started"],
        checkpointed=workflow["checkpointed"])
    return RunRecord(**run, claimed=claimed)
