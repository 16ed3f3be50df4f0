"""Storage layer: state schema and reducers, database pool, migrations, checkpointer,
workflow store. Imports nothing from the other packages of the project."""

from .db import Database
from .errors import OrchestratorError, StaleWorkflowVersion, WorkflowNotFound
from .schema import MultiAgentState
from .workflows import WorkflowRecord, WorkflowStateManager

__all__ = [
    "Database",
    "MultiAgentState",
    "OrchestratorError",
    "StaleWorkflowVersion",
    "WorkflowNotFound",
    "WorkflowRecord",
    "WorkflowStateManager",
]
