"""Locks a workflow holds across steps: a rollout's ``deploy:<name>``, for instance.

:func:`~orchestrator.calls.call_agent` holds its locks for one call. Some resources must stay
a workflow's for many steps, through interrupts and crashes: a second rollout of the same
deployment must be refused for as long as the first one lasts, and the first one resuming
after a crash is still the same holder. These locks are held by the workflow (its thread
id), not by a process; taking one again from the same workflow extends it and keeps its
fencing token, which the workflow passes to agents with ``call_agent(..., fencing=...)``.
"""

from __future__ import annotations

from ..calls import _graph_context
from ..errors import WrongContext
from ..runtime import current_runtime
from .manager import Lease

__all__ = ["hold_lock", "release_lock", "workflow_holder"]


def workflow_holder(thread_id: str) -> str:
    """The holder name of locks held by workflow ``thread_id``."""
    return f"workflow:{thread_id}"


def _thread_id() -> str:
    thread_id, _ = _graph_context()
    if thread_id is None:
        raise WrongContext("hold_lock/release_lock are for graph nodes (no thread id here)")
    return thread_id


async def hold_lock(resource: str, *, ttl: float = 3600.0) -> Lease:
    """Take (or extend) ``resource`` for the running workflow for ``ttl`` seconds.

    Raises:
        ResourceLocked: another workflow or process holds it; the error names the holder.
    """
    rt = await current_runtime()
    thread_id = _thread_id()
    return await rt.locks.hold(resource, workflow_holder(thread_id), ttl, thread_id=thread_id)


async def release_lock(resource: str) -> bool:
    """Release ``resource`` if the running workflow holds it; returns whether it did."""
    rt = await current_runtime()
    thread_id = _thread_id()
    return await rt.locks.release_held(resource, workflow_holder(thread_id),
                                       thread_id=thread_id)
