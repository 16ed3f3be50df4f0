"""``pr_deployment``: review and test a branch, wait for approval, merge, roll out.

    validate ─┬─▶ review ─┬─▶ decide ─failed──────────────────────────▶ finish
              └─▶ tests  ─┘     ├─approval "required"─▶ approve ─reject─▶ finish
                                └─"auto"──────────────▶ merge ◀─approve─┘
                                                          ├─deploy given─▶ canary ─▶ finish
                                                          └──────────────────────▶ finish

* ``validate`` checks the input (a git repository, existing refs, and when ``target`` is
  checked out in the repository's work tree, no uncommitted changes to tracked files there;
  the canary spec with the deployer agent), so bad input fails before any work is done.
* ``review`` (code_review agent: ruff on the Python files changed since the merge base) and
  ``tests`` (cicd agent: the test command in a throw-away worktree at ``source``) run in
  parallel.
* ``approve`` pauses with the summary (a typed question, ``ApprovalAnswer``); resume with
  ``{"approve": true|false, "by": ..., "comment": ...}``: a JSON boolean, ``"false"`` is
  refused and asked again, never taken as a yes.
* ``merge`` (cicd agent) holds the ``repo:<path>`` lock and passes its fencing token; a
  conflict ends the run failed, naming the files, with the repository left as it was.
* ``canary`` is the shared rollout subgraph (``workflows/canary.py``).
"""

from __future__ import annotations

from typing import Any, Literal

from langgraph.graph import END, START, StateGraph
from orchestrator.state.schema import MultiAgentState, merge_updates, now_iso
from orchestrator.workflows.canary import CanarySpec, canary_graph, validate_canary
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from orchestrator.calls import AGENT_RETRY
from orchestrator.contracts.cicd import MERGE, RUN_TESTS, Command, Merge, RunTests
from orchestrator.contracts.code_review import REVIEW, Review
from orchestrator.contracts.repos import (
    GitRef,
    RepoPath,
    RepositoryError,
    branch_commit,
    commit_of,
    dirty_target,
    repo_lock,
    repository_top,
)
from orchestrator.graphs import WorkflowSpec, validated_fields
from orchestrator.questions import Answer, ask

__all__ = ["PRDeploymentInput", "PRDeploymentState", "ApprovalAnswer", "builder", "workflow"]


class PRDeploymentInput(BaseModel):
    """What ``pr_deployment`` needs; validation resolves ``repo`` to the repository's top.

    The rules are the agents' own (:mod:`orchestrator.contracts.repos`, the ``cicd`` contract's
    :data:`~orchestrator.contracts.cicd.Command`), checked here so bad input fails up front.
    """

    model_config = ConfigDict(extra="forbid")

    repo: RepoPath
    source: GitRef = Field(description="branch or ref to deliver")
    target: GitRef = Field("main", description="branch to merge into")
    test_command: Command = Field(
        "python -m pytest -q", description="run in a worktree at source, without a shell")
    test_timeout: float = Field(600.0, gt=0, description="seconds before the tests are killed")
    approval: Literal["required", "auto"] = "required"
    max_findings: int = Field(0, ge=0, description="review findings tolerated before it fails")
    deploy: CanarySpec | None = Field(None, description="canary rollout after the merge")

    @field_validator("repo")
    @classmethod
    def _repository(cls, value: str) -> str:
        return str(repository_top(value))

    @model_validator(mode="after")
    def _refs(self) -> PRDeploymentInput:
        try:
            commit_of(self.repo, self.source)
        except RepositoryError as exc:
            raise ValueError(f"source {exc}") from None
        try:
            branch_commit(self.repo, self.target)
        except RepositoryError as exc:
            raise ValueError(f"target {exc}") from None
        if self.source == self.target:
            raise ValueError("source and target are the same branch")
        problem = dirty_target(self.repo, self.target)
        if problem:
            raise ValueError(problem)
        return self


class PRDeploymentState(MultiAgentState, total=False):
    repo: str
    source: str
    target: str
    test_command: str | list[str]
    test_timeout: float
    approval: str
    max_findings: int
    deploy: dict[str, Any] | None
    canary: dict[str, Any]
    decision: dict[str, Any]
    merge: dict[str, Any]


async def validate(state: PRDeploymentState) -> dict[str, Any]:
    fields = {k: state.get(k) for k in PRDeploymentInput.model_fields if state.get(k) is not None}
    values = await validated_fields(workflow, fields)  # once per run, git off the event loop
    updates: dict[str, Any] = {}
    if values.get("deploy") is not None:
        values["deploy"], updates = await validate_canary(values["deploy"])
    stages = ["review", "tests", "merge", *(["canary"] if values.get("deploy") else [])]
    return merge_updates(updates, {**values, "workflow_type": "pr_deployment",
                                   "updated_at": now_iso(),
                                   "subtasks": [{"id": s, "kind": s} for s in stages]})


async def review(state: PRDeploymentState) -> dict[str, Any]:
    call = await REVIEW.call(
        Review(repo=state["repo"], source=state["source"], target=state["target"],
               max_findings=state.get("max_findings", 0)),
        subtask="review",
    )
    result = call.result.model_dump(mode="json")
    status = "done" if call.result.passed else "failed"
    return merge_updates(call.updates, {"partial_results": {"review": result},
                                        "subtask_status": {"review": status}})


async def tests(state: PRDeploymentState) -> dict[str, Any]:
    timeout = float(state.get("test_timeout") or 600)
    call = await RUN_TESTS.call(
        RunTests(repo=state["repo"], ref=state["source"], command=state["test_command"],
                 timeout=timeout),
        timeout=timeout + 300, subtask="tests",
    )
    result = call.result.model_dump(mode="json")
    status = "done" if call.result.passed else "failed"
    return merge_updates(call.updates, {"partial_results": {"tests": result},
                                        "subtask_status": {"tests": status}})


def _summary(state: PRDeploymentState) -> dict[str, Any]:
    results = state.get("partial_results") or {}
    rev, tst = results.get("review") or {}, results.get("tests") or {}
    return {
        "repo": state["repo"], "source": state["source"], "target": state["target"],
        "review": {"verdict": rev.get("verdict"), "files": rev.get("files", []),
                   "findings": len(rev.get("findings", [])), "counts": rev.get("counts", {})},
        "tests": {"passed": tst.get("passed"), "counts": tst.get("counts", {}),
                  "seconds": tst.get("seconds"), "commit": tst.get("commit")},
    }


async def decide(state: PRDeploymentState) -> dict[str, Any]:
    results = state.get("partial_results") or {}
    reasons = []
    rev, tst = results["review"], results["tests"]
    if not rev["passed"]:
        shown = "; ".join(f"{f['file']}:{f['line']} {f['code']} {f['message']}"
                          for f in rev["findings"][:10])
        reasons.append(f"review: {len(rev['findings'])} findings (at most "
                       f"{rev['max_findings']} allowed): {shown}")
    if not tst["passed"]:
        reasons.append(f"tests: {tst['reason']}")
    if reasons:
        return {"final_result": {**_summary(state), "status": "failed", "stage": "checks",
                                 "reasons": reasons, "merged": False}}
    return {"updated_at": now_iso()}


def after_decide(state: PRDeploymentState) -> Literal["approve", "merge", "finish"]:
    if state.get("final_result"):
        return "finish"
    return "merge" if state.get("approval") == "auto" else "approve"


class ApprovalAnswer(Answer):
    """The answer to ``approve``: a JSON boolean (``"false"`` is refused), who, and why."""

    model_config = ConfigDict(json_schema_extra={"examples": [
        {"approve": True, "by": "alice", "comment": "ship it"},
        {"approve": False, "by": "alice", "comment": "needs a migration first"},
    ]})

    approve: bool = Field(description="true merges; false ends the run failed, unmerged")
    comment: str | None = Field(None, max_length=4000)


async def approve(state: PRDeploymentState) -> dict[str, Any]:
    answer = ask(ApprovalAnswer, kind="approval",
                 question=f"merge {state['source']} into {state['target']} of {state['repo']}?",
                 context={"summary": _summary(state)})
    decision = {"approved": answer.approve, "by": answer.by, "comment": answer.comment,
                "at": now_iso()}
    update: dict[str, Any] = {"decision": decision}
    if answer.approve is not True:
        update["final_result"] = {
            **_summary(state), "status": "failed", "stage": "approval", "merged": False,
            "reasons": [f"rejected by {answer.by}: {answer.comment or 'no comment'}"],
        }
    return update


def after_approve(state: PRDeploymentState) -> Literal["merge", "finish"]:
    # fail closed: only a recorded, strictly true approval merges
    approved = (state.get("decision") or {}).get("approved") is True
    return "merge" if approved and not state.get("final_result") else "finish"


async def merge(state: PRDeploymentState) -> dict[str, Any]:
    decision = state.get("decision") or {}
    by = f" (approved by {decision['by']})" if decision.get("by") else ""
    call = await MERGE.call(
        Merge(repo=state["repo"], source=state["source"], target=state["target"],
              message=f"Merge {state['source']} into {state['target']}{by}"),
        locks=[repo_lock(state["repo"])], subtask="merge",
    )
    result = call.result.model_dump(mode="json")
    update = merge_updates(call.updates, {
        "merge": result, "subtask_status": {"merge": "done" if result["merged"] else "failed"}})
    if not result["merged"]:
        update["final_result"] = {**_summary(state), "status": "failed", "stage": "merge",
                                  "merged": False, "conflicts": result["conflicts"],
                                  "reasons": [result["reason"]]}
    return update


def after_merge(state: PRDeploymentState) -> Literal["canary", "finish"]:
    if state.get("final_result") or not state.get("deploy"):
        return "finish"
    return "canary"


async def finish(state: PRDeploymentState) -> dict[str, Any]:
    if state.get("final_result"):
        return {"updated_at": now_iso()}
    merged = state.get("merge") or {}
    final: dict[str, Any] = {**_summary(state), "status": "completed", "merged": True,
                             "commit": merged.get("commit"), "decision": state.get("decision")}
    canary = state.get("canary")
    if canary is not None:
        stages = canary.get("stages") or []
        final["canary"] = {
            **{k: canary.get(k) for k in ("deployment", "status", "percent", "reason")},
            "stages": [{k: s[k] for k in ("percent", "verdict", "reason")} for s in stages],
        }
        if canary.get("status") != "completed":
            final["canary"]["rollback"] = canary.get("rollback")
            final["canary"]["evidence"] = stages[-1]["samples"] if stages else []
            final.update(status="failed", stage="canary",
                         reasons=[canary.get("reason") or f"canary {canary.get('status')}"])
    return {"final_result": final, "updated_at": now_iso(),
            "subtask_status": {"canary": "done"} if canary and final["status"] == "completed"
            else {}}


builder: StateGraph = StateGraph(PRDeploymentState)
builder.add_node("validate", validate, retry_policy=AGENT_RETRY)
builder.add_node("review", review, retry_policy=AGENT_RETRY)
builder.add_node("tests", tests, retry_policy=AGENT_RETRY)
builder.add_node("decide", decide)
builder.add_node("approve", approve)
builder.add_node("merge", merge, retry_policy=AGENT_RETRY)
builder.add_node("canary", canary_graph)
builder.add_node("finish", finish)
builder.add_edge(START, "validate")
builder.add_edge("validate", "review")
builder.add_edge("validate", "tests")
builder.add_edge(["review", "tests"], "decide")
builder.add_conditional_edges("decide", after_decide, ["approve", "merge", "finish"])
builder.add_conditional_edges("approve", after_approve, ["merge", "finish"])
builder.add_conditional_edges("merge", after_merge, ["canary", "finish"])
builder.add_edge("canary", "finish")
builder.add_edge("finish", END)

workflow = WorkflowSpec(
    name="pr_deployment",
    builder=builder,
    input_model=PRDeploymentInput,
    description="review and test a branch, wait for approval, merge under the repo lock, "
    "then canary-deploy",
)
