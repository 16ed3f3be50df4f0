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
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from typing import Any

from .agent import Agent, HandlerError, RequestContext
from .bus import Delivery, EventBus
from .childenv import withholding
from .errors import AgentErrorCode, InvalidConfiguration, OrchestratorError
from .executions import EarlierStart, ExecutionLedger
from .messages import AgentRequest, AgentResponse, ErrorInfo
from .metrics import (
    BUS_DEAD_LETTERS,
    BUS_HANDLED,
    CLAIM_RENEWAL_FAILURES,
    CLAIMS_LOST,
    LIVE_AGENTS,
    WORKER_BACKLOG,
    WORKER_CONCURRENCY,
)
from .outage import Outage
from .processes import new_process_id, process_alive
from .registry import AgentRegistry

__all__ = ["Worker"]

log = logging.getLogger(__name__)

_TRANSIENT = (TimeoutError, ConnectionError, OSError)
#: How long each step of stopping may take (marking draining, deregistering, announcing):
#: the services may be gone.
_STOP_STEP_S = 3.0
#: With a backlog, how long the reader waits for half the handler slots to be free.
_BATCH_WAIT_S = 0.002


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


class Worker:
    """Hosts ``agents`` on ``bus`` and ``registry``. Use ``async with`` or start/stop.

    Handler concurrency per agent type scales between ``min_concurrency`` and
    ``max_concurrency`` on the type's backlog (entries not yet delivered plus delivered but
    unacknowledged), and back down one step per ``scale_down_after`` seconds of spare capacity.
    Entries unacknowledged for ``visibility_timeout`` seconds (their consumer died) are
    reclaimed; one delivered more than ``max_deliveries`` times is dead-lettered.
    """

    def __init__(
        self,
        bus: EventBus,
        registry: AgentRegistry,
        agents: Sequence[Agent],
        *,
        min_concurrency: int = 2,
        max_concurrency: int = 10,
        heartbeat_interval: float = 2.0,
        visibility_timeout: float = 30.0,
        max_deliveries: int = 3,
        claim_ttl: float = 30.0,
        block_ms: int = 1000,
        scale_interval: float = 0.25,
        scale_down_after: float = 2.0,
        name: str | None = None,
        chat_model: str | None = None,
        child_env_withhold: Sequence[str] = (),
    ) -> None:
        if not agents:
            raise InvalidConfiguration("a worker needs at least one agent; pass agents=[...]")
        if not 1 <= min_concurrency <= max_concurrency:
            raise InvalidConfiguration("need 1 <= min_concurrency <= max_concurrency")
        self.bus = bus
        self.chat_model = chat_model
        self.child_env_withhold = tuple(child_env_withhold)  # see orchestrator.childenv
        self.registry = registry
        self.agents = list(agents)
        self.min_concurrency = min_concurrency
        self.max_concurrency = max_concurrency
        self.heartbeat_interval = heartbeat_interval
        self.visibility_ms = int(visibility_timeout * 1000)
        self.max_deliveries = max_deliveries
        self.claim_ttl_ms = int(claim_ttl * 1000)
        self.block_ms = block_ms
        self.scale_interval = scale_interval
        self.scale_down_after = scale_down_after
        self.name = name or f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self.agent_ids = {a.agent_type: f"{a.agent_type}@{self.name}" for a in self.agents}
        # claims name the process, so a dead owner on this host is recognised at once
        self._claim_prefix = f"{new_process_id()}:{self.name}:"
        self.capacity = {a.agent_type: _Capacity(min_concurrency) for a in self.agents}
        self._stopping = asyncio.Event()
        self._loops: list[asyncio.Task[None]] = []
        self._inflight: set[asyncio.Task[None]] = set()
        self._executing: set[str] = set()  # request ids this process is executing now
        self._claims: dict[str, str] = {}  # request id -> claim, of handlers running now
        # message id -> (stream, agent type) of the deliveries being handled here: their idle
        # time is kept fresh (see _renew_claims), so no reclaimer takes them over
        self._running: dict[str, tuple[str, str]] = {}
        # handler task -> its agent type's capacity (the slot it holds; see _await_other)
        self._slots: dict[asyncio.Task[None], _Capacity] = {}
        self._loggers: dict[str, logging.Logger] = {}
        # with a bus secret, signed messages started are recorded where a Redis writer cannot
        # erase them, so a captured one copied back into a stream never runs twice
        self._ledger = (ExecutionLedger(registry.db, registry.namespace,
                                        retention=bus.response_retention)
                        if bus.secret else None)
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
            WORKER_CONCURRENCY.labels(agent.agent_type).set(self.min_concurrency)
            await self.bus.publish(
                "agent.status_change",
                {"agent_id": self.agent_ids[agent.agent_type], "status": "online"},
            )
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
            await asyncio.wait(readers, timeout=self.block_ms / 1000 + 5)
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
        for agent in self.agents:
            LIVE_AGENTS.labels(agent.agent_type).dec()
        if registry_ok and await self._bounded(
            "deregistering the agents", lambda: self.registry.deregister(ids)
        ):
            async def published() -> None:
                for agent_id in ids:
                    await self.bus.publish("agent.status_change",
                                           {"agent_id": agent_id, "status": "stopped"})

            await self._bounded("announcing the stop", published)

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

    async def _stopped_within(self, seconds: float) -> bool:
        """Sleep up to ``seconds``, waking early on stop; returns whether stopping."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), seconds)
        return self._stopping.is_set()

    # -- loops ---------------------------------------------------------------------------------

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
        for agent_id in await self.registry.sweep():
            await self.bus.publish(
                "agent.status_change", {"agent_id": agent_id, "status": "offline"}
            )

    async def _spawn(self, agent: Agent, delivery: Delivery) -> None:
        """Handle ``delivery`` in a task of its own once a slot is free."""
        await self.capacity[agent.agent_type].acquire()
        self._start(agent, delivery, None)

    def _start(self, agent: Agent, delivery: Delivery,
               claimed: tuple[str, AgentResponse | None] | None) -> None:
        """Handle ``delivery`` in a task of its own, in a slot already acquired."""
        capacity = self.capacity[agent.agent_type]
        task = asyncio.create_task(
            self._handle(agent, self.agent_ids[agent.agent_type], delivery, claimed))
        self._inflight.add(task)
        self._slots[task] = capacity
        message_id = delivery.message_id
        self._running[message_id] = (delivery.stream, agent.agent_type)

        def done(t: asyncio.Task[None]) -> None:
            self._inflight.discard(t)
            self._slots.pop(t, None)
            self._running.pop(message_id, None)
            capacity.release()

        task.add_done_callback(done)

    async def _start_batch(self, agent: Agent, deliveries: list[Delivery]) -> None:
        """Handle what one read returned: a slot each, then the claims of all of them in one
        round trip, then a task each."""
        deliveries = [d for d in deliveries if not await self._misrouted(agent, d)]
        capacity = self.capacity[agent.agent_type]
        started = acquired = 0
        try:
            for _ in deliveries:
                await capacity.acquire()
                acquired += 1
            claimed = await self._claim_batch(agent, deliveries)
            for delivery in deliveries:
                self._start(agent, delivery, claimed.get(delivery.message_id))
                started += 1
        finally:  # cancelled (stopping): give back the slots no task took
            for _ in range(acquired - started):
                capacity.release()

    async def _claim_batch(
        self, agent: Agent, deliveries: list[Delivery]
    ) -> dict[str, tuple[str, AgentResponse | None]]:
        """Claim the readable first deliveries among ``deliveries`` together; by message id.
        The others (and all of them when Redis fails here) are claimed by their own tasks."""
        claim = self._claim_prefix + self.agent_ids[agent.agent_type]
        batch = [d for d in deliveries if d.request is not None
                 and d.delivery_count <= self.max_deliveries]
        if not batch:
            return {}
        try:
            outcomes = await self.bus.claim_many(
                [(d.request.request_id, claim, d.request.attempt)
                 for d in batch if d.request is not None],
                self.claim_ttl_ms)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.warning("claiming %d %s requests failed: %s", len(batch), agent.agent_type, exc)
            return {}
        out = {}
        for delivery, outcome in zip(batch, outcomes, strict=True):
            if outcome[0] == "claimed" and delivery.request is not None:
                # running here from now on (see _claim_live), renewed until answered
                self._executing.add(delivery.request.request_id)
                self._claims[delivery.request.request_id] = claim
            out[delivery.message_id] = outcome
        return out

    async def _consume(self, agent: Agent) -> None:
        capacity = self.capacity[agent.agent_type]
        backoff = 0.05
        poll = True
        outage = Outage(f"reading {agent.agent_type} requests", log)
        while not self._stopping.is_set():
            # Read as many as there are free slots, without holding them across the blocking
            # read: the reclaimer and the scaler must not be starved by an idle reader.
            await capacity.wait_free()
            if poll and capacity.free < capacity.limit // 2:
                # A backlog (the last read was full): rather than reading one request per
                # slot as each frees up, wait a moment for half of them, so that reads,
                # claims and answers go to Redis in batches.
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(_BATCH_WAIT_S):
                        await capacity.wait_free(capacity.limit // 2)
            try:
                count = max(capacity.free, 1)
                deliveries = await self.bus.read_requests(
                    agent.agent_type, self.name, count=count, block_ms=self.block_ms, poll=poll,
                )
                # A short read drained the streams: block right away next time.
                poll = len(deliveries) >= count
                backoff = 0.05
                outage.over()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                outage.failed(exc)
                await self._stopped_within(backoff)
                backoff = min(backoff * 2, 2.0)
                continue
            if deliveries:
                await self._start_batch(agent, deliveries)
                # Let the handlers run to their first wait before this loop sends its next
                # read: the requests read are being waited for, the next read is not.
                await asyncio.sleep(0)

    async def _misrouted(self, agent: Agent, delivery: Delivery) -> bool:
        """Dead-letter ``delivery`` when its request is addressed to another agent type (copied
        into this type's stream): nothing is claimed, stored or answered under its request id,
        so the real agent's answer is not pre-empted."""
        request = delivery.request
        if request is None or request.target == agent.agent_type:
            return False
        BUS_DEAD_LETTERS.labels(agent.agent_type, "wrong_target").inc()
        reason = (f"addressed to agent type {request.target!r}, found in the stream of "
                  f"{agent.agent_type!r}: not executed")
        log.warning("dead-lettering %s: %s", delivery.message_id, reason)
        await self.bus.dead_letter(delivery, agent_type=agent.agent_type, reason=reason,
                                   tell_requester=False)
        return True

    async def _reclaim(self, agent: Agent) -> None:
        """Take over requests whose consumer died before acknowledging them."""
        pause = max(self.visibility_ms / 2000, 0.1)
        outage = Outage(f"reclaiming {agent.agent_type} requests", log)
        while not await self._stopped_within(pause):
            try:
                deliveries = await self.bus.reclaim(
                    agent.agent_type, self.name, min_idle_ms=self.visibility_ms,
                    count=self.max_concurrency,
                )
                outage.over()
                for delivery in deliveries:
                    if delivery.message_id in self._running:
                        # ours, still running (its idle time was not refreshed in time: a
                        # stalled loop): its handler answers it
                        log.debug("%s is still running here; not started again",
                                  delivery.message_id)
                        continue
                    if await self._misrouted(agent, delivery):
                        continue
                    log.info("reclaimed %s (delivery %d) for %s", delivery.message_id,
                             delivery.delivery_count, agent.agent_type)
                    await self._spawn(agent, delivery)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                outage.failed(exc)

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

    # -- one request -------------------------------------------------------------------------

    async def _handle(
        self, agent: Agent, agent_id: str, delivery: Delivery,
        claimed: tuple[str, AgentResponse | None] | None = None,
    ) -> None:
        try:
            await self._handle_one(agent, agent_id, delivery, claimed)
        except asyncio.CancelledError:
            raise
        except Exception:  # infrastructure failure: the message stays pending for redelivery
            log.exception("could not answer %s on %s", delivery.message_id, delivery.stream)

    async def _handle_one(
        self, agent: Agent, agent_id: str, delivery: Delivery,
        claimed: tuple[str, AgentResponse | None] | None = None,
    ) -> None:
        """Answer ``delivery``. ``claimed``: the outcome of its claim when the reader claimed
        it with the others it read (then a claim it got is already in ``_executing``)."""
        request = delivery.request
        if request is None:
            BUS_DEAD_LETTERS.labels(agent.agent_type, "undecodable").inc()
            log.warning("dead-lettering undecodable message %s: %s", delivery.message_id,
                        delivery.problem)
            await self.bus.dead_letter(delivery, agent_type=agent.agent_type,
                                       reason=delivery.problem or "undecodable")
            return
        if delivery.delivery_count > self.max_deliveries and not await self._claim_live(
            request.request_id
        ):
            BUS_DEAD_LETTERS.labels(agent.agent_type, "max_deliveries").inc()
            reason = (f"delivered {delivery.delivery_count} times (max_deliveries is "
                      f"{self.max_deliveries}): its consumers keep dying on it")
            log.warning("dead-lettering %s: %s", request.request_id, reason)
            await self.bus.dead_letter(delivery, agent_type=agent.agent_type, reason=reason)
            return
        claim = self._claim_prefix + agent_id
        while True:
            if claimed is not None:
                (state, stored), claimed = claimed, None
            else:
                state, stored = await self.bus.claim_or_replay(
                    request.request_id, claim, self.claim_ttl_ms, request.attempt)
                if state == "claimed":
                    self._executing.add(request.request_id)
                    self._claims[request.request_id] = claim
            if state == "busy":
                # Another consumer is executing this very request: answer with its result.
                stored = await self._await_other(request.request_id, request.attempt)
            if stored is not None:
                BUS_HANDLED.labels(agent.agent_type, "replayed").inc()
                await self.bus.respond(delivery, request, stored, agent_type=agent.agent_type,
                                       store=False)
                return
            if state == "claimed":
                break
        # claimed: in _executing and _claims (renewed) until answered
        try:
            if request.expired():
                # Not executed, and not stored: a later re-send of this id still gets it done.
                BUS_HANDLED.labels(agent.agent_type, "expired").inc()
                response = self._response(request, agent_id, "timeout", 0.0,
                                          error=ErrorInfo(code=AgentErrorCode.DEADLINE_PASSED,
                                                          message="the request's deadline "
                                                          "passed before an agent could start "
                                                          "it"))
                await self.bus.respond(delivery, request, response,
                                       agent_type=agent.agent_type, store=False)
                return
            if self._ledger is not None and delivery.signature is not None:
                earlier = await self._ledger.start(delivery.signature, request, claim)
                if earlier is not None:  # this very signed message ran before: not again
                    BUS_HANDLED.labels(agent.agent_type, "already_executed").inc()
                    log.warning("refusing %s: its signed message was already started by %s",
                                request.request_id, earlier.owner or "another consumer")
                    await self.bus.respond(delivery, request, self._already_executed(
                        request, agent_id, earlier), agent_type=agent.agent_type, store=False)
                    return
            response = await self._execute(agent, agent_id, request)
            await self._respond_through_outage(delivery, request, response, agent.agent_type)
        finally:
            self._executing.discard(request.request_id)
            self._claims.pop(request.request_id, None)
        self.handled += 1

    async def _respond_through_outage(
        self, delivery: Delivery, request: AgentRequest, response: AgentResponse, agent_type: str
    ) -> None:
        """Deliver a computed response, retrying through a short Redis outage (a restart):
        losing it would mean executing the request again."""
        pause = 0.1
        deadline = time.monotonic() + 30
        while True:
            try:
                await self.bus.respond(delivery, request, response, agent_type=agent_type)
                return
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if time.monotonic() > deadline:
                    raise
                log.warning("answering %s failed (%s); retrying in %.1fs", request.request_id,
                            exc, pause)
                await asyncio.sleep(pause)
                pause = min(pause * 2, 2.0)

    async def _claim_live(self, request_id: str) -> bool:
        """Whether a live consumer holds the execution claim on ``request_id``."""
        owner = await self.bus.claim_owner(request_id)
        if owner is None:
            return False
        ours = owner.startswith(self._claim_prefix) and request_id not in self._executing
        if ours or _owner_dead(owner):  # ours but not running here: left by a failed attempt
            await self.bus.break_claim(request_id, owner)
            return False
        return True

    async def _await_other(self, request_id: str, attempt: int = 1) -> AgentResponse | None:
        """Wait while another live consumer executes ``request_id``; the stored response a
        delivery of ``attempt`` gets (see :meth:`EventBus.stored_response`), or None when the
        claim went away without one (then the caller claims it).

        Waiting is not handling: the caller's handler slot is given back while it waits, so a
        duplicate of a slow request never keeps the type's other requests from running. It is
        taken back before returning: at once for a stored response (answering it is one
        write), in turn with the others when the caller is to execute the request itself.
        """
        capacity = self._slots.get(asyncio.current_task())  # type: ignore[arg-type]
        if capacity is not None:
            capacity.release()
        stored: AgentResponse | None = None
        retaken = False
        try:
            pause = 0.02
            while await self._claim_live(request_id):
                stored = await self.bus.stored_response(request_id, attempt)
                if stored is not None:
                    break
                await asyncio.sleep(pause)
                pause = min(pause * 2, 0.5)
            else:
                stored = await self.bus.stored_response(request_id, attempt)
            if capacity is not None and stored is None:
                await capacity.acquire()
                retaken = True
            return stored
        finally:
            if capacity is not None and not retaken:
                capacity.in_use += 1  # the task's done callback gives it back

    async def _execute(
        self, agent: Agent, agent_id: str, request: AgentRequest
    ) -> AgentResponse:
        started = time.perf_counter()
        logger = self._loggers.get(agent.agent_type)
        if logger is None:
            logger = self._loggers[agent.agent_type] = logging.getLogger(
                f"agents.{agent.agent_type}")
        ctx = RequestContext(
            request=request,
            agent_id=agent_id,
            agent_type=agent.agent_type,
            log=logging.LoggerAdapter(
                logger, {"request_id": request.request_id, "thread_id": request.correlation_id},
            ),
            bus=self.bus,
            chat_model_spec=self.chat_model,
        )
        handler = agent.handlers.get(request.request_type) or agent.handlers.get("*")
        if handler is None:
            BUS_HANDLED.labels(agent.agent_type, "rejected").inc()
            return self._response(
                request, agent_id, "rejected", 0.0,
                error=ErrorInfo(
                    code=AgentErrorCode.UNKNOWN_REQUEST_TYPE,
                    message=f"{agent.agent_type} handles {sorted(agent.handlers)}, "
                    f"not {request.request_type!r}",
                ),
            )
        timeout = None
        try:
            if request.deadline is not None:
                timeout = max((request.deadline - datetime.now(UTC)).total_seconds(), 0.001)
            # run in this task (asyncio.wait_for would start one more per request)
            async with asyncio.timeout(timeout), withholding(self.child_env_withhold):
                result = await handler(request.payload, ctx)
        except asyncio.CancelledError:
            with contextlib.suppress(Exception):
                await self.bus.redis.delete(self.bus.keys.inflight(request.request_id))
            raise
        except Exception as exc:
            elapsed = (time.perf_counter() - started) * 1000
            info = _error_info(exc)
            status = "timeout" if isinstance(exc, TimeoutError) and timeout else "error"
            BUS_HANDLED.labels(agent.agent_type, status).inc()
            if info.code == AgentErrorCode.INTERNAL_ERROR:
                ctx.log.exception("%s.%s failed", agent.agent_type, request.request_type)
            else:
                ctx.log.info("%s.%s: %s", agent.agent_type, request.request_type, info.message)
            return self._response(request, agent_id, status, elapsed, error=info)
        BUS_HANDLED.labels(agent.agent_type, "success").inc()
        elapsed = (time.perf_counter() - started) * 1000
        return self._response(request, agent_id, "success", elapsed, result=result)

    async def _renew_claims(self) -> None:
        """Extend the claims this worker holds (its requests from claim to answer), all in one
        round trip, every third of the claim's ttl: a claim is renewed within ttl/3 of being
        taken, and then every ttl/3, until answered (one task for all, not one per request).

        The stream entries being handled here have their idle time reset just as often (a
        third of the visibility timeout when that is shorter): a handler running longer than
        the visibility timeout keeps its entry, and no reclaimer (this worker's included)
        delivers it again while it runs.

        A round that fails is counted (``orchestrator_claim_renewal_failures_total``) and
        logged once per outage. A claim found expired or taken over is not held any more: it
        is dropped from the renewals, counted (``orchestrator_claims_lost_total``) and logged,
        since another consumer may now run that request too."""
        interval = min(self.claim_ttl_ms, self.visibility_ms) / 3000
        claims_outage = Outage("renewing execution claims", log)
        pending_outage = Outage("keeping handled stream entries pending", log)
        while True:
            await asyncio.sleep(interval)
            if self._claims:
                claims = dict(self._claims)
                try:
                    async with asyncio.timeout(interval * 2):
                        lost = await self.bus.renew_executions(claims, self.claim_ttl_ms)
                except Exception as exc:
                    CLAIM_RENEWAL_FAILURES.labels("claims").inc()
                    claims_outage.failed(exc if str(exc) else TimeoutError("no answer in time"))
                else:
                    claims_outage.over()
                    for request_id in lost:
                        self._claim_lost(request_id, claims[request_id])
            if self._running:
                entries: dict[tuple[str, str], list[str]] = {}
                for message_id, key in list(self._running.items()):
                    entries.setdefault(key, []).append(message_id)
                try:
                    async with asyncio.timeout(interval * 2):
                        await self.bus.keep_pending(self.name, entries)
                except Exception as exc:
                    CLAIM_RENEWAL_FAILURES.labels("pending").inc()
                    pending_outage.failed(exc if str(exc) else TimeoutError("no answer in time"))
                else:
                    pending_outage.over()

    def _claim_lost(self, request_id: str, claim: str) -> None:
        if self._claims.get(request_id) != claim:
            return  # answered meanwhile: its claim ended with it
        del self._claims[request_id]
        CLAIMS_LOST.inc()
        log.warning("the execution claim on request %s expired or was taken over while its "
                    "handler runs: another consumer may run it too (its answer is still sent; "
                    "a worker stalled longer than the claim ttl, or Redis lost the key)",
                    request_id)

    def _already_executed(self, request: AgentRequest, agent_id: str,
                          earlier: EarlierStart) -> AgentResponse:
        when = f" at {earlier.started_at.isoformat()}" if earlier.started_at else ""
        return self._response(request, agent_id, "error", 0.0, error=ErrorInfo(
            code=AgentErrorCode.ALREADY_EXECUTED, retryable=True,
            message=f"this signed request message (request {request.request_id}, attempt "
            f"{request.attempt}) was already started by {earlier.owner or 'a consumer'}{when}, "
            "and its answer is gone (deleted, expired, or that worker died before answering); "
            "a signed message never runs twice: send a new request (a retry or a workflow "
            "resume does)"))

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


def _owner_dead(owner: str) -> bool:
    """A claim owner (``<process id>:<worker>:<agent id>``) whose process provably is gone
    (:func:`processes.process_alive`). Any other owner (another host or pid namespace, an
    older version's ``host:pid:...``) is trusted until its claim's TTL runs out."""
    return process_alive(owner.partition(":")[0]) is False


def _error_info(exc: Exception) -> ErrorInfo:
    if isinstance(exc, HandlerError):
        return ErrorInfo(code=exc.code, message=exc.message, retryable=exc.retryable,
                         blames_input=exc.blames_input)
    if isinstance(exc, OrchestratorError):
        return ErrorInfo(code=exc.code, message=exc.message, retryable=False)
    if isinstance(exc, TimeoutError):
        return ErrorInfo(code=AgentErrorCode.HANDLER_TIMEOUT, message="the handler ran past the request's "
                         "deadline", retryable=True)
    if isinstance(exc, _TRANSIENT):
        return ErrorInfo(code=AgentErrorCode.TRANSIENT_ERROR, message=f"{type(exc).__name__}: {exc}",
                         retryable=True)
    return ErrorInfo(code=AgentErrorCode.INTERNAL_ERROR, message=f"{type(exc).__name__}: {exc}")
