"""The ``Orchestrator`` facade: run, resume, inspect and recover workflows.

Example::

    async with Orchestrator.from_env() as orch:
        result = await orch.run("parallel_docs", {"package": "json", "output": "docs"})
        print(result.status, result.final_result)
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Sequence
from typing import Any

from langgraph._internal._constants import NULL_TASK_ID  # null writes (no public name in 1.x)
from langgraph.checkpoint.postgres.aio import AsyncPostgresSaver
from langgraph.types import Command
from pydantic import BaseModel

from orchestrator.state.checkpointer import known_empty, make_checkpointer
from orchestrator.state.schema import now_iso
from orchestrator.state.store import WorkflowRecord

from . import time_travel
from .agent import Agent
from .calls import failure_updates
from .errors import (
    InvalidAnswer,
    InvalidInput,
    LeaseLost,
    OrchestratorError,
    StaleWorkflowVersion,
    WorkflowBusy,
    WrongContext,
)
from .graphs import VALIDATED_KEY, WorkflowSpec, compile_workflow, get_workflow, validate_input
from .metrics import WORKFLOW_RUNS, WORKFLOW_STEP_SECONDS
from .processes import process_alive
from .questions import check_answer
from .results import (
    HistoryEntry,
    Progress,
    ProgressCallback,
    ProgressTracker,
    RunResult,
    WorkflowDetails,
    error_fields,
    failed_node,
    is_failed,
    question_kind,
    question_text,
)
from .runtime import ATTEMPT_KEY, Runtime, use_runtime
from .settings import Settings
from .tasks import cancel_and_wait, cancel_requested

__all__ = ["Orchestrator", "RunResult", "Progress", "WorkflowDetails", "HistoryEntry"]

log = logging.getLogger(__name__)



class Orchestrator:
    """Runs workflows durably. An async context manager; build it with :meth:`from_env`.

    Args:
        settings: the runtime configuration.
        agents: agents to host in this process; default: the built-in agents when
            ``settings.local_agents`` is true, none otherwise.
        workflows: extra workflows by name, beside those registered as entry points.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        agents: Sequence[Agent] | None = None,
        workflows: dict[str, WorkflowSpec] | None = None,
    ) -> None:
        self.settings = settings
        self._agents = agents
        self._extra = dict(workflows or {})
        self._stack: contextlib.AsyncExitStack | None = None
        self._runtime: Runtime | None = None
        self._saver: AsyncPostgresSaver | None = None
        self._compiled: dict[str, Any] = {}
        self._heartbeat: asyncio.Task[None] | None = None

    @classmethod
    def from_env(cls, **overrides: Any) -> Orchestrator:
        """Settings from ``ORCHESTRATOR_*`` variables; keyword overrides win."""
        return cls(Settings.from_env(**overrides))

    async def __aenter__(self) -> Orchestrator:
        stack = contextlib.AsyncExitStack()
        try:
            self._runtime = await stack.enter_async_context(
                Runtime.open(self.settings, agents=self._agents)
            )
            self._saver = make_checkpointer(self._runtime.db)
            self._heartbeat = asyncio.create_task(self._heartbeat_loop(), name="workflow-lease")
        except BaseException:
            await stack.aclose()
            raise
        self._stack = stack
        return self

    async def __aexit__(self, *exc: object) -> None:
        # the events still queued are sent when the runtime's bus closes (within bounds)
        if self._heartbeat is not None:
            # a cancellation a library swallowed mid-heartbeat ends the loop at its next turn
            await cancel_and_wait(self._heartbeat)
        if self._stack is not None:
            await self._stack.aclose()
        self._stack = None
        self._runtime = None

    @property
    def runtime(self) -> Runtime:
        if self._runtime is None:
            raise WrongContext("use the Orchestrator inside `async with`")
        return self._runtime

    @property
    def owner(self) -> str:
        return self.runtime.process_id

    # -- running -------------------------------------------------------------------------------

    def graph(self, name: str) -> Any:
        """The workflow's graph compiled with this orchestrator's checkpointer."""
        if name not in self._compiled:
            self._compiled[name] = compile_workflow(get_workflow(name, self._extra),
                                                    self.runtime, self._saver)
        return self._compiled[name]

    async def run(
        self,
        workflow: str,
        input: dict[str, Any] | BaseModel,
        thread_id: str | None = None,
        *,
        on_progress: ProgressCallback | None = None,
    ) -> RunResult:
        """Start ``workflow`` on ``input`` and run it until it completes, fails or pauses.

        ``input`` is a dict, or the workflow's input model already validated (the CLI checks
        it before start-up): either way it is validated once per run.

        Raises:
            InvalidInput: unknown workflow, bad input, or a thread id already in use.
        """
        spec = get_workflow(workflow, self._extra)
        thread_id, validated = await self.prepare_start(workflow, input, thread_id)
        try:
            record = await self.runtime.workflows.create(
                thread_id, workflow, validated.model_dump(mode="json"), owner=self.owner
            )
        except ValueError:
            raise thread_id_in_use(thread_id) from None
        self.runtime.bus.emit("workflow.started", {"thread_id": thread_id,
                                                   "workflow_type": workflow})
        return await self._invoke(record, _initial_input(spec, validated, record), on_progress)

    async def prepare_start(
        self, workflow: str, input: dict[str, Any] | BaseModel, thread_id: str | None
    ) -> tuple[str, BaseModel]:
        """The thread id (a new one for ``None``) and the validated input of a new run of
        ``workflow``: what :meth:`run` and the service's submit check before anything is stored.

        Raises:
            InvalidInput: unknown workflow, bad input, or a malformed thread id.
        """
        spec = get_workflow(workflow, self._extra)
        # once per run, off the event loop (validators may touch the file system, run git);
        # the graph's own check trusts it (VALIDATED_KEY below)
        validated = (input if isinstance(input, spec.input_model)
                     else await asyncio.to_thread(validate_input, spec, input))
        if thread_id is None:
            thread_id = str(uuid.uuid4())
        elif not thread_id or not thread_id.isprintable() or len(thread_id) > 200:
            raise InvalidInput(f"thread id {thread_id[:200]!r} must be 1-200 printable "
                               "characters; leave it out for a new id")
        return thread_id, validated

    async def resume(
        self,
        thread_id: str,
        value: Any = None,
        *,
        on_progress: ProgressCallback | None = None,
    ) -> RunResult:
        """Continue a workflow: answer its pending interrupt with ``value``, or carry on from
        its last checkpoint after a crash or a failure.

        Raises:
            WorkflowNotFound: no such thread id.
            WorkflowBusy: another live process is running it.
            InvalidAnswer: it waits for an answer and ``value`` is missing or does not fit the
                question's schema; or it waits for none and ``value`` was given. Nothing was
                changed: the question stays pending.
        """
        record = await self.runtime.workflows.get(thread_id)
        if record.status == "completed":
            if value is not None:
                raise InvalidAnswer(f"workflow {thread_id} is completed: it waits for no "
                                    "answer, and this one was not used")
            return RunResult(thread_id, record.workflow_type, "completed", record.result)
        if record.status == "cancelled":
            raise InvalidInput(f"workflow {thread_id} was cancelled: it cannot be resumed; "
                               "start a new run instead")
        if record.status == "running" and record.owner != self.owner and self._owner_alive(record):
            raise WorkflowBusy(
                f"workflow {thread_id} is running in live process {record.owner}; "
                "wait for it, or stop that process and resume again"
            )
        if await self.runtime.workflows.in_service_queue(thread_id):
            raise WorkflowBusy(
                f"workflow {thread_id} has a queued or running run in `orchestrator serve`; "
                "answer or cancel it through the server")
        return await self.proceed(record, value, event="workflow.resumed",
                                  on_progress=on_progress)

    async def proceed(
        self,
        record: WorkflowRecord,
        value: Any = None,
        *,
        strict: bool = True,
        event: str | None = None,
        answered_by: str | None = None,
        on_progress: ProgressCallback | None = None,
        claimed: bool = False,
        checkpointed: bool | None = None,
    ) -> RunResult:
        """Run ``record``'s workflow on from where it stands: the one path of :meth:`resume`,
        :meth:`recover` and the service's runs.

        A pending question gets ``value`` as its answer, checked against the question's schema
        BEFORE anything changes (a refused answer leaves the workflow as it was); otherwise
        (crash, failure, a queued start) the graph carries on from its last checkpoint,
        re-running only the unfinished tasks, or from its input when it has none. The row is
        claimed first (compare-and-set: ``running``, this process, a new attempt unless it was
        never started), unless the caller did (``claimed``). The run's last write of the row
        is made with ``last``: in the service it ends the run too.

        Args:
            strict: an answer that cannot be used raises :class:`InvalidAnswer`; when false
                (recover, the service's runs, whose answer was checked when it was queued) it
                is logged and the workflow carries on from its checkpoint unanswered.
            event: the event published once the row is claimed.
            answered_by: who gave ``value`` (the service's caller), for the
                ``question.answered`` event; default: the answer's own ``by``.
            claimed: ``record`` is the row as the caller already claimed it for this attempt
                (the service's run claim sets it ``running`` in the claim's own statement).
            checkpointed: whether the thread has a checkpoint, when the caller knows (the
                claim does): without one and without ``value`` there is no state to read.

        Raises:
            InvalidAnswer: (strict) ``value`` does not fit the pending question, is missing, or
                was given where no question is pending. Nothing was changed.
            WorkflowBusy: another process claimed the row first.
        """
        thread_id = record.thread_id
        snapshot = (None if checkpointed is False and value is None
                    else await self.graph(record.workflow_type).aget_state(
                        self._config(thread_id)))
        pending = snapshot.interrupts if snapshot is not None else ()
        answer = bool(pending) and (strict or value is not None)
        try:
            if answer:
                check_answer(thread_id, [i.value for i in pending], value)
            elif value is not None:
                raise InvalidAnswer(
                    f"workflow {thread_id} ({record.status}) waits for no answer, so this one "
                    "was not used; to carry on from its last checkpoint: "
                    f"orchestrator resume {thread_id}")
        except InvalidAnswer as exc:
            if strict:
                raise
            log.warning("workflow %s: the queued answer was not used (%s); carrying on from "
                        "its last checkpoint", thread_id, exc.problem)
            answer = False
        if not claimed:
            # a new attempt: stored errors are not replayed to it (a queued start is the first)
            attempt = {} if record.status == "queued" else {"attempt": "next"}
            try:
                record = await self.runtime.workflows.update(
                    thread_id, record.version, status="running", owner=self.owner,
                    heartbeat_at="now", error=None, **attempt,
                )
            except StaleWorkflowVersion as exc:
                raise WorkflowBusy(f"workflow {thread_id} was claimed by another process") from exc
        # one answer answers every pending question (check_answer fitted it to each): parallel
        # branches asking the same question (a budget, from each task) wait on one answer, and
        # LangGraph takes several only by interrupt id
        resume = (value if len(pending) <= 1 else {question.id: value for question in pending})
        graph_input: Any = (Command(resume=resume) if answer
                            else await self._restart_input(record, snapshot))
        about = {"thread_id": thread_id, "workflow_type": record.workflow_type}
        if event is not None:
            self.runtime.bus.emit(event, about)
        if answer:
            for question in pending:
                self.runtime.bus.emit("question.answered", {
                    **about, "kind": question_kind(question.value), "interrupt_id": question.id,
                    "by": answered_by or (value.get("by") if isinstance(value, dict) else None)})
        return await self._invoke(record, graph_input, on_progress,
                                  empty=checkpointed is False)

    async def _restart_input(self, record: WorkflowRecord, snapshot: Any) -> Any:
        """What carries a workflow on from its last checkpoint: nothing (LangGraph re-runs the
        unfinished tasks), or, when it has none (a queued start, or one killed after its row
        was written but before its first checkpoint; ``snapshot`` None: known to have none),
        its input again (kept by the row)."""
        if snapshot is not None and snapshot.created_at is not None:
            return None
        spec = get_workflow(record.workflow_type, self._extra)
        validated = await asyncio.to_thread(validate_input, spec, record.input)
        return _initial_input(spec, validated, record)

    async def recover(self, *, on_progress: ProgressCallback | None = None) -> list[RunResult]:
        """Continue every ``running`` workflow whose owning process died, from its last
        checkpoint. Workflows another process claims first are left to it."""
        results = []
        for record, silent in await self.runtime.workflows.running_candidates():
            if record.owner == self.owner or not self._owner_dead(record, silent):
                continue
            log.info("recovering workflow %s (owner %s died)", record.thread_id, record.owner)
            try:
                results.append(await self.proceed(record, strict=False, on_progress=on_progress))
            except WorkflowBusy:
                continue  # another recoverer won the race
        return results

    async def _invoke(
        self, record: WorkflowRecord, graph_input: Any, on_progress: ProgressCallback | None,
        *, empty: bool = False,
    ) -> RunResult:
        """Run the graph on ``graph_input`` and record how it ended; ``empty``: the thread is
        known to have no checkpoint (LangGraph's first read is not sent)."""
        thread_id, workflow = record.thread_id, record.workflow_type
        about = {"thread_id": thread_id, "workflow_type": workflow}
        emit = self.runtime.bus.emit
        graph = self.graph(workflow)
        config = self._config(thread_id)
        # agent calls carry the attempt (orchestrator.calls): an error stored for an earlier
        # attempt is never replayed to this one
        config["configurable"][ATTEMPT_KEY] = record.attempt
        config["configurable"][VALIDATED_KEY] = True  # by run(), or _restart_input()
        tracker = ProgressTracker(thread_id, on_progress)
        version = record.version
        step_started = last_step_write = time.perf_counter()
        last_values: dict[str, Any] | None = None
        paused = False
        try:
            with use_runtime(self.runtime), (known_empty(thread_id) if empty
                                             else contextlib.nullcontext()):
                # "values" gives the final state, so a run that ends without an interrupt
                # needs no get_state afterwards (measured: ~1.4 ms of a 40 ms 10-step run)
                async for mode, chunk in graph.astream(
                    graph_input, config, stream_mode=["updates", "values"],
                    durability=self.settings.durability,
                ):
                    if mode == "values":
                        last_values = chunk if isinstance(chunk, dict) else None
                        continue
                    for node, update in chunk.items():
                        if node == "__interrupt__":
                            paused = True
                            continue
                        now = time.perf_counter()
                        WORKFLOW_STEP_SECONDS.labels(workflow, node).observe(now - step_started)
                        emit("step.finished", {**about, "node": node,
                                               "seconds": round(now - step_started, 6)})
                        step_started = now
                        tracker.update(node, update)
                        if now - last_step_write > 1.0:  # a cheap, throttled "where is it"
                            last_step_write = now
                            version = await self._set(thread_id, version, current_step=node)
            if paused or last_values is None:
                snapshot = await graph.aget_state(config)
                interrupts = [{"id": i.id, "value": i.value} for i in snapshot.interrupts]
                values, pending = snapshot.values or {}, list(snapshot.next)
            else:  # it ran to its end: nothing is next, and the last values are final
                interrupts, values, pending = [], last_values, []
        except asyncio.CancelledError:
            raise  # the record stays `running`: recover() or resume picks it up
        except LeaseLost:
            raise  # (in the service) another runner has the run: nothing more is written
        except Exception as exc:
            error = exc.to_dict() if isinstance(exc, OrchestratorError) else {
                "code": "internal_error", "message": f"{type(exc).__name__}: {exc}"}
            # info, not warning: the error is returned to the caller, who reports it once
            log.info("workflow %s failed: %s", thread_id, error["message"])
            seconds = round(time.perf_counter() - step_started, 6)
            node = failed_node(exc)
            if node is None:  # not an agent call's failure: the step(s) left pending
                with contextlib.suppress(Exception):
                    node = ",".join((await graph.aget_state(config)).next) or None
            emit("step.failed", {**about, "node": node, "seconds": seconds, "error": error})
            with contextlib.suppress(Exception):  # the run's failure is reported all the same
                await self._record_failure(config, exc)
            with contextlib.suppress(Exception):
                await self._set(thread_id, version, status="failed", error=error, owner=None,
                                last=True)
            WORKFLOW_RUNS.labels(workflow, "failed").inc()
            emit("workflow.failed", {**about, **error})
            return RunResult(thread_id, workflow, "failed", None, [], error)
        final = values.get("final_result")
        agents = sorted({*values.get("agent_assignments", {}).values()})
        if interrupts:
            status = "interrupted"
        elif pending:
            status = "running"  # stopped by something other than an interrupt: resumable
        else:
            status = "failed" if is_failed(final) else "completed"
        error = final.get("error") if status == "failed" and isinstance(final, dict) else None
        await self._set(
            thread_id, version, status=status, result=final, owner=None if status != "running"
            else self.owner, current_step=(pending[0] if pending else "__end__"),
            participating_agents=agents, error=error, last=True,
        )
        WORKFLOW_RUNS.labels(workflow, status).inc()
        for question in interrupts:
            emit("question.raised", {**about, "interrupt_id": question["id"],
                                     "kind": question_kind(question["value"]),
                                     "question": question_text(question["value"])})
        emit(f"workflow.{status}", {**about, **error_fields(error)})
        return RunResult(thread_id, workflow, status, final, interrupts, error)

    async def _record_failure(self, config: dict[str, Any], exc: BaseException) -> None:
        """Write the failed call's state updates (``error_log``, ``agent_status``...) into the
        run's last checkpoint.

        LangGraph drops a failing node's writes and keeps the node pending, so a resume runs it
        again. The updates go in as the checkpoint's *null writes* (what LangGraph applies
        before the next step, as for ``Command(update=...)``): ``get_state`` shows them at
        once, a resume applies them, and the pending node stays pending.
        """
        updates = failure_updates(exc)
        if not updates:
            return
        saved = await self._saver.aget_tuple(  # type: ignore[union-attr]
            {"configurable": {"thread_id": config["configurable"]["thread_id"],
                              "checkpoint_ns": ""}})
        if saved is None:
            return  # failed before the first checkpoint: nothing to record it in
        # writes are stored by (task, index), first write wins: keep the earlier null writes
        # (from an earlier failure at this checkpoint) in their places, add these after them
        earlier = [(ch, v) for tid, ch, v in saved.pending_writes or [] if tid == NULL_TASK_ID]
        await self._saver.aput_writes(  # type: ignore[union-attr]
            saved.config, [*earlier, *updates.items()], NULL_TASK_ID)

    async def _set(self, thread_id: str, version: int, *, last: bool = False,
                   **changes: Any) -> int:
        """The row's compare-and-set; ``last``: the run's last write (in the service, it ends
        the run too)."""
        record = await self.runtime.workflows.update(thread_id, version, last=last, **changes)
        return record.version

    @staticmethod
    def _config(thread_id: str) -> dict[str, Any]:
        return {"configurable": {"thread_id": thread_id}, "recursion_limit": 10_000}

    # -- inspecting ----------------------------------------------------------------------------

    async def list_workflows(
        self, status: str | None = None, workflow_type: str | None = None, *, limit: int = 100
    ) -> list[WorkflowRecord]:
        return await self.runtime.workflows.list(status, workflow_type, limit=limit)

    async def get(self, thread_id: str) -> WorkflowDetails:
        """The workflow's record, its current graph state and pending interrupts.

        Raises:
            WorkflowNotFound: no such thread id.
        """
        record = await self.runtime.workflows.get(thread_id)
        snapshot = await self.graph(record.workflow_type).aget_state(self._config(thread_id))
        return WorkflowDetails(
            record,
            dict(snapshot.values or {}),
            list(snapshot.next),
            [{"id": i.id, "value": i.value} for i in snapshot.interrupts],
        )

    async def history(self, thread_id: str) -> list[HistoryEntry]:
        """The workflow's checkpoints, oldest first, with their names."""
        return await time_travel.history(self, thread_id)

    async def name_checkpoint(self, thread_id: str, name: str, checkpoint_id: str | None = None) -> str:
        """Label a checkpoint (default: the latest) so it can be found and restored by name."""
        return await time_travel.name_checkpoint(self, thread_id, name, checkpoint_id)

    async def restore_checkpoint(self, thread_id: str, name: str) -> str:
        """Time travel to the checkpoint named ``name``: the thread's next ``resume`` continues
        from there (:func:`orchestrator.time_travel.restore_checkpoint` says how)."""
        return await time_travel.restore_checkpoint(self, thread_id, name)

    # -- owners --------------------------------------------------------------------------------

    async def _heartbeat_loop(self) -> None:
        # ends on a cancellation even when the database driver swallowed it (closing waits
        # for this task: a loop that went on would hold the close forever)
        while not cancel_requested():
            await asyncio.sleep(self.settings.workflow_lease / 3)
            try:
                await self.runtime.workflows.heartbeat(self.owner)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("workflow lease heartbeat failed: %s", exc)

    def _owner_alive(self, record: WorkflowRecord) -> bool:
        return not self._owner_dead(record, None)

    def _owner_dead(self, record: WorkflowRecord, silent_for: float | None) -> bool:
        if not record.owner:
            return True
        alive = process_alive(record.owner)  # None unless the pid provably names the owner
        if alive is not None:
            return not alive
        if silent_for is None and record.heartbeat_at is not None:
            from datetime import UTC, datetime

            silent_for = (datetime.now(UTC) - record.heartbeat_at).total_seconds()
        return silent_for is None or silent_for > self.settings.workflow_lease


def thread_id_in_use(thread_id: str) -> InvalidInput:
    """The error for a new run given a thread id that is already used."""
    return InvalidInput(f"thread id {thread_id!r} is already used; resume it with "
                        f"`orchestrator resume {thread_id}` or pick another id")


def _initial_input(spec: WorkflowSpec, validated: Any, record: WorkflowRecord) -> dict[str, Any]:
    """The graph's input state for a new run of ``record``."""
    return {
        **spec.make_input(validated),
        "task_id": record.thread_id,
        "workflow_type": record.workflow_type,
        "started_at": record.created_at.isoformat(),
        "updated_at": now_iso(),
    }
