"""A worker's claim renewal never fails silently: a failed round is counted and logged once
per outage, and a claim found lost is dropped (counted, logged), not assumed still held."""

from __future__ import annotations

import asyncio
import logging

from prometheus_client import REGISTRY

from orchestrator.runtime import Runtime
from orchestrator.testing import stand_in
from orchestrator.worker import Worker


def _held_handler():
    """A handler that runs until released: (started, release, handler)."""
    started, release = asyncio.Event(), asyncio.Event()

    async def slow(payload, ctx):
        started.set()
        await release.wait()
        return "done"

    return started, release, slow


def _metric(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


async def test_a_claim_taken_over_while_its_handler_runs_is_dropped_and_reported(
    orchestrator_settings, caplog
) -> None:
    started, release, slow = _held_handler()
    lost_before = _metric("orchestrator_claims_lost_total")
    async with Runtime.open(orchestrator_settings, agents=[]) as rt:
        async with Worker(rt.bus, rt.registry, [stand_in("lostclaim", slow)],
                          claim_ttl=0.3) as worker:
            req = rt.bus.new_reply_stream_request(target="lostclaim", request_type="x")
            waiter = await rt.bus.send(req)
            await asyncio.wait_for(started.wait(), 10)
            assert req.request_id in worker._claims
            # another consumer holds it now (this worker stalled past the ttl, say)
            await rt.redis.set(rt.bus.keys.inflight(req.request_id), "someone-else", px=30_000)
            with caplog.at_level(logging.WARNING, logger="orchestrator.worker"):
                for _ in range(50):
                    if req.request_id not in worker._claims:
                        break
                    await asyncio.sleep(0.05)
            assert req.request_id not in worker._claims, "a lost claim was assumed still held"
            assert _metric("orchestrator_claims_lost_total") == lost_before + 1
            assert any(req.request_id in r.getMessage() and "taken over" in r.getMessage()
                       for r in caplog.records)
            # the new holder's claim is left alone
            await asyncio.sleep(0.25)
            assert await rt.bus.claim_owner(req.request_id) == "someone-else"
            release.set()
            assert (await asyncio.wait_for(waiter, 10)).result == "done"


async def test_a_failing_renewal_is_counted_and_logged_once_per_outage(
    orchestrator_settings, caplog
) -> None:
    started, release, slow = _held_handler()
    failed_before = _metric("orchestrator_claim_renewal_failures_total", what="claims")
    async with Runtime.open(orchestrator_settings, agents=[]) as rt:
        async with Worker(rt.bus, rt.registry, [stand_in("badclaim", slow)],
                          claim_ttl=0.3) as worker:
            req = rt.bus.new_reply_stream_request(target="badclaim", request_type="x")
            waiter = await rt.bus.send(req)
            await asyncio.wait_for(started.wait(), 10)
            key = rt.bus.keys.inflight(req.request_id)
            # the renewal script now fails on every round (WRONGTYPE from Redis)
            await rt.redis.delete(key)
            await rt.redis.hset(key, "not", "a string")
            with caplog.at_level(logging.DEBUG, logger="orchestrator.worker"):
                for _ in range(60):
                    if _metric("orchestrator_claim_renewal_failures_total",
                               what="claims") >= failed_before + 3:
                        break
                    await asyncio.sleep(0.05)
            assert _metric("orchestrator_claim_renewal_failures_total",
                           what="claims") >= failed_before + 3
            warnings = [r for r in caplog.records if r.levelno == logging.WARNING
                        and "renewing execution claims failed" in r.getMessage()]
            assert len(warnings) == 1, [r.getMessage() for r in warnings]
            await rt.redis.delete(key)
            release.set()
            await asyncio.wait_for(waiter, 10)
            assert worker.handled == 1
