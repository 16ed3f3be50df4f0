"""Processes that ``bench.workflows`` starts (settings from ``ORCHESTRATOR_*``; stop on SIGTERM).

    python -m bench._worker agent
        A worker hosting the ``benchnoop`` agent. Its ``noop`` handler counts each execution
        per request id in Redis (``HINCRBY <ns>:bench:executions <request id> 1``), so the
        benchmark can tell that no agent call ran twice; with ``{"block": true}`` it then waits
        until it can pop a token off the list ``<ns>:bench:release`` (one waiter per process,
        not per call).
        Prints ``ready`` once the agent is registered.

    python -m bench._worker memory N
        An orchestrator (``local_agents=False``) that starts N ``parallel_docs``-shaped
        workflows whose agent calls block, prints ``holding {...}`` (its RSS) once every
        workflow waits in its five agent calls, then, once the calls are released and every
        workflow has ended, ``done {...}`` with its peak RSS (``ru_maxrss``) and the outcome.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import resource
import signal
import sys
import time
from typing import Any

import psutil
from redis.asyncio import Redis

from orchestrator.agent import Agent, RequestContext
from orchestrator.runtime import Runtime
from orchestrator.settings import Settings

__all__ = ["benchnoop_agent", "executions_key", "release_key"]


def executions_key(namespace: str) -> str:
    return f"{namespace}:bench:executions"


def release_key(namespace: str) -> str:
    return f"{namespace}:bench:release"


def benchnoop_agent(redis: Redis, namespace: str) -> Agent:
    agent = Agent("benchnoop", version="bench", description="benchmark no-op agent")
    released = asyncio.Event()
    poller: list[asyncio.Task[None]] = []

    async def poll() -> None:
        # each worker process takes one token off the release list (the benchmark pushes one
        # per process and some to spare)
        while await redis.blpop([release_key(namespace)], timeout=1) is None:
            pass
        released.set()

    @agent.handler("noop")
    async def noop(payload: dict[str, Any], ctx: RequestContext) -> dict[str, Any]:
        await redis.hincrby(executions_key(namespace), ctx.request.request_id, 1)
        if payload.get("block") and not released.is_set():
            if not poller:
                poller.append(asyncio.create_task(poll()))
            await released.wait()
        return {"ok": True, "part": payload.get("part")}

    return agent


async def _agent_worker(settings: Settings) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    assert settings.redis_url is not None
    redis = Redis.from_url(settings.redis_url)
    try:
        agent = benchnoop_agent(redis, settings.namespace)
        async with Runtime.open(settings, agents=[agent]):
            print("ready", flush=True)
            await stop.wait()
    finally:
        await redis.aclose()


def _rss_mb() -> float:
    return psutil.Process().memory_info().rss / 2**20


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


async def _memory(settings: Settings, n: int) -> None:
    from orchestrator.facade import Orchestrator

    from .workflows import ENTERED, SCALE_AGENTS, scale_specs

    async with Orchestrator(settings, agents=[], workflows=scale_specs()) as orch:
        # one workflow end to end first, so what is measured is the in-flight workflows,
        # not the first use of every module
        warm = await orch.run(SCALE_AGENTS, {"label": "warm", "block": False})
        assert warm.status == "completed", warm.error
        ENTERED["calls"] = 0
        idle = _rss_mb()
        started = time.perf_counter()
        runs = [asyncio.create_task(orch.run(SCALE_AGENTS, {"label": f"m{i}", "block": True}))
                for i in range(n)]
        samples = []
        while ENTERED["calls"] < 5 * n:  # every workflow waiting in its five agent calls
            if any(r.done() for r in runs):
                failed = next(r for r in runs if r.done())
                raise RuntimeError(f"a workflow ended before its calls were released: "
                                   f"{failed.result() if not failed.exception() else failed.exception()}")
            samples.append(_rss_mb())
            await asyncio.sleep(0.1)
        await asyncio.sleep(0.5)  # the requests are all sent; let the dust settle
        holding = {"rss_idle_mb": round(idle, 1), "rss_holding_mb": round(_rss_mb(), 1),
                   "peak_rss_mb": round(_peak_rss_mb(), 1),
                   "in_flight": n, "agent_calls_waiting": ENTERED["calls"],
                   "start_s": round(time.perf_counter() - started, 2)}
        print("holding " + json.dumps(holding), flush=True)
        held = time.perf_counter()  # drain_s: from here (released right after) to all ended
        # the benchmark releases the calls (sets the release key) once it has read the line
        results = await asyncio.gather(*runs)
        done = {**holding, "peak_rss_mb": round(_peak_rss_mb(), 1),
                "rss_end_mb": round(_rss_mb(), 1),
                "completed": sum(r.status == "completed" for r in results),
                "statuses": sorted({r.status for r in results}),
                "total_s": round(time.perf_counter() - started, 2),
                "drain_s": round(time.perf_counter() - held, 2),
                "max_sampled_rss_mb": round(max(samples + [_rss_mb()]), 1),
                "thread_ids": [r.thread_id for r in results] + [warm.thread_id]}
        print("done " + json.dumps(done), flush=True)


def main() -> None:
    settings = Settings.from_env()
    mode = sys.argv[1] if len(sys.argv) > 1 else "agent"
    if mode == "agent":
        asyncio.run(_agent_worker(settings))
    elif mode == "memory":
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(_memory(settings, int(sys.argv[2])))
    else:
        raise SystemExit(f"unknown mode {mode!r}: agent | memory N")


if __name__ == "__main__":
    main()
