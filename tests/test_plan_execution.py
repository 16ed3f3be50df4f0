"""plan_execution on a real repository: 30 Python, TypeScript and JavaScript files in 5
dependency levels, real developer, QA and planner agents (ruff, pytest, tree-sitter, node)."""

from __future__ import annotations

import asyncio
import json
import time

import pytest
import yaml
from langgraph.types import Command
from orchestrator.agents.developer import develop as builtin_develop
from orchestrator.workflows.plans import PlanError, load_plan, parse_plan

from orchestrator.errors import InvalidInput
from orchestrator.metrics import TASK_CACHE
from orchestrator.runtime import use_runtime
from orchestrator.testing import resume, run_until_interrupt, stand_in

from .support.fixture_plan import FAILING_ONCE, LEVELS, NEVER_FIXED, make_plan_repo


def slow_developer(seconds: float = 0.15, log: list[tuple[str, float, float]] | None = None):
    """The built-in developer, slowed down so that parallel work overlaps measurably."""
    async def develop(payload, ctx):
        started = time.time()
        await asyncio.sleep(seconds)
        result = await builtin_develop(payload, ctx)
        if log is not None:
            log.append((payload["task"]["id"], started, time.time()))
        return result

    return stand_in("developer", {"develop": develop}, keep_builtin=True)


async def test_a_plan_runs_in_dependency_order_in_parallel_with_retries_and_escalation(
    orchestrator_factory, tmp_path
) -> None:
    calls: list[tuple[str, float, float]] = []
    orch = await orchestrator_factory(stand_ins=[slow_developer(log=calls)],
                                      worker_max_concurrency=8)
    repo, plan = make_plan_repo(tmp_path / "repo")
    paused, question = await run_until_interrupt(orch, "plan_execution", {"plan": plan})

    # the task that is never fixed was tried 3 times, with growing delays, then escalated
    assert question["kind"] == "dead_letter" and question["context"]["task"] == NEVER_FIXED
    assert [a["n"] for a in question["context"]["attempts"]] == [1, 2, 3]
    assert question["context"]["evidence"]["findings"][0]["code"] == "F821"
    state = (await orch.get(paused.thread_id)).values
    tasks = state["tasks"]
    never = tasks[NEVER_FIXED]["attempts"]
    gaps = [b["started"] - a["finished"] for a, b in zip(never, never[1:], strict=False)]
    assert [a.get("retry_delay") for a in never] == [0.2, 0.4, None]  # back-off doubles
    assert gaps[0] >= 0.2 and gaps[1] >= 0.4  # ...and was waited out (plus scheduling)

    # the import analysis found the 5 levels
    assert {t: rec["batch"] for t, rec in tasks.items()} == LEVELS

    result = await resume(orch, paused.thread_id, {"action": "skip", "by": "qa-lead"})
    assert result.status == "completed", result
    report = result.final_result
    assert report["skipped"] == [NEVER_FIXED]
    assert len(report["done"]) == 29
    for task_id in FAILING_ONCE:  # failed QA once, fixed by the retry (ruff's safe fixes)
        assert report["tasks"][task_id]["attempts"] == 2, report["tasks"][task_id]
    assert report["dead_letters"][0]["task"] == NEVER_FIXED
    assert report["critical_path"]["tasks"] == ["config", "models", "catalog", "cart", "checkout"]
    assert report["integration"]["passed"] is True
    assert "import os" not in (repo / "shop" / "money.py").read_text()  # really fixed

    # no file started before every one of its dependencies had passed QA
    state = (await orch.get(paused.thread_id)).values
    tasks = state["tasks"]
    passed_at = {t: next(a["finished"] for a in rec["attempts"] if a["outcome"] == "passed")
                 for t, rec in tasks.items() if rec["status"] == "done"}
    for importer, imported in state["analysis"]["edges"]:
        first = tasks[importer]["attempts"][0]["started"]
        assert first >= passed_at[imported], f"{importer} started before {imported} passed QA"
    # ...and work really overlapped: several developer calls at once
    assert report["max_parallel_seen"] >= 3
    overlapping = sum(1 for a in calls for b in calls if a is not b and a[1] < b[2] and b[1] < a[2])
    assert overlapping > 0


async def test_a_second_run_of_the_plan_hits_the_cache(orchestrator_factory, tmp_path) -> None:
    orch = await orchestrator_factory()
    repo, plan = make_plan_repo(tmp_path / "repo")
    plan["tasks"] = [t for t in plan["tasks"] if t["id"] != NEVER_FIXED]
    first = await orch.run("plan_execution", {"plan": plan})
    assert first.status == "completed", first
    assert first.final_result["cache"] == {"hits": 0, "misses": 29}
    hits_before = TASK_CACHE.labels("hit")._value.get()
    again = await orch.run("plan_execution", {"plan": plan})
    assert again.status == "completed"
    assert again.final_result["cache"] == {"hits": 29, "misses": 0}
    assert all(t["attempts"] == 1 and t["cache_hits"] == 1
               for t in again.final_result["tasks"].values())
    assert TASK_CACHE.labels("hit")._value.get() == hits_before + 29
    # a changed task is a miss, and so is everything that depends on it
    plan["tasks"] = [{**t, "content": t["content"] + "# changed\n"} if t["id"] == "cart" else t
                     for t in plan["tasks"]]
    changed = await orch.run("plan_execution", {"plan": plan})
    misses = {t for t, r in changed.final_result["tasks"].items() if r["cache_hits"] == 0}
    assert misses == {"cart", "checkout"}


async def test_escalation_retry_and_abort(orchestrator_factory, tmp_path) -> None:
    orch = await orchestrator_factory()
    repo, plan = make_plan_repo(tmp_path / "repo", max_attempts=1)
    plan["tasks"] = [t for t in plan["tasks"] if t["id"] in ("config", "units", NEVER_FIXED)]
    paused, question = await run_until_interrupt(orch, "plan_execution", {"plan": plan})
    assert question["context"]["task"] == NEVER_FIXED
    assert len(question["context"]["attempts"]) == 1
    assert question["schema"]["properties"]["action"]["enum"] == ["skip", "retry", "abort"]
    # a retry gets a fresh budget of attempts; it fails again, and asks again
    again = await resume(orch, paused.thread_id, {"action": "retry", "by": "dev"})
    assert again.status == "interrupted"
    assert len(again.interrupts[0]["value"]["context"]["attempts"]) == 2
    # a wrong answer is refused before anything moves, and the question stays
    for bad, field in [({"action": "later", "by": "dev"}, "action"), ("skip", "answer"),
                       ({"action": "skip"}, "by"), ({"acton": "skip", "by": "dev"}, "acton")]:
        with pytest.raises(InvalidInput, match=field):
            await resume(orch, paused.thread_id, bad)
        assert (await orch.runtime.workflows.get(paused.thread_id)).status == "interrupted"
    # past the facade, straight into LangGraph: asked again, nothing decided
    graph, config = orch.graph("plan_execution"), {"configurable": {"thread_id": paused.thread_id}}
    with use_runtime(orch.runtime):
        await graph.ainvoke(Command(resume={"action": "later", "by": "dev"}), config)
    state = await graph.aget_state(config)
    assert state.values["tasks"][NEVER_FIXED]["status"] == "dead"
    assert "'skip', 'retry' or 'abort'" in \
        state.interrupts[0].value["context"]["problem_with_last_answer"]
    aborted = await resume(orch, paused.thread_id, {"action": "abort", "by": "dev"})
    assert aborted.status == "failed"
    assert aborted.final_result["reasons"] == [f"aborted by dev at the dead letter of {NEVER_FIXED}"]


async def test_a_cycle_is_an_error_listing_it_unless_allowed(orchestrator_factory, tmp_path) -> None:
    orch = await orchestrator_factory()
    repo, _ = make_plan_repo(tmp_path / "repo")
    tasks = [
        {"id": "a", "file": "loop/a.py", "kind": "new", "content": "from loop import b\n\nX = b\n"},
        {"id": "b", "file": "loop/b.py", "kind": "new", "content": "from loop import c\n\nX = c\n"},
        {"id": "c", "file": "loop/c.py", "kind": "new", "content": "from loop import a\n\nX = a\n"},
        {"id": "init", "file": "loop/__init__.py", "kind": "new", "content": ""},
    ]
    failed = await orch.run("plan_execution", {"plan": {"repo": str(repo), "tasks": tasks}})
    assert failed.status == "failed"
    assert failed.final_result["cycles"] == [["a", "b", "c"]]
    assert "a (loop/a.py) → b (loop/b.py) → c (loop/c.py)" in failed.final_result["reasons"][0]
    allowed = await orch.run("plan_execution", {"plan": {
        "repo": str(repo), "tasks": tasks, "allowed_cycles": [["c", "a"]],
        "integration_command": "python -c pass"}})
    assert allowed.status == "completed", allowed
    assert allowed.final_result["batches"] == [["c", "init"], ["b"], ["a"]]
    assert allowed.final_result["critical_path"]["tasks"] == ["c", "b", "a"]


async def test_an_open_circuit_pauses_dispatch_until_the_cool_down(
    orchestrator_factory, tmp_path
) -> None:
    failures = {"left": 4}

    async def flaky_develop(payload, ctx):
        if failures["left"] > 0:
            failures["left"] -= 1
            from orchestrator.agent import HandlerError
            raise HandlerError("overloaded", "try later", retryable=True)
        return await builtin_develop(payload, ctx)

    orch = await orchestrator_factory(
        stand_ins=[stand_in("developer", {"develop": flaky_develop}, keep_builtin=True)],
        breaker_min_calls=4, breaker_cooldown=1.5, breaker_window=30)
    repo, plan = make_plan_repo(tmp_path / "repo", max_attempts=5, retry_delay=0.05,
                                integration_command="python -c pass")
    plan["tasks"] = [t for t in plan["tasks"] if t["id"] in ("config", "units", "shipping",
                                                              "format", "dates", "types")]
    started = time.monotonic()
    result = await orch.run("plan_execution", {"plan": plan})
    assert result.status == "completed", result
    assert result.final_result["pauses"] >= 1  # dispatch waited for the breaker
    assert time.monotonic() - started >= 1.5  # ...for its cool-down
    assert all(r["status"] == "done" for r in result.final_result["tasks"].values())


def test_a_malformed_plan_names_the_task_and_the_field(tmp_path) -> None:
    plan = {"repo": str(tmp_path), "tasks": [
        {"id": "ok", "file": "a.py", "kind": "new", "content": ""},
        {"id": "bad", "file": "b.py", "kind": "rewrite", "content": ""},
    ]}
    with pytest.raises(PlanError, match=r"task 'bad' \(tasks\[1\]\) field 'kind'"):
        parse_plan(plan)
    plan["tasks"][1] = {"id": "two", "file": "../b.py", "kind": "new", "patch": "x",
                        "content": "y"}
    with pytest.raises(PlanError, match=r"task 'two' \(tasks\[1\]\) field 'file': must be a "
                       "path inside the repository"):
        parse_plan(plan)
    plan["tasks"][1]["file"] = "b.py"
    with pytest.raises(PlanError, match=r"task 'two' \(tasks\[1\]\): give exactly one of "
                       r"'content', 'patch' or 'command' \(got content, patch\)"):
        parse_plan(plan)
    plan["tasks"][1] = {"id": "ok", "file": "c.py", "kind": "new", "content": "",
                        "depends_on": ["ghost"]}
    with pytest.raises(PlanError, match=r"task 'ok' \(tasks\[1\]\) field 'id': duplicate"):
        parse_plan(plan)
    plan["tasks"][1]["id"] = "c"
    with pytest.raises(PlanError, match=r"task 'c' \(tasks\[1\]\) field 'depends_on': no task 'ghost'"):
        parse_plan(plan)


def test_plans_load_from_yaml_and_json_relative_to_the_file(tmp_path) -> None:
    (tmp_path / "repo").mkdir()
    plan = {"repo": "repo", "tasks": [{"id": "a", "file": "a.py", "kind": "new", "content": ""}]}
    (tmp_path / "plan.yaml").write_text(yaml.safe_dump(plan))
    (tmp_path / "plan.json").write_text(json.dumps(plan))
    for name in ("plan.yaml", "plan.json"):
        assert load_plan(tmp_path / name).repo == str((tmp_path / "repo").resolve())
    (tmp_path / "broken.yaml").write_text("repo: [unclosed\n")
    with pytest.raises(PlanError, match="not valid YAML"):
        load_plan(tmp_path / "broken.yaml")


async def test_a_bad_plan_is_refused_before_anything_is_stored(orchestrator, tmp_path) -> None:
    with pytest.raises(InvalidInput, match=r"task 'x' \(tasks\[0\]\) field 'kind'"):
        await orchestrator.run("plan_execution", {"plan": {"repo": str(tmp_path), "tasks": [
            {"id": "x", "file": "x.py", "kind": "nope", "content": ""}]}})
    assert await orchestrator.list_workflows() == []


@pytest.mark.slow
async def test_the_cli_runs_a_plan_file(service_env, tmp_path) -> None:
    import subprocess

    from .support.processes import ORCHESTRATOR_CMD

    repo, plan = make_plan_repo(tmp_path / "repo")
    plan["tasks"] = [t for t in plan["tasks"] if t["id"] != NEVER_FIXED]
    plan["repo"] = "repo"
    (tmp_path / "plan.yaml").write_text(yaml.safe_dump(plan))
    done = await asyncio.to_thread(
        subprocess.run, [*ORCHESTRATOR_CMD, "run", "plan_execution", "--set",
                         f"plan={tmp_path / 'plan.yaml'}", "--json"],
        env=service_env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["status"] == "completed"
    assert len(result["final_result"]["done"]) == 29
    assert (repo / "shop" / "checkout.py").read_text().startswith("from shop.cart")


async def test_a_chat_model_fixes_what_ruff_cannot(orchestrator_factory, tmp_path) -> None:
    orch = await orchestrator_factory(chat_model="tests.support.fake_chat:fixes_discounts")
    repo, plan = make_plan_repo(tmp_path / "repo", integration_command="python -c pass")
    plan["tasks"] = [t for t in plan["tasks"] if t["id"] == NEVER_FIXED]
    result = await orch.run("plan_execution", {"plan": plan})
    assert result.status == "completed", result
    assert result.final_result["tasks"][NEVER_FIXED]["attempts"] == 2
    assert (repo / "shop" / "discounts.py").read_text().startswith("RATE = 0.1\n")


async def test_a_plan_ends_with_a_canary_rollout(orchestrator_factory, start_service,
                                                 tmp_path) -> None:
    from .support.commands import lines, traffic_log_command

    orch = await orchestrator_factory()
    service = await start_service()
    log = tmp_path / "traffic"
    repo, plan = make_plan_repo(tmp_path / "repo", deploy={
        "name": "shop", "stages": [50, 100], "stage_seconds": 0, "samples": 1,
        "sample_interval": 0, "traffic": {"command": traffic_log_command(log)},
        "health": {"url": service.url + "/health"}})
    plan["tasks"] = [t for t in plan["tasks"] if t["id"] in ("config", "units", "money")]
    plan["integration_command"] = "python -m pytest -q tests/test_money.py"
    result = await orch.run("plan_execution", {"plan": plan})
    assert result.status == "completed", result
    assert result.final_result["integration"]["passed"] is True
    assert result.final_result["canary"]["status"] == "completed"
    assert lines(log) == ["50", "100"]
