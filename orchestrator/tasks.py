"""Stopping a helper task without swallowing the caller's own cancellation.

``task.cancel(); with suppress(CancelledError): await task`` is the usual way to stop a task
we own, but it also swallows a cancellation of the *calling* task that lands while it waits,
and then the caller carries on as if nothing happened. :func:`cancel_and_wait` absorbs only
what the stopped task ends with.
"""

from __future__ import annotations

import asyncio

__all__ = ["cancel_and_wait", "cancel_requested"]


def cancel_requested() -> bool:
    """Whether the current task has a cancellation pending (one a library may have swallowed:
    ``Task.cancelling()`` stays raised until the task ends or uncancels)."""
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


async def cancel_and_wait(task: asyncio.Task[object]) -> None:
    """Cancel ``task`` and wait until it has ended, absorbing whatever it ends with.

    Raises:
        asyncio.CancelledError: the calling task was cancelled while it waited (never
            swallowed, even when the stopped task itself ends normally).
    """
    current = asyncio.current_task()
    before = current.cancelling() if current is not None else 0
    task.cancel()
    try:
        await task
    except (asyncio.CancelledError, Exception):
        if current is not None and current.cancelling() > before:
            raise
    if current is not None and current.cancelling() > before:
        raise asyncio.CancelledError
