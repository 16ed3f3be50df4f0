"""Execution claims queued with their requests (issue 18): a request sent with a deadline and
nothing stored for it carries its claim from the send (``q:<entry id>``, the entry marked), so
its first consumer runs it without a claim round trip; a copy sent meanwhile, a stored
answer, a consumer that died and a handler that runs on are all handled as before: never two
executions."""

from __future__ import annotations

import asyncio
from collections import Counter
from datetime import UTC, datetime, timedelta

from orchestrator.messages import AgentRequest
from orchestrator.runtime import Runtime
from orchestrator.testing import stand_in
from orchestrator.worker import Worker


def _counting(counts: Counter[str], delay: float = 0.0):
    async def handler(payload, ctx):
        counts[ctx.request.request_id] += 1
        if delay:
            await asyncio.sleep(delay)
        return {"n": counts[ctx.request.request_id]}

    return handler


def _request(rt: Runtime, target: str, request_id: str | None = None) -> AgentRequest:
    fields = {"request_id": request_id} if request_id else {}
    return rt.bus.new_reply_stream_request(
        target=target, request_type="x", deadline=datetime.now(UTC) + timedelta(seconds=30),
        **fields)


async def _entries(rt: Runtime, target: str) -> list[dict[bytes, bytes]]:
    return [fields for _mid, fields in
            await rt.redis.xrange(rt.bus.keys.requests(target, "normal"))]


async def test_a_request_carries_its_claim_and_a_copy_sent_meanwhile_does_not(
    orchestrator_settings,
) -> None:
    counts: Counter[str] = Counter()
    async with Runtime.open(orchestrator_settings, agents=[]) as rt:
        first = _request(rt, "qc")
        waiting = [await rt.bus.send(first), await rt.bus.send(first)]  # a copy, same id
        entries = await _entries(rt, "qc")
        assert [e.get(b"c") for e in entries] == [b"1", None]
        ids = [mid for mid, _ in await rt.redis.xrange(rt.bus.keys.requests("qc", "normal"))]
        assert await rt.bus.claim_owner(first.request_id) == f"q:{ids[0].decode()}"
        async with Worker(rt.bus, rt.registry, [stand_in("qc", _counting(counts))]):
            answers = await asyncio.wait_for(asyncio.gather(*waiting), 10)
        assert [a.status for a in answers] == ["success", "success"]
        assert counts == Counter({first.request_id: 1})
        assert await rt.bus.claim_owner(first.request_id) is None  # answered: claim gone
        # a request answered already gets no claim: its copy is answered from the store
        again = await rt.bus.send(first)
        assert (await _entries(rt, "qc"))[-1].get(b"c") is None
        async with Worker(rt.bus, rt.registry, [stand_in("qc", _counting(counts))]):
            assert (await asyncio.wait_for(again, 10)).result == {"n": 1}
        assert counts == Counter({first.request_id: 1})


async def test_a_request_without_a_deadline_is_claimed_by_its_consumer(
    orchestrator_settings,
) -> None:
    counts: Counter[str] = Counter()
    async with Runtime.open(orchestrator_settings, agents=[]) as rt:
        request = rt.bus.new_reply_stream_request(target="qn", request_type="x")
        waiting = await rt.bus.send(request)
        assert (await _entries(rt, "qn"))[0].get(b"c") is None
        assert await rt.bus.claim_owner(request.request_id) is None
        async with Worker(rt.bus, rt.registry, [stand_in("qn", _counting(counts))]):
            assert (await asyncio.wait_for(waiting, 10)).status == "success"
        assert counts == Counter({request.request_id: 1})


async def test_a_handler_that_waits_makes_the_queued_claim_its_workers_own(
    orchestrator_settings,
) -> None:
    counts: Counter[str] = Counter()
    async with Runtime.open(orchestrator_settings, agents=[]) as rt:
        request = _request(rt, "qw")
        async with Worker(rt.bus, rt.registry, [stand_in("qw", _counting(counts, 0.5))],
                          name="converting") as worker:
            waiting = await rt.bus.send(request)
            deadline = asyncio.get_running_loop().time() + 5
            while not counts:
                assert asyncio.get_running_loop().time() < deadline
                await asyncio.sleep(0.01)
            await asyncio.sleep(0.1)
            owner = await rt.bus.claim_owner(request.request_id)
            assert owner is not None and owner.startswith(worker._claim_prefix)
            assert worker._claims[request.request_id] == owner  # renewed like any claim
            assert (await asyncio.wait_for(waiting, 10)).status == "success"
        assert counts == Counter({request.request_id: 1})


async def test_an_entry_whose_consumer_died_carries_its_claim_to_the_reclaimer(
    orchestrator_settings,
) -> None:
    """A consumer read the entry (so it held the queued claim) and died before running it: the
    reclaimer the stream hands the entry to takes the claim over and runs it once; a copy
    sent meanwhile waits for that answer instead of running too."""
    counts: Counter[str] = Counter()
    settings = orchestrator_settings.model_copy(update={"visibility_timeout": 0.3})
    async with Runtime.open(settings, agents=[]) as rt:
        request = _request(rt, "qd")
        first = await rt.bus.send(request)
        read = await rt.bus.read_requests("qd", "ghost", count=1, block_ms=100)
        assert read[0].holds_queued_claim  # the ghost held it, and dies here
        copy = await rt.bus.send(request)
        async with Worker(rt.bus, rt.registry, [stand_in("qd", _counting(counts))],
                          visibility_timeout=0.3):
            answers = await asyncio.wait_for(asyncio.gather(first, copy), 15)
        assert [a.status for a in answers] == ["success", "success"]
        assert counts == Counter({request.request_id: 1})


async def test_a_conversion_that_fails_is_retried_after_a_pause_not_at_once(
    orchestrator_settings,
) -> None:
    """Redis refusing the conversion of a queued claim: it is tried again after a pause (the
    queued claim lasts meanwhile), not in a loop that spins the worker's CPU; the request is
    still answered once."""
    counts: Counter[str] = Counter()
    tries = 0
    async with Runtime.open(orchestrator_settings, agents=[]) as rt:
        async def refused(claims, ttl_ms):
            nonlocal tries
            tries += 1
            raise ConnectionError("Redis away")

        rt.bus.convert_claims = refused  # type: ignore[method-assign]
        request = _request(rt, "qf")
        async with Worker(rt.bus, rt.registry, [stand_in("qf", _counting(counts, 0.5))]):
            waiting = await rt.bus.send(request)
            assert (await asyncio.wait_for(waiting, 10)).status == "success"
        assert counts == Counter({request.request_id: 1})
        assert 1 <= tries <= 5, f"{tries} conversions tried while one handler ran 0.5 s"
