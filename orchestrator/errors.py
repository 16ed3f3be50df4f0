"""The orchestrator's exception tree.

Every error has a stable ``code`` and a message that tells the user what to do. Control-flow
signals (LangGraph interrupts, ``asyncio.CancelledError``) are not part of this tree and are
never swallowed.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

from orchestrator.state.errors import (
    CheckpointNotFound,
    ErrorCode,
    MigrationError,
    OrchestratorError,
    StaleWorkflowVersion,
    WorkflowExists,
    WorkflowNotFound,
)

__all__ = [
    "ErrorCode",
    "AgentErrorCode",
    "OrchestratorError",
    "AgentUnavailable",
    "AgentTimeout",
    "AgentError",
    "CircuitOpen",
    "ResourceLocked",
    "LockLost",
    "LeaseLost",
    "RunNotFound",
    "StaleWorkflowVersion",
    "WorkflowNotFound",
    "InvalidInput",
    "InvalidAnswer",
    "DeadLettered",
    "WorkflowBusy",
    "MigrationError",
    "WorkflowExists",
    "CheckpointNotFound",
    "InvalidConfiguration",
    "WrongContext",
    "DeadLetterNotFound",
    "Unauthorized",
    "Forbidden",
    "ServerUnreachable",
    "BudgetExceeded",
]


class AgentErrorCode(StrEnum):
    """The codes an agent answers with (``ErrorInfo.code`` on the bus, ``AgentError.error_code``
    on the requester's side). Part of the wire contract: the values never change.

    Handlers raise ``HandlerError(AgentErrorCode.X, ...)``; the worker itself answers with the
    last group. The README's "Errors" table documents each one.
    """

    # raised by handlers
    INVALID_INPUT = "invalid_input"
    UNSAFE_PATH = "unsafe_path"
    FILE_MISSING = "file_missing"
    PATCH_FAILED = "patch_failed"
    GIT_FAILED = "git_failed"
    MERGE_FAILED = "merge_failed"
    DIRTY_WORKTREE = "dirty_worktree"
    TARGET_MOVED = "target_moved"
    RUFF_FAILED = "ruff_failed"
    COMMAND_FAILED = "command_failed"
    COMMAND_NOT_FOUND = "command_not_found"
    TRAFFIC_COMMAND_FAILED = "traffic_command_failed"
    ROLLBACK_FAILED = "rollback_failed"
    MISSING_FENCING_TOKEN = "missing_fencing_token"
    STALE_FENCING_TOKEN = "stale_fencing_token"
    BUDGET_EXCEEDED = "budget_exceeded"
    # answered by the worker
    ALREADY_EXECUTED = "already_executed"
    DEADLINE_PASSED = "deadline_passed"
    UNKNOWN_REQUEST_TYPE = "unknown_request_type"
    HANDLER_TIMEOUT = "handler_timeout"
    TRANSIENT_ERROR = "transient_error"
    INTERNAL_ERROR = "internal_error"
    DEAD_LETTERED = "dead_lettered"


class InvalidInput(OrchestratorError):
    """Input that can never succeed as given: retrying it is pointless."""

    code = ErrorCode.INVALID_INPUT


class InvalidAnswer(InvalidInput):
    """An answer to a pending question that does not fit its schema (or no answer at all).

    Nothing was changed: the question stays pending. ``problem`` names the fields.
    """

    code = ErrorCode.INVALID_ANSWER

    def __init__(self, message: str, *, problem: str | None = None) -> None:
        super().__init__(message)
        self.problem = problem or message


class AgentUnavailable(OrchestratorError):
    code = ErrorCode.AGENT_UNAVAILABLE

    def __init__(self, agent_type: str) -> None:
        super().__init__(
            f"no live agent of type {agent_type!r} is registered; start one with "
            f"`orchestrator worker --agents {agent_type}` or enable local agents"
        )
        self.agent_type = agent_type


class AgentTimeout(OrchestratorError):
    code = ErrorCode.AGENT_TIMEOUT

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

    code = ErrorCode.AGENT_ERROR

    def __init__(
        self, agent_type: str, error_code: str, message: str, *, retryable: bool = False
    ) -> None:
        super().__init__(f"{agent_type} agent failed ({error_code}): {message}")
        self.agent_type = agent_type
        self.error_code = error_code
        self.retryable = retryable


class DeadLettered(OrchestratorError):
    code = ErrorCode.DEAD_LETTERED


class CircuitOpen(OrchestratorError):
    """The target's circuit breaker refuses calls until ``retry_at``."""

    code = ErrorCode.CIRCUIT_OPEN

    def __init__(
        self, message: str, *, target: str = "", state: str = "open",
        retry_at: datetime | None = None,
    ) -> None:
        super().__init__(message)
        self.target = target
        self.state = state
        self.retry_at = retry_at


class ResourceLocked(OrchestratorError):
    code = ErrorCode.RESOURCE_LOCKED

    def __init__(self, resource: str, holder: str | None, waited: float) -> None:
        super().__init__(
            f"resource {resource!r} is locked by {holder or 'another holder'} "
            f"(waited {waited:.1f}s); retry later or raise the wait timeout"
        )
        self.resource = resource
        self.holder = holder


class LockLost(OrchestratorError):
    code = ErrorCode.LOCK_LOST


class LeaseLost(OrchestratorError):
    """A runner of ``orchestrator serve`` no longer holds the lease of the run it executes
    (it expired, or the sweeper handed the run to another runner): its write was refused, so
    a runner that paused past its lease never writes over the one that took the run over."""

    code = ErrorCode.LEASE_LOST

    def __init__(self, thread_id: str, run_id: int, epoch: int) -> None:
        super().__init__(
            f"run {run_id} of workflow {thread_id} lost its lease (epoch {epoch}): the write was "
            "refused and another runner continues the run; look for stalls that outlast "
            "run_lease"
        )
        self.thread_id = thread_id
        self.run_id = run_id
        self.epoch = epoch


class RunNotFound(OrchestratorError, KeyError):
    """No run with that id in the service's queue."""

    code = ErrorCode.RUN_NOT_FOUND

    def __init__(self, run_id: int) -> None:
        super().__init__(f"no run with id {run_id}; list the runs (GET /runs) for the ids "
                         "there are")
        self.run_id = run_id


class WorkflowBusy(OrchestratorError):
    """The workflow is being run by another live process."""

    code = ErrorCode.WORKFLOW_BUSY


class InvalidConfiguration(InvalidInput, ValueError):
    """A component built with arguments that cannot work (a worker without agents, a breaker
    with a negative window, a handler registered twice). Fix the arguments."""

    code = ErrorCode.INVALID_CONFIGURATION


class WrongContext(OrchestratorError, RuntimeError):
    """An API used where it cannot work: the facade outside ``async with``, ``hold_lock``
    outside a graph node, the runtime looked up outside an orchestrator run."""

    code = ErrorCode.WRONG_CONTEXT


class DeadLetterNotFound(OrchestratorError, KeyError):
    """No dead letter with that entry id: ``orchestrator dlq ls <agent type>`` lists them."""

    code = ErrorCode.DEAD_LETTER_NOT_FOUND


class Unauthorized(OrchestratorError):
    """A request to the service without a token, or with one it does not know (or revoked)."""

    code = ErrorCode.UNAUTHORIZED


class Forbidden(OrchestratorError):
    """A request whose token's role is below what the action needs (viewer < operator <
    admin)."""

    code = ErrorCode.FORBIDDEN


class ServerUnreachable(OrchestratorError, ConnectionError):
    """The client could not reach ``orchestrator serve`` at its URL (refused, timed out, or
    not an orchestrator). The message names the URL and what to check."""

    code = ErrorCode.SERVER_UNREACHABLE


class BudgetExceeded(InvalidInput):
    """A model call would pass a budget (the workflow's ``budget_usd``, the namespace's or an
    agent type's daily budget): the input is at fault, not the agent, so it never opens a
    circuit breaker. ``details``: ``{scope, limit, spent, reserved, estimate, cheaper}``;
    raise the budget, pick a cheaper model, or set ``budget_policy`` to ``fallback``."""

    code = ErrorCode.BUDGET_EXCEEDED

    def __init__(self, message: str, *, details: dict[str, object] | None = None) -> None:
        super().__init__(message)
        self.details = dict(details or {})
