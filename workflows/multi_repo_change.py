"""``multi_repo_change``: one change across several git repositories, tested as it will be
merged, merged all or none (Zuul's gate for local repositories).

    validate ─gated─▶ stage ─▶ checks ─Send per repository─▶ review_repo ─┐
        └──────────────────────▶   ▲  (by batch, or one at a time) test_repo ──┤
                                   └─────────────────────────────────────────┘
    checks (all done) ─▶ decide ─nothing ready──────────────────────────────▶ report
                           ├─approval "required"─▶ approve ─reject──────────▶ report
                           └─"auto"─────────────▶ prepare ◀─approve─┘
    prepare ─▶ move ⟲ (one repository per step) ⇄ rollback ⟲ ─▶ release
    release ─▶ canary_next ⇄ canary (per repository with deploy) ─▶ report ─▶ finish

* ``validate``: the input (:mod:`orchestrator.workflows.multi_repo_input`): repositories,
  refs, names, and the repository graph (``depends_on`` plus the manifests; a cycle is an
  error naming it unless ``allow_cycles``, then it is one bundle) and each canary spec.
* ``stage`` (gated): the ``cicd`` agent prepares every merge commit in the object store
  (``prepare_merge``: no ref moves): the future state of each repository.
* ``checks``: review (``code_review``) and tests (``cicd`` ``run_tests``) of each repository,
  as ``pr_deployment`` does them; ``parallel``: by topological batch, the batch's repositories
  at once; ``sequential``: one repository at a time; ``gated``: every repository at once, the
  tests at the repository's future state with its upstreams' future states as
  ``{upstream:NAME}`` and on ``PYTHONPATH`` (otherwise: the upstreams' folders as they are).
  A change in ``lib`` that breaks ``app`` fails here, with the failing test ids, before any
  ref moves. Each review and test run is a task of its own, its answer checkpointed: a resume
  runs none of them again.
* ``decide``: atomic: every repository must pass, else nothing is merged; ``atomic: false``:
  each repository (a bundle together) that passed is merged.
* ``approve``: ONE typed question for the whole change (``ApprovalAnswer`` of
  ``pr_deployment``): every repository's findings, tests and merge plan.
* ``prepare``/``move``/``rollback``/``release``: :mod:`orchestrator.workflows.multi_repo_merge`.
* ``canary``: the shared rollout subgraph, for each merged repository with ``deploy``.
* ``report``/``finish``: :mod:`orchestrator.workflows.multi_repo_report` (rows per
  repository, follow-up issues, the status and its exit code).
"""

from __future__ import annotations

import asyncio
from typing import Annotated, Any, Literal

from langgraph.graph import END, START, StateGraph
from langgraph.types import Send
from orchestrator.state.schema import MultiAgentState, merge_dicts, merge_updates, now_iso
from orchestrator.workflows import multi_repo_merge as merging
from orchestrator.workflows import multi_repo_report as reporting
from orchestrator.workflows.canary import canary_graph, validate_canary
from orchestrator.workflows.multi_repo_input import (
    MultiRepoInput,
    repository_order,
    upstreams_of,
)

from orchestrator.calls import AGENT_RETRY
from orchestrator.contracts.cicd import PREPARE_MERGE, RUN_TESTS, PrepareMerge, RunTests, Upstream
from orchestrator.contracts.code_review import REVIEW, Review
from orchestrator.errors import BudgetExceeded
from orchestrator.graphs import WorkflowSpec, validated_fields
from orchestrator.llm import BudgetSpec
from orchestrator.llm.policy import ask_budget

__all__ = ["MultiRepoState", "builder", "workflow"]


class MultiRepoState(MultiAgentState, total=False):
    changes: list[dict[str, Any]]
    mode: str
    atomic: bool
    approval: str
    allow_cycles: bool
    issues: dict[str, Any] | None
    test_timeout: float
    max_findings: int
    budget_usd: float | None
    budget_policy: str
    budget: dict[str, Any]
    budget_model: str | None
    graph: dict[str, Any]
    cursor: int
    staged: dict[str, Any]
    reviews: Annotated[dict[str, Any], merge_dicts]
    tests: Annotated[dict[str, Any], merge_dicts]
    decision: dict[str, Any]
    merge: dict[str, Any]
    canaries: dict[str, Any]
    canary_for: str | None
    deploy: dict[str, Any] | None
    canary: dict[str, Any] | None
    followups: dict[str, Any]


async def validate(state: MultiRepoState) -> dict[str, Any]:
    fields = {k: state.get(k) for k in MultiRepoInput.model_fields if state.get(k) is not None}
    values = await validated_fields(workflow, fields)  # once per run, git off the event loop
    updates: list[dict[str, Any]] = []
    for change in values["changes"]:
        if change.get("deploy") is not None:
            change["deploy"], update = await validate_canary(
                change["deploy"], subtask=f"canary_validate:{change['name']}")
            updates.append(update)
    order = await asyncio.to_thread(repository_order, values["changes"],
                                    allow_cycles=bool(values.get("allow_cycles")))
    graph = {"order": order.order, "batches": order.batches, "bundles": order.bundles,
             "depends": order.depends, "upstreams": upstreams_of(order)}
    budget = BudgetSpec(thread_usd=values.get("budget_usd"),
                        policy=values.get("budget_policy") or "ask",
                        workflow_type="multi_repo_change")
    subtasks = [{"id": f"{kind}:{n}", "kind": kind} for n in order.order
                for kind in ("review", "tests", "move")]
    return merge_updates(*updates, {
        **values, "workflow_type": "multi_repo_change", "graph": graph, "cursor": 0,
        "budget": state.get("budget") or budget.model_dump(mode="json"),
        "subtasks": subtasks, "updated_at": now_iso()})


def after_validate(state: MultiRepoState) -> Literal["stage", "checks"]:
    return "stage" if state.get("mode") == "gated" else "checks"


async def stage(state: MultiRepoState) -> dict[str, Any]:
    """Gated: each repository's future state, a merge commit no ref points at."""
    staged, updates = {}, []
    for change in _ordered(state):
        call = await PREPARE_MERGE.call(
            PrepareMerge(repo=change["repo"], source=change["source"], target=change["target"],
                         message=f"Merge {change['source']} into {change['target']}"),
            subtask=f"stage:{change['name']}")
        staged[change["name"]] = call.result.model_dump(mode="json")
        updates.append(call.updates)
    return merge_updates(*updates, {"staged": staged, "updated_at": now_iso()})


def _ordered(state: MultiRepoState) -> list[dict[str, Any]]:
    changes = {c["name"]: c for c in state["changes"]}
    return [changes[n] for n in state["graph"]["order"]]


def _batches(state: MultiRepoState) -> list[list[str]]:
    graph, mode = state["graph"], state.get("mode")
    if mode == "sequential":
        return [[n] for n in graph["order"]]
    if mode == "parallel":
        return [[n for n in graph["order"] if n in batch] for batch in graph["batches"]]
    return [list(graph["order"])]


async def checks(state: MultiRepoState) -> dict[str, Any]:
    """Advance to the next batch once the current one's reviews and tests are in."""
    batches, cursor = _batches(state), state.get("cursor", 0)
    done = set(state.get("reviews") or {}) & set(state.get("tests") or {})
    while cursor < len(batches) and set(batches[cursor]) <= done:
        cursor += 1
    return {"cursor": cursor, "updated_at": now_iso()}


def route_checks(state: MultiRepoState) -> list[Send] | Literal["decide"]:
    batches, cursor = _batches(state), state.get("cursor", 0)
    if cursor >= len(batches):
        return "decide"
    changes = {c["name"]: c for c in state["changes"]}
    sends = []
    for name in batches[cursor]:
        job = {"change": changes[name], "max_findings": state.get("max_findings", 0),
               "budget": state.get("budget"), "budget_model": state.get("budget_model")}
        if name not in (state.get("reviews") or {}):
            sends.append(Send("review_repo", job))
        if name not in (state.get("tests") or {}):
            sends.append(Send("test_repo", {**job, **_test_job(state, name)}))
    return sends


def _test_job(state: MultiRepoState, name: str) -> dict[str, Any]:
    """What one repository's test run needs: its ref and its upstreams'."""
    changes = {c["name"]: c for c in state["changes"]}
    ups = state["graph"]["upstreams"][name]
    job: dict[str, Any] = {"test_timeout": state.get("test_timeout", 600.0)}
    if state.get("mode") != "gated":
        job["ref"] = changes[name]["source"]
        job["upstreams"] = {u: {"repo": changes[u]["repo"], "ref": None} for u in ups}
        return job
    staged = state.get("staged") or {}
    unmerged = [u for u in [name, *ups] if not staged[u]["prepared"]]
    if unmerged:
        job["blocked"] = (f"{name}'s future state cannot be made: "
                          + "; ".join(f"{u}: {staged[u]['reason']}" for u in unmerged))
        return job
    job["ref"] = staged[name]["commit"]
    job["upstreams"] = {u: {"repo": changes[u]["repo"], "ref": staged[u]["commit"]} for u in ups}
    job["future_state"] = True
    return job


async def review_repo(job: dict[str, Any]) -> dict[str, Any]:
    change, name = job["change"], job["change"]["name"]
    budget, model, decisions = dict(job.get("budget") or {}), job.get("budget_model"), []
    budget["node"] = f"review:{name}"
    while True:
        try:
            call = await REVIEW.call(
                Review(repo=change["repo"], source=change["source"], target=change["target"],
                       max_findings=job.get("max_findings", 0),
                       budget=BudgetSpec.model_validate(budget), model=model),
                subtask=f"review:{name}")
            break
        except BudgetExceeded as exc:
            if budget.get("policy", "ask") != "ask":
                raise
            answer = ask_budget(exc, context={"node": f"review:{name}", "model": model})
            decisions.append({"node": f"review:{name}", **answer.model_dump(mode="json")})
            if answer.action == "stop":
                return {"reviews": {name: {"passed": False, "verdict": "stopped", "findings": [],
                                           "reason": f"stopped by {answer.by} at the budget "
                                           f"question: {exc}"}},
                        "subtask_status": {f"review:{name}": "failed"}}
            if answer.action == "raise":
                budget["thread_usd"] = answer.budget_usd
            else:
                model = answer.model
    result = call.result.model_dump(mode="json")
    if not result["passed"]:
        shown = "; ".join(f"{f['file']}:{f['line']} {f['code']} {f['message']}"
                          for f in result["findings"][:10])
        result["reason"] = (f"{len(result['findings'])} findings (at most "
                            f"{result['max_findings']} allowed): {shown}")
    status = "done" if result["passed"] else "failed"
    return merge_updates(call.updates, {"reviews": {name: result},
                                        "subtask_status": {f"review:{name}": status}})


async def test_repo(job: dict[str, Any]) -> dict[str, Any]:
    change, name = job["change"], job["change"]["name"]
    if job.get("blocked"):
        return {"tests": {name: {"passed": False, "reason": job["blocked"], "failures": [],
                                 "counts": {}}},
                "subtask_status": {f"tests:{name}": "failed"}}
    timeout = float(job["test_timeout"])
    started = now_iso()
    call = await RUN_TESTS.call(
        RunTests(repo=change["repo"], ref=job["ref"], command=change["test_command"],
                 timeout=timeout,
                 upstreams={u: Upstream(**v) for u, v in job["upstreams"].items()} or None),
        timeout=timeout + 300, subtask=f"tests:{name}")
    result = {**call.result.model_dump(mode="json"), "started": started, "finished": now_iso(),
              "future_state": bool(job.get("future_state"))}
    status = "done" if result["passed"] else "failed"
    return merge_updates(call.updates, {"tests": {name: result},
                                        "subtask_status": {f"tests:{name}": status}})


def _groups(state: MultiRepoState, ready: list[str]) -> list[list[str]]:
    graph = state["graph"]
    if state.get("atomic", True):
        return [list(ready)]
    units: list[list[str]] = []
    for name in ready:
        unit = next((b for b in graph["bundles"] if name in b), [name])
        if unit not in units:
            units.append(unit)
    return units


async def decide(state: MultiRepoState) -> dict[str, Any]:
    graph, blocked = state["graph"], reporting.blocking(state)
    if state.get("atomic", True):
        ready = [] if blocked else list(graph["order"])
    else:  # a bundle merges only when all of its members passed
        ready = [n for n in graph["order"] if not any(
            m in blocked for m in next((b for b in graph["bundles"] if n in b), [n]))]
    merge = {"ready": ready, "groups": _groups(state, ready), "failed": {}, "status": {},
             "plan": {}}
    if not ready:
        merge["stage"] = "checks"
    return {"merge": merge, "updated_at": now_iso()}


def after_decide(state: MultiRepoState) -> Literal["approve", "prepare", "report"]:
    if not state["merge"]["ready"]:
        return "report"
    return "prepare" if state.get("approval") == "auto" else "approve"


def after_approve(state: MultiRepoState) -> Literal["prepare", "report"]:
    # fail closed: only a recorded, strictly true approval merges
    return "prepare" if (state.get("decision") or {}).get("approved") is True else "report"


async def approved(state: MultiRepoState) -> dict[str, Any]:
    """Record a rejection as the merge phase's end (nothing prepared, nothing moved)."""
    if (state.get("decision") or {}).get("approved") is True:
        return {"updated_at": now_iso()}
    return {"merge": {**state["merge"], "stage": "approval"}, "updated_at": now_iso()}


def _next_canary(state: MultiRepoState) -> str | None:
    changes = {c["name"]: c for c in state["changes"]}
    done = state.get("canaries") or {}
    for name in state["graph"]["order"]:
        if (state["merge"].get("status", {}).get(name) == "moved" and changes[name].get("deploy")
                and name not in done):
            return name
    return None


async def canary_next(state: MultiRepoState) -> dict[str, Any]:
    """Record the finished rollout, then hand the canary subgraph the next repository's."""
    canaries = dict(state.get("canaries") or {})
    if state.get("canary_for") and state.get("canary") is not None:
        canaries[state["canary_for"]] = state["canary"]
    name = _next_canary({**state, "canaries": canaries})
    deploy = {c["name"]: c for c in state["changes"]}[name]["deploy"] if name else None
    return {"canaries": canaries, "canary_for": name, "deploy": deploy, "canary": None,
            "updated_at": now_iso()}


def after_canary_next(state: MultiRepoState) -> Literal["canary", "report"]:
    return "canary" if state.get("canary_for") else "report"


builder: StateGraph = StateGraph(MultiRepoState)
builder.add_node("validate", validate, retry_policy=AGENT_RETRY)
builder.add_node("stage", stage, retry_policy=AGENT_RETRY)
builder.add_node("checks", checks)
builder.add_node("review_repo", review_repo, retry_policy=AGENT_RETRY)
builder.add_node("test_repo", test_repo, retry_policy=AGENT_RETRY)
builder.add_node("decide", decide)
builder.add_node("approve", reporting.approve)
builder.add_node("approved", approved)
builder.add_node("prepare", merging.prepare, retry_policy=AGENT_RETRY)
builder.add_node("move", merging.move, retry_policy=AGENT_RETRY)
builder.add_node("rollback", merging.rollback, retry_policy=AGENT_RETRY)
builder.add_node("release", merging.release, retry_policy=AGENT_RETRY)
builder.add_node("canary_next", canary_next)
builder.add_node("canary", canary_graph)
builder.add_node("report", reporting.report, retry_policy=AGENT_RETRY)
builder.add_node("finish", reporting.finish)
builder.add_edge(START, "validate")
builder.add_conditional_edges("validate", after_validate, ["stage", "checks"])
builder.add_edge("stage", "checks")
builder.add_conditional_edges("checks", route_checks, ["review_repo", "test_repo", "decide"])
builder.add_edge("review_repo", "checks")
builder.add_edge("test_repo", "checks")
builder.add_conditional_edges("decide", after_decide, ["approve", "prepare", "report"])
builder.add_edge("approve", "approved")
builder.add_conditional_edges("approved", after_approve, ["prepare", "report"])
builder.add_conditional_edges("prepare", merging.after_prepare, ["move", "release"])
builder.add_conditional_edges("move", merging.after_move, ["move", "rollback", "release"])
builder.add_conditional_edges("rollback", merging.after_move, ["move", "rollback", "release"])
builder.add_edge("release", "canary_next")
builder.add_conditional_edges("canary_next", after_canary_next, ["canary", "report"])
builder.add_edge("canary", "canary_next")
builder.add_edge("report", "finish")
builder.add_edge("finish", END)

workflow = WorkflowSpec(
    name="multi_repo_change",
    builder=builder,
    input_model=MultiRepoInput,
    description="one change across several repositories: reviewed, tested as it will be "
    "merged (gated), approved once, merged all or none under the repo locks",
)
