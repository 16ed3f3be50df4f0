"""``plan_execution``'s ``report`` node: the run summed up, task by task.

The final result says how the run ended (completed; failed, with the stage and the reasons;
or partial when tasks were skipped, naming the files they left in the tree) and, per task,
its status, attempts, their durations, cache hits, priority, batch and model tier (with why,
and the tier of each attempt); then the run's budget and its questions' answers, the planner's
critical path and batches, the dead letters, the cache's hits and misses, the most tasks seen
working at once, the pauses, the integration and the canary.
"""

from __future__ import annotations

from typing import Any

from orchestrator.state.schema import now_iso
from orchestrator.workflows.plans import PlanState, plan_of

__all__ = ["report"]


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
            "tier": rec.get("tier"), "tier_reason": rec.get("tier_reason"),
            "tiers": [a.get("tier") for a in attempts],
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
            plan = plan_of(state)
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
    budget = state.get("budget") or {}
    final["budget"] = {"usd": budget.get("thread_usd"), "policy": budget.get("policy"),
                       "model": state.get("budget_model"),
                       "decisions": state.get("budget_decisions") or []}
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
