"""``RunService``: what the HTTP API, the CLI, webhooks and runners use to act on workflows
through the run queue (:mod:`orchestrator.service.queue`).

Callers queue runs (:meth:`~RunService.submit`, :meth:`~RunService.resume`,
:meth:`~RunService.recover`, :meth:`~RunService.cancel`); everything that can be refused is
refused here, before anything is stored: bad input, an answer that does not fit the pending
question, a thread that already has a run queued. Runners :meth:`~RunService.execute` the runs
they claim through the facade's one path (:meth:`Orchestrator.proceed`), fenced by the run's
lease (:mod:`orchestrator.service.fencing`), and record their ends.
"""

from __future__ import annotations

import logging
from typing import Any

from orchestrator.errors import (
    InvalidAnswer,
    InvalidInput,
    LeaseLost,
    StaleWorkflowVersion,
    WorkflowBusy,
)
from orchestrator.facade import Orchestrator, ProgressCallback, RunResult, thread_id_in_use
from orchestrator.questions import check_answer, is_question
from orchestrator.state.errors import WorkflowExists
from orchestrator.state.store import WorkflowRecord

from .fencing import Fence, fenced
from .queue import ClaimedWorkflow, RunQueue, RunRecord

__all__ = ["RunService"]

log = logging.getLogger(__name__)

# a cancel goes before other work: it only ends a workflow
_CANCEL_PRIORITY = 1_000_000
_ENDED = ("completed", "cancelled")


class RunService:
    """The run queue as callers see it, over an open :class:`Orchestrator`."""

    def __init__(self, orch: Orchestrator) -> None:
        self.orch = orch
        self.queue = RunQueue(orch.runtime.db, orch.settings, owner=orch.owner)

    @property
    def _workflows(self) -> Any:
        return self.orch.runtime.workflows

    # -- callers -------------------------------------------------------------------------------

    async def submit(self, workflow: str, input: dict[str, Any], thread_id: str | None = None,
                     *, priority: int = 0, by: str | None = None) -> RunRecord:
        """Queue a new run of ``workflow``: its row (``queued``) and its start run are written
        in one statement.

        Raises:
            InvalidInput: unknown workflow, bad input, bad or used thread id (nothing stored).
        """
        thread_id, validated = await self.orch.prepare_start(workflow, input, thread_id)
        try:
            run = await self.queue.submit(thread_id, workflow, validated.model_dump(mode="json"),
                                          priority=priority, requested_by=by)
        except WorkflowExists:
            raise thread_id_in_use(thread_id) from None
        log.info("queued run %s: start %s as workflow %s (by %s)", run.run_id, workflow,
                 thread_id, by)
        self._queued_event(run, by)
        return run

    async def resume(self, thread_id: str, value: Any = None, *,
                     by: str | None = None) -> RunRecord:
        """Queue the answer ``value`` to the pending question, or (no question pending, no
        value) a carry-on from the last checkpoint.

        The answer is checked against the question's schema now. When the question's answer
        says who gives it (``by``) and ``by`` is known, ``by`` is the one recorded, whatever
        the answer claimed.

        Raises:
            WorkflowNotFound: no such thread.
            InvalidAnswer: the answer does not fit, is missing, or nothing waits for one; nothing
                was stored and the question stays pending.
            InvalidInput: the workflow is completed or cancelled.
            WorkflowBusy: the thread already has a queued or running run.
        """
        record = await self._workflows.get(thread_id)
        _refuse_ended(record, "resumed")
        snapshot = await self.orch.graph(record.workflow_type).aget_state(
            {"configurable": {"thread_id": thread_id}})
        questions = [i.value for i in snapshot.interrupts]
        if questions:
            value = _answered_by(questions, value, by)
            check_answer(thread_id, questions, value)
        elif value is not None:
            raise InvalidAnswer(f"workflow {thread_id} ({record.status}) waits for no answer, so "
                                "this one was not stored", problem="no question is pending")
        return await self._enqueue(thread_id, "resume", {"value": value, "by": by}, by=by)

    async def recover(self, thread_id: str, *, by: str | None = None) -> RunRecord:
        """Queue a carry-on of the workflow from its last checkpoint (after a failure).

        Raises:
            WorkflowNotFound, WorkflowBusy, InvalidInput: ended, or waiting for an answer.
        """
        record = await self._workflows.get(thread_id)
        _refuse_ended(record, "recovered")
        if record.status == "interrupted":
            raise InvalidInput(f"workflow {thread_id} waits for an answer: resume it with one")
        return await self._enqueue(thread_id, "recover", {}, by=by)

    async def cancel(self, thread_id: str, *, by: str | None = None) -> RunRecord:
        """Cancel the thread's queued runs and end the workflow ``cancelled``.

        With a run in progress, a cancel run is queued behind it and its runner is told to
        stop it (NOTIFY); the workflow ends ``cancelled`` when the runner stops, or at the
        latest when the cancel run executes. Otherwise the workflow is cancelled at once and
        the cancel run is recorded as done.

        Raises:
            WorkflowNotFound: no such thread. InvalidInput: it is completed or cancelled.
        """
        async with self.orch.runtime.db.transaction() as conn:
            record = await self.queue.lock_thread(conn, thread_id)
            _refuse_ended(record, "cancelled")
            open_runs = await self.queue.open_runs(conn, thread_id)
            await self.queue.cancel_queued(conn, thread_id)
            if any(r.status == "running" for r in open_runs):
                run = await self.queue.enqueue(conn, thread_id, "cancel",
                                               priority=_CANCEL_PRIORITY, requested_by=by)
                await self.queue.notify_cancel(conn, thread_id)
            else:
                await self.queue.cancel_workflow(conn, thread_id)
                run = await self.queue.enqueue(conn, thread_id, "cancel", requested_by=by,
                                               done="cancelled")
        if run.status != "queued":  # cancelled at once (committed)
            self._cancelled_event(record, by)
        log.info("run %s: cancel of workflow %s (by %s)", run.run_id, thread_id, by)
        return run

    async def get_run(self, run_id: int) -> RunRecord:
        """Raises: RunNotFound."""
        return await self.queue.get(run_id)

    async def runs(self, *, status: str | None = None, workflow: str | None = None,
                   thread_id: str | None = None, limit: int = 100) -> list[RunRecord]:
        """Newest first."""
        return await self.queue.list(status=status, workflow=workflow, thread_id=thread_id,
                                     limit=limit)

    async def dead_letters(self, limit: int = 100) -> list[RunRecord]:
        """Runs that failed ``run_max_attempts`` times, newest first."""
        return await self.queue.list(status="dead", limit=limit)

    async def replay(self, run_id: int, *, by: str | None = None) -> RunRecord:
        """Queue a dead run again, as a new run. Raises: RunNotFound, InvalidInput."""
        run = await self.queue.replay(run_id, requested_by=by)
        self._queued_event(run, by)
        return run

    async def purge(self, run_id: int | None = None, *, by: str | None = None) -> int:
        """Delete a dead run (all of them without ``run_id``); returns how many. Raises:
        RunNotFound."""
        purged = await self.queue.purge(run_id)
        log.info("purged %s dead run(s) (by %s)", purged, by)
        return purged

    # -- runners -------------------------------------------------------------------------------

    async def execute(self, run: RunRecord, runner: str, *,
                      on_progress: ProgressCallback | None = None) -> RunResult:
        """Do ``run`` (as claimed by ``runner``) through the facade, every write fenced by its
        lease, and record its end; ``on_progress`` is called after each finished step (a
        draining runner stops the run there).

        start: from the workflow's input, or from its checkpoint if an earlier runner got that
        far; resume: the queued answer if its question is still pending and it still fits,
        else carry on from the checkpoint; recover: carry on from the checkpoint; cancel: end
        the workflow ``cancelled``. A workflow already ended (or a start/recover of one that
        waits for an answer) is left as it is.

        A run from :meth:`RunQueue.claim` brings its workflow row, already ``running`` when it
        goes on (:attr:`RunRecord.claimed`); the workflow's last write ends the run in the
        same statement. Otherwise the run's end is recorded after.

        Raises:
            LeaseLost: a fenced write, or the record of the run's end, was refused; the run is
                another runner's now.
        """
        fence = Fence.of(run, runner)
        with fenced(fence):
            result = await self._go_on(run, on_progress)
        if fence.ended_as is None and not await self.queue.finish(run, runner,
                                                                   outcome=result.status):
            raise LeaseLost(run.thread_id, run.run_id, run.lease_epoch)
        return result

    async def _go_on(self, run: RunRecord, on_progress: ProgressCallback | None) -> RunResult:
        claimed = run.claimed
        if claimed is None:  # not from a claim (a run read back): its workflow as it is now
            record = await self._workflows.get(run.thread_id)
            claimed = ClaimedWorkflow(record, record.status, started=False, checkpointed=None)
        record = claimed.record
        if run.kind == "cancel" or record.status == "cancelled":
            return await self._end_cancelled(record)
        if record.status == "completed" or (record.status == "interrupted"
                                            and run.kind != "resume"):
            return _as_it_is(record)
        value = run.payload.get("value") if run.kind == "resume" else None
        event = "workflow.started" if claimed.was == "queued" else "workflow.resumed"
        return await self.orch.proceed(record, value, strict=False, event=event,
                                       answered_by=run.payload.get("by"),
                                       on_progress=on_progress, claimed=claimed.started,
                                       checkpointed=claimed.checkpointed)

    async def cancelled(self, run: RunRecord, runner: str) -> bool:
        """Record that ``runner`` stopped ``run`` on a cancel: the workflow ends ``cancelled``
        (a fenced write) and the run too. False when the lease was no longer ``runner``'s.

        Raises:
            LeaseLost: the workflow write was refused.
        """
        with fenced(Fence.of(run, runner)):
            await self._end_cancelled(await self._workflows.get(run.thread_id))
        return await self.queue.end_cancelled(run, runner)

    # -- helpers -------------------------------------------------------------------------------

    async def _enqueue(self, thread_id: str, kind: str, payload: dict[str, Any], *,
                       by: str | None) -> RunRecord:
        async with self.orch.runtime.db.transaction() as conn:
            await self.queue.lock_thread(conn, thread_id)
            if open_runs := await self.queue.open_runs(conn, thread_id):
                busy = open_runs[0]
                raise WorkflowBusy(
                    f"workflow {thread_id} already has run {busy.run_id} ({busy.kind}, "
                    f"{busy.status}); wait for it, or cancel it")
            run = await self.queue.enqueue(conn, thread_id, kind, payload, requested_by=by)
        log.info("queued run %s: %s of workflow %s (by %s)", run.run_id, kind, thread_id, by)
        self._queued_event(run, by)
        return run

    def _queued_event(self, run: RunRecord, by: str | None) -> None:
        """``run.queued``: what the console's lists show before a runner starts it."""
        self.orch.runtime.bus.emit("run.queued", {
            "thread_id": run.thread_id, "workflow_type": run.workflow_type,
            "run_id": run.run_id, "kind": run.kind, "by": by})

    async def _end_cancelled(self, record: WorkflowRecord) -> RunResult:
        """The workflow's row ``cancelled`` (a compare-and-set, re-read on a race)."""
        for _ in range(5):
            if record.status in _ENDED:
                break
            try:
                record = await self._workflows.update(record.thread_id, record.version,
                                                      status="cancelled", owner=None)
                self._cancelled_event(record, None)
                break
            except StaleWorkflowVersion:
                record = await self._workflows.get(record.thread_id)
        return _as_it_is(record)

    def _cancelled_event(self, record: WorkflowRecord, by: str | None) -> None:
        self.orch.runtime.bus.emit("workflow.cancelled", {
            "thread_id": record.thread_id, "workflow_type": record.workflow_type, "by": by})


def _refuse_ended(record: WorkflowRecord, what: str) -> None:
    if record.status in _ENDED:
        raise InvalidInput(f"workflow {record.thread_id} is {record.status}: it cannot be "
                           f"{what}")


def _as_it_is(record: WorkflowRecord) -> RunResult:
    return RunResult(record.thread_id, record.workflow_type, record.status, record.result,
                     [], record.error)


def _answered_by(questions: list[Any], value: Any, by: str | None) -> Any:
    """``value`` with ``by`` as who answered, where the questions' answers record it."""
    if by is None or not isinstance(value, dict):
        return value
    if any(is_question(q) and "by" in q["schema"].get("properties", {}) for q in questions):
        return {**value, "by": by}
    return value

