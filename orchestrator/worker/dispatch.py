"""Reading requests and dispatching them: as many as there are free handler slots, a task
each; reclaiming those whose consumer died; dead-lettering those addressed to another type."""

from __future__ import annotations

import asyncio
import contextlib
import logging

from ..agent import Agent
from ..bus import BlockingReader, Delivery
from ..messages import AgentResponse
from ..metrics import BUS_DEAD_LETTERS
from ..outage import Outage
from .answer import _Answering

log = logging.getLogger(__name__)

#: With a backlog, how long the reader waits for half the handler slots to be free.
_BATCH_WAIT_S = 0.002


class _Dispatching(_Answering):
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

    async def _consume(self, agent: Agent) -> None:
        reader = self._readers[agent.agent_type] = BlockingReader(self.bus.redis)
        try:
            await self._read_loop(agent, reader)
        finally:
            del self._readers[agent.agent_type]
            with contextlib.suppress(Exception):
                await reader.aclose()

    async def _read_loop(self, agent: Agent, reader: BlockingReader) -> None:
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
                    reader=reader,
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
