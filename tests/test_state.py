"""Reducers of MultiAgentState: what parallel branches writing the same key produce."""

from __future__ import annotations

import operator
from typing import Annotated, Any

from langgraph.graph import END, START, StateGraph
from langgraph.types import Send
from orchestrator.state.schema import MultiAgentState, append_list, latest, merge_dicts


class S(MultiAgentState, total=False):
    items: list[int]
    seen: Annotated[list[int], operator.add]


def test_merge_dicts_right_wins_and_does_not_mutate() -> None:
    left = {"a": 1, "b": 2}
    right = {"b": 3, "c": 4}
    assert merge_dicts(left, right) == {"a": 1, "b": 3, "c": 4}
    assert left == {"a": 1, "b": 2} and right == {"b": 3, "c": 4}
    assert merge_dicts(None, {"x": 1}) == {"x": 1}
    assert merge_dicts({"x": 1}, None) == {"x": 1}


def test_append_list_concatenates_and_appends_single_items() -> None:
    assert append_list([1], [2, 3]) == [1, 2, 3]
    assert append_list(None, {"e": 1}) == [{"e": 1}]
    assert append_list([1], None) == [1]


def test_latest_keeps_the_later_timestamp() -> None:
    early, late = "2026-01-01T00:00:00.000001+00:00", "2026-01-01T00:00:01.000000+00:00"
    assert latest(early, late) == late
    assert latest(late, early) == late
    assert latest(None, early) == early


async def test_parallel_branches_merge_through_the_reducers() -> None:
    """Fifty Send branches write the same keys in one step: nothing is lost or clobbered."""

    def fan(state: S) -> list[Send]:
        return [Send("work", {"i": i}) for i in state["items"]]

    async def work(task: dict[str, Any]) -> dict[str, Any]:
        i = task["i"]
        return {
            "partial_results": {f"r{i}": i * i},
            "subtask_status": {f"t{i}": "done"},
            "agent_assignments": {f"t{i}": f"agent-{i % 3}"},
            "error_log": [{"code": "x", "message": str(i)}] if i % 10 == 0 else [],
            "updated_at": f"2026-01-01T00:00:{i:02d}.000000+00:00",
            "seen": [i],
        }

    builder = StateGraph(S)
    builder.add_node("work", work)
    builder.add_conditional_edges(START, fan, ["work"])
    builder.add_edge("work", END)
    out = await builder.compile().ainvoke({"items": list(range(50))})
    assert out["partial_results"] == {f"r{i}": i * i for i in range(50)}
    assert len(out["subtask_status"]) == 50
    assert sorted(out["seen"]) == list(range(50))
    assert sorted(int(e["message"]) for e in out["error_log"]) == [0, 10, 20, 30, 40]
    assert out["updated_at"] == "2026-01-01T00:00:49.000000+00:00"
