"""Registry heartbeats: the worker's agent rows stay fresh, dead instances are marked offline."""

from __future__ import annotations

import asyncio
import logging

from ..outage import Outage
from .state import _WorkerState

log = logging.getLogger(__name__)


class _Heartbeat(_WorkerState):
    async def _heartbeat(self) -> None:
        ids = list(self.agent_ids.values())
        outage = Outage("heartbeat", log)
        while not await self._stopped_within(self.heartbeat_interval):
            try:
                # bounded: a beat that cannot go through in a few intervals is a lost service
                async with asyncio.timeout(max(self.heartbeat_interval * 3, 5.0)):
                    await self._beat(ids)
                outage.over()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                outage.failed(exc if str(exc) else TimeoutError("no answer in time"))

    async def _beat(self, ids: list[str]) -> None:
        """One heartbeat: refresh this worker's rows (putting back any someone deleted), and
        mark the instances whose heartbeats stopped offline."""
        alive = await self.registry.heartbeat(ids)
        if alive < len(ids):  # someone deleted our rows: put them back
            for agent in self.agents:
                await self.registry.register(
                    self.agent_ids[agent.agent_type], agent.agent_type,
                    capabilities=agent.capabilities, version=agent.version,
                )
        for agent_id, agent_type in (await self.registry.sweep()).items():
            self.bus.emit("agent.offline", {"agent": agent_type, "instance": agent_id,
                                            "reason": "silent"})
