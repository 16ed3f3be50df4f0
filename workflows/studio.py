"""Graphs for the LangGraph server (``langgraph dev`` / LangGraph Studio).

``langgraph.json`` points here. Each entry is an async context-manager factory: the server
calls it for every run and gives the graph its own checkpointer. The factory makes sure the
process has an orchestrator runtime (opened once, from ``ORCHESTRATOR_*`` variables, on the
server's event loop, hosting the built-in agents unless ``ORCHESTRATOR_LOCAL_AGENTS=false``)
and sets it as the runtime graph nodes see.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

from langchain_core.runnables import RunnableConfig
from orchestrator.workflows.multi_repo_change import workflow as _multi_repo_change
from orchestrator.workflows.parallel_docs import workflow as _parallel_docs
from orchestrator.workflows.plan_execution import workflow as _plan_execution
from orchestrator.workflows.pr_deployment import workflow as _pr_deployment
from orchestrator.workflows.self_healing import workflow as _self_healing

from orchestrator.graphs import WorkflowSpec, compile_workflow
from orchestrator.runtime import Runtime, use_runtime
from orchestrator.settings import Settings

__all__ = ["multi_repo_change", "parallel_docs", "plan_execution", "pr_deployment",
           "self_healing"]

_runtime: Runtime | None = None
_lock: asyncio.Lock | None = None
# The runtime lives as long as the server process; its exit stack is kept here so it is not
# garbage-collected (embedded services stop at interpreter exit).
_stack = contextlib.AsyncExitStack()


async def _server_runtime() -> Runtime:
    global _runtime, _lock
    if _runtime is None:
        _lock = _lock or asyncio.Lock()
        async with _lock:
            if _runtime is None:
                settings = await asyncio.to_thread(Settings.from_env)  # reads the file system
                _runtime = await _stack.enter_async_context(Runtime.open(settings))
    return _runtime


_compiled: dict[str, Any] = {}


def _factory(spec: WorkflowSpec, name: str) -> Any:
    @contextlib.asynccontextmanager
    async def factory(config: RunnableConfig) -> AsyncIterator[Any]:
        runtime = await _server_runtime()
        if name not in _compiled:  # once per process, as the facade does: the task cache
            _compiled[name] = compile_workflow(spec, runtime)  # needs the runtime's database
        with use_runtime(runtime):
            yield _compiled[name]

    factory.__name__ = factory.__qualname__ = name
    factory.__doc__ = f"``{name}`` for the LangGraph server."
    return factory


parallel_docs = _factory(_parallel_docs, "parallel_docs")
pr_deployment = _factory(_pr_deployment, "pr_deployment")
self_healing = _factory(_self_healing, "self_healing")
plan_execution = _factory(_plan_execution, "plan_execution")
multi_repo_change = _factory(_multi_repo_change, "multi_repo_change")
