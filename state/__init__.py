"""Storage layer: state schema and reducers, database pool, migrations, checkpointer,
workflow store. Imports nothing from the other packages of the project."""

from orchestrator.state.db import Database
from orchestrator.state.errors import OrchestratorError, StaleWorkflowVersion, WorkflowNotFound
from orchestrator.state.schema import MultiAgentState
from orchestrator.state.store import WorkflowRecord, WorkflowStateManager

__all__ = [
    "Database",
    "MultiAgentState",
    "OrchestratorError",
    "StaleWorkflowVersion",
    "WorkflowNotFound",
    "WorkflowRecord",
    "WorkflowStateManager",
]
