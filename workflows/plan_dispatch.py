"""``plan_execution``'s ``dispatch`` node and its fan-out: which tasks start now.

``dispatch`` starts the ready tasks — every dependency done, which means it passed QA — in
priority order (the planner's rank), at most ``max_parallel`` at once; retries (fix tasks) go
first. It waits out a retry's back-off and a paused circuit breaker. When no developer, QA or
planner agent is live, it waits a few seconds for one, then stops with ``agent_unavailable``:
the thread stays intact, and ``resume`` carries on once an agent is started. (Parallel tasks
pause in one step: ``pause_until`` keeps the later deadline.) :func:`route_dispatch` sends each
chosen task to ``work`` with what that needs: the files it depends on, the run's budget, and
its model tier (:func:`orchestrator.llm.tiers.choose_tier`, from the lines it writes, its
dependents and dependencies in the task graph, new or fix, and the attempt: a retry moves up
a tier), which ``work`` records in the task's state. Each time it starts tasks (and when the
last has ended) it revises the run's ``eta``: the remaining tasks replayed in its own order
with their learned durations (:func:`orchestrator.learning.eta.forecast`).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from langgraph.types import Send
from orchestrator.state.schema import now_iso
from orchestrator.workflows.plans import PlanState, PlanTask, plan_of

from orchestrator.contracts import developer, planner, qa
from orchestrator.errors import AgentUnavailable
from orchestrator.learning.eta import forecast
from orchestrator.llm.tiers import choose_tier
from orchestrator.runtime import current_runtime

__all__ = ["dispatch", "route_dispatch", "task_size"]

# work also asks the planner (is a cache hit still true?)
_WORKERS = (developer.AGENT_TYPE, qa.AGENT_TYPE, planner.AGENT_TYPE)


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


def _eta(state: PlanState, max_parallel: int) -> dict[str, Any]:
    """The run's ETA now: its remaining tasks replayed in this node's order (see
    :mod:`orchestrator.learning.eta`)."""
    return forecast(state["tasks"], max_parallel=max_parallel, now=time.time(),
                    order=lambda tasks: _ready({"tasks": tasks}, float("inf"))[0])


async def dispatch(state: PlanState) -> dict[str, Any]:
    if state.get("final_result"):  # a budget question answered "stop"
        return {"route": {"next": "report"}}
    plan, tasks = plan_of(state), state["tasks"]
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
        return {"route": {"next": "work", "tasks": chosen, "at": now_iso()},
                "eta": _eta(state, plan.max_parallel)}
    if soonest is not None:
        return {"route": {"next": "dispatch"}}
    dead = [t for t, rec in tasks.items() if rec["status"] == "dead"]
    if dead:
        return {"route": {"next": "escalate", "task": sorted(dead)[0]}}
    blocked = [t for t, rec in tasks.items() if rec["status"] in ("pending", "retry")]
    if blocked:  # cannot happen: every dependency ends done, dead or skipped
        raise RuntimeError(f"tasks blocked with nothing running: {blocked}")
    return {"route": {"next": "integrate"}, "eta": _eta(state, plan.max_parallel)}


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
    plan, tasks = plan_of(state), state["tasks"]
    not_ready = sorted(plan.task(t).file for t, rec in tasks.items()
                       if rec["status"] not in ("done", "skipped"))
    sends = []
    for task_id in route["tasks"]:
        rec = tasks[task_id]
        attempts = rec["attempts"]
        last = attempts[-1] if attempts else None
        task = plan.task(task_id)
        tier, tier_reason = choose_tier(
            task_size(task), fan_in=sum(1 for r in tasks.values() if task_id in r["deps"]),
            fan_out=len(rec["deps"]), is_new=task.kind == "new", attempt=len(attempts) + 1)
        sends.append(Send("work", {
            "task": task.model_dump(mode="json"),
            "attempt": len(attempts) + 1,
            "tier": tier,
            "tier_reason": tier_reason,
            # what the task's file depends on: the developer's model reads them
            "context": [plan.task(d).file for d in rec["deps"]],
            "budget": state.get("budget"),
            "model": state.get("budget_model"),
            # a fix works from what QA found; after a failed development, apply it again
            "evidence": last.get("evidence") if last and last["outcome"] == "failed"
            and (last.get("evidence") or {}).get("stage") == "qa" else None,
            "repo": plan.repo,
            "test_command": plan.test_command,
            "key": rec["key"],
            "size": task_size(task),  # recorded with the attempt (orchestrator.learning)
            "record": rec,
            "max_attempts": rec["budget"],
            "retry_delay": plan.retry_delay,
            "thread_id": state.get("task_id"),
            "not_ready": not_ready,
        }))
    return sends


def task_size(task: PlanTask) -> int:
    """Lines the task writes, as far as the plan says (0: not known, a description)."""
    text = task.content if task.content is not None else task.patch
    return len(text.splitlines()) if text else 0
