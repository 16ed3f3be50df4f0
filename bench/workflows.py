"""Workflow benchmarks: checkpointed steps through the Orchestrator beside bare LangGraph, 1,000
concurrent agent-calling workflows across worker processes, and the memory they take.

* ``checkpointed_steps``: a 10-node linear graph over a state extending ``MultiAgentState``
  (each node a trivial async function bumping a counter), run one workflow at a time through
  ``Orchestrator.run`` (durability = ``settings.durability``, default ``sync``), run by run
  alternating with the same builder compiled with a bare ``AsyncPostgresSaver`` on a psycopg
  pool of its own (same pool settings, same database, same durability) run with ``ainvoke``.
  Steps/s of each; ratio orchestrator / bare. Target: ≥ 0.85.
* ``workflows_at_scale``: 1,000 workflows at once (quick: 50) of a ``parallel_docs``-shaped
  graph — ``prepare`` → ``Send`` × 5 → each branch one ``call_agent("benchnoop", "noop")`` →
  ``fan_in`` — in this process, an orchestrator with ``local_agents=False``; the agent runs in
  2 worker processes (``python -m bench._worker agent``) that count executions per request id
  in Redis. Baseline: the same graph with in-process no-op branches, same orchestrator. Target:
  all complete and no agent call executed twice; workflows/s of both and the ratio reported.
* ``memory_in_flight``: an orchestrator in a process of its own (``python -m bench._worker
  memory N``) starts 1,000 of those workflows (quick: 100) whose agent calls block until
  released, so all 1,000 are in flight at once (5,000 agent calls waiting); its peak RSS
  (``ru_maxrss``) is reported. Target: ≤ 500 MB.

Settings raised for the scale and memory runs (``_SCALE_OVERRIDES``): ``pool_max_size=20``
(1,000 workflows share the PostgreSQL pool), ``redis_max_connections=128``,
``request_timeout=120`` (an agent call waits behind up to 5,000 others), and for the agent
workers ``worker_max_concurrency=64`` and ``visibility_timeout=120`` (a blocked call is not
reclaimed by the other worker while it waits).

    python -m bench.workflows [--quick] [--only steps|scale|memory]

Uses ORCHESTRATOR_DATABASE_URL / ORCHESTRATOR_REDIS_URL (embedded services when unset); every
run uses a namespace of its own and deletes its rows and keys afterwards.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import json
import sys
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

from langgraph.checkpoint.postgres.aio import AsyncPostgresSaver
from langgraph.graph import END, START, StateGraph
from langgraph.types import Send
from orchestrator.state.db import Database
from orchestrator.state.schema import MultiAgentState, now_iso
from pydantic import BaseModel
from redis.asyncio import Redis

from orchestrator.calls import AGENT_RETRY, call_agent
from orchestrator.facade import Orchestrator
from orchestrator.graphs import WorkflowSpec
from orchestrator.settings import Settings

from .common import Result, print_result, settings, subprocess_env

__all__ = ["run", "scale_specs", "steps_spec", "ENTERED", "SCALE_AGENTS", "SCALE_LOCAL",
           "STEPS"]

STEPS = "bench_steps"
SCALE_AGENTS = "bench_scale_agents"
SCALE_LOCAL = "bench_scale_local"
NODES = 10
BRANCHES = 5

_STEPS_TARGET = "orchestrator steps/s ≥ 0.85x bare LangGraph + AsyncPostgresSaver steps/s"
_SCALE_TARGET = "1,000 concurrent workflows all complete, no agent call executed twice"
_MEMORY_TARGET = "peak RSS of one orchestrator holding 1,000 in-flight workflows ≤ 500 MB"

_SCALE_OVERRIDES: dict[str, Any] = {"pool_max_size": 20, "redis_max_connections": 128,
                                    "request_timeout": 120.0}
_WORKER_OVERRIDES: dict[str, Any] = {**_SCALE_OVERRIDES, "worker_max_concurrency": 64,
                                     "visibility_timeout": 120.0}

#: Agent calls entered by the branches of this process (the memory run waits for 5 x N).
ENTERED = {"calls": 0}


# -- the graphs ------------------------------------------------------------------------------


class StepsInput(BaseModel):
    label: str = "steps"


class StepsState(MultiAgentState, total=False):
    label: str
    counter: int


def _step(i: int) -> Any:
    async def step(state: StepsState) -> dict[str, Any]:
        return {"counter": state.get("counter", 0) + 1}

    step.__name__ = f"step{i}"
    return step


def steps_spec() -> WorkflowSpec:
    builder: StateGraph = StateGraph(StepsState)
    previous = START
    for i in range(NODES):
        builder.add_node(f"step{i}", _step(i))
        builder.add_edge(previous, f"step{i}")
        previous = f"step{i}"
    builder.add_edge(previous, END)
    return WorkflowSpec(STEPS, builder, StepsInput, "benchmark: 10 trivial checkpointed steps")


class ScaleInput(BaseModel):
    label: str
    block: bool = False


class ScaleState(MultiAgentState, total=False):
    label: str
    block: bool


async def _prepare(state: ScaleState) -> dict[str, Any]:
    subtasks = [{"id": f"part{i}", "kind": "noop", "agent_type": "benchnoop", "payload": {}}
                for i in range(BRANCHES)]
    return {"subtasks": subtasks, "updated_at": now_iso()}


def _fan_out(state: ScaleState) -> list[Send]:
    return [Send("work", {"part": t["id"], "block": bool(state.get("block"))})
            for t in state.get("subtasks") or []]


async def _work_agent(task: dict[str, Any]) -> dict[str, Any]:
    part = task["part"]
    ENTERED["calls"] += 1
    call = await call_agent("benchnoop", "noop", {"part": part, "block": task["block"]},
                            subtask=part)
    return {**call.updates, "partial_results": {part: call.result},
            "subtask_status": {part: "done"}}


async def _work_local(task: dict[str, Any]) -> dict[str, Any]:
    part = task["part"]
    return {"partial_results": {part: {"ok": True, "part": part}},
            "subtask_status": {part: "done"}, "updated_at": now_iso()}


async def _fan_in(state: ScaleState) -> dict[str, Any]:
    parts = state.get("partial_results") or {}
    return {"final_result": {"status": "completed", "parts": len(parts)}}


def _scale_builder(work: Any) -> StateGraph:
    builder: StateGraph = StateGraph(ScaleState)
    builder.add_node("prepare", _prepare)
    builder.add_node("work", work, retry_policy=AGENT_RETRY)
    builder.add_node("fan_in", _fan_in)
    builder.add_edge(START, "prepare")
    builder.add_conditional_edges("prepare", _fan_out, ["work"])
    builder.add_edge("work", "fan_in")
    builder.add_edge("fan_in", END)
    return builder


def scale_specs() -> dict[str, WorkflowSpec]:
    return {
        SCALE_AGENTS: WorkflowSpec(SCALE_AGENTS, _scale_builder(_work_agent), ScaleInput,
                                   "benchmark: parallel_docs-shaped, 5 agent calls"),
        SCALE_LOCAL: WorkflowSpec(SCALE_LOCAL, _scale_builder(_work_local), ScaleInput,
                                  "benchmark: parallel_docs-shaped, 5 in-process no-ops"),
    }


# -- helpers ---------------------------------------------------------------------------------


async def _stop(proc: asyncio.subprocess.Process) -> None:
    if proc.returncode is None:
        proc.terminate()
        try:
            await asyncio.wait_for(proc.wait(), 40)
        except TimeoutError:
            proc.kill()
            await proc.wait()


@contextlib.asynccontextmanager
async def _agent_workers(base: Settings, count: int = 2) -> AsyncIterator[None]:
    """``count`` worker processes hosting ``benchnoop``, ready when the block starts."""
    procs = []
    try:
        for _ in range(count):
            procs.append(await asyncio.create_subprocess_exec(
                sys.executable, "-m", "bench._worker", "agent", env=subprocess_env(base, **_WORKER_OVERRIDES),
                stdout=asyncio.subprocess.PIPE, stderr=None))
        for proc in procs:
            assert proc.stdout is not None
            line = await asyncio.wait_for(proc.stdout.readline(), 90)
            if line.strip() != b"ready":
                raise RuntimeError(f"a benchnoop worker did not start (said {line!r})")
        yield
    finally:
        await asyncio.gather(*(_stop(p) for p in procs))


async def _wait_for_agent(orch: Orchestrator, agent_type: str, instances: int) -> None:
    deadline = time.monotonic() + 60
    while len(await orch.runtime.registry.discover(agent_type)) < instances:
        if time.monotonic() > deadline:
            raise RuntimeError(f"fewer than {instances} {agent_type} agents registered in 60 s")
        await asyncio.sleep(0.05)


async def _cleanup(base: Settings, thread_ids: list[str]) -> None:
    """Delete the run's rows (workflows, checkpoints, agents) and Redis keys."""
    if base.database_url is not None:
        async with Database.connect(base.database_url, max_size=2) as db:
            for start in range(0, len(thread_ids), 1000):
                chunk = thread_ids[start:start + 1000]
                for table in ("checkpoint_writes", "checkpoint_blobs", "checkpoints"):
                    await db.execute(f"DELETE FROM {table} WHERE thread_id = ANY(%s)", (chunk,))
            for table in ("workflows", "agents", "resource_locks", "graph_cache"):
                with contextlib.suppress(Exception):
                    await db.execute(f"DELETE FROM {table} WHERE namespace = %s",
                                     (base.namespace,))
    if base.redis_url is not None:
        redis = Redis.from_url(base.redis_url)
        try:
            keys = [k async for k in redis.scan_iter(match=f"{base.namespace}:*", count=1000)]
            for i in range(0, len(keys), 500):
                await redis.unlink(*keys[i:i + 500])
        finally:
            await redis.aclose()


# -- checkpointed steps ----------------------------------------------------------------------


async def _checkpointed_steps(base: Settings, runs: int, threads: list[str]) -> Result:
    spec = steps_spec()
    assert base.database_url is not None, "needs ORCHESTRATOR_DATABASE_URL for the bare pool"
    async with Orchestrator(base, agents=[], workflows={STEPS: spec}) as orch, \
            Database.connect(base.database_url, max_size=base.pool_max_size) as bare_db:
        bare = spec.builder.compile(checkpointer=AsyncPostgresSaver(bare_db.pool))  # type: ignore[arg-type]

        async def orchestrated() -> None:
            result = await orch.run(STEPS, {"label": "o"})
            assert result.status == "completed", result.error
            threads.append(result.thread_id)

        async def bare_run() -> None:
            thread_id = f"bench-bare-{uuid.uuid4()}"
            threads.append(thread_id)
            stamp = now_iso()
            state = await bare.ainvoke(
                {"label": "b", "task_id": thread_id, "workflow_type": STEPS,
                 "started_at": stamp, "updated_at": stamp},
                {"configurable": {"thread_id": thread_id}, "recursion_limit": 10_000},
                durability=base.durability,
            )
            assert state["counter"] == NODES

        for _ in range(5):  # warm both: pools, prepared statements, compiled graphs
            await orchestrated()
            await bare_run()
        times = {"orchestrator": 0.0, "bare": 0.0}
        kinds = [("orchestrator", orchestrated), ("bare", bare_run)]
        for i in range(runs):  # alternate run by run, and which goes first
            for name, fn in kinds if i % 2 == 0 else kinds[::-1]:
                started = time.perf_counter()
                await fn()
                times[name] += time.perf_counter() - started
    done = runs
    orch_sps = done * NODES / times["orchestrator"]
    bare_sps = done * NODES / times["bare"]
    ratio = orch_sps / bare_sps
    return Result(
        "checkpointed_steps", _STEPS_TARGET, ratio >= 0.85,
        figures={"runs": done, "nodes": NODES, "durability": base.durability,
                 "steps_per_s": round(orch_sps, 1),
                 "ms_per_run": round(times["orchestrator"] / done * 1000, 3)},
        baseline={"bare_steps_per_s": round(bare_sps, 1),
                  "ms_per_run": round(times["bare"] / done * 1000, 3)},
        ratio=round(ratio, 3),
        notes="one workflow at a time, orchestrator and bare runs alternating (each pair in "
              "turn order); steps/s = runs x 10 / the time spent in that kind of run",
    )


# -- workflows at scale ----------------------------------------------------------------------


async def _batch(orch: Orchestrator, workflow: str, n: int, threads: list[str]) -> tuple[float, int, list[Any]]:
    started = time.perf_counter()
    results = await asyncio.gather(
        *(orch.run(workflow, {"label": f"w{i}"}) for i in range(n)), return_exceptions=True)
    elapsed = time.perf_counter() - started
    ok = 0
    problems = []
    for r in results:
        if isinstance(r, BaseException):
            problems.append(f"{type(r).__name__}: {r}")
            continue
        threads.append(r.thread_id)
        if r.status == "completed" and r.final_result == {"status": "completed",
                                                          "parts": BRANCHES}:
            ok += 1
        else:
            problems.append(f"{r.status}: {r.error}")
    return elapsed, ok, problems


async def _at_scale(base: Settings, n: int, threads: list[str]) -> Result:
    scale = base.model_copy(update=_SCALE_OVERRIDES)
    assert scale.redis_url is not None
    redis = Redis.from_url(scale.redis_url)
    from ._worker import executions_key

    try:
        async with Orchestrator(scale, agents=[], workflows=scale_specs()) as orch:
            await _wait_for_agent(orch, "benchnoop", 2)
            for name in (SCALE_LOCAL, SCALE_AGENTS):  # warm: one of each end to end
                _, ok, problems = await _batch(orch, name, 2, threads)
                if ok != 2:
                    raise RuntimeError(f"{name} warm-up failed: {problems[:3]}")
            await redis.delete(executions_key(scale.namespace))
            local_s, local_ok, local_problems = await _batch(orch, SCALE_LOCAL, n, threads)
            agent_s, agent_ok, agent_problems = await _batch(orch, SCALE_AGENTS, n, threads)
        counts = [int(v) for v in (await redis.hgetall(executions_key(scale.namespace))).values()]
    finally:
        await redis.aclose()
    duplicates = sum(c - 1 for c in counts if c > 1)
    agent_wps, local_wps = n / agent_s, n / local_s
    met = agent_ok == n and local_ok == n and duplicates == 0 and len(counts) == BRANCHES * n
    return Result(
        "workflows_at_scale", _SCALE_TARGET, met,
        figures={"workflows": n, "completed": agent_ok, "workflows_per_s": round(agent_wps, 1),
                 "seconds": round(agent_s, 2), "agent_calls": BRANCHES * n,
                 "distinct_calls_executed": len(counts), "executions": sum(counts),
                 "duplicate_executions": duplicates, "worker_processes": 2,
                 "problems": agent_problems[:5]},
        baseline={"workflows": n, "completed": local_ok, "workflows_per_s": round(local_wps, 1),
                  "seconds": round(local_s, 2), "problems": local_problems[:5]},
        ratio=round(agent_wps / local_wps, 3),
        notes="ratio = workflows/s with agent calls over workflows/s with in-process no-op "
              f"branches (reported, not judged); settings raised: {_SCALE_OVERRIDES}, agent "
              f"workers: worker_max_concurrency=64, visibility_timeout=120",
    )


# -- memory ----------------------------------------------------------------------------------


async def _memory(base: Settings, n: int, threads: list[str],
                  timeout: float | None = None) -> Result:
    """``timeout`` (default 150 s): seconds to reach holding, and then to end; when given, the
    agent calls' timeout too (they wait while the workflows are held)."""
    assert base.redis_url is not None
    # the calls and (thousands of workflows waiting on 20 connections) the pool wait too
    overrides = {**_SCALE_OVERRIDES,
                 **({"request_timeout": timeout, "pool_timeout": timeout} if timeout else {})}
    timeout = timeout or 150.0
    from ._worker import release_key

    redis = Redis.from_url(base.redis_url)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bench._worker", "memory", str(n),
        env=subprocess_env(base, **overrides), stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE, limit=2**24)
    assert proc.stdout is not None and proc.stderr is not None
    said: collections.deque[str] = collections.deque(maxlen=1)  # its last error, for the reason
    echo = asyncio.create_task(_echo(proc.stderr, said))

    async def failed(when: str, line: bytes) -> RuntimeError:
        await asyncio.wait({echo}, timeout=10)  # its stderr, to its end
        return RuntimeError(f"the orchestrator process failed {when} holding (said {line!r}"
                            f"{'; ' + said[-1] if said else ''})")

    try:
        await redis.delete(release_key(base.namespace))
        line = await asyncio.wait_for(proc.stdout.readline(), timeout)
        if not line.startswith(b"holding "):
            raise await failed("before", line)
        holding = json.loads(line[len(b"holding "):])
        await redis.rpush(release_key(base.namespace), *["go"] * 8)  # one per worker, and spare
        line = await asyncio.wait_for(proc.stdout.readline(), timeout)
        if not line.startswith(b"done "):
            raise await failed("after", line)
        done = json.loads(line[len(b"done "):])
        threads.extend(done.pop("thread_ids"))
        await asyncio.wait_for(proc.wait(), 60)
    finally:
        await _stop(proc)
        echo.cancel()
        await redis.aclose()
    peak = done["peak_rss_mb"]
    per_workflow_kb = (holding["rss_holding_mb"] - holding["rss_idle_mb"]) * 1024 / n
    return Result(
        "memory_in_flight", _MEMORY_TARGET, peak <= 500 and done["completed"] == n,
        figures={**done, "holding_peak_rss_mb": holding["peak_rss_mb"],
                 "kb_per_in_flight_workflow": round(per_workflow_kb, 1)},
        baseline=None,
        notes="RSS of the orchestrator process alone (python -m bench._worker memory N); "
              "in flight = started, each waiting in its 5 agent calls (blocked in the agent "
              "workers or queued for them); rss_idle: after one warm-up workflow",
    )


async def _echo(stream: asyncio.StreamReader, said: collections.deque[str]) -> None:
    """Pass a child's stderr through to ours, keeping its last exception line."""
    async for raw in stream:
        sys.stderr.buffer.write(raw)
        sys.stderr.flush()
        line = raw.decode(errors="replace").strip()
        if line and not raw.startswith((b" ", b"\t")) and ("Error" in line or "Exception" in line):
            said.append(line[:300])


# -- the suite -------------------------------------------------------------------------------


async def run(quick: bool = False, only: list[str] | None = None) -> list[Result]:
    base = settings("workflows", local_agents=False)
    wanted = only or ["steps", "scale", "memory"]
    threads: list[str] = []
    results: list[Result] = []
    try:
        if "steps" in wanted:
            results.append(await _checkpointed_steps(base, 20 if quick else 200, threads))
        if "scale" in wanted or "memory" in wanted:
            async with _agent_workers(base, 2):
                if "scale" in wanted:
                    results.append(await _at_scale(base, 50 if quick else 1000, threads))
                if "memory" in wanted:
                    results.append(await _memory(base, 100 if quick else 1000, threads))
    finally:
        await _cleanup(base, threads)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.workflows",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a short smoke run")
    parser.add_argument("--only", nargs="+", choices=["steps", "scale", "memory"])
    args = parser.parse_args()
    results = asyncio.run(run(quick=args.quick, only=args.only))
    for result in results:
        print_result(result)
    print(json.dumps({"results": [r.to_dict() for r in results]}))


if __name__ == "__main__":
    main()
