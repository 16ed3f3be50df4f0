"""Small graphs used by the tests (test doubles live in tests/ only)."""

from __future__ import annotations

from typing import Any

from langgraph.graph import END, START, StateGraph
from orchestrator.state.schema import MultiAgentState
from pydantic import BaseModel, ConfigDict

from orchestrator.calls import AGENT_RETRY, call_agent
from orchestrator.graphs import WorkflowSpec
from orchestrator.questions import Answer, ask


class ApprovalInput(BaseModel):
    change: str


class ApprovalState(MultiAgentState, total=False):
    change: str
    decision: dict[str, Any]


async def review(state: ApprovalState) -> dict[str, Any]:
    call = await call_agent("reviewer", "review", {"change": state["change"]}, subtask="review")
    return {**call.updates, "partial_results": {"review": call.result}}


class ApprovalAnswer(Answer):  # Answer: strict, no unknown keys, and `by` (who answers)
    model_config = ConfigDict(json_schema_extra={"examples": [{"approve": True, "by": "ana"}]})

    approve: bool


async def approve(state: ApprovalState) -> dict[str, Any]:
    answer = ask(ApprovalAnswer, kind="approval", question=f"approve {state['change']}?",
                 context={"review": state["partial_results"]["review"]})
    return {"decision": answer.model_dump()}


async def finish(state: ApprovalState) -> dict[str, Any]:
    approved = state["decision"]["approve"] is True
    return {"final_result": {"status": "completed" if approved else "failed",
                             "approved": approved, "by": state["decision"]["by"]}}


_builder = StateGraph(ApprovalState)
_builder.add_node("review", review)
_builder.add_node("approve", approve)
_builder.add_node("finish", finish)
_builder.add_edge(START, "review")
_builder.add_edge("review", "approve")
_builder.add_edge("approve", "finish")
_builder.add_edge("finish", END)

approval = WorkflowSpec("approval", _builder, ApprovalInput, "review, then wait for a human")


async def _looks_fine(payload: dict[str, Any], ctx: Any) -> dict[str, Any]:
    return {"verdict": "looks fine"}


async def approval_service(orchestrator_factory: Any) -> Any:
    """A ``RunService`` over an orchestrator (the tests' ``orchestrator_factory``) that runs
    ``approval``, its reviewer a stand-in that finds every change fine."""
    from orchestrator.service.runs import RunService
    from orchestrator.testing import stand_in

    orch = await orchestrator_factory(stand_ins=[stand_in("reviewer", _looks_fine)],
                                      builtin=False, workflows={"approval": approval})
    return RunService(orch)


class FlakyInput(BaseModel):
    mode: str


class FlakyState(MultiAgentState, total=False):
    mode: str


async def call_flaky(state: FlakyState) -> dict[str, Any]:
    call = await call_agent("flaky", "go", {"mode": state["mode"]})
    return {**call.updates, "final_result": call.result}


_flaky = StateGraph(FlakyState)
_flaky.add_node("call_flaky", call_flaky, retry_policy=AGENT_RETRY)
_flaky.add_edge(START, "call_flaky")
_flaky.add_edge("call_flaky", END)

flaky = WorkflowSpec("flaky", _flaky, FlakyInput, "one agent call under AGENT_RETRY")


class RolloutInput(BaseModel):
    deploy: dict[str, Any]


class RolloutState(MultiAgentState, total=False):
    deploy: dict[str, Any]
    canary: dict[str, Any]


async def report(state: RolloutState) -> dict[str, Any]:
    canary = state["canary"]
    return {"final_result": {"status": "completed" if canary["status"] == "completed"
                             else "failed", "canary": canary}}


def _rollout_builder() -> StateGraph:
    from orchestrator.workflows.canary import canary_graph

    builder = StateGraph(RolloutState)
    builder.add_node("canary", canary_graph)
    builder.add_node("report", report)
    builder.add_edge(START, "canary")
    builder.add_edge("canary", "report")
    builder.add_edge("report", END)
    return builder


rollout = WorkflowSpec("rollout", _rollout_builder(), RolloutInput,
                       "the canary subgraph on its own, as another graph would reuse it")
