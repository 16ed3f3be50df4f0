"""The worker's life: registering its agents and starting its loops, and a graceful stop
(stop reading, let in-flight handlers finish within a grace period, deregister)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

from ..metrics import LIVE_AGENTS, WORKER_CONCURRENCY
from .autoscale import _Autoscaling
from .dispatch import _Dispatching
from .heartbeat import _Heartbeat

log = logging.getLogger(__name__)

#: How long each step of stopping may take (marking draining, deregistering, announcing):
#: the services may be gone.
_STOP_STEP_S = 3.0


class Worker(_Dispatching, _Autoscaling, _Heartbeat):
    """Hosts ``agents`` on ``bus`` and ``registry``. Use ``async with`` or start/stop.

    Handler concurrency per agent type scales between ``min_concurrency`` and
    ``max_concurrency`` on the type's backlog (entries not yet delivered plus delivered but
    unacknowledged), and back down one step per ``scale_down_after`` seconds of spare capacity.
    Entries unacknowledged for ``visibility_timeout`` seconds (their consumer died) are
    reclaimed; one delivered more than ``max_deliveries`` times is dead-lettered.
    """

    async def __aenter__(self) -> Worker:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def start(self) -> None:
        for agent in self.agents:
            await self.bus.ensure_group(agent.agent_type)
            await self.registry.register(
                self.agent_ids[agent.agent_type],
                agent.agent_type,
                capabilities=agent.capabilities,
                version=agent.version,
                metadata={"request_types": sorted(agent.handlers), "worker": self.name},
            )
            LIVE_AGENTS.labels(agent.agent_type).inc()
            WORKER_CONCURRENCY.labels(agent.agent_type).set(self.min_concurrency)
            self.bus.emit("agent.online", {"agent": agent.agent_type,
                                           "instance": self.agent_ids[agent.agent_type],
                                           "worker": self.name})
        for agent in self.agents:
            t = agent.agent_type
            self._loops += [
                asyncio.create_task(self._consume(agent), name=f"consume-{t}"),
                asyncio.create_task(self._reclaim(agent), name=f"reclaim-{t}"),
                asyncio.create_task(self._scale(agent), name=f"scale-{t}"),
            ]
        self._loops.append(asyncio.create_task(self._heartbeat(), name="agent-heartbeat"))
        self._loops.append(asyncio.create_task(self._renew_claims(), name="claim-renewer"))

    async def stop(self, grace: float = 30.0) -> None:
        """Stop reading, let in-flight requests finish for up to ``grace`` seconds, deregister.

        PostgreSQL or Redis may be gone (often why the worker is stopped): every step is
        bounded, and a service found gone is reported once and not asked again. The rows of a
        worker that could not deregister go offline when their heartbeat ages out.
        """
        if self._stopping.is_set():
            return
        self._stopping.set()
        ids = list(self.agent_ids.values())
        registry_ok = await self._bounded(
            "marking the agents draining", lambda: self.registry.set_status(ids, "draining"))
        readers = [t for t in self._loops if t.get_name().startswith(("consume-", "reclaim-"))]
        if readers:
            await self._wake_readers(readers, timeout=self.block_ms / 1000 + 5)
        if self._inflight:
            _done, pending = await asyncio.wait(self._inflight, timeout=grace)
            for task in pending:
                task.cancel()
            if pending:
                log.warning("%d request(s) still running after %.0fs: left pending for "
                            "another consumer", len(pending), grace)
                for task in pending:
                    log.warning("still running: %s", "".join(
                        f"\n  {f.f_code.co_filename}:{f.f_lineno} {f.f_code.co_name}"
                        for f in task.get_stack()))
                await asyncio.gather(*pending, return_exceptions=True)
        for task in self._loops:
            task.cancel()
        if self._loops:
            await asyncio.wait(self._loops, timeout=_STOP_STEP_S)
        if self.models is not None and self.models.ledger is not None:
            # the ledger rows of requests cancelled above (the others' were written already)
            await self._bounded("writing the ledger", self.models.ledger.drain)
        for agent in self.agents:
            LIVE_AGENTS.labels(agent.agent_type).dec()
        if registry_ok and await self._bounded(
            "deregistering the agents", lambda: self.registry.deregister(ids)
        ):
            for agent in self.agents:
                self.bus.emit("agent.offline", {"agent": agent.agent_type,
                                                "instance": self.agent_ids[agent.agent_type],
                                                "worker": self.name, "reason": "stopped"})

    async def _wake_readers(self, readers: list[asyncio.Task[None]], timeout: float) -> None:
        """Wait up to ``timeout`` for ``readers`` to end, waking their blocking reads meanwhile
        (a read that began just after a wake-up is woken by the next one), so a stop takes
        milliseconds instead of the rest of a block. If Redis cannot be asked, the reads end
        when their block runs out, as they would without waking."""
        deadline = asyncio.get_running_loop().time() + timeout
        pending = set(readers)
        while pending:
            left = deadline - asyncio.get_running_loop().time()
            if left <= 0:
                return
            with contextlib.suppress(Exception):
                async with asyncio.timeout(min(left, 1.0)):
                    await asyncio.gather(*(r.wake(self.bus.redis)
                                           for r in list(self._readers.values())))
            _done, pending = await asyncio.wait(pending, timeout=min(left, 0.1))

    async def _bounded(self, what: str, step: Callable[[], Awaitable[object]]) -> bool:
        """Run one step of stopping for up to ``_STOP_STEP_S``; whether it went through (a
        failure is logged once, here)."""
        try:
            async with asyncio.timeout(_STOP_STEP_S):
                await step()
            return True
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            problem = (f"no answer within {_STOP_STEP_S:.0f}s" if isinstance(exc, TimeoutError)
                       else str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
            log.warning("stopping: %s failed (%s); going on without it", what, problem)
            return False

    async def wait_stopped(self) -> None:
        await self._stopping.wait()
