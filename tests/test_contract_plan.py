"""The planner, developer and QA agents and the plan_execution graph keep one contract each
(orchestrator.contracts.planner, .developer, .qa): a malformed payload is refused naming the
field, the graph holds the very lock the developer checks, and the graph schedules by the
planner's task-level analysis instead of working it out again."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from orchestrator.agents import developer as developer_agent
from orchestrator.agents import planner as planner_agent
from orchestrator.agents import qa as qa_agent
from orchestrator.workflows import plan_work

from orchestrator.agent import HandlerError
from orchestrator.contracts import developer, planner, qa
from orchestrator.testing import stand_in

from .support.fixture_repo import git


def small_repo(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    git(path, "init", "-q", "-b", "main")
    (path / "pyproject.toml").write_text('[project]\nname = "small"\nversion = "0.1.0"\n')
    git(path, "add", "-A")
    git(path, "commit", "-q", "-m", "configuration")
    return path


@pytest.mark.parametrize(
    ("agent", "request_type", "payload", "field"),
    [
        (developer_agent, "develop", {"repo": "/tmp"}, "payload.task: Field required"),
        (developer_agent, "develop", {"repo": "/tmp", "task": {"id": "a"}},
         "payload.task.file: Field required"),
        (developer_agent, "develop", {"repo": "/tmp", "task": {"file": "a.py", "command": 3}},
         "payload.task.command"),
        (developer_agent, "develop", {"repo": "/tmp", "task": {"file": "a.py", "colour": 1}},
         "payload.task.colour: Extra inputs"),
        (qa_agent, "check", {"repo": "/tmp"}, "payload.file: Field required"),
        (qa_agent, "check", {"repo": "/tmp", "file": "a.py", "not_ready": "a.py"},
         "payload.not_ready: Input should be a valid list"),
        (planner_agent, "analyze_plan", {"repo": "/tmp", "files": {}},
         "payload.files: Dictionary should have at least 1 item"),
        (planner_agent, "analyze_plan", {"repo": "/tmp", "files": {"a.py": None},
                                         "patches": {"a.py": 1}},
         "payload.patches.a.py: Input should be a valid string"),
        (planner_agent, "analyze_plan", {"repo": "/tmp", "files": {"a.py": None}, "tasks": [
            {"id": "a", "file": "a.py", "depends_on": ["ghost"]}]},
         "task 'a': depends_on names no task 'ghost'"),
        (planner_agent, "analyze_plan", {"repo": "/tmp", "files": {"a.py": None}, "tasks": [
            {"id": "a", "file": "a.py", "weight": 0}]},
         "payload.tasks.0.weight: Input should be greater than 0"),
        (planner_agent, "file_hashes", {"repo": "/tmp", "files": [""]},
         "payload.files.0: String should have at least 1 character"),
        (planner_agent, "analyze_repository", {}, "payload.repo: Field required"),
    ],
)
async def test_a_malformed_payload_is_answered_invalid_input_naming_the_field(
    agent, request_type, payload, field
) -> None:
    with pytest.raises(HandlerError) as refused:
        await agent.agent.call_locally(request_type, payload)
    assert refused.value.code == "invalid_input"
    assert field in refused.value.message


def test_the_graph_and_the_developer_name_the_file_lock_with_one_function(tmp_path) -> None:
    assert developer_agent.file_lock is developer.file_lock is plan_work.file_lock
    assert developer.file_lock(tmp_path, "pkg/a.py") == f"file:{tmp_path.resolve() / 'pkg/a.py'}"
    assert developer_agent.agent.handlers["develop"].__wrapped__.__name__ == "develop"
    for agent, contract in ((developer_agent, developer), (qa_agent, qa),
                            (planner_agent, planner)):
        assert agent.agent.agent_type == contract.AGENT_TYPE


async def test_every_develop_request_carries_the_lock_the_developer_checks(
    orchestrator_factory, tmp_path
) -> None:
    carried: list[tuple[set[str], str]] = []

    async def recording_develop(payload: dict[str, Any], ctx) -> dict[str, Any]:
        repo = Path(payload["repo"])
        carried.append((set(ctx.request.fencing), developer.file_lock(repo, payload["task"]["file"])))
        return await developer_agent.develop(payload, ctx)  # checks the fencing token itself

    orch = await orchestrator_factory(stand_ins=[
        stand_in("developer", {"develop": recording_develop}, keep_builtin=True)])
    repo = small_repo(tmp_path / "repo")
    plan = {"repo": str(repo), "integration_command": "python -c pass", "tasks": [
        {"id": "a", "file": "pkg/a.py", "kind": "new", "content": "A = 1\n"},
        {"id": "b", "file": "pkg/b.py", "kind": "new", "content": "B = 2\n"}]}
    result = await orch.run("plan_execution", {"plan": plan})
    assert result.status == "completed", result
    assert len(carried) == 2
    for held, checked in carried:
        assert held == {checked}


async def test_the_planner_answers_the_task_graph_and_refuses_cycles(tmp_path) -> None:
    repo = small_repo(tmp_path / "repo")
    files = {"loop/a.py": "from loop import b\n", "loop/b.py": "from loop import a\n",
             "loop/__init__.py": "", "c.py": "X = 1\n"}
    tasks = [{"id": "a", "file": "loop/a.py"}, {"id": "b", "file": "loop/b.py"},
             {"id": "init", "file": "loop/__init__.py"},
             {"id": "c", "file": "c.py", "kind": "fix", "depends_on": ["a"], "weight": 5}]
    refused = await planner_agent.agent.call_locally("analyze_plan", {
        "repo": str(repo), "files": files, "tasks": tasks})
    graph = refused["task_graph"]
    assert graph["cycles"] == [["a", "b"]]
    assert graph["error"] == (
        "the plan's tasks form import cycles: a (loop/a.py) → b (loop/b.py); break them, or "
        "accept an edge with allowed_cycles: [[importer_task, imported_task]]")
    accepted = await planner_agent.agent.call_locally("analyze_plan", {
        "repo": str(repo), "files": files, "tasks": tasks, "allowed_cycles": [["b", "a"]]})
    graph = accepted["task_graph"]
    assert graph["cycles"] == [] and graph["error"] is None
    assert graph["allowed"] == [["b", "a"]]
    assert graph["edges"] == [["a", "b"], ["c", "a"]]
    assert graph["batches"] == [["b", "init"], ["a"], ["c"]]
    assert graph["critical_path"] == {"tasks": ["b", "a", "c"], "weight": 7.0}
    assert {t: p["deps"] for t, p in graph["tasks"].items()} == {
        "a": ["b"], "b": [], "c": ["a"], "init": []}
    # the critical path first, a fix before new work, then the longest way to the end
    assert sorted(graph["tasks"], key=lambda t: graph["tasks"][t]["priority"]) == [
        "c", "b", "a", "init"]
    assert refused["edges"] == [["loop/a.py", "loop/b.py"], ["loop/b.py", "loop/a.py"]]
    without = await planner_agent.agent.call_locally("analyze_plan", {
        "repo": str(repo), "files": files})
    assert without["task_graph"] is None


async def test_the_graph_schedules_by_the_planners_order(orchestrator_factory, tmp_path) -> None:
    """A planner answering another rank (and critical path) changes the dispatch order: the
    graph maps the planner's analysis, it does not rank the tasks itself."""
    async def reversing_planner(payload: dict[str, Any], ctx) -> dict[str, Any]:
        answer = await planner_agent.analyze_plan(payload, ctx)
        places = answer["task_graph"]["tasks"]
        order = sorted(places, key=lambda t: places[t]["priority"], reverse=True)
        for rank, task_id in enumerate(order):
            places[task_id]["priority"] = rank
        answer["task_graph"]["critical_path"] = {"tasks": order[:1], "weight": 42.0}
        return answer

    developed: list[str] = []

    async def recording_develop(payload: dict[str, Any], ctx) -> dict[str, Any]:
        developed.append(payload["task"]["id"])
        return await developer_agent.develop(payload, ctx)

    repo = small_repo(tmp_path / "repo")
    tasks = [{"id": f"m{i}", "file": f"pkg/m{i}.py", "kind": "new", "content": f"VALUE = {i}\n"}
             for i in range(4)]
    own = planner_agent.task_graph(
        [planner.PlanTaskNode(id=t["id"], file=t["file"]) for t in tasks], [], [])
    assert sorted(own.tasks, key=lambda t: own.tasks[t].priority) == ["m0", "m1", "m2", "m3"]
    orch = await orchestrator_factory(stand_ins=[
        stand_in("developer", {"develop": recording_develop}, keep_builtin=True),
        stand_in("planner", {"analyze_plan": reversing_planner}, keep_builtin=True)])
    result = await orch.run("plan_execution", {"plan": {
        "repo": str(repo), "integration_command": "python -c pass", "max_parallel": 1,
        "tasks": tasks}})
    assert result.status == "completed", result
    assert developed == ["m3", "m2", "m1", "m0"]
    assert result.final_result["critical_path"] == {"tasks": ["m3"], "weight": 42.0}
    state = (await orch.get(result.thread_id)).values
    assert {t: r["priority"] for t, r in state["tasks"].items()} == {
        "m3": 0, "m2": 1, "m1": 2, "m0": 3}
    assert state["analysis"]["critical_path"] == {"tasks": ["m3"], "weight": 42.0}
