"""Delivery guarantees: reclaiming, dead letters, signatures, deadlines, autoscaling, the
circuit breaker and retries, on real Redis and PostgreSQL."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from datetime import UTC, datetime, timedelta

import pytest
from prometheus_client import REGISTRY
from pydantic import SecretStr

from orchestrator.agent import HandlerError
from orchestrator.bus import encode
from orchestrator.calls import call_agent
from orchestrator.errors import AgentError, CircuitOpen, DeadLettered
from orchestrator.messages import PRIORITIES, AgentRequest
from orchestrator.runtime import Runtime
from orchestrator.testing import stand_in
from orchestrator.worker import Worker

from .support.graphs_for_tests import flaky


def _counting(counts: Counter[str], result: object = "ok", delay: float = 0.0):
    async def handler(payload, ctx):
        counts[ctx.request.request_id] += 1
        if delay:
            await asyncio.sleep(delay)
        return result

    return handler


async def test_a_request_whose_consumer_died_is_reclaimed(orchestrator_settings) -> None:
    counts: Counter[str] = Counter()
    settings = orchestrator_settings.model_copy(update={"visibility_timeout": 0.5})
    async with Runtime.open(settings, agents=[]) as rt:
        req = rt.bus.new_reply_stream_request(target="rc", request_type="x")
        waiter = await rt.bus.send(req)
        # a consumer reads it and dies without acknowledging
        got = await rt.bus.read_requests("rc", "ghost", count=10, block_ms=100)
        assert [d.request.request_id for d in got] == [req.request_id]
        async with Worker(rt.bus, rt.registry, [stand_in("rc", _counting(counts))],
                          visibility_timeout=0.5):
            response = await asyncio.wait_for(waiter, 10)
    assert response.status == "success" and counts == Counter({req.request_id: 1})


async def test_too_many_deliveries_dead_letter_and_replay(orchestrator_settings) -> None:
    counts: Counter[str] = Counter()
    async with Runtime.open(orchestrator_settings, agents=[]) as rt:
        req = rt.bus.new_reply_stream_request(target="dl", request_type="x", payload={"a": 1})
        waiter = await rt.bus.send(req)
        await rt.bus.read_requests("dl", "ghost-0", count=1, block_ms=100)
        for i in range(1, 4):  # three more consumers take it over and die: 4 deliveries
            await asyncio.sleep(0.02)
            assert len(await rt.bus.reclaim("dl", f"ghost-{i}", min_idle_ms=10, count=5)) == 1
        before = REGISTRY.get_sample_value("orchestrator_bus_dead_letters_total",
                                           {"agent_type": "dl", "reason": "max_deliveries"}) or 0
        async with Worker(rt.bus, rt.registry, [stand_in("dl", _counting(counts))],
                          visibility_timeout=0.05, max_deliveries=3):
            response = await asyncio.wait_for(waiter, 10)
            assert response.status == "dead_lettered"
            assert "delivered 5 times" in response.error.message
            assert counts == Counter()  # never executed
            letters = await rt.bus.dead_letters("dl")
            assert len(letters) == 1 and letters[0]["deliveries"] == 5
            assert REGISTRY.get_sample_value(
                "orchestrator_bus_dead_letters_total",
                {"agent_type": "dl", "reason": "max_deliveries"}) == before + 1
            # replayed: executed once, its response stored under the same request id
            replayed = await rt.bus.replay_dead_letter("dl", letters[0]["id"])
            # the same attempt (its error would be stored for it, never replayed to a resume),
            # and a fresh bounded deadline (the original had none: never runnable forever)
            assert replayed.request_id == req.request_id and replayed.attempt == req.attempt
            assert replayed.deadline is not None
            assert 0 < (replayed.deadline - datetime.now(UTC)).total_seconds() <= 300
            deadline = time.monotonic() + 10
            while await rt.bus.stored_response(req.request_id) is None:
                assert time.monotonic() < deadline
                await asyncio.sleep(0.05)
            assert counts == Counter({req.request_id: 1})
            assert await rt.bus.dead_letters("dl") == []


async def test_call_agent_raises_dead_lettered(orchestrator_settings) -> None:
    async with Runtime.open(orchestrator_settings, agents=[]) as rt:
        await rt.registry.register("fake-dl", "never")  # looks live, never consumes
        task = asyncio.create_task(call_agent("never", "x", {}, runtime=rt, timeout=20))
        deadline = time.monotonic() + 5
        while not await rt.redis.xlen(rt.bus.keys.requests("never", "normal")):
            assert time.monotonic() < deadline
            await asyncio.sleep(0.02)
        await rt.bus.read_requests("never", "ghost-0", count=1, block_ms=100)
        for i in range(1, 4):
            await asyncio.sleep(0.02)
            await rt.bus.reclaim("never", f"ghost-{i}", min_idle_ms=10, count=5)
        async with Worker(rt.bus, rt.registry, [stand_in("never", _counting(Counter()))],
                          visibility_timeout=0.05):
            with pytest.raises(DeadLettered, match="delivered 5 times"):
                await asyncio.wait_for(task, 10)


async def test_with_a_secret_unsigned_requests_are_dead_lettered_never_run(
    orchestrator_settings,
) -> None:
    counts: Counter[str] = Counter()
    settings = orchestrator_settings.model_copy(update={"bus_secret": SecretStr("s3cret")})
    async with Runtime.open(settings, agents=[stand_in("sig", _counting(counts))]) as rt:
        signed = await rt.bus.request(rt.bus.new_reply_stream_request(
            target="sig", request_type="x"), 10)
        assert signed.status == "success"
        forged = rt.bus.new_reply_stream_request(target="sig", request_type="x")
        for fields in (encode(forged), encode(forged, b"wrong-secret")):
            await rt.redis.xadd(rt.bus.keys.requests("sig", "normal"), fields)
        deadline = time.monotonic() + 10
        while len(await rt.bus.dead_letters("sig")) < 2:
            assert time.monotonic() < deadline, "forged requests were not dead-lettered"
            await asyncio.sleep(0.05)
        assert {d["reason"] for d in await rt.bus.dead_letters("sig")} == {
            "missing or invalid signature"}
        assert forged.request_id not in counts and len(counts) == 1
        # a replay does not launder a forged message either
        with pytest.raises(Exception, match="signature"):
            await rt.bus.replay_dead_letter("sig", (await rt.bus.dead_letters("sig"))[0]["id"])


async def test_requests_past_their_deadline_are_not_executed(orchestrator_settings) -> None:
    counts: Counter[str] = Counter()
    async with Runtime.open(orchestrator_settings, agents=[]) as rt:
        late = rt.bus.new_reply_stream_request(
            target="late", request_type="x", deadline=datetime.now(UTC) + timedelta(seconds=0.2))
        waiter = await rt.bus.send(late)
        await asyncio.sleep(0.4)  # queued, and its deadline passes before any agent starts
        async with Worker(rt.bus, rt.registry, [stand_in("late", _counting(counts))]):
            response = await asyncio.wait_for(waiter, 10)
        assert response.status == "timeout" and response.error.code == "deadline_passed"
        assert counts == Counter()
        assert await rt.bus.stored_response(late.request_id) is None  # a re-send may still run


async def test_worker_scales_to_the_maximum_on_a_backlog_and_back(orchestrator_settings) -> None:
    running = 0
    peak = 0

    async def slow(payload, ctx):
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        await asyncio.sleep(0.4)
        running -= 1

    async with Runtime.open(orchestrator_settings, agents=[]) as rt:
        futures = [await rt.bus.send(rt.bus.new_reply_stream_request(target="auto",
                                                                     request_type="x"))
                   for _ in range(60)]
        gauge = ("orchestrator_worker_concurrency", {"agent_type": "auto"})
        seen = []
        async with Worker(rt.bus, rt.registry, [stand_in("auto", slow)], min_concurrency=2,
                          max_concurrency=10, scale_interval=0.05, scale_down_after=0.2) as w:
            done = asyncio.gather(*futures)
            while not done.done():
                seen.append(REGISTRY.get_sample_value(*gauge))
                await asyncio.sleep(0.05)
            await done
            deadline = time.monotonic() + 10
            while w.capacity["auto"].limit > 2:
                assert time.monotonic() < deadline, "did not scale back down when idle"
                await asyncio.sleep(0.05)
            assert REGISTRY.get_sample_value(*gauge) == 2
    assert peak == 10 and max(seen) == 10


async def test_the_circuit_opens_for_every_process_and_fails_fast(orchestrator_settings) -> None:
    async def broken(payload, ctx):
        raise HandlerError("backend_down", "database unreachable", retryable=True)

    settings = orchestrator_settings.model_copy(update={"breaker_min_calls": 4,
                                                        "breaker_cooldown": 30})
    async with Runtime.open(settings, agents=[stand_in("shaky", broken)]) as a, \
            Runtime.open(settings, agents=[]) as b:
        for _ in range(4):
            with pytest.raises(AgentError, match="database unreachable"):
                await call_agent("shaky", "x", {}, runtime=a, timeout=10)
        for rt in (a, b):  # the other process stops calling it too
            started = time.monotonic()
            with pytest.raises(CircuitOpen, match="'shaky' is open") as info:
                await call_agent("shaky", "x", {}, runtime=rt, timeout=10)
            assert time.monotonic() - started < 0.5 and info.value.retry_at is not None
        assert REGISTRY.get_sample_value("orchestrator_circuit_state",
                                         {"agent_type": "shaky"}) == 2


async def test_transient_errors_are_retried_with_growing_delays(orchestrator_factory) -> None:
    attempts: list[float] = []

    async def flaky_handler(payload, ctx):
        attempts.append(time.monotonic())
        if len(attempts) < 3:
            raise HandlerError("busy", "try again", retryable=True)
        return {"value": 42}

    orch = await orchestrator_factory(stand_ins=[stand_in("flaky", flaky_handler)],
                                      workflows={"flaky": flaky})
    result = await orch.run("flaky", {"mode": "x"})
    assert result.status == "completed" and result.final_result == {"value": 42}
    assert len(attempts) == 3
    first_gap, second_gap = attempts[1] - attempts[0], attempts[2] - attempts[1]
    # exponential backoff: 0.5 s then 1 s, each plus LangGraph's jitter of up to 1 s
    assert 0.45 <= first_gap < 2.0 and 0.95 <= second_gap < 2.5


async def test_permanent_errors_are_not_retried(orchestrator_factory) -> None:
    attempts = 0

    async def refuses(payload, ctx):
        nonlocal attempts
        attempts += 1
        raise HandlerError("invalid_input", "no such repository")

    orch = await orchestrator_factory(stand_ins=[stand_in("flaky", refuses)],
                                      workflows={"flaky": flaky})
    result = await orch.run("flaky", {"mode": "x"})
    assert result.status == "failed" and attempts == 1
    assert "no such repository" in result.error["message"]


@pytest.mark.slow
async def test_worker_killed_mid_request_another_completes_it_once(
    orchestrator_settings, service_env, tmp_path
) -> None:
    log = tmp_path / "executions.log"
    env = {**service_env, "ORCHESTRATOR_VISIBILITY_TIMEOUT": "1"}
    cmd = [sys.executable, "-m", "tests.support.agent_process", str(log)]
    cwd = os.path.dirname(os.path.dirname(__file__))
    first = subprocess.Popen(cmd, env=env, cwd=cwd, stdout=subprocess.PIPE, text=True)
    second = None
    try:
        assert await asyncio.to_thread(first.stdout.readline) == "ready\n"
        async with Runtime.open(orchestrator_settings, agents=[]) as rt:
            call = asyncio.create_task(call_agent("slow", "x", {"seconds": 2.0}, runtime=rt,
                                                  timeout=60))
            deadline = time.monotonic() + 20
            while not (log.exists() and "start" in log.read_text()):
                assert time.monotonic() < deadline, "the first worker never started it"
                await asyncio.sleep(0.05)
            os.kill(first.pid, signal.SIGKILL)
            await asyncio.to_thread(first.wait)
            second = subprocess.Popen(cmd, env=env, cwd=cwd, stdout=subprocess.PIPE, text=True)
            result = await asyncio.wait_for(call, 40)
        assert result.result == {"ok": True}
        lines = log.read_text().split()
        assert lines.count("done") == 1, log.read_text()  # completed once
        assert lines.count("start") == 2  # the killed attempt, and the one that finished
    finally:
        for proc in (first, second):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait()


async def test_a_stored_error_answers_its_own_attempt_only_a_success_every_attempt(
    orchestrator_settings,
) -> None:
    """One request id: an error stored for attempt 1 answers a duplicate delivery of attempt
    1 without running the handler; attempt 2 runs it; its success is replayed to attempt 3."""
    runs: list[int] = []
    fail = True

    async def handler(payload, ctx):
        runs.append(ctx.request.attempt)
        if fail:
            raise HandlerError("broken", "the cause is not fixed yet")
        return {"ok": ctx.request.attempt}

    async with Runtime.open(orchestrator_settings, agents=[stand_in("att", handler)]) as rt:
        first = rt.bus.new_reply_stream_request(target="att", request_type="x", attempt=1)
        answer = await rt.bus.request(first, 10)
        assert answer.status == "error" and answer.error.code == "broken" and runs == [1]
        again = await rt.bus.request(first, 10)  # a duplicate delivery of the same attempt
        assert again.status == "error" and again.error.code == "broken" and runs == [1]
        fail = False  # the cause is fixed; the workflow is resumed: attempt 2
        second = first.model_copy(update={"attempt": 2})
        answer = await rt.bus.request(second, 10)
        assert answer.status == "success" and answer.result == {"ok": 2} and runs == [1, 2]
        fail = True  # a stored success is replayed to any later attempt, not run again
        third = await rt.bus.request(first.model_copy(update={"attempt": 3}), 10)
        assert third.status == "success" and third.result == {"ok": 2} and runs == [1, 2]
        # and to a late duplicate of attempt 1
        late = await rt.bus.request(first, 10)
        assert late.status == "success" and late.result == {"ok": 2} and runs == [1, 2]


async def test_a_handler_running_past_the_visibility_timeout_is_not_reclaimed(
    orchestrator_settings, caplog
) -> None:
    """Its worker keeps the entry's idle time fresh while it runs: it is delivered once, and a
    quick request sent meanwhile runs at once in the type's other slot (min 1, max 2) instead
    of waiting behind a reclaim of the slow one."""
    caplog.set_level(logging.INFO, logger="orchestrator.worker")
    runs: Counter[str] = Counter()
    started = asyncio.Event()

    async def handler(payload, ctx):
        runs[payload["kind"]] += 1
        if payload["kind"] == "slow":
            started.set()
            await asyncio.sleep(3.0)
        return payload["kind"]

    async with Runtime.open(orchestrator_settings, agents=[]) as rt:
        stream = rt.bus.keys.requests("long", "normal")
        async with Worker(rt.bus, rt.registry, [stand_in("long", handler)],
                          visibility_timeout=1.0, min_concurrency=1, max_concurrency=2,
                          scale_interval=0.05):
            slow = await rt.bus.send(rt.bus.new_reply_stream_request(
                target="long", request_type="x", payload={"kind": "slow"}))
            await asyncio.wait_for(started.wait(), 10)
            await asyncio.sleep(1.7)  # past the visibility timeout, and past a reclaim pass
            sent = time.monotonic()
            quick = await rt.bus.request(rt.bus.new_reply_stream_request(
                target="long", request_type="x", payload={"kind": "quick"}), 10)
            quick_s = time.monotonic() - sent
            pending = await rt.redis.xpending_range(stream, "long", min="-", max="+", count=10)
            assert not slow.done()
            assert (await asyncio.wait_for(slow, 10)).result == "slow"
    assert quick.result == "quick" and quick_s < 1.0, f"the quick request took {quick_s:.1f}s"
    assert [p["times_delivered"] for p in pending] == [1]  # the slow one, delivered once
    assert runs == Counter({"slow": 1, "quick": 1})
    assert "reclaimed" not in caplog.text


async def test_a_naive_deadline_is_refused_at_once(orchestrator_settings) -> None:
    """A deadline without a timezone has no single meaning: the entry is dead-lettered on its
    first delivery with a reason naming the deadline, and its requester is told at once."""
    counts: Counter[str] = Counter()
    with pytest.raises(ValueError, match="timezone"):
        AgentRequest(source="s", target="t", request_type="x", reply_to="r",
                     deadline=datetime(2030, 1, 1))
    async with Runtime.open(orchestrator_settings,
                            agents=[stand_in("naive", _counting(counts))]) as rt:
        req = rt.bus.new_reply_stream_request(target="naive", request_type="x")
        # the waiter is registered by a send to a stream nobody reads; the naive entry itself
        # is written by hand (a client in another language, say)
        waiter = await rt.bus.send(req.model_copy(update={"target": "nobody-reads-this"}))
        data = json.loads(req.model_dump_json())
        data["deadline"] = "2030-01-01T00:00:00"
        sent = time.monotonic()
        await rt.redis.xadd(rt.bus.keys.requests("naive", "normal"),
                            {b"m": json.dumps(data).encode()})
        response = await asyncio.wait_for(waiter, 5)
        took = time.monotonic() - sent
        letters = await rt.bus.dead_letters("naive")
    assert response.status == "dead_lettered" and "deadline" in response.error.message
    assert took < 2.0, f"told after {took:.1f}s"
    assert len(letters) == 1 and letters[0]["deliveries"] == 1
    assert "deadline" in letters[0]["reason"] and "timezone" in letters[0]["reason"]
    assert counts == Counter()


async def test_a_request_for_another_agent_type_is_refused_without_touching_its_id(
    orchestrator_settings,
) -> None:
    """A (signed) request copied into another type's stream is dead-lettered there, never
    executed, and nothing is stored, claimed or answered under its request id: the real
    agent still executes it and its requester gets the real answer."""
    wrong: Counter[str] = Counter()
    right: Counter[str] = Counter()
    settings = orchestrator_settings.model_copy(update={"bus_secret": SecretStr("s3cret")})
    async with Runtime.open(settings, agents=[]) as rt:
        req = rt.bus.new_reply_stream_request(target="realtype", request_type="x")
        waiter = await rt.bus.send(req)  # queued for realtype, not served yet
        await rt.redis.xadd(rt.bus.keys.requests("othertype", "normal"),
                            encode(req, rt.bus.secret))
        async with Worker(rt.bus, rt.registry, [stand_in("othertype", _counting(wrong))]):
            deadline = time.monotonic() + 10
            while not await rt.bus.dead_letters("othertype"):
                assert time.monotonic() < deadline, "the copy was not dead-lettered"
                await asyncio.sleep(0.05)
            assert await rt.bus.stored_response(req.request_id) is None
            assert await rt.bus.claim_owner(req.request_id) is None
            await asyncio.sleep(0.2)
            assert not waiter.done()
        (letter,) = await rt.bus.dead_letters("othertype")
        assert "'realtype'" in letter["reason"]
        assert await rt.redis.xlen(rt.bus.keys.requests("othertype", "normal")) == 0
        async with Worker(rt.bus, rt.registry, [stand_in("realtype", _counting(right))]):
            response = await asyncio.wait_for(waiter, 10)
    assert response.status == "success"
    assert wrong == Counter() and right == Counter({req.request_id: 1})


async def test_with_a_secret_a_captured_signed_request_never_runs_twice(
    orchestrator_settings,
) -> None:
    """Review M3: deleting the stored response and copying the captured signed entry back
    into the stream ran the request again. The ledger of started messages is in PostgreSQL."""
    counts: Counter[str] = Counter()
    settings = orchestrator_settings.model_copy(update={"bus_secret": SecretStr("s3cret")})
    async with Runtime.open(settings, agents=[stand_in("once", _counting(counts))]) as rt:
        req = rt.bus.new_reply_stream_request(
            target="once", request_type="develop",
            deadline=datetime.now(UTC) + timedelta(seconds=120))
        first = await asyncio.wait_for(await rt.bus.send(req), 10)
        assert first.status == "success" and counts[req.request_id] == 1
        # the same signed fields again: answered from the store
        again = await asyncio.wait_for(await rt.bus.send(req), 10)
        assert again.status == "success" and counts[req.request_id] == 1
        # a Redis writer deletes the stored response and adds the captured fields once more
        assert await rt.redis.delete(rt.bus.keys.response(req.request_id)) == 1
        replayed = await asyncio.wait_for(await rt.bus.send(req), 10)
        assert replayed.status == "error" and replayed.error.code == "already_executed"
        assert counts[req.request_id] == 1  # not run again
        rows = await rt.db.fetch("SELECT request_id FROM bus_executions WHERE namespace = %s",
                                 (settings.namespace,))
        assert [r["request_id"] for r in rows] == [req.request_id]
        # a new message for the request, signed by its requester (a retry, a resume), runs
        resent = req.model_copy(update={"attempt": 2})
        answer = await asyncio.wait_for(await rt.bus.send(resent), 10)
        assert answer.status == "success" and counts[req.request_id] == 2


async def test_with_a_secret_a_call_outside_a_graph_is_recorded_and_answered(
    orchestrator_settings,
) -> None:
    """A call made outside a graph run carries its runtime's own attempt number, which the
    execution ledger must be able to record (a too large one left the request unanswered)."""
    counts: Counter[str] = Counter()
    settings = orchestrator_settings.model_copy(update={"bus_secret": SecretStr("s3cret")})
    async with Runtime.open(settings, agents=[stand_in("plain", _counting(counts))]) as rt:
        call = await call_agent("plain", "x", {}, runtime=rt, timeout=10)
        assert call.result == "ok" and sum(counts.values()) == 1
        assert call.response.status == "success"


async def _reader_id(worker: Worker, agent_type: str, not_: int | None = None) -> int:
    """The client id of ``agent_type``'s reader once it is blocked in a read (and, with
    ``not_``, on another connection than that one)."""
    for _ in range(200):
        reader = worker._readers[agent_type]
        if reader.client_id not in (None, not_):
            clients = await worker.bus.redis.client_list()
            if any(int(c["id"]) == reader.client_id and c["cmd"] == "xreadgroup"
                   for c in clients):
                return reader.client_id
        await asyncio.sleep(0.05)
    raise AssertionError(f"{agent_type}'s reader never blocked in a read")


async def test_an_idle_worker_stops_at_once_and_leaves_nothing_pending(orchestrator_settings) -> None:
    """Stopping wakes the readers' blocking reads (found: every stop waited out the rest of a
    1 s block, so each CLI command and each test ended a second late), even after the reader's
    connection was dropped and made again, and nothing read is left pending."""
    counts: Counter[str] = Counter()
    async with Runtime.open(orchestrator_settings, agents=[]) as rt:
        worker = Worker(rt.bus, rt.registry, [stand_in("idle", _counting(counts))],
                        block_ms=60_000)
        await worker.start()
        try:
            first = rt.bus.new_reply_stream_request(target="idle", request_type="x")
            assert (await asyncio.wait_for(await rt.bus.send(first), 10)).status == "success"
            old_id = await _reader_id(worker, "idle")
            await rt.bus.redis.execute_command("CLIENT", "KILL", "ID", old_id)  # reconnects
            second = rt.bus.new_reply_stream_request(target="idle", request_type="x")
            assert (await asyncio.wait_for(await rt.bus.send(second), 10)).status == "success"
            assert await _reader_id(worker, "idle", not_=old_id) != old_id  # a new connection
        finally:
            started = time.monotonic()
            await worker.stop()
            stopped_in = time.monotonic() - started
        assert stopped_in < 15, f"stop took {stopped_in:.1f}s: it waited for the 60 s block"
        assert counts == Counter({first.request_id: 1, second.request_id: 1})
        for priority in PRIORITIES:
            pending = await rt.bus.redis.xpending(rt.bus.keys.requests("idle", priority), "idle")
            assert pending["pending"] == 0
