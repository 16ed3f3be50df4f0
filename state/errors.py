"""Errors raised by the storage layer.

The root of the project's exception tree lives here because ``state`` is the bottom layer:
``orchestrator.errors`` re-exports these beside the runtime errors, and that is where users
import them from.
"""

from __future__ import annotations

__all__ = ["OrchestratorError", "StaleWorkflowVersion", "WorkflowNotFound", "MigrationError"]


class OrchestratorError(Exception):
    """Base of every error the orchestrator raises on purpose.

    Each subclass has a stable ``code`` (for logs, JSON output and exit codes) and a message
    that says what went wrong and what to do about it.
    """

    code: str = "orchestrator_error"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def to_dict(self) -> dict[str, str]:
        return {"code": self.code, "message": self.message}


class StaleWorkflowVersion(OrchestratorError):
    """An update lost an optimistic-locking race: someone else updated the workflow first."""

    code = "stale_workflow_version"

    def __init__(self, thread_id: str, expected: int, actual: int | None) -> None:
        super().__init__(
            f"workflow {thread_id} was updated concurrently: expected version {expected}, "
            f"found {actual}; re-read it and retry the update"
        )
        self.thread_id = thread_id
        self.expected = expected
        self.actual = actual


class WorkflowNotFound(OrchestratorError):
    code = "workflow_not_found"

    def __init__(self, thread_id: str) -> None:
        super().__init__(
            f"no workflow with thread id {thread_id!r}; `orchestrator ls` lists the known ones"
        )
        self.thread_id = thread_id


class MigrationError(OrchestratorError):
    code = "migration_error"
