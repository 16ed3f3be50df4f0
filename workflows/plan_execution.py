"""``plan_execution``: a plan of file tasks, developed in dependency order, in parallel.

    prepare → analyze → dispatch ─Send per ready task (≤ max_parallel)─▶ work ─┐
                           ▲  │                                                │
                           │  ├─ a task dead-lettered ─▶ escalate ─────────────┤
                           │  └─ all done ─▶ integrate ─▶ canary? ─▶ report    │
                           └───────────────────────────────────────────────────┘

* ``analyze`` asks the planner agent (``analyze_plan`` with the plan's tasks) for the import
  graph of the plan's files (the plan's content where it gives one, else the file in the
  repository) and the task-level analysis on top: each task's dependencies (its imports plus
  ``depends_on``), the import cycles the plan does not allow (an error listing them), the
  batches, the critical path and each task's rank — the critical path (the longest chain,
  weighted by estimates) first, fixes before new work, then the longest way to the end. It
  only maps that onto the task records, with each task's cache key. A task's weight is its
  ``estimate``, else its duration learned from earlier runs
  (:mod:`orchestrator.learning.durations`), else 1; its record keeps the expected seconds
  and how they were found (``estimate_s``, ``estimate_basis``), from which ``dispatch``
  revises the run's ``eta`` each time it starts tasks.
* ``dispatch`` (``plan_dispatch``) starts the ready tasks — every dependency done, which means
  it passed QA — in the planner's order, at most ``max_parallel`` at once; retries (fix tasks)
  go first. It waits out a retry's back-off, a paused circuit breaker, or a missing agent.
* ``work`` (``plan_work``) runs one task: the developer agent applies it, then the QA agent
  checks that file at once; a task already done is taken from a result cache that checks the
  repository still holds it. A QA failure is retried as a fix after a growing back-off, up to
  ``max_attempts``; then it is dead-lettered. A task with only a ``description`` is written by
  the developer's chat model; each task's model tier (``choose_tier``: its size, fan-in and
  fan-out, new or fix, the attempt) and why are kept in its record and the report.
* Budgets: ``budget_usd`` bounds the run's model calls; when a call is refused for a budget,
  ``budget_policy`` decides: ``fail`` (the run fails with ``BudgetExceeded``), ``fallback``
  (the agent takes a cheaper model that fits), or ``ask`` (the ``work`` node asks a person,
  ``BudgetAnswer``: raise the budget, switch to a cheaper model for the rest of the run, or
  stop the run).
* ``escalate`` pauses on a dead letter with its evidence (a typed question,
  ``DeadLetterAnswer``); resume with ``{"action": "skip" | "retry" | "abort", "by": ...}``.
  Skipping a task skips what depends on it; a malformed answer is asked again.
* ``integrate`` runs the integration command (cicd agent) on the working tree; ``canary``
  rolls out when the plan has ``deploy``; ``report`` (``plan_report``) sums up every task.

The requests and answers are the agents' contracts (:mod:`orchestrator.contracts.planner`,
``.developer``, ``.qa``); the plan and the run's state are :mod:`orchestrator.workflows.plans`.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any, Literal

from langgraph.graph import END, START, StateGraph
from orchestrator.state.schema import merge_updates, now_iso
from orchestrator.workflows.canary import canary_graph, validate_canary
from orchestrator.workflows.plan_dispatch import dispatch, route_dispatch, task_size
from orchestrator.workflows.plan_report import report
from orchestrator.workflows.plan_work import work
from orchestrator.workflows.plans import Plan, PlanError, PlanState, load_plan, parse_plan, plan_of
from pydantic import BaseModel, ConfigDict, Field, field_validator

from orchestrator.calls import AGENT_RETRY
from orchestrator.contracts import developer, qa
from orchestrator.contracts.cicd import RUN_COMMAND, RunCommand
from orchestrator.contracts.planner import ANALYZE_PLAN, AnalyzePlan, PlanTaskNode
from orchestrator.errors import AgentError, AgentErrorCode
from orchestrator.graphs import WorkflowSpec, validated_fields
from orchestrator.learning.durations import Estimate, TaskKey, estimate_tasks
from orchestrator.llm import BudgetPolicy, BudgetSpec
from orchestrator.questions import Answer, ask
from orchestrator.runtime import current_runtime

__all__ = ["DeadLetterAnswer", "PlanExecutionInput", "builder", "workflow"]

_AGENTS = (developer.AGENT_TYPE, qa.AGENT_TYPE)  # their versions are part of a task's cache key


class PlanExecutionInput(BaseModel):
    """``plan``: the path of a YAML/JSON plan file, or the plan itself; ``budget_usd``: what
    the run's model calls may cost; ``budget_policy``: what happens when that (or a daily
    budget) is exhausted — ``ask`` a person, ``fallback`` to a cheaper model, or ``fail``."""

    model_config = ConfigDict(extra="forbid")

    plan: str | dict[str, Any]
    budget_usd: float | None = Field(None, ge=0, allow_inf_nan=False)
    budget_policy: BudgetPolicy = "ask"

    @field_validator("plan")
    @classmethod
    def _load(cls, value: str | dict[str, Any]) -> dict[str, Any]:
        try:
            plan = load_plan(value) if isinstance(value, str) else parse_plan(value)
        except PlanError as exc:
            raise ValueError(str(exc)) from None
        return plan.model_dump(mode="json")


async def prepare(state: PlanState) -> dict[str, Any]:
    given = {k: state[k] for k in ("plan", "budget_usd", "budget_policy") if k in state}
    fields = await validated_fields(workflow, given)
    plan = fields["plan"]
    assert isinstance(plan, dict)
    deploy, updates = (await validate_canary(plan["deploy"]) if plan.get("deploy")
                       else (None, {}))
    budget = BudgetSpec(thread_usd=fields.get("budget_usd"),
                        policy=fields.get("budget_policy") or "ask", node="work",
                        workflow_type="plan_execution")
    return merge_updates(updates, {
        "plan": plan, "deploy": deploy, "workflow_type": "plan_execution",
        # a budget question's answer stands over the input for the rest of the run
        "budget": state.get("budget") or budget.model_dump(mode="json"),
        "subtasks": [{"id": t["id"], "kind": t["kind"], "agent_type": developer.AGENT_TYPE,
                      "payload": {"file": t["file"]}} for t in plan["tasks"]],
        "updated_at": now_iso()}, schema=PlanState)


# -- analysis ------------------------------------------------------------------------------------


def _cache_keys(plan: Plan, deps: dict[str, list[str]], versions: dict[str, str],
                order: list[list[str]]) -> dict[str, str]:
    keys: dict[str, str] = {}
    for level in order:
        for task_id in level:
            spec = plan.task(task_id).model_dump(mode="json", exclude={"depends_on", "estimate"})
            material = json.dumps({"task": spec, "agents": versions, "repo": plan.repo,
                                   "tests": plan.test_command,
                                   "deps": sorted(keys[d] for d in deps[task_id])},
                                  sort_keys=True)
            keys[task_id] = hashlib.sha256(material.encode()).hexdigest()
    return keys


async def learned_estimates(plan: Plan) -> dict[str, Estimate]:
    """Each task's duration learned from the earlier runs in this namespace (never raises)."""
    rt = await current_runtime()
    return await estimate_tasks(rt.db, rt.settings.namespace, plan.repo, [
        TaskKey(t.id, t.kind, t.file, task_size(t)) for t in plan.tasks])


def task_weights(plan: Plan, learned: dict[str, Estimate]) -> dict[str, float]:
    """The critical path's weight of each task: its plan ``estimate``, else its learned
    duration in seconds, else 1 (as with no learning)."""
    return {t.id: t.estimate or max(learned[t.id].seconds or 1.0, 0.001) for t in plan.tasks}


def estimate_fields(plan: Plan, learned: dict[str, Estimate]) -> dict[str, dict[str, Any]]:
    """``estimate_s`` and ``estimate_basis`` of each task's record: learned seconds first
    (and ``estimate_spread``, how much they vary: the ETA's), else the plan's ``estimate``
    (taken as seconds), else unknown."""
    out = {}
    for t in plan.tasks:
        est = learned[t.id]
        out[t.id] = ({"estimate_s": round(est.seconds, 3), "estimate_basis": est.basis,
                      "estimate_spread": round(est.spread, 4)}
                     if est.seconds is not None else
                     {"estimate_s": t.estimate, "estimate_basis": "plan estimate"}
                     if t.estimate else {"estimate_s": None, "estimate_basis": "none"})
    return out


async def analyze(state: PlanState) -> dict[str, Any]:
    plan = plan_of(state)
    learned = await learned_estimates(plan)
    weights = task_weights(plan, learned)
    call = await ANALYZE_PLAN.call(AnalyzePlan(
        repo=plan.repo, files={t.file: t.content for t in plan.tasks},
        # the imports a patch adds are edges too (its + lines, on top of the file)
        patches={t.file: t.patch for t in plan.tasks if t.patch is not None},
        tasks=[PlanTaskNode(id=t.id, file=t.file, kind=t.kind, depends_on=t.depends_on,
                            weight=weights[t.id]) for t in plan.tasks],
        allowed_cycles=plan.allowed_cycles), subtask="analyze")
    found, graph = call.result, call.result.task_graph
    if graph is None:
        raise AgentError(ANALYZE_PLAN.target, AgentErrorCode.INTERNAL_ERROR,
                         "analyze_plan answered without the task graph; is the agent of "
                         "another version?")
    shown = graph.model_dump(mode="json")
    if graph.cycles:
        return merge_updates(call.updates, {"analysis": {"cycles": shown["cycles"]},
                "final_result": {"status": "failed", "stage": "analyze",
                                 "reasons": [graph.error], "cycles": shown["cycles"]}},
                             schema=PlanState)
    rt = await current_runtime()
    versions = {}
    for agent_type in _AGENTS:
        discovered = await rt.registry.discover(agent_type)
        versions[agent_type] = discovered[0].version if discovered else "?"
    keys = _cache_keys(plan, {t: place.deps for t, place in graph.tasks.items()}, versions,
                       graph.batches)
    estimates = estimate_fields(plan, learned)
    tasks = {t.id: {"status": "pending", "attempts": [], **shown["tasks"][t.id],
                    "key": keys[t.id], "budget": plan.max_attempts, "weight": weights[t.id],
                    **estimates[t.id]} for t in plan.tasks}
    analysis = {**{k: shown[k] for k in ("edges", "batches", "critical_path", "allowed")},
                "file_edges": [list(edge) for edge in found.edges],
                "unresolved": found.unresolved}
    return merge_updates(call.updates, {"analysis": analysis, "tasks": tasks,
                                        "updated_at": now_iso()}, schema=PlanState)


def after_analyze(state: PlanState) -> Literal["dispatch", "report"]:
    return "report" if state.get("final_result") else "dispatch"


# -- escalation, integration ------------------------------------------------------------------


def _dependents(tasks: dict[str, dict[str, Any]], root: str) -> list[str]:
    out, frontier = set(), {root}
    while frontier:
        frontier = {t for t, rec in tasks.items() if set(rec["deps"]) & frontier} - out
        out |= frontier
    return sorted(out)


class DeadLetterAnswer(Answer):
    """The answer to a dead letter: skip the task (and what depends on it), retry, or abort."""

    model_config = ConfigDict(json_schema_extra={"examples": [
        {"action": "skip", "by": "qa-lead", "comment": "not needed for this release"},
        {"action": "retry", "by": "dev"},
        {"action": "abort", "by": "dev"},
    ]})

    action: Literal["skip", "retry", "abort"]
    comment: str | None = Field(None, max_length=4000)


async def escalate(state: PlanState) -> dict[str, Any]:
    task_id = state["route"]["task"]
    rec = dict(state["tasks"][task_id])
    plan = plan_of(state)
    last = rec["attempts"][-1] if rec["attempts"] else {}
    # a malformed answer never decides: ask() asks again, saying what was wrong
    answer = ask(DeadLetterAnswer, kind="dead_letter",
                 question=f"task {task_id} failed QA {len(rec['attempts'])} times: skip it (and "
                 "what depends on it), retry it, or abort the plan?",
                 context={
                     "task": task_id,
                     "file": plan.task(task_id).file,
                     "attempts": [{k: a.get(k) for k in ("n", "outcome", "seconds")}
                                  for a in rec["attempts"]],
                     "evidence": last.get("evidence"),
                     "blocked": _dependents(state["tasks"], task_id),
                 })
    action, by = answer.action, answer.by
    decision = {"task": task_id, "action": action, "by": by, "comment": answer.comment,
                "at": now_iso()}
    if action == "retry":
        rec.update(status="retry", not_before=0.0, reset_at=len(rec["attempts"]),
                   budget=len(rec["attempts"]) + plan.max_attempts, decision=decision)
        return {"tasks": {task_id: rec}}
    if action == "abort":
        return {"tasks": {task_id: {**rec, "decision": decision}}, "final_result": {
            "status": "failed", "stage": "escalation",
            "reasons": [f"aborted by {by} at the dead letter of {task_id}"]}}
    skipped = {task_id: {**rec, "status": "skipped", "decision": decision}}
    for dependent in _dependents(state["tasks"], task_id):
        skipped[dependent] = {**state["tasks"][dependent], "status": "skipped",
                              "skipped_because": task_id}
    return {"tasks": skipped, "subtask_status": dict.fromkeys(skipped, "skipped")}


def after_escalate(state: PlanState) -> Literal["dispatch", "report"]:
    return "report" if state.get("final_result") else "dispatch"


async def integrate(state: PlanState) -> dict[str, Any]:
    plan = plan_of(state)
    command = plan.integration_command or plan.test_command
    call = await RUN_COMMAND.call(RunCommand(repo=plan.repo, command=command), timeout=900,
                                  subtask="integration")
    outcome = call.result
    update = merge_updates(call.updates, {"integration": outcome.model_dump(mode="json")},
                           schema=PlanState)
    if not outcome.passed:
        update["final_result"] = {"status": "failed", "stage": "integration",
                                  "reasons": [f"integration: {outcome.reason}"]}
    return update


def after_integrate(state: PlanState) -> Literal["canary", "report"]:
    return "canary" if state.get("deploy") and not state.get("final_result") else "report"


builder: StateGraph = StateGraph(PlanState)
builder.add_node("prepare", prepare, retry_policy=AGENT_RETRY)
builder.add_node("analyze", analyze, retry_policy=AGENT_RETRY)
builder.add_node("dispatch", dispatch)
builder.add_node("work", work, retry_policy=AGENT_RETRY)
builder.add_node("escalate", escalate)
builder.add_node("integrate", integrate, retry_policy=AGENT_RETRY)
builder.add_node("canary", canary_graph)
builder.add_node("report", report)
builder.add_edge(START, "prepare")
builder.add_edge("prepare", "analyze")
builder.add_conditional_edges("analyze", after_analyze, ["dispatch", "report"])
builder.add_conditional_edges("dispatch", route_dispatch,
                              ["work", "dispatch", "escalate", "integrate", "report"])
builder.add_edge("work", "dispatch")
builder.add_conditional_edges("escalate", after_escalate, ["dispatch", "report"])
builder.add_conditional_edges("integrate", after_integrate, ["canary", "report"])
builder.add_edge("canary", "report")
builder.add_edge("report", END)

workflow = WorkflowSpec(
    name="plan_execution",
    builder=builder,
    input_model=PlanExecutionInput,
    description="a plan of file tasks: dependency analysis, parallel development, QA per "
    "file, retries, escalation, integration tests, canary",
)
