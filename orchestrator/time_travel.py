"""A workflow's checkpoints: their history, names, and time travel to a named one.

The :class:`~orchestrator.facade.Orchestrator` methods ``history``, ``name_checkpoint`` and
``restore_checkpoint`` are these functions.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING

from .errors import CheckpointNotFound, StaleWorkflowVersion, WorkflowBusy
from .results import HistoryEntry

if TYPE_CHECKING:
    from .facade import Orchestrator

__all__ = ["history", "name_checkpoint", "restore_checkpoint"]


async def history(orch: Orchestrator, thread_id: str) -> list[HistoryEntry]:
    """The workflow's checkpoints, oldest first, with their names."""
    record = await orch.runtime.workflows.get(thread_id)
    names: dict[str, list[str]] = {}
    for cp in await orch.runtime.workflows.named_checkpoints(thread_id):
        names.setdefault(cp.checkpoint_id, []).append(cp.name)
    entries = []
    graph = orch.graph(record.workflow_type)
    async for snap in graph.aget_state_history(orch._config(thread_id)):
        cid = snap.config["configurable"]["checkpoint_id"]
        meta = snap.metadata or {}
        entries.append(HistoryEntry(cid, int(meta.get("step", -1)), str(meta.get("source", "")),
                                    snap.created_at or "", list(snap.next), names.get(cid, [])))
    entries.reverse()
    return entries

async def name_checkpoint(orch: Orchestrator, thread_id: str, name: str,
                          checkpoint_id: str | None = None) -> str:
    """Label a checkpoint (default: the latest) so it can be found and restored by name."""
    record = await orch.runtime.workflows.get(thread_id)
    if checkpoint_id is None:
        snapshot = await orch.graph(record.workflow_type).aget_state(orch._config(thread_id))
        checkpoint_id = snapshot.config["configurable"]["checkpoint_id"]
    await orch.runtime.workflows.name_checkpoint(thread_id, name, checkpoint_id)
    return checkpoint_id

async def restore_checkpoint(orch: Orchestrator, thread_id: str, name: str) -> str:
    """Time travel to the checkpoint named ``name``: the thread's next ``resume`` continues
    from there.

    LangGraph forks it (``update_state`` as ``__copy__``): a copy of that checkpoint, with
    its values, parent and next steps, is saved as the thread's newest, so the checkpoints
    after it stay in the history (and can be restored in turn). What was written at that
    checkpoint is not copied: the steps after it run again, and a question asked there is
    asked again. The workflow row goes back to ``interrupted`` (paused until ``resume``; no
    owner, so no ``recover`` picks it up on its own) without the result or error of the
    later timeline.

    Returns:
        The restored checkpoint's id.

    Raises:
        WorkflowNotFound: no such thread id.
        CheckpointNotFound: no checkpoint of that name (the message lists the names there
            are), or it is no longer stored.
        WorkflowBusy: the workflow is queued or running, or has a queued or running run.
    """

    record = await orch.runtime.workflows.get(thread_id)
    named = {cp.name: cp for cp in await orch.runtime.workflows.named_checkpoints(thread_id)}
    if name not in named:
        raise CheckpointNotFound(
            f"workflow {thread_id} has no checkpoint named {name!r}; its named checkpoints: "
            f"{', '.join(sorted(named)) or 'none'} (`orchestrator show {thread_id} "
            "--history` lists its checkpoints)")
    active = await orch.runtime.db.fetchone(
        "SELECT EXISTS (SELECT 1 FROM runs WHERE thread_id = %s "
        "AND status IN ('queued', 'running')) AS busy", (thread_id,))
    if record.status in ("queued", "running") or (active and active["busy"]):
        raise WorkflowBusy(
            f"workflow {thread_id} is {record.status} or has a run queued or running; "
            "restore it once it has paused or ended (or cancel it first)")
    target = named[name]
    config = {"configurable": {"thread_id": thread_id, "checkpoint_ns": target.checkpoint_ns,
                               "checkpoint_id": target.checkpoint_id}}
    if await orch._saver.aget_tuple(config) is None:  # type: ignore[union-attr]
        raise CheckpointNotFound(f"checkpoint {name!r} ({target.checkpoint_id}) of workflow "
                                 f"{thread_id} is no longer stored")
    try:  # held as running while it forks: a resume meanwhile is refused as busy
        claimed = await orch.runtime.workflows.update(
            thread_id, record.version, status="running", owner=orch.owner, heartbeat_at="now")
    except StaleWorkflowVersion as exc:
        raise WorkflowBusy(f"workflow {thread_id} was changed by another process") from exc
    graph = orch.graph(record.workflow_type)
    try:
        await graph.aupdate_state(config, None, as_node="__copy__")
        snapshot = await graph.aget_state(orch._config(thread_id))
    except BaseException:
        with contextlib.suppress(Exception):  # as it was; the failure is what is reported
            await orch._set(thread_id, claimed.version, status=record.status,
                            owner=record.owner)
        raise
    await orch._set(thread_id, claimed.version, status="interrupted", owner=None, result=None,
                    error=None, current_step=(snapshot.next[0] if snapshot.next else "__end__"))
    orch.runtime.bus.emit("workflow.restored", {
        "thread_id": thread_id, "workflow_type": record.workflow_type, "name": name,
        "checkpoint_id": target.checkpoint_id})
    return target.checkpoint_id
