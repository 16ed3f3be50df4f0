"""A LangGraph workflow orchestrator for multi-agent software delivery.

Graphs are checkpointed to PostgreSQL; their nodes call agents over Redis Streams under
PostgreSQL resource locks. Start with :class:`Orchestrator`.

Everything installed lives under this one name: the storage layer is ``orchestrator.state``,
the graphs ``orchestrator.workflows``, the built-in agents ``orchestrator.agents`` (the
repository keeps them in its top-level ``state/``, ``workflows/`` and ``agents/`` folders), so a
project's own ``state``, ``workflows`` or ``agents`` package never hides them.

Names are imported on first use, so ``orchestrator`` commands that need no graph (``analyze``,
``ls``, ``services``...) do not pay for importing LangGraph.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ._layout import install as _install_layout

# orchestrator.state, .workflows and .agents: inside this package when installed from a wheel,
# the checkout's top-level folders when installed editable (see _layout)
_install_layout(__name__, Path(__file__).resolve().parent)

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
