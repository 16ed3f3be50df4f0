"""The worker runtime: hosts agents, consumes their request streams, answers every request.

A worker registers each agent instance in the registry, heartbeats, reads requests (higher
priority first) with bounded concurrency, and answers each one: a handler's exception becomes
an ``error`` response, never a dead worker. Responses are stored by ``request_id`` before they
are acknowledged, so a redelivered or re-sent request is answered from the store, and an
``inflight`` claim keeps two consumers from executing the same request at once.

On :meth:`Worker.stop` (SIGTERM in ``orchestrator worker``) it stops reading, lets in-flight
handlers finish within a grace period, and deregisters; a handler still running after that is
cancelled and its message stays pending for another consumer.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from .agent import Agent, HandlerError, RequestContext
from .bus import Delivery, EventBus
from .errors import OrchestratorError
from .messages import AgentRequest, AgentResponse, ErrorInfo
from .metrics import BUS_DEAD_LETTERS, BUS_HANDLED, LIVE_AGENTS
from .registry import AgentRegistry

__all__ = ["Worker"]

log = logging.getLogger(__name__)

_TRANSIENT = (TimeoutError, ConnectionError, OSError)


class Worker:
    """Hosts ``agents`` on ``bus`` and ``registry``. Use ``async with`` or start/stop."""

    def __init__(
        self,
        bus: EventBus,
        registry: AgentRegistry,
        agents: Sequence[Agent],
        *,
        concurrency: int = 4,
        heartbeat_interval: float = 2.0,
        claim_ttl: float = 30.0,
        block_ms: int = 1000,
        name: str | None = None,
    ) -> None:
        if not agents:
            raise ValueError("a worker needs at least one agent")
        self.bus = bus
        self.registry = registry
        self.agents = list(agents)
        self.concurrency = concurrency
        self.heartbeat_interval = heartbeat_interval
        self.claim_ttl_ms = int(claim_ttl * 1000)
        self.block_ms = block_ms
        self.name = name or f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self.agent_ids = {a.agent_type: f"{a.agent_type}@{self.name}" for a in self.agents}
        self._stopping = asyncio.Event()
        self._loops: list[asyncio.Task[None]] = []
        self._inflight: set[asyncio.Task[None]] = set()
        self.handled = 0

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
            await self.bus.publish(
                "agent.status_change",
                {"agent_id": self.agent_ids[agent.agent_type], "status": "online"},
            )
        for agent in self.agents:
            self._loops.append(
                asyncio.create_task(self._consume(agent), name=f"consume-{agent.agent_type}")
            )
        self._loops.append(asyncio.create_task(self._heartbeat(), name="agent-heartbeat"))

    async def stop(self, grace: float = 30.0) -> None:
        """Stop reading, let in-flight requests finish for up to ``grace`` seconds, deregister."""
        if self._stopping.is_set():
            return
        self._stopping.set()
        for agent_id in self.agent_ids.values():
            with contextlib.suppress(Exception):
                await self.registry.set_status(agent_id, "draining")
        consumers = [t for t in self._loops if t.get_name().startswith("consume-")]
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.gather(*consumers, return_exceptions=True), 5)
        if self._inflight:
            _done, pending = await asyncio.wait(self._inflight, timeout=grace)
            for task in pending:
                task.cancel()
            if pending:
                log.warning("%d request(s) still running after %.0fs: left pending for "
                            "another consumer", len(pending), grace)
                await asyncio.gather(*pending, return_exceptions=True)
        for task in self._loops:
            task.cancel()
        await asyncio.gather(*self._loops, return_exceptions=True)
        for agent in self.agents:
            agent_id = self.agent_ids[agent.agent_type]
            LIVE_AGENTS.labels(agent.agent_type).dec()
            with contextlib.suppress(Exception):
                await self.registry.deregister(agent_id)
                await self.bus.publish("agent.status_change", {"agent_id": agent_id,
                                                               "status": "stopped"})

    async def wait_stopped(self) -> None:
        await self._stopping.wait()

    # -- loops ---------------------------------------------------------------------------------

    async def _heartbeat(self) -> None:
        ids = list(self.agent_ids.values())
        while not self._stopping.is_set():
            await asyncio.sleep(self.heartbeat_interval)
            try:
                alive = await self.registry.heartbeat(ids)
                if alive < len(ids):  # someone deleted our rows: put them back
                    for agent in self.agents:
                        await self.registry.register(
                            self.agent_ids[agent.agent_type], agent.agent_type,
                            capabilities=agent.capabilities, version=agent.version,
                        )
                for agent_id in await self.registry.sweep():
                    await self.bus.publish(
                        "agent.status_change", {"agent_id": agent_id, "status": "offline"}
                    )
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("heartbeat failed: %s", exc)

    async def _consume(self, agent: Agent) -> None:
        slots = asyncio.Semaphore(self.concurrency)
        agent_id = self.agent_ids[agent.agent_type]
        backoff = 0.05
        while not self._stopping.is_set():
            await slots.acquire()
            free = 1
            # take every free slot for one read, so a burst is fetched in one round trip
            while free < self.concurrency and not slots.locked():
                await slots.acquire()
                free += 1
            try:
                deliveries = await self.bus.read_requests(
                    agent.agent_type, self.name, count=free, block_ms=self.block_ms
                )
                backoff = 0.05
            except asyncio.CancelledError:
                for _ in range(free):
                    slots.release()
                raise
            except Exception as exc:
                for _ in range(free):
                    slots.release()
                log.warning("reading %s requests failed: %s", agent.agent_type, exc)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 2.0)
                continue
            for _ in range(free - len(deliveries)):
                slots.release()
            for delivery in deliveries:
                task = asyncio.create_task(self._handle(agent, agent_id, delivery))
                self._inflight.add(task)
                task.add_done_callback(self._inflight.discard)
                task.add_done_callback(lambda _t: slots.release())

    # -- one request -------------------------------------------------------------------------

    async def _handle(self, agent: Agent, agent_id: str, delivery: Delivery) -> None:
        try:
            await self._handle_one(agent, agent_id, delivery)
        except asyncio.CancelledError:
            raise
        except Exception:  # infrastructure failure: the message stays pending for redelivery
            log.exception("could not answer %s on %s", delivery.message_id, delivery.stream)

    async def _handle_one(self, agent: Agent, agent_id: str, delivery: Delivery) -> None:
        request = delivery.request
        if request is None:
            BUS_DEAD_LETTERS.labels(agent.agent_type, "undecodable").inc()
            log.warning("dead-lettering undecodable message %s: %s", delivery.message_id,
                        delivery.problem)
            await self.bus.dead_letter(delivery, agent_type=agent.agent_type,
                                       reason=delivery.problem or "undecodable")
            return
        while True:
            state, stored = await self.bus.claim_or_replay(
                request.request_id, agent_id, self.claim_ttl_ms)
            if state == "busy":
                # Another consumer is executing this very request: answer with its result.
                stored = await self._await_other(request.request_id)
            if stored is not None:
                BUS_HANDLED.labels(agent.agent_type, "replayed").inc()
                await self.bus.respond(delivery, request, stored, agent_type=agent.agent_type,
                                       store=False)
                return
            if state == "claimed":
                break
        if request.expired():
            # Not executed, and not stored: a later re-send of this id still gets it done.
            BUS_HANDLED.labels(agent.agent_type, "expired").inc()
            response = self._response(request, agent_id, "timeout", 0.0,
                                      error=ErrorInfo(code="deadline_passed",
                                                      message="the request's deadline passed "
                                                      "before an agent could start it"))
            await self.bus.respond(delivery, request, response, agent_type=agent.agent_type,
                                   store=False)
            return
        response = await self._execute(agent, agent_id, request)
        await self.bus.respond(delivery, request, response, agent_type=agent.agent_type)
        self.handled += 1

    async def _await_other(self, request_id: str) -> AgentResponse | None:
        """Wait while another consumer's claim lives; its stored response, or None."""
        pause = 0.02
        while await self.bus.execution_claimed(request_id):
            stored = await self.bus.stored_response(request_id)
            if stored is not None:
                return stored
            await asyncio.sleep(pause)
            pause = min(pause * 2, 0.5)
        return await self.bus.stored_response(request_id)

    async def _execute(self, agent: Agent, agent_id: str, request: AgentRequest) -> AgentResponse:
        started = time.perf_counter()
        ctx = RequestContext(
            request=request,
            agent_id=agent_id,
            agent_type=agent.agent_type,
            log=logging.LoggerAdapter(
                logging.getLogger(f"agents.{agent.agent_type}"),
                {"request_id": request.request_id, "thread_id": request.correlation_id},
            ),
            bus=self.bus,
        )
        handler = agent.handlers.get(request.request_type) or agent.handlers.get("*")
        if handler is None:
            BUS_HANDLED.labels(agent.agent_type, "rejected").inc()
            return self._response(
                request, agent_id, "rejected", 0.0,
                error=ErrorInfo(
                    code="unknown_request_type",
                    message=f"{agent.agent_type} handles {sorted(agent.handlers)}, "
                    f"not {request.request_type!r}",
                ),
            )
        renewer = asyncio.create_task(self._renew_claim(request.request_id, agent_id))
        try:
            timeout = None
            if request.deadline is not None:
                timeout = max((request.deadline - datetime.now(UTC)).total_seconds(), 0.001)
            result = await asyncio.wait_for(handler(request.payload, ctx), timeout)
        except asyncio.CancelledError:
            with contextlib.suppress(Exception):
                await self.bus.redis.delete(self.bus.keys.inflight(request.request_id))
            raise
        except Exception as exc:
            elapsed = (time.perf_counter() - started) * 1000
            info = _error_info(exc)
            status = "timeout" if isinstance(exc, TimeoutError) and timeout else "error"
            BUS_HANDLED.labels(agent.agent_type, status).inc()
            if info.code == "internal_error":
                ctx.log.exception("%s.%s failed", agent.agent_type, request.request_type)
            else:
                ctx.log.info("%s.%s: %s", agent.agent_type, request.request_type, info.message)
            return self._response(request, agent_id, status, elapsed, error=info)
        finally:
            renewer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await renewer
        BUS_HANDLED.labels(agent.agent_type, "success").inc()
        elapsed = (time.perf_counter() - started) * 1000
        return self._response(request, agent_id, "success", elapsed, result=result)

    async def _renew_claim(self, request_id: str, agent_id: str) -> None:
        while True:
            await asyncio.sleep(self.claim_ttl_ms / 3000)
            with contextlib.suppress(Exception):
                await self.bus.renew_execution(request_id, agent_id, self.claim_ttl_ms)

    @staticmethod
    def _response(
        request: AgentRequest,
        agent_id: str,
        status: Any,
        elapsed_ms: float,
        *,
        result: Any = None,
        error: ErrorInfo | None = None,
    ) -> AgentResponse:
        return AgentResponse(
            request_id=request.request_id,
            source=agent_id,
            status=status,
            result=result,
            error=error,
            processing_ms=round(elapsed_ms, 3),
        )


def _error_info(exc: Exception) -> ErrorInfo:
    if isinstance(exc, HandlerError):
        return ErrorInfo(code=exc.code, message=exc.message, retryable=exc.retryable)
    if isinstance(exc, OrchestratorError):
        return ErrorInfo(code=exc.code, message=exc.message, retryable=False)
    if isinstance(exc, TimeoutError):
        return ErrorInfo(code="handler_timeout", message="the handler ran past the request's "
                         "deadline", retryable=True)
    if isinstance(exc, _TRANSIENT):
        return ErrorInfo(code="transient_error", message=f"{type(exc).__name__}: {exc}",
                         retryable=True)
    return ErrorInfo(code="internal_error", message=f"{type(exc).__name__}: {exc}")
