"""The ``orchestrator`` command with a slow test workflow, for the Ctrl-C tests.

Usage: python -m tests.support.cli_process LOGFILE ARGS... (settings from ORCHESTRATOR_* variables).
``slowflow`` has two steps: ``wait`` asks the ``slow`` stand-in agent (hosted in this process)
to sleep ``seconds`` (appending "start"/"done" lines to LOGFILE; only the first execution in
LOGFILE sleeps, so a resume is quick), then ``finish`` completes.
"""

from __future__ import annotations

import asyncio
import sys
from typing import Any

from langgraph.graph import END, START, StateGraph
from orchestrator.state.schema import MultiAgentState
from pydantic import BaseModel

from orchestrator import cli, graphs
from orchestrator.calls import call_agent
from orchestrator.graphs import WorkflowSpec
from orchestrator.runtime import Runtime
from orchestrator.testing import stand_in


class SlowInput(BaseModel):
    seconds: float


class SlowState(MultiAgentState, total=False):
    seconds: float


async def wait(state: SlowState) -> dict[str, Any]:
    call = await call_agent("slow", "sleep", {"seconds": state["seconds"]}, subtask="wait")
    return {**call.updates, "partial_results": {"wait": call.result}}


async def finish(state: SlowState) -> dict[str, Any]:
    return {"final_result": {"status": "completed", "slept": state["seconds"]}}


_builder = StateGraph(SlowState)
_builder.add_node("wait", wait)
_builder.add_node("finish", finish)
_builder.add_edge(START, "wait")
_builder.add_edge("wait", "finish")
_builder.add_edge("finish", END)
slowflow = WorkflowSpec("slowflow", _builder, SlowInput, "one slow agent call")


def main(log_path: str, argv: list[str]) -> int:
    def note(event: str) -> None:
        with open(log_path, "a") as log:
            log.write(event + "\n")

    def first_time() -> bool:
        with open(log_path) as log:
            return "start" not in log.read()

    async def sleep(payload: dict[str, Any], ctx: Any) -> dict[str, Any]:
        first = first_time()
        note("start")
        await asyncio.sleep(payload["seconds"] if first else 0)
        note("done")
        return {"ok": True}

    real_open = Runtime.open

    def open_with_slow(settings: Any, *, agents: Any = None) -> Any:
        return real_open(settings, agents=[stand_in("slow", {"sleep": sleep})])

    graphs.available_workflows = lambda: {"slowflow": slowflow}  # type: ignore[assignment]
    Runtime.open = open_with_slow  # type: ignore[method-assign]
    return cli.main(argv)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2:]))
