"""The bus: request/response across processes, stored responses, priorities, registry."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import time

import httpx
import pytest
from prometheus_client import REGISTRY

from orchestrator.agent import Agent
from orchestrator.bus import encode
from orchestrator.calls import call_agent
from orchestrator.errors import AgentError, AgentUnavailable
from orchestrator.registry import AgentRegistry
from orchestrator.runtime import Runtime
from orchestrator.testing import stand_in

from .support.processes import ORCHESTRATOR_CMD, free_port


async def _wait_for_agent(rt: Runtime, agent_type: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not await rt.registry.discover(agent_type):
        if time.monotonic() > deadline:
            raise AssertionError(f"no {agent_type} agent registered within {timeout}s")
        await asyncio.sleep(0.1)


@pytest.mark.slow
async def test_request_response_across_two_processes(
    orchestrator_settings, service_env, fixture_package
) -> None:
    metrics_port = free_port()
    worker = subprocess.Popen(
        [*ORCHESTRATOR_CMD, "worker", "--agents", "docs", "--metrics-port", str(metrics_port)],
        env=service_env,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        async with Runtime.open(orchestrator_settings, agents=[]) as rt:
            await _wait_for_agent(rt, "docs")
            call = await call_agent("docs", "list_modules", {"package_dir": str(fixture_package)},
                                    runtime=rt, timeout=30)
            assert call.agent_id.startswith("docs@")
            names = [m["name"] for m in call.result["modules"]]
            assert names[:3] == ["fixturepkg", "fixturepkg.mod0", "fixturepkg.mod1"]
            assert "fixturepkg._private" not in names
            # many in flight at once over the one reply reader
            calls = await asyncio.gather(*(
                call_agent("docs", "render_module", {"package_dir": str(fixture_package),
                           "module": f"fixturepkg.mod{i}", "path": f"mod{i}.py"}, runtime=rt)
                for i in range(6)))
            assert [c.result["module"] for c in calls] == [f"fixturepkg.mod{i}" for i in range(6)]
            # a handler error comes back as an error, and the worker stays up
            with pytest.raises(AgentError, match="does not exist"):
                await call_agent("docs", "list_modules", {"package_dir": "/no/such/dir"},
                                 runtime=rt, timeout=30)
            assert worker.poll() is None
            async with httpx.AsyncClient() as http:
                metrics = (await http.get(f"http://127.0.0.1:{metrics_port}/metrics")).text
            assert 'orchestrator_live_agents{agent_type="docs"} 1.0' in metrics
            assert 'orchestrator_agent_requests_handled_total{agent_type="docs",outcome="success"} 7.0' in metrics
            assert 'outcome="error"} 1.0' in metrics
            worker.send_signal(signal.SIGTERM)
            assert await asyncio.to_thread(worker.wait, 30) == 0
            assert await rt.registry.discover("docs", include_offline=True) == []
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait()


async def test_call_fails_at_once_without_a_live_agent(orchestrator_settings) -> None:
    async with Runtime.open(orchestrator_settings, agents=[]) as rt:
        before = REGISTRY.get_sample_value(
            "orchestrator_bus_requests_total", {"agent_type": "nobody", "status": "unavailable"}
        ) or 0.0
        started = time.monotonic()
        with pytest.raises(AgentUnavailable, match="orchestrator worker --agents nobody"):
            await call_agent("nobody", "anything", {}, runtime=rt, timeout=30)
        assert time.monotonic() - started < 2
        assert REGISTRY.get_sample_value(
            "orchestrator_bus_requests_total", {"agent_type": "nobody", "status": "unavailable"}
        ) == before + 1


async def test_a_repeated_request_id_is_answered_from_the_store(orchestrator_settings) -> None:
    executed: list[str] = []

    async def slow_echo(payload, ctx):
        executed.append(ctx.request.request_id)
        await asyncio.sleep(0.3)
        return {"echo": payload["n"]}

    agent = stand_in("echo", slow_echo)
    async with Runtime.open(orchestrator_settings, agents=[agent]) as a, \
            Runtime.open(orchestrator_settings, agents=[]) as b:
        req = a.bus.new_reply_stream_request(target="echo", request_type="x", payload={"n": 1})
        # two processes send the same request id at the same time: one execution, two answers
        req_b = req.model_copy(update={"reply_to": b.bus.reply_stream, "source": b.process_id})
        first, second = await asyncio.gather(a.bus.request(req, 10), b.bus.request(req_b, 10))
        assert first.result == second.result == {"echo": 1}
        # and sent again later: answered from the response store, not executed
        third = await a.bus.request(req, 10)
        assert third.result == {"echo": 1}
        assert executed == [req.request_id]


async def test_high_priority_is_served_before_queued_normal(orchestrator_settings) -> None:
    order: list[str] = []

    async def record(payload, ctx):
        order.append(payload["tag"])
        return None

    async with Runtime.open(orchestrator_settings, agents=[]) as rt:
        await rt.bus.ensure_group("prio")
        futures = []
        for i in range(5):
            futures.append(await rt.bus.send(rt.bus.new_reply_stream_request(
                target="prio", request_type="x", payload={"tag": f"normal{i}"})))
        futures.append(await rt.bus.send(rt.bus.new_reply_stream_request(
            target="prio", request_type="x", payload={"tag": "high"}, priority="high")))
        futures.append(await rt.bus.send(rt.bus.new_reply_stream_request(
            target="prio", request_type="x", payload={"tag": "low"}, priority="low")))
        from orchestrator.worker import Worker

        async with Worker(rt.bus, rt.registry, [stand_in("prio", record)],
                          min_concurrency=1, max_concurrency=1):
            await asyncio.wait_for(asyncio.gather(*futures), 20)
    assert order[0] == "high"
    assert order[-1] == "low"
    assert order[1:-1] == [f"normal{i}" for i in range(5)]


async def test_unknown_request_type_is_rejected_and_undecodable_dead_lettered(
    orchestrator_settings,
) -> None:
    agent = Agent("strict", handlers={})

    @agent.handler("known")
    async def known(payload, ctx):
        return "ok"

    async with Runtime.open(orchestrator_settings, agents=[agent]) as rt:
        resp = await rt.bus.request(rt.bus.new_reply_stream_request(
            target="strict", request_type="unknown"), 10)
        assert resp.status == "rejected" and resp.error.code == "unknown_request_type"
        await rt.redis.xadd(rt.bus.keys.requests("strict", "normal"), {b"m": b"{not json"})
        deadline = time.monotonic() + 10
        while not await rt.redis.xlen(rt.bus.keys.dead_letters("strict")):
            assert time.monotonic() < deadline, "garbled message was not dead-lettered"
            await asyncio.sleep(0.05)
        entry = (await rt.redis.xrange(rt.bus.keys.dead_letters("strict")))[0][1]
        assert b"invalid request" in entry[b"reason"]
        # and the worker still answers
        ok = await rt.bus.request(rt.bus.new_reply_stream_request(
            target="strict", request_type="known"), 10)
        assert ok.result == "ok"


async def test_missed_heartbeats_make_an_agent_offline(orchestrator_settings) -> None:
    async with Runtime.open(orchestrator_settings, agents=[]) as rt:
        registry = AgentRegistry(rt.db, rt.settings.namespace, offline_after=1.0)
        await registry.register("ghost-1", "ghost", capabilities=["boo"])
        await registry.register("ghost-2", "ghost", capabilities=["other"])
        assert [a.agent_id for a in await registry.discover("ghost", "boo")] == ["ghost-1"]
        assert await registry.has_live("ghost", max_age=0)
        await asyncio.sleep(1.3)
        await registry.heartbeat(["ghost-2"])
        assert [a.agent_id for a in await registry.discover("ghost")] == ["ghost-2"]
        assert await registry.sweep() == {"ghost-1": "ghost"}
        offline = await registry.discover("ghost", include_offline=True)
        assert {a.agent_id: a.status for a in offline} == {"ghost-1": "offline",
                                                           "ghost-2": "online"}
        await registry.heartbeat(["ghost-1"])  # it came back
        assert len(await registry.discover("ghost")) == 2


async def test_callers_missing_the_live_cache_together_share_one_query(
    orchestrator_settings,
) -> None:
    """Thousands of calls waiting when the cache of live agents expires ask the database once,
    not once each; a registration while that query runs is not hidden by its older answer."""
    async with Runtime.open(orchestrator_settings, agents=[]) as rt:
        registry = AgentRegistry(rt.db, rt.settings.namespace, offline_after=5.0)
        queries = 0
        gate = asyncio.Event()
        discover = registry.discover

        async def counted(*args, **kwargs):
            nonlocal queries
            queries += 1
            found = await discover(*args, **kwargs)
            await gate.wait()  # answered, not yet returned: a registration comes meanwhile
            return found

        registry.discover = counted  # type: ignore[method-assign]
        waiting = [asyncio.ensure_future(registry.has_live("solo", max_age=0.0))
                   for _ in range(500)]
        await asyncio.sleep(0.05)
        await registry.register("solo-1", "solo", capabilities=[])  # while the query waits
        gate.set()
        assert await asyncio.gather(*waiting) == [False] * 500  # asked before it registered
        assert queries == 1
        # the answer that predates the registration was not cached: the next caller asks
        assert await registry.has_live("solo", max_age=60.0) is True
        assert queries == 2
        assert await registry.has_live("solo", max_age=60.0) is True  # cached now
        assert queries == 2


async def test_duplicate_deliveries_across_consumers_execute_once(orchestrator_settings) -> None:
    """The same request ids sent repeatedly, from two processes, to three consumers: each id
    is executed exactly once and every send is answered with that one result."""
    import random
    from collections import Counter

    executions: Counter[str] = Counter()

    async def work(payload, ctx):
        executions[ctx.request.request_id] += 1
        await asyncio.sleep(random.uniform(0, 0.004))
        return {"n": payload["n"]}

    agent = stand_in("dup", work)
    async with Runtime.open(orchestrator_settings, agents=[agent]) as a, \
            Runtime.open(orchestrator_settings, agents=[agent]) as b, \
            Runtime.open(orchestrator_settings, agents=[agent]) as c:
        requests = [a.bus.new_reply_stream_request(target="dup", request_type="x",
                                                   payload={"n": n}) for n in range(60)]

        async def send(rt: Runtime, req, delay: float):
            await asyncio.sleep(delay)
            req = req.model_copy(update={"reply_to": rt.bus.reply_stream})
            return (await rt.bus.request(req, 30)).result["n"]

        sends = [send(rt, req, random.uniform(0, 0.01))
                 for req in requests for rt in (a, b, c, a)]
        answers = await asyncio.gather(*sends)
    assert answers == [req.payload["n"] for req in requests for _ in range(4)]
    assert executions == Counter({req.request_id: 1 for req in requests})


async def test_many_requests_in_flight_are_each_answered_and_executed_once(
    orchestrator_settings,
) -> None:
    """Hundreds of requests at once from one process: their sends, claims and answers go to
    Redis in batches; every request gets its own answer, and each id runs once even when it
    is sent twice in the same burst."""
    from collections import Counter

    executions: Counter[str] = Counter()

    async def echo(payload, ctx):
        executions[ctx.request.request_id] += 1
        return {"n": payload["n"]}

    settings = orchestrator_settings.model_copy(update={"worker_max_concurrency": 10})
    async with Runtime.open(settings, agents=[stand_in("burst", echo)]) as rt:
        requests = [rt.bus.new_reply_stream_request(target="burst", request_type="x",
                                                    payload={"n": n}) for n in range(300)]
        twice = requests + requests[:50]
        responses = await asyncio.gather(*(rt.bus.request(r, 30) for r in twice))
        assert [r.result["n"] for r in responses] == [r.payload["n"] for r in twice]
        assert [r.request_id for r in responses] == [r.request_id for r in twice]
        # and through call_agent, with its registry check and circuit breaker
        calls = await asyncio.gather(*(call_agent("burst", "x", {"n": n}, runtime=rt)
                                       for n in range(100)))
        assert [c.result["n"] for c in calls] == list(range(100))
        pending = await rt.redis.xpending(rt.bus.keys.requests("burst", "normal"), "burst")
        assert pending["pending"] == 0  # all acknowledged
    assert executions == Counter({r.request_id: 1 for r in requests}) + Counter(
        {c.request_id: 1 for c in calls})


async def test_one_failing_answer_does_not_stop_the_others_sent_with_it(
    orchestrator_settings,
) -> None:
    """Answers finished together go out in one script call; one that Redis refuses (its reply
    stream is not a stream) fails alone, and stays unacknowledged for redelivery."""
    from orchestrator.messages import AgentResponse

    async with Runtime.open(orchestrator_settings, agents=[]) as rt:
        bad_reply = f"{orchestrator_settings.namespace}:not-a-stream"
        await rt.redis.set(bad_reply, "x")
        good = [rt.bus.new_reply_stream_request(target="ans", request_type="x")
                for _ in range(4)]
        bad = rt.bus.new_reply_stream_request(target="ans", request_type="x")
        bad = bad.model_copy(update={"reply_to": bad_reply})
        waiters = [await rt.bus.send(r) for r in good]
        await rt.redis.xadd(rt.bus.keys.requests("ans", "normal"), encode(bad))
        deliveries = await rt.bus.read_requests("ans", "w", count=10, block_ms=100)
        assert len(deliveries) == 5

        def answer(d):
            return AgentResponse(request_id=d.request.request_id, source="ans@w",
                                 status="success", result={"id": d.request.request_id})

        outcomes = await asyncio.gather(
            *(rt.bus.respond(d, d.request, answer(d), agent_type="ans") for d in deliveries),
            return_exceptions=True)
        failed = [d for d, o in zip(deliveries, outcomes, strict=True) if o is not None]
        assert [d.request.request_id for d in failed] == [bad.request_id]
        assert "WRONGTYPE" in str(outcomes[deliveries.index(failed[0])])
        answers = await asyncio.wait_for(asyncio.gather(*waiters), 10)
        assert [a.result["id"] for a in answers] == [r.request_id for r in good]
        pending = await rt.redis.xpending_range(rt.bus.keys.requests("ans", "normal"), "ans",
                                                min="-", max="+", count=10)
        assert [p["message_id"].decode() for p in pending] == [failed[0].message_id]


async def test_the_worker_keeps_serving_after_its_streams_are_deleted(
    orchestrator_settings,
) -> None:
    """A flush (or a restart without persistence) deletes the request streams and their
    consumer group while the worker blocks on them: it creates them again and goes on."""

    async def ok(payload, ctx):
        return "ok"

    async with Runtime.open(orchestrator_settings, agents=[stand_in("phoenix", ok)]) as rt:
        req = rt.bus.new_reply_stream_request(target="phoenix", request_type="x")
        assert (await rt.bus.request(req, 10)).result == "ok"
        from orchestrator.messages import PRIORITIES

        await rt.redis.delete(*(rt.bus.keys.requests("phoenix", p) for p in PRIORITIES))
        again = rt.bus.new_reply_stream_request(target="phoenix", request_type="x")
        assert (await rt.bus.request(again, 20)).result == "ok"


async def test_a_long_handler_keeps_its_claim(orchestrator_settings) -> None:
    """Claims are renewed (by one task for all of a worker's requests) while their handlers
    run: a handler running past the claim's ttl still holds it, so no one else runs it."""
    from orchestrator.worker import Worker

    started = asyncio.Event()

    async def slow(payload, ctx):
        started.set()
        await asyncio.sleep(1.2)
        return "done"

    async with Runtime.open(orchestrator_settings, agents=[]) as rt:
        async with Worker(rt.bus, rt.registry, [stand_in("slowclaim", slow)], claim_ttl=0.3):
            req = rt.bus.new_reply_stream_request(target="slowclaim", request_type="x")
            waiter = await rt.bus.send(req)
            await asyncio.wait_for(started.wait(), 10)
            for _ in range(4):  # well past the 0.3 s ttl
                await asyncio.sleep(0.25)
                assert await rt.bus.claim_owner(req.request_id) is not None
            assert (await asyncio.wait_for(waiter, 10)).result == "done"
            assert await rt.bus.claim_owner(req.request_id) is None  # dropped when answered


async def test_writes_made_together_go_out_together() -> None:
    """The coalescer behind sends and answers: items submitted while a write is on the wire
    go in the next write; an item's own failure reaches only its submitter; an item whose
    submitter gave up before its batch left is never written."""
    from orchestrator.bus.batching import Coalescer

    written: list[list[int]] = []
    gate = asyncio.Event()

    async def flush(items: list[int]) -> list[object]:
        written.append(list(items))
        await gate.wait()
        return [ValueError(f"bad {i}") if i == 3 else i * 10 for i in items]

    coalescer: Coalescer[int, object] = Coalescer(flush, "test")
    first = asyncio.create_task(coalescer.submit(0))
    await asyncio.sleep(0)
    others = [asyncio.create_task(coalescer.submit(i)) for i in range(1, 6)]
    await asyncio.sleep(0)
    others[3].cancel()  # item 4 gives up before its batch leaves
    await asyncio.sleep(0)
    gate.set()
    assert await first == 0
    outcomes = await asyncio.gather(*others, return_exceptions=True)
    assert written == [[0], [1, 2, 3, 5]]
    assert outcomes[0] == 10 and outcomes[1] == 20 and outcomes[4] == 50
    assert isinstance(outcomes[2], ValueError) and str(outcomes[2]) == "bad 3"
    assert isinstance(outcomes[3], asyncio.CancelledError)


async def test_answered_requests_leave_nothing_in_their_stream(orchestrator_settings) -> None:
    """Entries are deleted once answered: executed, replayed from the store, expired, or
    dead-lettered. The stream keeps neither entries nor payloads, and nothing stays pending;
    the backlog (which drives autoscaling) reads 0."""
    from datetime import UTC, datetime, timedelta

    async def echo(payload, ctx):
        return payload

    async with Runtime.open(orchestrator_settings, agents=[stand_in("trim", echo)]) as rt:
        stream = rt.bus.keys.requests("trim", "normal")
        reqs = [rt.bus.new_reply_stream_request(target="trim", request_type="x",
                                                payload={"secret": f"payload-{i}"})
                for i in range(30)]
        answers = await asyncio.gather(*(rt.bus.request(r, 10) for r in reqs))
        assert [a.result for a in answers] == [r.payload for r in reqs]
        # answered from the store, expired before it started, undecodable
        assert (await rt.bus.request(reqs[0], 10)).result == reqs[0].payload
        late = rt.bus.new_reply_stream_request(
            target="trim", request_type="x", deadline=datetime.now(UTC) - timedelta(seconds=1))
        assert (await rt.bus.request(late, 10)).status == "timeout"
        await rt.redis.xadd(stream, {b"m": b"{not json"})
        deadline = time.monotonic() + 10
        while not await rt.bus.dead_letters("trim"):
            assert time.monotonic() < deadline
            await asyncio.sleep(0.05)
        assert await rt.redis.xlen(stream) == 0
        assert (await rt.redis.xpending(stream, "trim"))["pending"] == 0
        assert await rt.bus.backlog("trim") == 0
        assert not any(b"payload-" in str(e).encode()
                       for e in await rt.redis.xrange(stream))


async def test_unanswered_requests_are_capped_and_a_dropped_pending_one_is_let_go(
    orchestrator_settings,
) -> None:
    """The safety cap bounds a stream nobody serves; an entry the cap dropped while it was
    pending (its consumer died) is acknowledged by the next reclaim, not counted as backlog
    for ever."""
    from orchestrator.bus import EventBus

    async with Runtime.open(orchestrator_settings, agents=[]) as rt:
        capped = EventBus(rt.redis, namespace=orchestrator_settings.namespace,
                          process_id="capped", requests_maxlen=50)
        for _ in range(400):
            await capped.send(capped.new_reply_stream_request(target="unserved",
                                                              request_type="x"))
        # approximate, like MAXLEN ~: whole nodes (100 entries by default) are dropped
        assert await rt.redis.xlen(rt.bus.keys.requests("unserved", "normal")) <= 150

        await rt.bus.send(rt.bus.new_reply_stream_request(target="dropped", request_type="x"))
        (got,) = await rt.bus.read_requests("dropped", "ghost", count=1, block_ms=100)
        await rt.redis.xdel(got.stream, got.message_id)  # what the cap does to old entries
        assert await rt.bus.reclaim("dropped", "heir", min_idle_ms=0, count=5) == []
        assert (await rt.redis.xpending(got.stream, "dropped"))["pending"] == 0
        assert await rt.bus.backlog("dropped") == 0
        await capped.close()
