"""``plan_execution``'s ``work`` node: one task developed, then its file checked by QA, with a
result cache that trusts only what the repository still holds.

The developer agent applies the task, then the QA agent checks that file at once (ruff or a
syntax check, and the tests that import it). Both run inside one LangGraph ``@task`` with a
``CachePolicy`` keyed by the task's inputs (its spec, the agents' versions and its
dependencies' keys), so a task already done successfully is not redone: its result comes from
the PostgreSQL cache — if the repository still holds it: a hit is checked against the file's
sha256 now (planner ``file_hashes``), and a stale one (the repository was reset, the file
deleted or changed) is forgotten and the task done again. A QA failure is retried as a fix
(high priority) after ``retry_delay`` seconds, doubling each time, up to ``max_attempts``;
then it is dead-lettered.
"""

from __future__ import annotations

import time
from typing import Any

from langgraph.func import task as graph_task
from langgraph.types import CachePolicy
from orchestrator.state.cache import PostgresCache
from orchestrator.state.schema import merge_updates, now_iso
from orchestrator.workflows.plans import PlanState

from orchestrator.calls import failure_updates
from orchestrator.contracts.developer import DEVELOP, Develop, Task, file_lock
from orchestrator.contracts.planner import FILE_HASHES, FileHashes
from orchestrator.contracts.qa import CHECK, Check, Checked
from orchestrator.errors import AgentUnavailable, BudgetExceeded, CircuitOpen, OrchestratorError
from orchestrator.learning.fixes import record_fix_for_job, similar_for_job
from orchestrator.learning.tasks import record_attempt
from orchestrator.llm.policy import ask_budget
from orchestrator.metrics import TASK_CACHE
from orchestrator.runtime import current_runtime

__all__ = ["develop_and_check", "work"]


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
    developed = await DEVELOP.call(
        Develop(repo=repo, task=Task.model_validate(task), attempt=attempt,
                evidence=job.get("evidence"), context=job.get("context") or [],
                tier=job.get("tier"), tier_reason=job.get("tier_reason"),
                budget=job.get("budget"), model=job.get("model"),
                similar=job.get("similar") or []),
        locks=[file_lock(repo, task["file"])], priority=priority,
        subtask=f"{task['id']}:develop:{attempt}",
    )
    checked = await CHECK.call(
        Check(repo=repo, file=task["file"], test_command=job["test_command"],
              not_ready=job["not_ready"]),
        priority=priority, subtask=f"{task['id']}:qa:{attempt}",
    )
    qa = checked.result
    updates = merge_updates(developed.updates, checked.updates)
    result = {"develop": developed.result.model_dump(mode="json"), "qa": _qa_summary(qa),
              "developer": developed.agent_id, "qa_agent": checked.agent_id,
              "computed_by": job["thread_id"], "started": started, "finished": time.time(),
              "request_id": developed.request_id, "updates": updates}
    if not qa.passed:
        found = qa.model_dump(mode="json", include={"findings", "tests"})
        raise _QAFailed({**result, "reason": qa.reason, **found}, updates)
    return result


def _qa_summary(qa: Checked) -> dict[str, Any]:
    return {"passed": qa.passed, "reason": qa.reason, "findings": len(qa.findings),
            "tests": list(qa.tests.ran), "counts": dict(qa.tests.counts)}


async def work(job: dict[str, Any]) -> dict[str, Any]:
    task_id, attempt = job["task"]["id"], job["attempt"]
    rec = dict(job["record"])
    rec.update(tier=job.get("tier"), tier_reason=job.get("tier_reason"))
    started = time.time()
    decided: dict[str, Any] = {}  # what budget questions decided here, for the run's state
    job = {**job, "similar": await similar_for_job(job)}  # a fix: the repo's similar past fixes
    while True:
        try:
            result, stale = await _develop(job)
            break
        except BudgetExceeded as exc:
            if (job.get("budget") or {}).get("policy", "ask") != "ask":
                raise  # fail (or fallback found nothing cheaper that fits): the run fails
            job, decided = _decide(job, exc, decided)
            if "final_result" in decided:
                return merge_updates(failure_updates(exc), {**decided, "tasks": {task_id: rec}},
                                     schema=PlanState)
        except (CircuitOpen, AgentUnavailable) as exc:
            # not the task's fault: put it back, and have dispatch wait for the agent
            until = exc.retry_at.timestamp() if isinstance(exc, CircuitOpen) else time.time() + 5
            return {**decided, "tasks": {task_id: rec}, "pause_until": until,
                    "pauses": [{"task": task_id, "reason": str(exc), "until": until,
                                "at": now_iso()}]}
        except (_QAFailed, OrchestratorError) as exc:
            evidence = {**exc.evidence, "stage": "qa"} if isinstance(exc, _QAFailed) else {
                "reason": str(exc), "code": exc.code, "stage": "develop"}
            if isinstance(exc, _QAFailed):  # a fix QA failed again
                await record_fix_for_job(job, exc.evidence.get("develop"), fixed=False)
            # a failed call records itself (error_log, agent_status) beside the task's outcome
            failed = _failed(job, rec, started, evidence)
            # the attempt's outcome, once (orchestrator.learning.tasks)
            await record_attempt(job, failed["tasks"][task_id]["attempts"][-1],
                                 exc.evidence.get("request_id") if isinstance(exc, _QAFailed)
                                 else None)
            return merge_updates(failure_updates(exc), decided, failed, schema=PlanState)
    hit = _from_cache(result, job)
    TASK_CACHE.labels("hit" if hit else "miss").inc()
    if not hit:  # a fix QA passed (a cache hit fixed nothing in this run)
        await record_fix_for_job(job, result["develop"], fixed=True)
    finished = time.time()
    record = {"n": attempt, "outcome": "passed", "cache_hit": hit, "started": started,
              "finished": finished, "seconds": round(finished - started, 3),
              "tier": job.get("tier"), "tier_reason": job.get("tier_reason"),
              "qa": result["qa"], "develop": result["develop"]}
    if hit:
        record["cached_from"] = result.get("computed_by")
    if stale:
        record["stale_hits"] = stale
    rec.update(status="done", attempts=[*rec["attempts"], record])
    await record_attempt(job, record, result.get("request_id"))
    return merge_updates(
        {} if hit else result.get("updates"),  # a cache hit made no call of this run
        decided,
        {"tasks": {task_id: rec}, "subtask_status": {task_id: "done"},
         "partial_results": {task_id: {"file": job["task"]["file"],
                                       "sha256": result["develop"].get("sha256")}}},
        schema=PlanState)


async def _develop(job: dict[str, Any]) -> tuple[dict[str, Any], int]:
    """The task's result (done now, or from the cache if the repository still holds it),
    and how many stale cache entries were forgotten on the way."""
    stale = 0
    for _ in range(2):
        result = await develop_and_check(job)
        if not _from_cache(result, job) or await _still_in_tree(job, result):
            return result, stale
        # the repository no longer holds what the cached task produced (reset, file
        # deleted or changed): forget that entry, and do the task again
        stale += 1
        await _forget(job)
    # stored again meanwhile by another run: do it under a key of this attempt
    return await develop_and_check(
        {**job, "key": f"{job['key']}:{job['thread_id']}:{job['attempt']}"}), stale


def _decide(job: dict[str, Any], exc: BudgetExceeded,
            decided: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Ask a person what to do about an exhausted budget (policy ``ask``), and apply the
    answer: the job to try again with, and the run's state updates (the new budget or model
    for the rest of the run, the decision; ``final_result`` when the answer is to stop).
    A malformed answer is refused and the question asked again (``ask``)."""
    task = job["task"]
    answer = ask_budget(exc, context={"task": task["id"], "file": task["file"],
                                      "tier": job.get("tier"), "model": job.get("model")})
    decision = {"task": task["id"], **answer.model_dump(mode="json"),
                "details": exc.details, "at": now_iso()}
    updates = {**decided, "budget_decisions": [*decided.get("budget_decisions", []), decision]}
    if answer.action == "stop":
        reason = f"stopped by {answer.by} at the budget question of {task['id']}: {exc}"
        return job, {**updates, "final_result": {"status": "failed", "stage": "budget",
                                                 "reasons": [reason]}}
    if answer.action == "raise":
        budget = {**(job.get("budget") or {}), "thread_usd": answer.budget_usd}
        return {**job, "budget": budget}, {**updates, "budget": budget}
    return {**job, "model": answer.model}, {**updates, "budget_model": answer.model}


def _from_cache(result: dict[str, Any], job: dict[str, Any]) -> bool:
    return result.get("computed_by") != job["thread_id"]


async def _still_in_tree(job: dict[str, Any], result: dict[str, Any]) -> bool:
    """Whether the task's file holds what the cached result produced (its sha256)."""
    task = job["task"]
    call = await FILE_HASHES.call(FileHashes(repo=job["repo"], files=[task["file"]]),
                                  subtask=f"{task['id']}:cache-check:{job['attempt']}")
    expected = (result.get("develop") or {}).get("sha256")
    return expected is not None and call.result.sha256.get(task["file"]) == expected


async def _forget(job: dict[str, Any]) -> None:
    rt = await current_runtime()
    await PostgresCache(rt.db, rt.settings.namespace).aforget([_cache_key(job)])


def _failed(job: dict[str, Any], rec: dict[str, Any], started: float,
            evidence: dict[str, Any]) -> dict[str, Any]:
    task_id, attempt = job["task"]["id"], job["attempt"]
    finished = time.time()
    record = {"n": attempt, "outcome": "failed", "cache_hit": False, "started": started,
              "finished": finished, "seconds": round(finished - started, 3),
              "tier": job.get("tier"), "tier_reason": job.get("tier_reason"),
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
