"""What the facade hands back: results of an invocation, details and history of a workflow,
and the progress events of a run (``Progress``, turned from streamed node updates by
:class:`ProgressTracker`).

These are plain values: :mod:`orchestrator.facade` produces them, the CLI, the service and the
pytest plugin read them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from orchestrator.state.store import WorkflowRecord

from .calls import failure_updates

__all__ = ["HistoryEntry", "Progress", "ProgressCallback", "ProgressTracker", "RunResult",
           "WorkflowDetails", "error_fields", "failed_node", "is_failed", "question_kind",
           "question_text"]


@dataclass(frozen=True)
class RunResult:
    """Where an invocation (run or resume) left the workflow."""

    thread_id: str
    workflow_type: str
    status: str  # running | interrupted | completed | failed | cancelled
    final_result: Any = None
    interrupts: list[dict[str, Any]] = field(default_factory=list)
    error: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "thread_id": self.thread_id,
            "workflow_type": self.workflow_type,
            "status": self.status,
            "final_result": self.final_result,
            "interrupts": self.interrupts,
            "error": self.error,
        }


@dataclass(frozen=True)
class Progress:
    """One finished graph step, for progress display: ``done`` of ``total`` subtasks, and the
    run's latest ``eta`` when its workflow gives one (``plan_execution``)."""

    thread_id: str
    node: str
    done: int
    total: int
    label: str
    eta: dict[str, Any] | None = None


@dataclass(frozen=True)
class WorkflowDetails:
    record: WorkflowRecord
    values: dict[str, Any]
    next: list[str]
    interrupts: list[dict[str, Any]]

    def to_dict(self) -> dict[str, Any]:
        return {**self.record.to_dict(), "values": self.values, "next": self.next,
                "interrupts": self.interrupts}


@dataclass(frozen=True)
class HistoryEntry:
    checkpoint_id: str
    step: int
    source: str
    created_at: str
    next: list[str]
    names: list[str]

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


ProgressCallback = Callable[[Progress], None]


def question_kind(value: Any) -> str | None:
    """The kind of an interrupt's question (``approval``...), None for a bare interrupt."""
    return value.get("kind") if isinstance(value, dict) else None


def question_text(value: Any) -> str:
    """What an interrupt asks, as text (a typed question's ``question``, or the value)."""
    text = value.get("question") if isinstance(value, dict) else None
    return str(text if text is not None else value)[:2000]


def error_fields(error: Any) -> dict[str, Any]:
    """A final result's error as the ``code``/``message`` fields of ``workflow.failed``."""
    if not error:
        return {}
    return dict(error) if isinstance(error, dict) else {"message": str(error)}


def failed_node(exc: BaseException) -> str | None:
    """The node whose failure ended the run, when the failed agent call recorded it."""
    for entry in failure_updates(exc).get("error_log", []):
        node = str(entry.get("node") or "")
        if node:
            return node.split(":", 1)[0]  # a task key is "<node>:<task id>"
    return None


def is_failed(final: Any) -> bool:
    return isinstance(final, dict) and final.get("status") == "failed"


class ProgressTracker:
    """Turns streamed node updates into :class:`Progress` events."""

    def __init__(self, thread_id: str, callback: ProgressCallback | None) -> None:
        self.thread_id = thread_id
        self.callback = callback
        self.total = 0
        self.done: set[str] = set()
        self.eta: dict[str, Any] | None = None

    def update(self, node: str, update: Any) -> None:
        if self.callback is None or not isinstance(update, dict):
            return
        subtasks = update.get("subtasks")
        if isinstance(subtasks, list):
            self.total = len(subtasks)
        if isinstance(update.get("eta"), dict):
            self.eta = update["eta"]
        label = node
        for key, status in (update.get("subtask_status") or {}).items():
            if status in ("done", "failed", "skipped"):
                self.done.add(key)
                label = f"{node} {key}" + ("" if status == "done" else f" ({status})")
        self.callback(Progress(self.thread_id, node, len(self.done), self.total, label,
                               self.eta))
