"""A worker process hosting the benchmark's no-op agent (``bench.bus`` starts it).

    python -m bench._noop_worker        (settings from ORCHESTRATOR_*; stops on SIGTERM)

The ``noop`` agent answers ``noop`` requests with ``{}`` and counts its executions in memory;
a ``stats`` request answers ``{"executions": n, "unique": distinct request ids}`` so the
benchmark can tell lost or duplicated executions apart without adding a Redis command to the
handler. Prints ``ready`` once the agent is registered.
"""

from __future__ import annotations

import asyncio
import signal
from typing import Any

from orchestrator.agent import Agent, RequestContext
from orchestrator.runtime import Runtime
from orchestrator.settings import Settings

__all__ = ["noop_agent"]


def noop_agent() -> tuple[Agent, dict[str, Any]]:
    """The no-op agent and its execution counters."""
    stats: dict[str, Any] = {"executions": 0, "ids": set()}
    agent = Agent("noop", version="bench", description="benchmark no-op agent")

    @agent.handler("noop")
    async def noop(payload: dict[str, Any], ctx: RequestContext) -> dict[str, Any]:
        stats["executions"] += 1
        stats["ids"].add(ctx.request.request_id)
        return {}

    @agent.handler("stats")
    async def report(payload: dict[str, Any], ctx: RequestContext) -> dict[str, Any]:
        ids = stats["ids"]
        answer = {"executions": stats["executions"], "unique": len(ids)}
        if payload.get("reset"):
            stats["executions"] = 0
            ids.clear()
        return answer

    return agent, stats


async def main() -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    agent, _stats = noop_agent()
    async with Runtime.open(Settings.from_env(), agents=[agent]):
        print("ready", flush=True)
        await stop.wait()


if __name__ == "__main__":
    asyncio.run(main())
