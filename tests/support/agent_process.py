"""A worker process hosting a slow test agent, for the kill -9 tests.

Usage: python -m tests.support.agent_process LOGFILE (settings from ORCHESTRATOR_* variables).
Each execution appends "start <request id>" and "done <request id>" lines to LOGFILE.
"""

from __future__ import annotations

import asyncio
import signal
import sys

from orchestrator.runtime import Runtime
from orchestrator.settings import Settings
from orchestrator.testing import stand_in


async def main(log_path: str) -> None:
    def note(event: str, request_id: str) -> None:
        with open(log_path, "a") as log:
            log.write(f"{event} {request_id}\n")

    async def slow(payload, ctx):
        note("start", ctx.request.request_id)
        await asyncio.sleep(payload.get("seconds", 2.0))
        note("done", ctx.request.request_id)
        return {"ok": True}

    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    async with Runtime.open(Settings.from_env(), agents=[stand_in("slow", slow)]):
        print("ready", flush=True)
        await stop.wait()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1]))
