"""The events stream as the record of what happens (orchestrator.bus.events): workflows, steps,
questions, agent calls, locks, canary stages, dead letters, breakers, agents; published off
the workflow's path, so an unreachable Redis never blocks or fails a run."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
from langgraph.graph import END, START, StateGraph
from orchestrator.state.schema import MultiAgentState
from pydantic import BaseModel
from redis.asyncio import Redis

from orchestrator.agent import HandlerError
from orchestrator.bus.events import EventPublisher
from orchestrator.bus.wire import encode
from orchestrator.calls import call_agent
from orchestrator.errors import AgentError, CircuitOpen
from orchestrator.graphs import WorkflowSpec
from orchestrator.messages import AgentRequest, Event
from orchestrator.questions import ask
from orchestrator.testing import resume, stand_in

from .support.graphs_for_tests import ApprovalAnswer
from .test_canary import WORKFLOWS as CANARY_WORKFLOWS
from .test_canary import spec as canary_spec

# -- a workflow that calls an agent under a lock, then asks a human ---------------------------


class GuardedInput(BaseModel):
    item: str


class GuardedState(MultiAgentState, total=False):
    item: str
    decision: dict[str, Any]


async def work(state: GuardedState) -> dict[str, Any]:
    call = await call_agent("tally", "count", {"item": state["item"]}, locks=["repo:shared"])
    return {**call.updates, "partial_results": {"count": call.result}}


async def decide(state: GuardedState) -> dict[str, Any]:
    answer = ask(ApprovalAnswer, kind="approval", question=f"ship {state['item']}?")
    return {"decision": answer.model_dump()}


async def finish(state: GuardedState) -> dict[str, Any]:
    return {"final_result": {"status": "completed", "by": state["decision"]["by"]}}


_guarded = StateGraph(GuardedState)
for _name, _node in (("work", work), ("decide", decide), ("finish", finish)):
    _guarded.add_node(_name, _node)
_guarded.add_edge(START, "work")
_guarded.add_edge("work", "decide")
_guarded.add_edge("decide", "finish")
_guarded.add_edge("finish", END)
GUARDED = WorkflowSpec("guarded", _guarded, GuardedInput, "an agent call under a lock, a question")


class StepsInput(BaseModel):
    n: int = 3


async def _step(state: MultiAgentState) -> dict[str, Any]:
    return {"updated_at": "now"}


_steps = StateGraph(MultiAgentState)
for _i in range(3):
    _steps.add_node(f"s{_i}", _step)
_steps.add_edge(START, "s0")
_steps.add_edge("s0", "s1")
_steps.add_edge("s1", "s2")
_steps.add_edge("s2", END)
STEPS = WorkflowSpec("three_steps", _steps, StepsInput, "three trivial steps")


async def tally(payload: dict[str, Any], ctx: Any) -> dict[str, Any]:
    await asyncio.sleep(0.05)
    return {"item": payload["item"], "count": 1}


async def wait_for(orch: Any, predicate: Any, what: str, timeout: float = 10.0) -> list[Event]:
    """The namespace's events once one of them satisfies ``predicate`` (polled, bounded)."""
    deadline = time.monotonic() + timeout
    while True:
        events = await orch.runtime.bus.recent_events(5000)
        if any(predicate(e) for e in events):
            return events
        assert time.monotonic() < deadline, f"no {what} within {timeout}s: {[e.type for e in events]}"
        await asyncio.sleep(0.02)


def of_thread(events: list[Event], thread_id: str) -> list[Event]:
    return [e for e in events if e.data.get("thread_id") == thread_id]


def new_thread(prefix: str) -> str:
    """A thread id of this test's own (thread ids are unique across the namespaces that
    share the database)."""
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


async def test_a_run_with_a_locked_agent_call_and_a_question_is_recorded_in_order(
        orchestrator_factory) -> None:
    orch = await orchestrator_factory(stand_ins=[stand_in("tally", {"count": tally})],
                                      builtin=False, workflows={"guarded": GUARDED})
    locks, thread = orch.runtime.locks, new_thread("events")
    # someone else holds the lock: the run's acquire has to wait for it
    async with locks.acquire("repo:shared", "someone-else", ttl=30):
        running = asyncio.create_task(orch.run("guarded", {"item": "v1"}, thread))
        await wait_for(orch, lambda e: e.type == "lock.contended", "lock.contended")
    paused = await asyncio.wait_for(running, 30)
    assert paused.status == "interrupted"
    result = await resume(orch, paused.thread_id, {"approve": True, "by": "ana"})
    assert result.status == "completed"
    events = of_thread(await wait_for(orch, lambda e: e.type == "workflow.completed"
                                      and e.data.get("thread_id") == thread,
                                      "workflow.completed"), thread)
    assert [e.type for e in events] == [
        "workflow.started", "lock.contended", "lock.acquired", "agent.call", "agent.answered",
        "lock.released", "step.finished", "question.raised", "workflow.interrupted",
        "workflow.resumed", "question.answered", "step.finished", "step.finished",
        "workflow.completed"]
    by_type = {e.type: e.data for e in events}
    assert all(e.data.get("workflow_type") == "guarded" for e in events
               if e.type.startswith(("workflow.", "step.", "question.")))
    contended = by_type["lock.contended"]
    assert (contended["resource"], contended["holder"]) == ("repo:shared", "someone-else")
    assert f":{thread}:" in contended["waiter"] and contended["waits"] is True
    acquired, released = by_type["lock.acquired"], by_type["lock.released"]
    assert acquired["resource"] == released["resource"] == "repo:shared"
    assert acquired["token"] == released["token"] and acquired["holder"] == contended["waiter"]
    call, answered = by_type["agent.call"], by_type["agent.answered"]
    assert (call["target"], call["request_type"], call["attempt"]) == ("tally", "count", 1)
    assert answered["request_id"] == call["request_id"] and answered["status"] == "success"
    assert answered["ms"] >= 50  # the handler sleeps 50 ms
    steps = [e.data for e in events if e.type == "step.finished"]
    assert [s["node"] for s in steps] == ["work", "decide", "finish"]
    assert steps[0]["seconds"] >= 0.05 and all(s["seconds"] > 0 for s in steps)
    raised = by_type["question.raised"]
    assert (raised["kind"], raised["question"]) == ("approval", "ship v1?")
    assert by_type["question.answered"]["by"] == "ana"
    assert by_type["question.answered"]["interrupt_id"] == raised["interrupt_id"]
    # the other holder's own acquisition is recorded too, with no workflow
    assert any(e.type == "lock.acquired" and e.data["holder"] == "someone-else"
               and e.data["thread_id"] is None for e in await orch.runtime.bus.recent_events(500))


async def test_a_failing_step_is_recorded_with_its_node_and_error(orchestrator_factory) -> None:
    async def broken(payload: dict[str, Any], ctx: Any) -> None:
        raise HandlerError("disk_full", "no space left")

    orch = await orchestrator_factory(stand_ins=[stand_in("tally", {"count": broken})],
                                      builtin=False, workflows={"guarded": GUARDED})
    result = await orch.run("guarded", {"item": "v2"})
    assert result.status == "failed"
    events = of_thread(await wait_for(orch, lambda e: e.type == "workflow.failed",
                                      "workflow.failed"), result.thread_id)
    types = [e.type for e in events]
    assert types[-2:] == ["step.failed", "workflow.failed"]
    failed = events[-2].data
    assert failed["node"] == "work" and failed["seconds"] > 0
    assert failed["error"]["code"] == result.error["code"]
    assert next(e for e in events if e.type == "agent.answered").data["status"] == "error"


async def test_a_canary_rollout_records_stages_samples_holds_and_the_rollback(
        orchestrator_factory, start_service, tmp_path) -> None:
    orch = await orchestrator_factory(workflows=CANARY_WORKFLOWS)
    service = await start_service()
    service.set_mode("slow", delay_ms=300)
    result = await orch.run("rollout", {"deploy": canary_spec("slowev", service, tmp_path,
                                                              max_holds=1)})
    assert result.final_result["canary"]["status"] == "rolled_back"
    events = of_thread(await wait_for(orch, lambda e: e.type == "canary.rollback",
                                      "canary.rollback"), result.thread_id)
    canary = [e for e in events if e.type.startswith("canary.")]
    assert [e.type for e in canary] == ["canary.stage", "canary.observed", "canary.hold",
                                        "canary.observed", "canary.rollback"]
    assert all(e.data["deployment"] == "slowev" and e.data["percent"] == 10 and
               e.data["workflow_type"] == "rollout" for e in canary)
    observed = canary[1].data
    assert observed["verdict"] == "degraded" and len(observed["samples"]) == 2
    assert {s["issue"] for s in observed["samples"]} == {"latency"}
    assert all({"status", "error_rate", "p95_ms", "response_ms", "at"} <= s.keys()
               for s in observed["samples"])
    assert canary[2].data["holds"] == 1
    rollback = canary[4].data
    assert rollback["mode"] == "automatic" and rollback["reason"].startswith("unhealthy at 10%")
    # the deploy lock the rollout held for its whole life
    locks = [e for e in events if e.type.startswith("lock.") and e.data["resource"] == "deploy:slowev"]
    assert [e.type for e in locks] == ["lock.acquired", "lock.released"]
    assert locks[0].data["holder"] == f"workflow:{result.thread_id}"


async def test_a_dead_letter_and_its_replay_are_recorded(orchestrator_factory) -> None:
    answered = asyncio.Event()

    async def go(payload: dict[str, Any], ctx: Any) -> str:
        answered.set()
        return "done"

    orch = await orchestrator_factory(builtin=False, stand_ins=[
        stand_in("left", {"go": go}), stand_in("right", {"go": go})])
    bus, thread = orch.runtime.bus, new_thread("events-dlq")
    request = AgentRequest(source=bus.process_id, target="right", request_type="go",
                           reply_to=bus.keys.reply("nobody"), correlation_id=thread)
    # addressed to `right`, found in the stream of `left`: dead-lettered there
    await orch.runtime.redis.xadd(bus.keys.requests("left", "normal"), encode(request))
    events = await wait_for(orch, lambda e: e.type == "deadletter.added", "deadletter.added")
    added = next(e.data for e in events if e.type == "deadletter.added")
    assert (added["agent"], added["request_id"], added["thread_id"]) == (
        "left", request.request_id, thread)
    assert "addressed to agent type 'right'" in added["reason"]
    assert [d["id"] for d in await bus.dead_letters("left")] == [added["id"]]
    await bus.replay_dead_letter("left", added["id"])
    await asyncio.wait_for(answered.wait(), 10)  # the replayed request reached its agent
    events = await wait_for(orch, lambda e: e.type == "deadletter.replayed",
                            "deadletter.replayed")
    replayed = next(e.data for e in events if e.type == "deadletter.replayed")
    assert replayed == {"agent": "left", "id": added["id"], "request_id": request.request_id,
                        "thread_id": thread}


async def test_the_services_answerer_is_recorded_and_its_cancel_too(orchestrator_factory
                                                                     ) -> None:
    from orchestrator.service.runs import RunService

    orch = await orchestrator_factory(stand_ins=[stand_in("tally", {"count": tally})],
                                      builtin=False, workflows={"guarded": GUARDED})
    service, thread = RunService(orch), new_thread("events-svc")

    async def execute_next() -> Any:
        deadline = time.monotonic() + 10
        while (run := await service.queue.claim("r1")) is None:
            assert time.monotonic() < deadline, "no run became claimable"
            await asyncio.sleep(0.02)
        return await service.execute(run, "r1")

    await service.submit("guarded", {"item": "v3"}, thread, by="ci")
    assert (await execute_next()).status == "interrupted"
    await service.resume(thread, {"approve": True, "by": "mallory"}, by="ana")
    assert (await execute_next()).status == "completed"
    events = of_thread(await wait_for(orch, lambda e: e.type == "workflow.completed"
                                      and e.data.get("thread_id") == thread,
                                      "workflow.completed"), thread)
    assert [e.type for e in events if e.type.startswith(("workflow.", "question."))] == [
        "workflow.started", "question.raised", "workflow.interrupted", "workflow.resumed",
        "question.answered", "workflow.completed"]
    assert next(e for e in events if e.type == "question.answered").data["by"] == "ana"
    other = new_thread("events-svc")
    await service.submit("guarded", {"item": "v4"}, other, by="ci")
    await service.cancel(other, by="bob")
    events = await wait_for(orch, lambda e: e.type == "workflow.cancelled", "workflow.cancelled")
    cancelled = next(e.data for e in events if e.type == "workflow.cancelled")
    assert cancelled == {"thread_id": other, "workflow_type": "guarded", "by": "bob"}


async def test_a_breaker_opening_and_closing_is_recorded(orchestrator_factory) -> None:
    healthy = False

    async def flaky(payload: dict[str, Any], ctx: Any) -> str:
        if not healthy:
            raise RuntimeError("backend down")
        return "ok"

    orch = await orchestrator_factory(builtin=False, stand_ins=[stand_in("flaky", {"go": flaky})],
                                      breaker_min_calls=2, breaker_cooldown=0.3)
    rt = orch.runtime
    for _ in range(2):
        with pytest.raises(AgentError):
            await call_agent("flaky", "go", runtime=rt)
    with pytest.raises(CircuitOpen):
        await call_agent("flaky", "go", runtime=rt)
    events = await wait_for(orch, lambda e: e.type == "breaker.opened", "breaker.opened")
    opened = next(e.data for e in events if e.type == "breaker.opened")
    assert opened["agent"] == "flaky" and opened["failures"] == opened["calls"] == 2
    assert opened["reopened"] is False
    healthy = True
    await asyncio.sleep(0.35)  # the cool-down (Redis's clock): then probes go through
    for _ in range(rt.breaker.policy.probes):
        await call_agent("flaky", "go", runtime=rt)
    events = await wait_for(orch, lambda e: e.type == "breaker.closed", "breaker.closed")
    closed = next(e.data for e in events if e.type == "breaker.closed")
    assert closed == {"agent": "flaky", "reason": "probes succeeded"}


async def test_agents_going_online_and_offline_are_recorded(orchestrator_settings) -> None:
    from orchestrator.runtime import Runtime

    async with Runtime.open(orchestrator_settings, agents=[stand_in("tally", {"count": tally})]
                            ) as rt:
        instance = rt.worker.agent_ids["tally"]
        observer = rt.bus
        await rt.worker.stop(grace=1)
        await rt.bus.publisher.close()  # what the runtime's close does: sends what is queued
        events = [e for e in await observer.recent_events(100) if e.type.startswith("agent.")]
    assert [(e.type, e.data["instance"], e.data["agent"]) for e in events] == [
        ("agent.online", instance, "tally"), ("agent.offline", instance, "tally")]
    assert events[1].data["reason"] == "stopped"


# -- Redis unreachable --------------------------------------------------------------------


@contextlib.asynccontextmanager
async def unreachable_redis(kind: str) -> AsyncIterator[Redis]:
    """A client of a Redis that refuses connections (down) or accepts and never answers
    (hung): a real TCP peer on a free loopback port."""
    if kind == "down":
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]  # closed again: connections are refused
        server = None
    else:
        async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.read(-1)  # reads until the client goes; answers nothing

        server = await asyncio.start_server(silent, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
    client = Redis(host="127.0.0.1", port=port, socket_connect_timeout=1)
    try:
        yield client
    finally:
        await client.aclose()
        if server is not None:
            server.close()


@pytest.mark.parametrize("kind", ["down", "hung"])
async def test_publishing_while_redis_is_unreachable_never_blocks_or_fails_a_run(
        orchestrator_factory, kind) -> None:
    orch = await orchestrator_factory(builtin=False, workflows={"three_steps": STEPS})
    bus = orch.runtime.bus
    await orch.run("three_steps", {})  # warm: compiled graph, pool
    started = time.perf_counter()
    await orch.run("three_steps", {})
    usual = time.perf_counter() - started
    working = bus.publisher
    async with unreachable_redis(kind) as redis:
        bus.publisher = EventPublisher(redis, bus.keys.events, source=bus.process_id,
                                       secret=None, maxlen=1000, capacity=4)
        try:
            started = time.perf_counter()
            results = [await orch.run("three_steps", {}) for _ in range(5)]
            took = time.perf_counter() - started
            assert [r.status for r in results] == ["completed"] * 5
            assert took < 5 * usual + 1.0, (took, usual)
            closing = time.perf_counter()
            await bus.publisher.close()
            assert time.perf_counter() - closing < 4.5  # bounded even against a hung Redis
            # 5 runs x 5 events (started, 3 steps, completed): none written, all counted
            assert bus.publisher.dropped == 25
        finally:
            bus.publisher = working
    # and once Redis is back, events flow again
    result = await orch.run("three_steps", {})
    await wait_for(orch, lambda e: e.type == "workflow.completed"
                   and e.data.get("thread_id") == result.thread_id, "workflow.completed")
