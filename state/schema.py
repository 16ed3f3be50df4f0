"""``MultiAgentState``: the state every graph shares, and the reducers for parallel writers.

Every key that parallel branches (LangGraph ``Send`` fan-outs) write has a reducer, so two
branches finishing in the same step merge instead of raising ``InvalidUpdateError``.
State holds data only: never secrets, connections or other live objects.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from functools import cache
from typing import Annotated, Any, TypedDict, get_args, get_origin, get_type_hints

__all__ = [
    "MultiAgentState",
    "Subtask",
    "LockRecord",
    "ErrorEntry",
    "merge_dicts",
    "append_list",
    "latest",
    "now_iso",
    "merge_updates",
    "reducers",
]


def merge_dicts(left: dict[str, Any] | None, right: dict[str, Any] | None) -> dict[str, Any]:
    """Shallow merge; on a shared key the newer (right) value wins. Inputs are not mutated."""
    if not left:
        return dict(right or {})
    if not right:
        return dict(left)
    return {**left, **right}


def append_list(left: list[Any] | None, right: list[Any] | Any | None) -> list[Any]:
    """Concatenate; a single non-list value is appended as one item."""
    left = list(left or [])
    if right is None:
        return left
    if isinstance(right, list):
        return left + right
    return [*left, right]


def latest(left: str | None, right: str | None) -> str | None:
    """Keep the later of two ISO-8601 UTC timestamps (they sort as strings)."""
    if left is None:
        return right
    if right is None:
        return left
    return max(left, right)


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds")


class Subtask(TypedDict, total=False):
    id: str
    kind: str
    agent_type: str
    payload: dict[str, Any]


class LockRecord(TypedDict):
    resource: str
    holder: str
    token: int


class ErrorEntry(TypedDict, total=False):
    at: str
    node: str
    code: str
    message: str
    subtask: str


class MultiAgentState(TypedDict, total=False):
    """State shared by every pipeline; each graph extends it with its own input fields."""

    task_id: str
    workflow_type: str
    subtasks: list[Subtask]
    subtask_status: Annotated[dict[str, str], merge_dicts]
    agent_assignments: Annotated[dict[str, str], merge_dicts]
    agent_status: Annotated[dict[str, str], merge_dicts]
    locks: Annotated[dict[str, LockRecord], merge_dicts]
    checkpoints: Annotated[list[str], append_list]
    partial_results: Annotated[dict[str, Any], merge_dicts]
    final_result: Any
    started_at: str
    updated_at: Annotated[str, latest]
    error_log: Annotated[list[ErrorEntry], append_list]


@cache
def reducers(schema: type = MultiAgentState) -> dict[str, Callable[[Any, Any], Any]]:
    """The reducer of every annotated key of ``schema`` (a state TypedDict), by key."""
    found: dict[str, Callable[[Any, Any], Any]] = {}
    for key, hint in get_type_hints(schema, include_extras=True).items():
        if get_origin(hint) is Annotated:
            reducer = next((m for m in get_args(hint)[1:] if callable(m)), None)
            if reducer is not None:
                found[key] = reducer
    return found


def merge_updates(*updates: Mapping[str, Any] | None,
                  schema: type = MultiAgentState) -> dict[str, Any]:
    """Combine node state updates as LangGraph would apply them one after the other.

    A key with a reducer in ``schema`` (``error_log``, ``agent_status``, ``partial_results``...)
    is combined with it; any other key takes the later value. This is how a node returns an
    agent call's updates (:attr:`orchestrator.calls.AgentCall.updates`, or a failed call's
    ``exc.updates``) together with its own: ``merge_updates(call.updates, {...})``.
    """
    by_key = reducers(schema)
    merged: dict[str, Any] = {}
    for update in updates:
        for key, value in (update or {}).items():
            reducer = by_key.get(key)
            merged[key] = reducer(merged[key], value) if reducer and key in merged else value
    return merged
