"""A LangGraph workflow orchestrator for multi-agent software delivery.

Graphs are checkpointed to PostgreSQL; their nodes call agents over Redis Streams under
PostgreSQL resource locks. Start with :class:`Orchestrator`.
"""

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
