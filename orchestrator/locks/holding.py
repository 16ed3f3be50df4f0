"""The ``async with`` of a lock held for one block of code (one lock or several)."""

from __future__ import annotations

import asyncio
import time
from types import TracebackType
from typing import TYPE_CHECKING, Any

from ..errors import LockLost
from ..metrics import LOCKS_HELD

if TYPE_CHECKING:
    from .manager import Lease, ResourceLockManager

__all__ = ["Holding"]


class Holding:
    """The ``async with`` of :meth:`ResourceLockManager.acquire` and ``acquire_many``."""

    __slots__ = ("_manager", "_resources", "_holder", "_ttl", "_wait_timeout", "_single",
                 "_leases", "_thread_id")

    def __init__(self, manager: ResourceLockManager, resources: tuple[str, ...], holder: str,
                 ttl: float, wait_timeout: float, *, single: bool,
                 thread_id: str | None = None) -> None:
        self._manager = manager
        self._resources = resources
        self._holder = holder
        self._ttl = ttl
        self._wait_timeout = wait_timeout
        self._single = single
        self._thread_id = thread_id
        self._leases: dict[str, Lease] = {}

    async def __aenter__(self) -> Any:
        manager, leases, ttl = self._manager, self._leases, self._ttl
        deadline = time.monotonic() + self._wait_timeout
        try:
            for resource in sorted(self._resources):
                lease = await manager._acquire(
                    resource, self._holder, ttl, max(deadline - time.monotonic(), 0.0),
                    self._thread_id)
                manager._start_renewal(lease, ttl)
                leases[resource] = lease
                LOCKS_HELD.inc()
        except BaseException:
            await self._release_all()
            raise
        if self._single:
            return leases[self._resources[0]]
        return tuple(leases[r] for r in self._resources)

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        lost = [lease.resource for lease in self._leases.values() if lease.lost]
        await self._release_all()
        if lost and exc_type is None:
            raise LockLost(
                f"lost the lock on {', '.join(lost)} before the work finished; "
                "its result must not be trusted: re-run the step"
            )

    async def _release_all(self) -> None:
        leases, self._leases = list(self._leases.values()), {}
        for i, lease in enumerate(leases):
            LOCKS_HELD.dec()
            try:
                await self._manager._release_quietly(lease)
            except asyncio.CancelledError:
                for rest in leases[i + 1:]:  # cancelled: the others are released regardless
                    LOCKS_HELD.dec()
                    self._manager._release_later(rest)
                raise
