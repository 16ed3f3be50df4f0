"""Waking lock waiters: in arrival order, one per release, by the release itself in the
releasing process and by ``LISTEN``/``NOTIFY`` in the others, so that waiters never busy-poll."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from typing import Any

from psycopg import AsyncConnection

from ..outage import Outage

__all__ = ["CHANNEL", "SEP", "WOKEN", "Waking", "nap_over"]

log = logging.getLogger(__name__)

CHANNEL = "orchestrator_locks"
SEP = "\x1f"

WOKEN = True  # a waiter's future result: a release woke it (False: its nap ran out)


def nap_over(fut: asyncio.Future[bool]) -> None:
    if not fut.done():
        fut.set_result(False)


class Waking:
    """Waiter queues and the ``LISTEN`` connection of
    :class:`~orchestrator.locks.ResourceLockManager` (a part of it, not used alone)."""

    namespace: str
    listen_url: str | None
    _waiters: dict[str, deque[asyncio.Future[bool]]]
    _own_notifies: dict[tuple[int, str], int]
    _listening: asyncio.Event
    _closing: bool

    def _enqueue(self, resource: str, *, first: bool) -> asyncio.Future[bool]:
        fut: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        queue = self._waiters.get(resource)
        if queue is None:
            queue = self._waiters[resource] = deque()
        if first:
            queue.appendleft(fut)  # woken before but beaten to it: it keeps its turn
        else:
            queue.append(fut)
        return fut

    def _dequeue(self, resource: str, fut: asyncio.Future[bool]) -> None:
        queue = self._waiters.get(resource)
        if queue is not None:
            with contextlib.suppress(ValueError):
                queue.remove(fut)
            if not queue:
                del self._waiters[resource]

    def _wake_one(self, resource: str) -> None:
        """Wake the longest-waiting waiter of ``resource`` in this process, if any."""
        queue = self._waiters.get(resource)
        if queue is None:
            return
        while queue:
            fut = queue.popleft()
            if not fut.done():
                fut.set_result(WOKEN)
                break
        if not queue:
            del self._waiters[resource]

    def _wake_all(self) -> None:
        for resource in list(self._waiters):
            for fut in self._waiters.pop(resource):
                if not fut.done():
                    fut.set_result(WOKEN)

    def _expect_own_notify(self, conn: AsyncConnection[Any], resource: str) -> tuple[int, str] | None:
        if not self._listening.is_set():
            return None
        key = (conn.info.backend_pid, resource)
        self._own_notifies[key] = self._own_notifies.get(key, 0) + 1
        return key

    def _forget_own_notify(self, key: tuple[int, str] | None) -> None:
        if key is None:
            return
        left = self._own_notifies.get(key, 0) - 1
        if left > 0:
            self._own_notifies[key] = left
        else:
            self._own_notifies.pop(key, None)

    async def _listen(self) -> None:
        assert self.listen_url is not None
        backoff = 0.1
        prefix = self.namespace + SEP
        outage = Outage("the lock listener's connection", log)  # one warning per outage
        while not self._closing:
            try:
                async with await AsyncConnection.connect(self.listen_url, autocommit=True) as conn:
                    await conn.execute(f"LISTEN {CHANNEL}")
                    self._listening.set()
                    outage.over()
                    backoff = 0.1
                    while not self._closing:
                        # a bounded wait, so closing never has to cancel inside psycopg
                        async for note in conn.notifies(timeout=1.0):
                            payload = note.payload
                            if not payload.startswith(prefix):
                                continue
                            resource = payload[len(prefix):]
                            key = (note.pid, resource)
                            if key in self._own_notifies:
                                self._forget_own_notify(key)  # its release woke a waiter
                            elif resource in self._waiters:
                                self._wake_one(resource)
                return
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self._listening.clear()
                self._own_notifies.clear()
                outage.failed(exc)
                # Wake every waiter: a release may have been missed while disconnected.
                self._wake_all()
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)
