"""Cancellation is never swallowed: cancelling the task that owns a loop really stops it."""

from __future__ import annotations

import asyncio
from typing import Any

from orchestrator.bus import EventBus
from orchestrator.bus.batching import Coalescer as _Coalescer
from orchestrator.runtime import Runtime


class _SwallowingRedis:
    """The real client, except that XREAD swallows a cancellation the way redis-py's
    wait_for-based I/O can on Python 3.11 when the cancel lands as a command completes."""

    def __init__(self, redis: Any) -> None:
        self._redis = redis
        self.reads = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._redis, name)

    async def xread(self, *args: Any, **kwargs: Any) -> Any:
        self.reads += 1
        try:
            return await self._redis.xread(*args, **kwargs)
        except asyncio.CancelledError:
            return []


async def test_the_reply_reader_stops_when_cancelled_even_if_a_read_swallows_it(
    orchestrator_settings,
) -> None:
    async with Runtime.open(orchestrator_settings, agents=[]) as rt:
        swallowing = _SwallowingRedis(rt.redis)
        bus = EventBus(swallowing, namespace=orchestrator_settings.namespace,  # type: ignore[arg-type]
                       process_id="cancel-me")
        await bus.start()
        try:
            reader = bus._reader
            assert reader is not None
            for _ in range(100):  # until the reader blocks in XREAD
                if swallowing.reads:
                    break
                await asyncio.sleep(0.01)
            await asyncio.sleep(0.05)
            reader.cancel()  # not close(): no flag, only the cancellation
            done, _ = await asyncio.wait({reader}, timeout=3)
            assert done == {reader}, "the reader went on reading after it was cancelled"
            assert reader.cancelled()
        finally:
            await bus.close()


async def test_closing_a_coalescer_does_not_swallow_the_callers_cancellation() -> None:
    async def slow_to_stop() -> None:
        try:
            await asyncio.sleep(10)
        finally:
            await asyncio.sleep(0.3)  # takes a moment to wind down

    async def flush(items: list[int]) -> list[int]:
        return items

    # a plain close absorbs the drainer's own cancellation
    coalescer: _Coalescer[int, int] = _Coalescer(flush, "test")
    coalescer._drainer = asyncio.create_task(slow_to_stop())
    await asyncio.sleep(0)
    await coalescer.close()

    # but a cancellation of the task doing the closing goes through
    coalescer._drainer = asyncio.create_task(slow_to_stop())
    await asyncio.sleep(0)
    went_on = asyncio.Event()

    async def owner() -> None:
        await coalescer.close()
        went_on.set()
        await asyncio.sleep(10)

    task = asyncio.create_task(owner())
    await asyncio.sleep(0.1)  # owner waits for the drainer to wind down
    task.cancel()
    done, _ = await asyncio.wait({task}, timeout=3)
    assert done == {task} and task.cancelled()
    assert not went_on.is_set(), "close() swallowed the owner's cancellation"


async def test_closing_the_facade_ends_a_heartbeat_whose_cancellation_was_swallowed(
        orchestrator_settings) -> None:
    """A heartbeat write that swallows the cancellation (as a driver can when the cancel
    lands as its query completes) used to leave the lease loop running, and closing the
    Orchestrator waited for it forever."""
    from orchestrator.facade import Orchestrator

    settings = orchestrator_settings.model_copy(update={"workflow_lease": 0.15})
    orch = Orchestrator(settings, agents=[])
    await orch.__aenter__()
    store = orch.runtime.workflows
    real = store.heartbeat
    beating = asyncio.Event()

    async def swallowing_heartbeat(owner: str) -> Any:
        beating.set()
        try:
            await asyncio.sleep(0.2)  # the cancel lands while this "query" runs
            return await real(owner)
        except asyncio.CancelledError:
            return 0

    store.heartbeat = swallowing_heartbeat  # type: ignore[method-assign]
    await asyncio.wait_for(beating.wait(), 5)
    async with asyncio.timeout(5):
        await orch.__aexit__(None, None, None)
    assert orch._heartbeat is not None and orch._heartbeat.done()
