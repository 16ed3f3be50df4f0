"""The events stream: the record of what happens, for the console, ``/events`` and anyone
reading ``<namespace>:events`` (a capped Redis stream of :class:`~orchestrator.messages.Event`).

Publishing never waits on Redis: :meth:`Events.emit` only queues the event; one task per
process (:class:`EventPublisher`, the bus's) sends what is queued in order, many events per
round trip (one pipeline of ``XADD``s). The queue is bounded: while Redis is down or slow it
fills, and the events that do not fit are dropped and counted
(``orchestrator_events_dropped_total``), never blocking or failing the work they describe.
Closing the bus sends what is still queued, within a few seconds. Events are observations,
not state: nothing reads them back to decide anything.

Every event about a workflow carries ``thread_id`` (and ``workflow_type`` where the emitter
knows it). The catalogue (``data`` fields; ``source`` is the emitting process):

==========================  ===================================================  ==================================
type                        data                                                 when
==========================  ===================================================  ==================================
``workflow.started``        thread_id, workflow_type                             a run starts (local or a service run)
``workflow.resumed``        thread_id, workflow_type                             a run carries on (answer, resume)
``workflow.interrupted``    thread_id, workflow_type                             it paused for a question
``workflow.completed``      thread_id, workflow_type                             it ended well
``workflow.failed``         thread_id, workflow_type, code, message              it ended failed (error or final)
``workflow.running``        thread_id, workflow_type                             it stopped between steps (drain)
``workflow.cancelled``      thread_id, workflow_type, by                         the service cancelled it
``workflow.restored``       thread_id, name, checkpoint_id                       a named checkpoint was restored
``run.queued``              thread_id, workflow_type, run_id, kind, by           the service queued a run of it
``run.retrying``            ... of run.queued, attempts, error                   a run failed; it is tried again
``run.dead``                ... of run.queued, attempts, error                   a run failed its last attempt
``step.finished``           thread_id, workflow_type, node, seconds              a graph node's update arrived
``step.failed``             thread_id, workflow_type, node, seconds, error       a node raised and ended the run
``question.raised``         thread_id, workflow_type, kind, question,            the run paused on an interrupt
                            interrupt_id
``question.answered``       thread_id, workflow_type, kind, by                   an answer is applied (resume)
``agent.call``              thread_id, target, request_type, request_id,         a request is sent to an agent
                            attempt
``agent.answered``          ... of agent.call, status, ms                        its answer came (or timeout)
``lock.acquired``           resource, holder, token, thread_id                   a lock is taken (call or hold)
``lock.released``           resource, holder, token, thread_id                   it is let go
``lock.contended``          resource, holder, waiter, thread_id                  an acquire found it held and waits
``canary.stage``            thread_id, workflow_type, deployment, percent,       traffic was shifted to a stage
                            stage
``canary.observed``         ... of canary.stage, verdict, reason, samples        a stage's health was sampled
``canary.hold``             ... of canary.stage, holds                           degraded: observed again
``canary.rollback``         thread_id, workflow_type, deployment, percent,       the rollout was rolled back
                            mode, reason
``deadletter.added``        agent, id, reason, request_id, thread_id             a request was dead-lettered
``deadletter.replayed``     agent, id, request_id, thread_id                     a dead letter was queued again
``breaker.opened``          agent, calls, failures, reopened                     a circuit opened (or re-opened)
``breaker.closed``          agent, reason                                        probes succeeded, or a reset
``agent.online``            agent, instance                                      a worker registered an instance
``agent.offline``           agent, instance, reason (stopped | silent)           it stopped, or its heartbeat aged
==========================  ===================================================  ==================================

``canary.observed``'s ``samples`` are the deployer's :class:`~orchestrator.contracts.health.Sample`
(status, issue, http_status, response_ms, error_rate, p95_ms, detail, at). ``step.finished``'s
``seconds`` is the time since the previous step of that invocation finished (a superstep's
parallel nodes share it), as in ``orchestrator_workflow_step_seconds``; ``agent.answered``'s
``ms`` is the round trip from send to answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from datetime import UTC, datetime
from typing import Any

from pydantic import ValidationError
from redis.asyncio import Redis

from ..messages import Event
from ..metrics import EVENTS_DROPPED
from ..outage import Outage
from .keys import BusKeys
from .scripts import PUBLISH_LUA
from .wire import FIELD, SIG, encode

__all__ = ["EventPublisher", "Events"]

log = logging.getLogger(__name__)

#: Events held while Redis is slow or down, beyond which new ones are dropped (and counted).
QUEUE_CAPACITY = 10_000
#: Most events sent in one round trip.
BATCH = 500
#: How long the first event of a batch waits for others to join it (seconds). A send costs
#: the process ~0.3 ms of CPU whatever it carries: at 5 ms, a 10-step workflow of ~20 ms paid
#: 4-5 sends (~1.5 ms of CPU, 8% of its process's); at 25 ms, about one (measured: ~1 ms less
#: CPU per workflow). Observers (the console, SSE) see an event at most this much later.
LINGER_S = 0.025
#: How long one round trip may take before its events are counted as lost.
SEND_TIMEOUT_S = 5.0

_Item = tuple[str, dict[str, Any], float]


class EventPublisher:
    """Queues events and sends them, in order, from one task (started by the first event).

    ``emit`` is synchronous and never raises: a full queue (Redis down or slower than the
    events) drops the event and counts it; an event emitted after :meth:`close` too.
    """

    def __init__(self, redis: Redis, key: str, *, source: str, secret: bytes | None,
                 maxlen: int, capacity: int = QUEUE_CAPACITY) -> None:
        self.redis = redis
        self.key = key
        self.source = source
        self.secret = secret
        self.maxlen = maxlen
        self.dropped = 0
        self._queue: asyncio.Queue[_Item | None] = asyncio.Queue(maxsize=capacity)
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        self._outage = Outage("publishing events", log)
        self._publish = redis.register_script(PUBLISH_LUA)

    def emit(self, event_type: str, data: dict[str, Any] | None = None) -> None:
        """Queue an event; it is sent soon after, in the order emitted."""
        if self._closed:
            self._drop("closed")
            return
        try:
            self._queue.put_nowait((event_type, data or {}, time.time()))
        except asyncio.QueueFull:
            self._drop("full")
            return
        if self._task is None:
            try:
                self._task = asyncio.get_running_loop().create_task(self._run(),
                                                                    name="event-publisher")
            except RuntimeError:  # no event loop here: nothing could ever send it
                self._queue.get_nowait()
                self._drop("closed")

    async def close(self, timeout: float = 3.0) -> None:
        """Send what is queued, for up to ``timeout`` seconds (a moment when Redis is known
        to be down); what is left is dropped."""
        self._closed = True
        task, self._task = self._task, None
        if task is None:
            return
        if self._outage.since is not None:
            timeout = min(timeout, 0.5)
        with contextlib.suppress(asyncio.QueueFull):
            self._queue.put_nowait(None)  # wakes the task if it waits for events
        done, _ = await asyncio.wait({task}, timeout=timeout)
        if not done:
            task.cancel()
            await asyncio.wait({task}, timeout=1)
            left = sum(1 for item in self._drain() if item is not None)
            if left:
                self._drop("unsent", left)
                log.warning("%d event(s) not published within %.0fs of closing", left, timeout)

    def _drain(self) -> list[_Item | None]:
        items = []
        while not self._queue.empty():
            items.append(self._queue.get_nowait())
        return items

    def _drop(self, reason: str, n: int = 1) -> None:
        self.dropped += n
        EVENTS_DROPPED.labels(reason).inc(n)

    async def _run(self) -> None:
        while not (self._closed and self._queue.empty()):
            first = await self._queue.get()
            if first is not None and not self._closed and self._queue.qsize() < BATCH:
                # let the events of the next moment join this one: a round trip per event
                # cost the process about as much CPU as the work it reports (a lock's
                # acquire and release: measured)
                await asyncio.sleep(LINGER_S)
            batch = [] if first is None else [first]
            while len(batch) < BATCH and not self._queue.empty():
                item = self._queue.get_nowait()
                if item is not None:
                    batch.append(item)
            if batch:
                await self._send(batch)

    async def _send(self, batch: list[_Item]) -> None:
        args: list[Any] = [self.maxlen]
        for event_type, data, at in batch:
            try:
                event = Event(type=event_type, source=self.source, data=data,
                              at=datetime.fromtimestamp(at, UTC))
                fields = encode(event, self.secret)
            except (ValidationError, TypeError, ValueError) as exc:  # not JSON: a bug
                log.error("event %s not published: %s", event_type, exc)
                self._drop("invalid")
                continue
            args += [fields[FIELD], fields.get(SIG, b"")]
        if len(args) == 1:
            return
        sent = len(args) // 2
        try:
            # one command for the batch: a pipeline of one XADD per event cost this process
            # ~0.3 ms of CPU plus ~0.04 ms an event (redis-py), the script ~0.3 ms in all
            async with asyncio.timeout(SEND_TIMEOUT_S):
                await self._publish(keys=[self.key], args=args)
            self._outage.over()
        except asyncio.CancelledError:  # closing gave up on a hung Redis
            self._drop("unsent", sent)
            raise
        except Exception as exc:  # observers miss these; the work goes on
            self._drop("unsent", sent)
            self._outage.failed(exc if str(exc) else TimeoutError("no answer in time"))


class Events:
    """The events stream of :class:`~orchestrator.bus.EventBus` (a part of it, not used alone)."""

    redis: Redis
    keys: BusKeys
    secret: bytes | None
    process_id: str
    events_maxlen: int
    publisher: EventPublisher

    def emit(self, event_type: str, data: dict[str, Any] | None = None) -> None:
        """Publish an event off the caller's path (see :class:`EventPublisher`)."""
        self.publisher.emit(event_type, data)

    async def publish(self, event_type: str, data: dict[str, Any] | None = None) -> str | None:
        """Append an event now, awaiting Redis (tests, tools); its stream entry id, or None
        when it could not be written. Never raises. Work in progress uses :meth:`emit`."""
        event = Event(type=event_type, source=self.process_id, data=data or {})
        try:
            entry = await self.redis.xadd(self.keys.events, encode(event, self.secret),
                                          maxlen=self.events_maxlen, approximate=True)
        except Exception as exc:
            log.debug("could not publish %s: %s", event_type, exc)
            return None
        return entry.decode() if isinstance(entry, bytes) else str(entry)

    async def recent_events(self, count: int = 100) -> list[Event]:
        entries = await self.redis.xrevrange(self.keys.events, count=count)
        events = []
        for _mid, fields in reversed(entries):
            with contextlib.suppress(ValidationError):
                events.append(Event.model_validate_json(fields.get(FIELD, b"")))
        return events
