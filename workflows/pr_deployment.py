"""``pr_deployment``: review and test a branch, wait for approval, merge, roll out.

    validate ─┬─▶ review ─┬─▶ decide ─failed──────────────────────────▶ finish
              └─▶ tests  ─┘     ├─approval "required"─▶ approve ─reject─▶ finish
     resolve ─┘ (again on       └─"auto"──────────────▶ merge ◀─approve─┘
        ▲        the resolution)                          ├─deploy given─▶ canary ─▶ finish
        └─────────────────────────────────conflict, once──┤
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
  conflict is aborted, leaving the repository as it was, and goes to ``resolve``.
* ``resolve`` (developer agent, :mod:`orchestrator.contracts.conflicts`): the chat model
  proposes a resolution on a new branch ``<source>-resolved`` (``source`` with ``target``
  merged in); review and tests run again on that branch, and the approval question, asked
  even with ``approval: auto`` (a model wrote the change), carries the resolution's diff; the
  merge then merges that branch. With no chat model configured, or an answer it refuses, the
  run fails naming the conflicting files, as it did before there was a resolution; a second
  conflict (the target moved again) fails the same way.
* Budgets: ``budget_usd`` bounds the run's model calls (the review's comments, the
  resolution); when a call is refused for a budget, ``budget_policy`` decides: ``fail``,
  ``fallback`` to a cheaper model, or ``ask`` (default) a person in the node that called
  (``orchestrator.llm.policy.ask_budget``: raise the budget, switch the model for the rest of
  the run, or stop: the run fails at stage ``budget``).
* ``canary`` is the shared rollout subgraph (``workflows/canary.py``).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, Literal

from langgraph.graph import END, START, StateGraph
from orchestrator.state.schema import MultiAgentState, merge_updates, now_iso
from orchestrator.workflows.canary import CanarySpec, canary_graph, validate_canary
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from orchestrator.calls import AGENT_RETRY
from orchestrator.contracts.cicd import MERGE, RUN_TESTS, Command, Merge, RunTests
from orchestrator.contracts.code_review import REVIEW, Review
from orchestrator.contracts.conflicts import RESOLVE_CONFLICT, ResolveConflict
from orchestrator.contracts.repos import (
    GitRef,
    RepoPath,
    merge_refs_problem,
    repo_lock,
    repository_top,
)
from orchestrator.errors import BudgetExceeded
from orchestrator.graphs import WorkflowSpec, validated_fields
from orchestrator.learning.store import run_store
from orchestrator.llm import BudgetPolicy, BudgetSpec
from orchestrator.llm.policy import ask_budget
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
    budget_usd: float | None = Field(None, ge=0, allow_inf_nan=False,
                                     description="what the run's model calls may cost, USD")
    budget_policy: BudgetPolicy = Field("ask", description="when a budget is exhausted: ask "
                                        "a person, fallback to a cheaper model, or fail")

    @field_validator("repo")
    @classmethod
    def _repository(cls, value: str) -> str:
        return str(repository_top(value))

    @model_validator(mode="after")
    def _refs(self) -> PRDeploymentInput:
        problem = merge_refs_problem(self.repo, self.source, self.target)
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
    resolution: dict[str, Any]
    budget_usd: float | None
    budget_policy: str
    budget: dict[str, Any]
    budget_model: str | None
    budget_decisions: list[dict[str, Any]]


async def validate(state: PRDeploymentState) -> dict[str, Any]:
    fields = {k: state.get(k) for k in PRDeploymentInput.model_fields if state.get(k) is not None}
    values = await validated_fields(workflow, fields)  # once per run, git off the event loop
    updates: dict[str, Any] = {}
    if values.get("deploy") is not None:
        values["deploy"], updates = await validate_canary(values["deploy"])
    stages = ["review", "tests", "merge", *(["canary"] if values.get("deploy") else [])]
    budget = BudgetSpec(thread_usd=values.get("budget_usd"),
                        policy=values.get("budget_policy") or "ask", workflow_type="pr_deployment")
    return merge_updates(updates, {**values, "workflow_type": "pr_deployment",
                                   # a budget question's answer stands over the input
                                   "budget": state.get("budget") or budget.model_dump(mode="json"),
                                   "updated_at": now_iso(),
                                   "subtasks": [{"id": s, "kind": s} for s in stages]})


def _resolved(state: PRDeploymentState) -> dict[str, Any] | None:
    """The model's resolution of the merge's conflicts, when there is one."""
    resolution = state.get("resolution") or {}
    return resolution if resolution.get("resolved") else None


def _delivered(state: PRDeploymentState) -> str:
    """The branch reviewed, tested and merged: the resolution's once there is one."""
    resolution = _resolved(state)
    return resolution["branch"] if resolution else state["source"]


async def _budgeted(state: PRDeploymentState, node: str,
                    call: Callable[[BudgetSpec, str | None], Awaitable[Any]]
                    ) -> tuple[Any, dict[str, Any]]:
    """``call(budget, model)`` under the run's budget; with policy ``ask`` a refusal asks a
    person (:func:`ask_budget`) and the call is made again as answered. Returns the call (None
    when the answer was to stop) and the state updates the answers make (the new budget or
    model for the rest of the run, the decisions; ``final_result`` on stop)."""
    budget = {**(state.get("budget") or {}), "node": node}
    model, decided = state.get("budget_model"), {}
    while True:
        try:
            return await call(BudgetSpec.model_validate(budget), model), decided
        except BudgetExceeded as exc:
            if budget.get("policy", "ask") != "ask":
                raise  # fail, or fallback found nothing cheaper that fits: the run fails
            answer = ask_budget(exc, context={"node": node, "model": model})
            decision = {"node": node, **answer.model_dump(mode="json"), "details": exc.details,
                        "at": now_iso()}
            decided["budget_decisions"] = [*(state.get("budget_decisions") or []),
                                           *decided.get("budget_decisions", []), decision]
            if answer.action == "stop":
                reason = f"stopped by {answer.by} at the budget question of {node}: {exc}"
                return None, {**decided, "final_result": {
                    **_summary(state), "status": "failed", "stage": "budget", "merged": False,
                    "reasons": [reason]}}
            if answer.action == "raise":
                budget["thread_usd"] = answer.budget_usd
                decided["budget"] = {k: v for k, v in budget.items() if k != "node"}
            else:
                model = decided["budget_model"] = answer.model


async def review(state: PRDeploymentState) -> dict[str, Any]:
    call, decided = await _budgeted(state, "review", lambda budget, model: REVIEW.call(
        Review(repo=state["repo"], source=_delivered(state), target=state["target"],
               max_findings=state.get("max_findings", 0), budget=budget, model=model),
        subtask="review"))
    if call is None:
        return {**decided, "subtask_status": {"review": "failed"}}
    result = call.result.model_dump(mode="json")
    status = "done" if call.result.passed else "failed"
    return merge_updates(call.updates, decided, {"partial_results": {"review": result},
                                                 "subtask_status": {"review": status}})


async def tests(state: PRDeploymentState) -> dict[str, Any]:
    timeout = float(state.get("test_timeout") or 600)
    call = await RUN_TESTS.call(
        RunTests(repo=state["repo"], ref=_delivered(state), command=state["test_command"],
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
    summary: dict[str, Any] = {
        "repo": state["repo"], "source": state["source"], "target": state["target"],
        "review": {"verdict": rev.get("verdict"), "files": rev.get("files", []),
                   "findings": len(rev.get("findings", [])), "counts": rev.get("counts", {})},
        "tests": {"passed": tst.get("passed"), "counts": tst.get("counts", {}),
                  "seconds": tst.get("seconds"), "commit": tst.get("commit")},
    }
    resolution = _resolved(state)
    if resolution:
        summary["resolution"] = {k: resolution[k] for k in ("branch", "commit", "files", "model")}
    return summary


async def decide(state: PRDeploymentState) -> dict[str, Any]:
    if state.get("final_result"):  # a budget question answered "stop"
        return {"updated_at": now_iso()}
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
    # a resolution the model wrote is never merged unseen, whatever ``approval`` says
    return "merge" if state.get("approval") == "auto" and not _resolved(state) else "approve"


class ApprovalAnswer(Answer):
    """The answer to ``approve``: a JSON boolean (``"false"`` is refused), who, and why."""

    model_config = ConfigDict(json_schema_extra={"examples": [
        {"approve": True, "by": "alice", "comment": "ship it"},
        {"approve": False, "by": "alice", "comment": "needs a migration first"},
    ]})

    approve: bool = Field(description="true merges; false ends the run failed, unmerged")
    comment: str | None = Field(None, max_length=4000)


async def approve(state: PRDeploymentState) -> dict[str, Any]:
    question = f"merge {state['source']} into {state['target']} of {state['repo']}?"
    context: dict[str, Any] = {"summary": _summary(state)}
    resolution = _resolved(state)
    if resolution:
        question = (f"merge {resolution['branch']} into {state['target']} of {state['repo']}? "
                    f"It is {state['source']} with the conflicts in "
                    f"{', '.join(resolution['files'])} resolved by the model "
                    f"{resolution.get('model') or '(unknown)'}: check its diff")
        context["resolution_diff"] = resolution["diff"]
    answer = ask(ApprovalAnswer, kind="approval", question=question, context=context)
    decision = {"approved": answer.approve, "by": answer.by, "comment": answer.comment,
                "at": now_iso()}
    await _learn_review(state, answer.approve, answer.by)
    update: dict[str, Any] = {"decision": decision}
    if answer.approve is not True:
        update["final_result"] = {
            **_summary(state), "status": "failed", "stage": "approval", "merged": False,
            "reasons": [f"rejected by {answer.by}: {answer.comment or 'no comment'}"],
        }
    return update


async def _learn_review(state: PRDeploymentState, approved: bool, by: str | None) -> None:
    """Record which review rules the person merged in spite of (approved) or upheld, once per
    branch put to them (``learn_reviews``)."""
    found = await run_store()
    if found is None:
        return
    review = (state.get("partial_results") or {}).get("review") or {}
    rules = dict(review.get("counts") or {})
    for comment in review.get("comments") or []:
        key = f"comment:{comment.get('severity')}"
        rules[key] = rules.get(key, 0) + 1
    store, thread_id = found
    await store.record_review(thread_id=thread_id, repo=state["repo"],
                              branch=_delivered(state), rules=rules, approved=approved, by=by)


def after_approve(state: PRDeploymentState) -> Literal["merge", "finish"]:
    # fail closed: only a recorded, strictly true approval merges
    approved = (state.get("decision") or {}).get("approved") is True
    return "merge" if approved and not state.get("final_result") else "finish"


async def merge(state: PRDeploymentState) -> dict[str, Any]:
    decision = state.get("decision") or {}
    by = f" (approved by {decision['by']})" if decision.get("by") else ""
    source = _delivered(state)
    call = await MERGE.call(
        Merge(repo=state["repo"], source=source, target=state["target"],
              message=f"Merge {source} into {state['target']}{by}"),
        locks=[repo_lock(state["repo"])], subtask="merge",
    )
    result = call.result.model_dump(mode="json")
    update = merge_updates(call.updates, {
        "merge": result, "subtask_status": {"merge": "done" if result["merged"] else "failed"}})
    # a conflict goes to resolve, once; anything else that stops the merge ends the run
    if not result["merged"] and (state.get("resolution") or not result["conflicts"]):
        update["final_result"] = _conflicted(state, result)
    return update


def _conflicted(state: PRDeploymentState, merged: dict[str, Any]) -> dict[str, Any]:
    return {**_summary(state), "status": "failed", "stage": "merge", "merged": False,
            "conflicts": merged["conflicts"], "reasons": [merged["reason"]]}


def after_merge(state: PRDeploymentState) -> Literal["resolve", "canary", "finish"]:
    if state.get("final_result"):
        return "finish"
    if not (state.get("merge") or {}).get("merged"):
        return "resolve"
    return "canary" if state.get("deploy") else "finish"


async def resolve(state: PRDeploymentState) -> dict[str, Any]:
    call, decided = await _budgeted(state, "resolve", lambda budget, model: RESOLVE_CONFLICT.call(
        ResolveConflict(repo=state["repo"], source=state["source"], target=state["target"],
                        budget=budget, model=model),
        subtask="resolve", timeout=900))
    if call is None:
        return decided
    result = call.result.model_dump(mode="json")
    update = merge_updates(call.updates, decided, {"resolution": result})
    if not result["resolved"]:
        update["final_result"] = _conflicted(state, state["merge"])
    return update


def after_resolve(state: PRDeploymentState) -> list[str] | Literal["finish"]:
    return "finish" if state.get("final_result") else ["review", "tests"]


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
builder.add_node("resolve", resolve, retry_policy=AGENT_RETRY)
builder.add_node("canary", canary_graph)
builder.add_node("finish", finish)
builder.add_edge(START, "validate")
builder.add_edge("validate", "review")
builder.add_edge("validate", "tests")
builder.add_edge(["review", "tests"], "decide")
builder.add_conditional_edges("decide", after_decide, ["approve", "merge", "finish"])
builder.add_conditional_edges("approve", after_approve, ["merge", "finish"])
builder.add_conditional_edges("merge", after_merge, ["resolve", "canary", "finish"])
builder.add_conditional_edges("resolve", after_resolve, ["review", "tests", "finish"])
builder.add_edge("canary", "finish")
builder.add_edge("finish", END)

workflow = WorkflowSpec(
    name="pr_deployment",
    builder=builder,
    input_model=PRDeploymentInput,
    description="review and test a branch, wait for approval, merge under the repo lock, "
    "then canary-deploy",
)
