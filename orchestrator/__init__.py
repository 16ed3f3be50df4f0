"""A LangGraph workflow orchestrator for multi-agent software delivery.

Graphs are checkpointed to PostgreSQL; their nodes call agents over Redis Streams under
PostgreSQL resource locks. Start with :class:`Orchestrator`.

Names are imported on first use, so ``orchestrator`` commands that need no graph (``analyze``,
``ls``, ``services``...) do not pay for importing LangGraph.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .agent import Agent, HandlerError, RequestContext
    from .calls import AGENT_RETRY, AgentCall, call_agent
    from .errors import (
        AgentError,
        AgentTimeout,
        AgentUnavailable,
        InvalidInput,
        OrchestratorError,
        ResourceLocked,
        StaleWorkflowVersion,
        WorkflowNotFound,
    )
    from .facade import Orchestrator, Progress, RunResult
    from .graphs import WorkflowSpec
    from .settings import Settings

_WHERE = {
    "Agent": "agent", "HandlerError": "agent", "RequestContext": "agent",
    "AGENT_RETRY": "calls", "AgentCall": "calls", "call_agent": "calls",
    "AgentError": "errors", "AgentTimeout": "errors", "AgentUnavailable": "errors",
    "InvalidInput": "errors", "OrchestratorError": "errors", "ResourceLocked": "errors",
    "StaleWorkflowVersion": "errors", "WorkflowNotFound": "errors",
    "Orchestrator": "facade", "Progress": "facade", "RunResult": "facade",
    "WorkflowSpec": "graphs", "Settings": "settings",
}

__all__ = [
    "AGENT_RETRY",
    "Agent",
    "AgentCall",
    "AgentError",
    "AgentTimeout",
    "AgentUnavailable",
    "HandlerError",
    "InvalidInput",
    "Orchestrator",
    "OrchestratorError",
    "Progress",
    "RequestContext",
    "ResourceLocked",
    "RunResult",
    "Settings",
    "StaleWorkflowVersion",
    "WorkflowNotFound",
    "WorkflowSpec",
    "call_agent",
]


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'orchestrator' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value
