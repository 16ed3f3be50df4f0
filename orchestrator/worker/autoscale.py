"""Autoscaling: each agent type's handler concurrency follows its backlog."""

from __future__ import annotations

import asyncio
import logging
import time

from ..agent import Agent
from ..metrics import WORKER_BACKLOG, WORKER_CONCURRENCY
from .state import _WorkerState

log = logging.getLogger(__name__)


class _Autoscaling(_WorkerState):
    async def _scale(self, agent: Agent) -> None:
        """Set the type's concurrency from its backlog, between the minimum and maximum."""
        capacity = self.capacity[agent.agent_type]
        spare_since: float | None = None
        while not self._stopping.is_set():
            await asyncio.sleep(self.scale_interval)
            try:
                backlog = await self.bus.backlog(agent.agent_type)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.debug("backlog of %s unknown: %s", agent.agent_type, exc)
                continue
            want = max(self.min_concurrency, min(self.max_concurrency, backlog))
            now = time.monotonic()
            if want > capacity.limit:
                log.info("scaling %s up to %d (backlog %d)", agent.agent_type, want, backlog)
                await capacity.set_limit(want)
                spare_since = None
            elif want < capacity.limit:
                spare_since = spare_since or now
                if now - spare_since >= self.scale_down_after:
                    await capacity.set_limit(capacity.limit - 1)
                    spare_since = now
            else:
                spare_since = None
            WORKER_CONCURRENCY.labels(agent.agent_type).set(capacity.limit)
            WORKER_BACKLOG.labels(agent.agent_type).set(backlog)
