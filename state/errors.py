"""Errors raised by the storage layer.

The root of the project's exception tree lives here because ``state`` is the bottom layer:
``orchestrator.errors`` re-exports these beside the runtime errors, and that is where users
import them from.
"""

from __future__ import annotations

from enum import StrEnum

__all__ = ["ErrorCode", "OrchestratorError", "StaleWorkflowVersion", "WorkflowNotFound",
           "WorkflowExists", "CheckpointNotFound", "MigrationError"]


class ErrorCode(StrEnum):
    """The stable ``code`` of every exception in the tree.

    The values are what logs, ``--json`` output, the database and the CLI show: they never
    change (a ``StrEnum`` member *is* its string, so ``ErrorCode.INVALID_INPUT ==
    "invalid_input"``). The README's "Errors" table documents each one; a test keeps the two
    in step.
    """

    ORCHESTRATOR_ERROR = "orchestrator_error"
    INVALID_INPUT = "invalid_input"
    INVALID_ANSWER = "invalid_answer"
    INVALID_PLAN = "invalid_plan"
    INVALID_CONFIGURATION = "invalid_configuration"
    WRONG_CONTEXT = "wrong_context"
    AGENT_UNAVAILABLE = "agent_unavailable"
    AGENT_TIMEOUT = "agent_timeout"
    AGENT_ERROR = "agent_error"
    HANDLER_ERROR = "handler_error"
    DEAD_LETTERED = "dead_lettered"
    DEAD_LETTER_NOT_FOUND = "dead_letter_not_found"
    UNDECODABLE_MESSAGE = "undecodable_message"
    CIRCUIT_OPEN = "circuit_open"
    RESOURCE_LOCKED = "resource_locked"
    LOCK_LOST = "lock_lost"
    LEASE_LOST = "lease_lost"
    WORKFLOW_BUSY = "workflow_busy"
    WORKFLOW_NOT_FOUND = "workflow_not_found"
    RUN_NOT_FOUND = "run_not_found"
    WORKFLOW_EXISTS = "workflow_exists"
    CHECKPOINT_NOT_FOUND = "checkpoint_not_found"
    STALE_WORKFLOW_VERSION = "stale_workflow_version"
    MIGRATION_ERROR = "migration_error"
    EMBEDDED_SERVICE_ERROR = "embedded_service_error"
    UNAUTHORIZED = "unauthorized"
    FORBIDDEN = "forbidden"
    SERVER_UNREACHABLE = "server_unreachable"
    BUDGET_EXCEEDED = "budget_exceeded"


class OrchestratorError(Exception):
    """Base of every error the orchestrator raises on purpose.

    Each subclass has a stable ``code`` from :class:`ErrorCode` (for logs, JSON output and
    exit codes) and a message that says what went wrong and what to do about it. A subclass
    may also derive from a builtin (``ValueError``, ``KeyError``, ``RuntimeError``) so that
    callers catching the builtin keep working.
    """

    code: str = ErrorCode.ORCHESTRATOR_ERROR

    def __str__(self) -> str:  # KeyError would quote the message
        return self.message

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def to_dict(self) -> dict[str, str]:
        return {"code": str(self.code), "message": self.message}


class StaleWorkflowVersion(OrchestratorError):
    """An update lost an optimistic-locking race: someone else updated the workflow first."""

    code = ErrorCode.STALE_WORKFLOW_VERSION

    def __init__(self, thread_id: str, expected: int, actual: int | None) -> None:
        super().__init__(
            f"workflow {thread_id} was updated concurrently: expected version {expected}, "
            f"found {actual}; re-read it and retry the update"
        )
        self.thread_id = thread_id
        self.expected = expected
        self.actual = actual


class WorkflowNotFound(OrchestratorError):
    code = ErrorCode.WORKFLOW_NOT_FOUND

    def __init__(self, thread_id: str) -> None:
        super().__init__(
            f"no workflow with thread id {thread_id!r}; `orchestrator ls` lists the known ones"
        )
        self.thread_id = thread_id


class WorkflowExists(OrchestratorError, ValueError):
    """A new workflow was given a thread id that is already used."""

    code = ErrorCode.WORKFLOW_EXISTS

    def __init__(self, thread_id: str) -> None:
        super().__init__(
            f"a workflow with thread id {thread_id!r} already exists; resume it or pick another id"
        )
        self.thread_id = thread_id


class CheckpointNotFound(OrchestratorError, KeyError):
    """A workflow has no named checkpoint of that name."""

    code = ErrorCode.CHECKPOINT_NOT_FOUND


class MigrationError(OrchestratorError):
    code = ErrorCode.MIGRATION_ERROR
