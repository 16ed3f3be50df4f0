"""``plan_execution``: a plan of file tasks, developed in dependency order, in parallel.

    prepare → analyze → dispatch ─Send per ready task (≤ max_parallel)─▶ work ─┐
                           ▲  │                                                │
                           │  ├─ a task dead-lettered ─▶ escalate ─────────────┤
                           │  └─ all done ─▶ integrate ─▶ canary? ─▶ report    │
                           └───────────────────────────────────────────────────┘

* ``analyze`` asks the planner agent for the import graph of the plan's files (the plan's
  content where it gives one, else the file in the repository), adds ``depends_on``, refuses
  import cycles the plan does not allow, and ranks the tasks: the critical path (the longest
  chain, weighted by estimates) first, fixes before new work, then the longest way to the end.
* ``dispatch`` starts the ready tasks — every dependency done, which means it passed QA — in
  priority order, at most ``max_parallel`` at once; retries (fix tasks) go first. It waits
  out a retry's back-off and a paused circuit breaker. When no developer, QA or planner
  agent is live, it waits a few seconds for one, then stops with ``agent_unavailable``: the thread
  stays intact, and ``resume`` carries on once an agent is started. (Parallel tasks pause
  in one step: ``pause_until`` keeps the later deadline.)
* ``work`` runs one task: the developer agent applies it, then the QA agent checks that file
  at once (ruff or a syntax check, and the tests that import it). Both run inside one LangGraph
  ``@task`` with a ``CachePolicy`` keyed by the task's inputs (its spec, the agents' versions
  and its dependencies' keys), so a task already done successfully is not redone: its result
  comes from the PostgreSQL cache — if the repository still holds it: a hit is checked
  against the file's sha256 now (planner ``file_hashes``), and a stale one (the repository
  was reset, the file deleted or changed) is forgotten and the task done again. A QA
  failure is retried as a fix (high priority) after ``retry_delay`` seconds, doubling each
  time, up to ``max_attempts``; then it is dead-lettered.
* ``escalate`` pauses on a dead letter with its evidence (a typed question,
  ``DeadLetterAnswer``); resume with ``{"action": "skip" | "retry" | "abort", "by": ...}``.
  Skipping a task skips what depends on it; a malformed answer is asked again.
* ``integrate`` runs the integration command (cicd agent) on the working tree; ``canary``
  rolls out when the plan has ``deploy``; ``report`` sums up every task.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from pathlib import Path
from typing import Annotated, Any, Literal

from langgraph.func import task as graph_task
from langgraph.graph import END, START, StateGraph
from langgraph.types import CachePolicy, Send
from orchestrator.state.cache import PostgresCache
from orchestrator.state.schema import (
    MultiAgentState,
    append_list,
    merge_dicts,
    merge_updates,
    now_iso,
)
from orchestrator.workflows.canary import canary_graph, validate_canary
from orchestrator.workflows.plans import Plan, PlanError, load_plan, parse_plan
from pydantic import BaseModel, ConfigDict, Field, field_validator

from orchestrator.calls import AGENT_RETRY, call_agent, failure_updates
from orchestrator.errors import AgentUnavailable, CircuitOpen, OrchestratorError
from orchestrator.graphs import WorkflowSpec, validated_fields
from orchestrator.metrics import TASK_CACHE
from orchestrator.questions import Answer, ask
from orchestrator.runtime import current_runtime

__all__ = ["PlanExecutionInput", "PlanState", "builder", "workflow"]

_AGENTS = ("developer", "qa")
_WORKERS = (*_AGENTS, "planner")  # work also asks the planner (is a cache hit still true?)


class PlanExecutionInput(BaseModel):
    """``plan``: the path of a YAML/JSON plan file, or the plan itself."""

    model_config = ConfigDict(extra="forbid")

    plan: str | dict[str, Any]

    @field_validator("plan")
    @classmethod
    def _load(cls, value: str | dict[str, Any]) -> dict[str, Any]:
        try:
            plan = load_plan(value) if isinstance(value, str) else parse_plan(value)
        except PlanError as exc:
            raise ValueError(str(exc)) from None
        return plan.model_dump(mode="json")


def _later(left: float | None, right: float | None) -> float:
    """The later of two pause deadlines: parallel ``work`` tasks may pause in one step."""
    return max(left or 0.0, right or 0.0)


class PlanState(MultiAgentState, total=False):
    plan: dict[str, Any]
    analysis: dict[str, Any]
    tasks: Annotated[dict[str, dict[str, Any]], merge_dicts]
    dead_letters: Annotated[list[dict[str, Any]], append_list]
    pause_until: Annotated[float, _later]
    pauses: Annotated[list[dict[str, Any]], append_list]
    integration: dict[str, Any]
    deploy: dict[str, Any] | None
    canary: dict[str, Any]
    route: dict[str, Any]


def _plan(state: PlanState) -> Plan:
    return Plan.model_validate(state["plan"])


async def prepare(state: PlanState) -> dict[str, Any]:
    plan = (await validated_fields(workflow, {"plan": state["plan"]}))["plan"]
    assert isinstance(plan, dict)
    deploy, updates = (await validate_canary(plan["deploy"]) if plan.get("deploy")
                       else (None, {}))
    return merge_updates(updates, {
        "plan": plan, "deploy": deploy, "workflow_type": "plan_execution",
        "subtasks": [{"id": t["id"], "kind": t["kind"], "agent_type": "developer",
                      "payload": {"file": t["file"]}} for t in plan["tasks"]],
        "updated_at": now_iso()}, schema=PlanState)


# -- analysis ------------------------------------------------------------------------------------


def _cycles(nodes: list[str], edges: set[tuple[str, str]]) -> list[list[str]]:
    """Strongly connected components with more than one task (Tarjan), as cycles to report."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: dict[str, list[str]] = {n: [] for n in nodes}
    for a, b in edges:
        out[a].append(b)
    found: list[list[str]] = []
    counter = 0

    def visit(root: str) -> None:  # iterative, so deep plans cannot overflow the stack
        nonlocal counter
        work = [(root, iter(sorted(out[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            advanced = False
            for child in children:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(out[child]))))
                    advanced = True
                    break
                if child in on_stack:
                    low[node] = min(low[node], index[child])
            if advanced:
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1 or (node, node) in edges:
                    found.append(sorted(component))

    for n in sorted(nodes):
        if n not in index:
            visit(n)
    return sorted(found)


def _rank(plan: Plan, deps: dict[str, set[str]]) -> dict[str, Any]:
    """Batches, the critical path and priorities over the (acyclic) task graph."""
    order: list[str] = []
    remaining = {t: set(d) for t, d in deps.items()}
    batch: dict[str, int] = {}
    while remaining:
        ready = sorted(t for t, d in remaining.items() if not d)
        for t in ready:
            batch[t] = 1 + max((batch[d] for d in deps[t]), default=-1)
            order.append(t)
            del remaining[t]
        for d in remaining.values():
            d.difference_update(ready)
    weight = {t.id: t.estimate or 1.0 for t in plan.tasks}
    dependents: dict[str, set[str]] = {t: set() for t in deps}
    for t, ds in deps.items():
        for d in ds:
            dependents[d].add(t)
    # longest weighted chain ending at each task, and from each task to the end
    upto: dict[str, float] = {}
    best_dep: dict[str, str | None] = {}
    for t in order:
        prev = max(sorted(deps[t]), key=lambda d: upto[d], default=None)
        upto[t] = weight[t] + (upto[prev] if prev else 0.0)
        best_dep[t] = prev
    tail: dict[str, float] = {}
    for t in reversed(order):
        tail[t] = weight[t] + max((tail[d] for d in dependents[t]), default=0.0)
    end = max(sorted(upto), key=lambda t: upto[t])
    path = [end]
    while best_dep[path[-1]]:
        path.append(best_dep[path[-1]])  # type: ignore[arg-type]
    path.reverse()
    on_path = set(path)
    kinds = {t.id: t.kind for t in plan.tasks}
    ranked = sorted(deps, key=lambda t: (t not in on_path, kinds[t] != "fix", -tail[t],
                                         batch[t], t))
    batches: list[list[str]] = [[] for _ in range(max(batch.values()) + 1)]
    for t in sorted(batch):
        batches[batch[t]].append(t)
    return {"batches": batches, "batch": batch,
            "critical_path": {"tasks": path, "weight": upto[end]},
            "priority": {t: i for i, t in enumerate(ranked)}}


def _cache_keys(plan: Plan, deps: dict[str, set[str]], versions: dict[str, str],
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


async def analyze(state: PlanState) -> dict[str, Any]:
    plan = _plan(state)
    call = await call_agent("planner", "analyze_plan", {
        "repo": plan.repo, "files": {t.file: t.content for t in plan.tasks},
        # the imports a patch adds are edges too (its + lines, on top of the file)
        "patches": {t.file: t.patch for t in plan.tasks if t.patch is not None}},
        subtask="analyze")
    by_file = {t.file: t.id for t in plan.tasks}
    edges = {(by_file[a], by_file[b]) for a, b in call.result["edges"]
             if a in by_file and b in by_file and a != b}
    edges |= {(t.id, d) for t in plan.tasks for d in t.depends_on}
    allowed = {(a, b) for a, b in plan.allowed_cycles}
    edges -= allowed
    ids = [t.id for t in plan.tasks]
    cycles = _cycles(ids, edges)
    if cycles:
        files = {t.id: t.file for t in plan.tasks}
        shown = "; ".join(" → ".join(f"{t} ({files[t]})" for t in c) for c in cycles)
        reason = (f"the plan's tasks form import cycles: {shown}; break them, or accept an "
                  "edge with allowed_cycles: [[importer_task, imported_task]]")
        return merge_updates(call.updates, {"analysis": {"cycles": cycles},
                "final_result": {"status": "failed", "stage": "analyze", "reasons": [reason],
                                 "cycles": cycles}}, schema=PlanState)
    deps = {t: {b for a, b in edges if a == t} for t in ids}
    ranking = _rank(plan, deps)
    rt = await current_runtime()
    versions = {}
    for agent_type in _AGENTS:
        found = await rt.registry.discover(agent_type)
        versions[agent_type] = found[0].version if found else "?"
    keys = _cache_keys(plan, deps, versions, ranking["batches"])
    tasks = {t: {"status": "pending", "attempts": [], "deps": sorted(deps[t]),
                 "priority": ranking["priority"][t], "batch": ranking["batch"][t],
                 "key": keys[t], "budget": plan.max_attempts} for t in ids}
    analysis = {"edges": sorted([a, b] for a, b in edges), "batches": ranking["batches"],
                "critical_path": ranking["critical_path"], "allowed": sorted(map(list, allowed)),
                "file_edges": call.result["edges"], "unresolved": call.result.get("unresolved")}
    return merge_updates(call.updates, {"analysis": analysis, "tasks": tasks,
                                        "updated_at": now_iso()}, schema=PlanState)


def after_analyze(state: PlanState) -> Literal["dispatch", "report"]:
    return "report" if state.get("final_result") else "dispatch"


# -- scheduling ----------------------------------------------------------------------------------


def _ready(state: PlanState, now: float) -> tuple[list[str], float | None]:
    """Tasks that may start now, best first; and when the next waiting one may."""
    tasks = state["tasks"]
    ready, soonest = [], None
    for task_id, rec in tasks.items():
        if rec["status"] not in ("pending", "retry"):
            continue
        if any(tasks[d]["status"] != "done" for d in rec["deps"]):
            continue
        not_before = rec.get("not_before") or 0.0
        if not_before > now:
            soonest = not_before if soonest is None else min(soonest, not_before)
            continue
        ready.append(task_id)
    ready.sort(key=lambda t: (tasks[t]["status"] != "retry", tasks[t]["priority"]))
    return ready, soonest


async def dispatch(state: PlanState) -> dict[str, Any]:
    plan, tasks = _plan(state), state["tasks"]
    pause_until = state.get("pause_until") or 0.0
    if pause_until > time.time():  # a breaker is open, or an agent missing: wait for it
        missing = await _wait_for_agents(min(pause_until, time.time() + 60.0))
        if missing:  # nobody to do the work: stop here, resumable once one is started
            raise AgentUnavailable(missing[0])
    now = time.time()
    ready, soonest = _ready(state, now)
    if not ready and soonest is not None:  # only back-offs pending: wait for the first
        await asyncio.sleep(min(max(soonest - now, 0.0), 60.0))
        ready, soonest = _ready(state, time.time())
    if ready:
        chosen = ready[:plan.max_parallel]
        return {"route": {"next": "work", "tasks": chosen, "at": now_iso()}}
    if soonest is not None:
        return {"route": {"next": "dispatch"}}
    dead = [t for t, rec in tasks.items() if rec["status"] == "dead"]
    if dead:
        return {"route": {"next": "escalate", "task": sorted(dead)[0]}}
    blocked = [t for t, rec in tasks.items() if rec["status"] in ("pending", "retry")]
    if blocked:  # cannot happen: every dependency ends done, dead or skipped
        raise RuntimeError(f"tasks blocked with nothing running: {blocked}")
    return {"route": {"next": "integrate"}}


async def _wait_for_agents(until: float) -> list[str]:
    """Sleep until ``until``, or until the developer's and QA's circuits are closed and each
    has a live agent; return the agent types that still have none."""
    rt = await current_runtime()
    while True:
        missing = [t for t in _WORKERS if not await rt.registry.has_live(t)]
        states = [await rt.breaker.state(agent_type) for agent_type in _WORKERS]
        if time.time() >= until or (not missing and all(s == "closed" for s in states)):
            return missing
        await asyncio.sleep(min(0.25, max(until - time.time(), 0.0)))


def route_dispatch(state: PlanState) -> list[Send] | str:
    route = state["route"]
    if route["next"] != "work":
        return route["next"]
    plan, tasks = _plan(state), state["tasks"]
    not_ready = sorted(plan.task(t).file for t, rec in tasks.items()
                       if rec["status"] not in ("done", "skipped"))
    sends = []
    for task_id in route["tasks"]:
        rec = tasks[task_id]
        attempts = rec["attempts"]
        last = attempts[-1] if attempts else None
        sends.append(Send("work", {
            "task": plan.task(task_id).model_dump(mode="json"),
            "attempt": len(attempts) + 1,
            # a fix works from what QA found; after a failed development, apply it again
            "evidence": last.get("evidence") if last and last["outcome"] == "failed"
            and (last.get("evidence") or {}).get("stage") == "qa" else None,
            "repo": plan.repo,
            "test_command": plan.test_command,
            "key": rec["key"],
            "record": rec,
            "max_attempts": rec["budget"],
            "retry_delay": plan.retry_delay,
            "thread_id": state.get("task_id"),
            "not_ready": not_ready,
        }))
    return sends


class _QAFailed(Exception):
    """QA (or the developer) said no: the attempt failed; never cached."""

    def __init__(self, evidence: dict[str, Any], updates: dict[str, Any]) -> None:
        super().__init__(evidence.get("reason") or "QA failed")
        self.evidence = evidence
        self.updates = updates  # the calls' state updates, as a failed agent call carries


def _cache_key(job: dict[str, Any]) -> str:
    return str(job["key"])


@graph_task(cache_policy=CachePolicy(key_func=_cache_key))
async def develop_and_check(job: dict[str, Any]) -> dict[str, Any]:
    """Develop one task and QA its file; raises _QAFailed (so nothing is cached) on failure.

    The cache key is the task's inputs only (not the attempt), so a plan run again finds
    every task that once passed, whichever attempt it took.
    """
    task, attempt, high = job["task"], job["attempt"], job["attempt"] > 1
    priority = "high" if high else "normal"
    repo = job["repo"]
    started = time.time()
    developed = await call_agent(
        "developer", "develop",
        {"repo": repo, "task": task, "attempt": attempt, "evidence": job.get("evidence")},
        locks=[f"file:{Path(repo) / task['file']}"], priority=priority,
        subtask=f"{task['id']}:develop:{attempt}",
    )
    checked = await call_agent(
        "qa", "check", {"repo": repo, "file": task["file"], "test_command": job["test_command"],
                        "not_ready": job["not_ready"]},
        priority=priority, subtask=f"{task['id']}:qa:{attempt}",
    )
    updates = merge_updates(developed.updates, checked.updates)
    result = {"develop": developed.result, "qa": _qa_summary(checked.result),
              "developer": developed.agent_id, "qa_agent": checked.agent_id,
              "computed_by": job["thread_id"], "started": started, "finished": time.time(),
              "updates": updates}
    if not checked.result["passed"]:
        raise _QAFailed({**result, "reason": checked.result["reason"],
                         "findings": checked.result["findings"],
                         "tests": checked.result["tests"]}, updates)
    return result


def _qa_summary(qa: dict[str, Any]) -> dict[str, Any]:
    tests = qa.get("tests") or {}
    return {"passed": qa["passed"], "reason": qa.get("reason"),
            "findings": len(qa.get("findings") or []), "tests": tests.get("ran", []),
            "counts": tests.get("counts", {})}


async def work(job: dict[str, Any]) -> dict[str, Any]:
    task_id, attempt = job["task"]["id"], job["attempt"]
    rec = dict(job["record"])
    started = time.time()
    stale = 0
    try:
        for _ in range(2):
            result = await develop_and_check(job)
            if not _from_cache(result, job) or await _still_in_tree(job, result):
                break
            # the repository no longer holds what the cached task produced (reset, file
            # deleted or changed): forget that entry, and do the task again
            stale += 1
            await _forget(job)
        else:  # stored again meanwhile by another run: do it under a key of this attempt
            result = await develop_and_check(
                {**job, "key": f"{job['key']}:{job['thread_id']}:{attempt}"})
    except (CircuitOpen, AgentUnavailable) as exc:
        # not the task's fault: put it back, and have dispatch wait for the agent
        until = exc.retry_at.timestamp() if isinstance(exc, CircuitOpen) else time.time() + 5
        return {"tasks": {task_id: rec}, "pause_until": until,
                "pauses": [{"task": task_id, "reason": str(exc), "until": until,
                            "at": now_iso()}]}
    except (_QAFailed, OrchestratorError) as exc:
        evidence = {**exc.evidence, "stage": "qa"} if isinstance(exc, _QAFailed) else {
            "reason": str(exc), "code": exc.code, "stage": "develop"}
        # a failed call records itself (error_log, agent_status) beside the task's outcome
        return merge_updates(failure_updates(exc), _failed(job, rec, started, evidence),
                             schema=PlanState)
    hit = _from_cache(result, job)
    TASK_CACHE.labels("hit" if hit else "miss").inc()
    finished = time.time()
    record = {"n": attempt, "outcome": "passed", "cache_hit": hit, "started": started,
              "finished": finished, "seconds": round(finished - started, 3),
              "qa": result["qa"], "develop": result["develop"]}
    if hit:
        record["cached_from"] = result.get("computed_by")
    if stale:
        record["stale_hits"] = stale
    rec.update(status="done", attempts=[*rec["attempts"], record])
    return merge_updates(
        {} if hit else result.get("updates"),  # a cache hit made no call of this run
        {"tasks": {task_id: rec}, "subtask_status": {task_id: "done"},
         "partial_results": {task_id: {"file": job["task"]["file"],
                                       "sha256": result["develop"].get("sha256")}}},
        schema=PlanState)


def _from_cache(result: dict[str, Any], job: dict[str, Any]) -> bool:
    return result.get("computed_by") != job["thread_id"]


async def _still_in_tree(job: dict[str, Any], result: dict[str, Any]) -> bool:
    """Whether the task's file holds what the cached result produced (its sha256)."""
    task = job["task"]
    call = await call_agent("planner", "file_hashes", {"repo": job["repo"],
                                                       "files": [task["file"]]},
                            subtask=f"{task['id']}:cache-check:{job['attempt']}")
    expected = (result.get("develop") or {}).get("sha256")
    return expected is not None and call.result["sha256"].get(task["file"]) == expected


async def _forget(job: dict[str, Any]) -> None:
    rt = await current_runtime()
    await PostgresCache(rt.db, rt.settings.namespace).aforget([_cache_key(job)])


def _failed(job: dict[str, Any], rec: dict[str, Any], started: float,
            evidence: dict[str, Any]) -> dict[str, Any]:
    task_id, attempt = job["task"]["id"], job["attempt"]
    finished = time.time()
    record = {"n": attempt, "outcome": "failed", "cache_hit": False, "started": started,
              "finished": finished, "seconds": round(finished - started, 3),
              "evidence": {k: evidence.get(k) for k in ("stage", "reason", "code", "findings",
                                                        "tests", "qa")
                           if evidence.get(k) is not None}}
    attempts = [*rec["attempts"], record]
    update: dict[str, Any] = {}
    if len(attempts) >= job["max_attempts"]:
        rec.update(status="dead", attempts=attempts)
        update["dead_letters"] = [{"task": task_id, "file": job["task"]["file"],
                                   "attempts": len(attempts), "reason": evidence.get("reason"),
                                   "at": now_iso()}]
        update["subtask_status"] = {task_id: "failed"}
    else:
        delay = job["retry_delay"] * 2 ** (len(attempts) - len(_earlier(rec)) - 1)
        record["retry_delay"] = delay
        rec.update(status="retry", attempts=attempts, not_before=finished + delay)
    return {**update, "tasks": {task_id: rec}}


def _earlier(rec: dict[str, Any]) -> list[dict[str, Any]]:
    """Attempts made before the last human 'retry' (they do not lengthen the back-off)."""
    return rec["attempts"][: rec.get("reset_at", 0)]


# -- escalation, integration, report -------------------------------------------------------------


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
    plan = _plan(state)
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
    plan = _plan(state)
    command = plan.integration_command or plan.test_command
    call = await call_agent("cicd", "run_command", {"repo": plan.repo, "command": command},
                            timeout=900, subtask="integration")
    update = merge_updates(call.updates, {"integration": call.result}, schema=PlanState)
    if not call.result["passed"]:
        update["final_result"] = {"status": "failed", "stage": "integration",
                                  "reasons": [f"integration: {call.result['reason']}"]}
    return update


def after_integrate(state: PlanState) -> Literal["canary", "report"]:
    return "canary" if state.get("deploy") and not state.get("final_result") else "report"


async def report(state: PlanState) -> dict[str, Any]:
    tasks = state.get("tasks") or {}
    per_task = {}
    hits = misses = 0
    for task_id, rec in sorted(tasks.items(), key=lambda kv: kv[1].get("priority", 0)):
        attempts = rec.get("attempts", [])
        task_hits = sum(1 for a in attempts if a.get("cache_hit"))
        hits += task_hits
        misses += sum(1 for a in attempts if a["outcome"] == "passed" and not a.get("cache_hit"))
        per_task[task_id] = {
            "status": rec["status"], "attempts": len(attempts),
            "durations": [a["seconds"] for a in attempts],
            "seconds": round(sum(a["seconds"] for a in attempts), 3),
            "cache_hits": task_hits, "priority": rec.get("priority"), "batch": rec.get("batch"),
            "retry_delays": [a.get("retry_delay") for a in attempts if a.get("retry_delay")],
            **({"stale_cache_hits": stale} if (stale := sum(a.get("stale_hits", 0)
                                                             for a in attempts)) else {}),
            **({"skipped_because": rec["skipped_because"]} if rec.get("skipped_because") else {}),
        }
    spans = [(a["started"], a["finished"]) for rec in tasks.values()
             for a in rec.get("attempts", []) if not a.get("cache_hit")]
    final = dict(state.get("final_result") or {})
    canary = state.get("canary")
    skipped = sorted(t for t, r in tasks.items() if r["status"] == "skipped")
    if not final:
        final = {"status": "completed"}
        if canary is not None and canary.get("status") != "completed":
            final = {"status": "failed", "stage": "canary",
                     "reasons": [canary.get("reason") or f"canary {canary.get('status')}"]}
        elif skipped:  # finished, but not all of it: never a clean success (CLI exit 4)
            plan = _plan(state)
            # a skipped task that was worked on leaves its last attempt's file in the tree
            left = sorted(plan.task(t).file for t in skipped if tasks[t].get("attempts"))
            final = {"status": "partial", "left_in_tree": left, "reasons": [
                f"{len(skipped)} of {len(tasks)} tasks skipped: {', '.join(skipped)}"
                + (f"; left in the tree as their last attempt wrote them: {', '.join(left)}"
                   if left else "")]}
    analysis = state.get("analysis") or {}
    final.update({
        "tasks": per_task,
        "done": sorted(t for t, r in tasks.items() if r["status"] == "done"),
        "skipped": skipped,
        "critical_path": analysis.get("critical_path"),
        "batches": analysis.get("batches"),
        "dead_letters": state.get("dead_letters") or [],
        "cache": {"hits": hits, "misses": misses},
        "max_parallel_seen": _max_overlap(spans),
        "pauses": len(state.get("pauses") or []),
        "integration": {k: (state.get("integration") or {}).get(k)
                        for k in ("passed", "counts", "reason", "seconds")},
    })
    if canary is not None:
        final["canary"] = {k: canary.get(k) for k in ("deployment", "status", "percent", "reason")}
    return {"final_result": final, "updated_at": now_iso()}


def _max_overlap(spans: list[tuple[float, float]]) -> int:
    events = sorted([(s, 1) for s, _ in spans] + [(e, -1) for _, e in spans])
    best = current = 0
    for _, step in events:
        current += step
        best = max(best, current)
    return best


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
                              ["work", "dispatch", "escalate", "integrate"])
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
