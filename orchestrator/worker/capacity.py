"""The handler slots of one agent type: a semaphore whose limit the autoscaler changes."""

from __future__ import annotations

import asyncio
import contextlib


class _Capacity:
    """A semaphore whose limit can change while it is in use (for autoscaling).

    Releasing is synchronous (a done callback calls it): no task per request to give a slot
    back, and waiters are woken only when a slot is free.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.in_use = 0
        self._waiters: list[asyncio.Future[None]] = []

    @property
    def free(self) -> int:
        return max(self.limit - self.in_use, 0)

    async def wait_free(self, at_least: int = 1) -> None:
        """Until at least ``at_least`` slots (capped at the limit) are free."""
        while self.in_use > self.limit - min(at_least, self.limit):
            waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            try:
                await waiter
            finally:
                with contextlib.suppress(ValueError):
                    self._waiters.remove(waiter)

    async def acquire(self) -> None:
        await self.wait_free()
        self.in_use += 1

    def release(self) -> None:
        self.in_use -= 1
        self._wake()

    async def set_limit(self, limit: int) -> None:
        self.limit = limit
        self._wake()

    def _wake(self) -> None:
        if self.in_use < self.limit:
            for waiter in self._waiters:
                if not waiter.done():
                    waiter.set_result(None)
