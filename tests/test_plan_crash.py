"""kill -9 of the orchestrator in the middle of a plan, then resume: tasks that had passed
are not redone."""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter

import pytest
from orchestrator.agents.developer import develop as builtin_develop

from orchestrator.testing import stand_in

from .support.cli import resumed_result, until
from .support.fixture_plan import FAILING_ONCE, NEVER_FIXED, make_plan_repo
from .support.processes import kill9

pytestmark = pytest.mark.slow


async def test_kill_mid_plan_then_resume_redoes_nothing_that_passed(
    orchestrator_factory, cli, tmp_path
) -> None:
    developed: Counter[str] = Counter()

    async def counting_develop(payload, ctx):
        developed[payload["task"]["id"]] += 1
        await asyncio.sleep(0.3)  # slow enough for the kill to land mid-plan
        return await builtin_develop(payload, ctx)

    # the test process hosts the agents; the CLI only runs the graph, and is killed
    await orchestrator_factory(
        stand_ins=[stand_in("developer", {"develop": counting_develop}, keep_builtin=True)],
        worker_max_concurrency=8)
    repo, plan = make_plan_repo(tmp_path / "repo")
    plan["tasks"] = [t for t in plan["tasks"] if t["id"] != NEVER_FIXED]
    thread_id = f"plan-{uuid.uuid4().hex[:8]}"
    proc = cli.run("plan_execution", {"plan": plan}, thread_id, local_agents=False)
    await until(lambda: sum(developed.values()) >= 10, "ten tasks developed", proc, cli,
                thread_id, timeout=120)
    await kill9(proc)
    before = sum(developed.values())
    assert before < 29, "killed too late to test anything"

    done, _seconds = await cli.resume(thread_id, local_agents=False, timeout=180)
    result = resumed_result(done, thread_id)
    report = result["final_result"]
    assert len(report["done"]) == 29 and report["skipped"] == []
    expected = Counter({t["id"]: 1 for t in plan["tasks"]})
    for task_id in FAILING_ONCE:
        expected[task_id] = 2  # the first attempt failed QA; the fix passed
    assert developed == expected, "a task was developed again after the resume"
