"""The orchestrator's exception tree.

Every error has a stable ``code`` and a message that tells the user what to do. Control-flow
signals (LangGraph interrupts, ``asyncio.CancelledError``) are not part of this tree and are
never swallowed.
"""

from __future__ import annotations

from datetime import datetime

from state.errors import MigrationError, OrchestratorError, StaleWorkflowVersion, WorkflowNotFound

__all__ = [
    "OrchestratorError",
    "AgentUnavailable",
    "AgentTimeout",
    "AgentError",
    "CircuitOpen",
    "ResourceLocked",
    "LockLost",
    "StaleWorkflowVersion",
    "WorkflowNotFound",
    "InvalidInput",
    "InvalidAnswer",
    "DeadLettered",
    "WorkflowBusy",
    "MigrationError",
]


class InvalidInput(OrchestratorError):
    """Input that can never succeed as given: retrying it is pointless."""

    code = "invalid_input"


class InvalidAnswer(InvalidInput):
    """An answer to a pending question that does not fit its schema (or no answer at all).

    Nothing was changed: the question stays pending. ``problem`` names the fields.
    """

    code = "invalid_answer"

    def __init__(self, message: str, *, problem: str | None = None) -> None:
        super().__init__(message)
        self.problem = problem or message


class AgentUnavailable(OrchestratorError):
    code = "agent_unavailable"

    def __init__(self, agent_type: str) -> None:
        super().__init__(
            f"no live agent of type {agent_type!r} is registered; start one with "
            f"`orchestrator worker --agents {agent_type}` or enable local agents"
        )
        self.agent_type = agent_type


class AgentTimeout(OrchestratorError):
    code = "agent_timeout"

    def __init__(self, agent_type: str, request_type: str, timeout: float, request_id: str) -> None:
        super().__init__(
            f"{agent_type}.{request_type} did not answer within {timeout:g}s "
            f"(request {request_id}); check the workers with `orchestrator agents`"
        )
        self.agent_type = agent_type
        self.request_id = request_id


class AgentError(OrchestratorError):
    """The agent answered with an error.

    ``retryable`` tells the node's retry policy whether trying again can help.
    """

    code = "agent_error"

    def __init__(
        self, agent_type: str, error_code: str, message: str, *, retryable: bool = False
    ) -> None:
        super().__init__(f"{agent_type} agent failed ({error_code}): {message}")
        self.agent_type = agent_type
        self.error_code = error_code
        self.retryable = retryable


class DeadLettered(OrchestratorError):
    code = "dead_lettered"


class CircuitOpen(OrchestratorError):
    """The target's circuit breaker refuses calls until ``retry_at``."""

    code = "circuit_open"

    def __init__(
        self, message: str, *, target: str = "", state: str = "open",
        retry_at: datetime | None = None,
    ) -> None:
        super().__init__(message)
        self.target = target
        self.state = state
        self.retry_at = retry_at


class ResourceLocked(OrchestratorError):
    code = "resource_locked"

    def __init__(self, resource: str, holder: str | None, waited: float) -> None:
        super().__init__(
            f"resource {resource!r} is locked by {holder or 'another holder'} "
            f"(waited {waited:.1f}s); retry later or raise the wait timeout"
        )
        self.resource = resource
        self.holder = holder


class LockLost(OrchestratorError):
    code = "lock_lost"


class WorkflowBusy(OrchestratorError):
    """The workflow is being run by another live process."""

    code = "workflow_busy"
