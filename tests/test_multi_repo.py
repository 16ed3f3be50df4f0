"""multi_repo_change on three real git repositories (lib -> service -> app): the future state
tested before any merge, one approval, every target moved in order or none."""

from __future__ import annotations

import json
import subprocess
from datetime import datetime
from pathlib import Path

import pytest

from orchestrator.calls import call_agent
from orchestrator.errors import AgentError, InvalidInput
from orchestrator.testing import resume, run_until_interrupt

from .support.fixture_repo import add_branch, git
from .support.multi_repo import change_input, make_independent_repos, make_multi_repos, tip
from .support.processes import ORCHESTRATOR_CMD


@pytest.fixture
def repos(tmp_path: Path) -> dict[str, Path]:
    return make_multi_repos(tmp_path / "repos")


def _tips(repos: dict[str, Path]) -> dict[str, str]:
    return {name: tip(path) for name, path in repos.items()}


def _reflog_moves(repo: Path) -> list[str]:
    """The moves of main made by the workflow, oldest first."""
    lines = git(repo, "reflog", "show", "--format=%gs", "refs/heads/main").splitlines()
    return [line for line in reversed(lines) if line.startswith("orchestrator:")]


async def test_a_change_across_three_repositories_merges_in_order(orchestrator, repos) -> None:
    before = _tips(repos)
    result = await orchestrator.run("multi_repo_change", change_input(repos, approval="auto"))
    assert result.status == "completed", result
    final = result.final_result
    assert final["order"] == ["lib", "service", "app"]
    assert final["merged"] == ["lib", "service", "app"]
    # the downstream tests ran on the future state: they pass only with their upstreams' change
    for name in ("service", "app"):
        assert final["checks"][name]["tests"]["passed"] is True
        assert final["checks"][name]["tests"]["future_state"] is True
    assert final["checks"]["app"]["tests"]["counts"] == {"passed": 2}
    for name, repo in repos.items():
        plan = final["plan"][name]
        assert (plan["old"], plan["new"]) == (before[name], tip(repo))
        # a real merge commit: target first, then the source; the tested commit is the merged one
        parents = git(repo, "rev-list", "--parents", "-n", "1", tip(repo)).split()[1:]
        assert parents == [before[name], tip(repo, "change")]
        assert final["checks"][name]["tests"]["commit"] == tip(repo)
        assert _reflog_moves(repo) == ["orchestrator: move main"]
        assert git(repo, "status", "--porcelain") == ""  # the checked-out work tree followed
    assert (repos["app"] / "tests" / "test_banner.py").exists()
    # moved one repository per step, upstreams first
    state = (await orchestrator.get(result.thread_id)).values
    moves = state["merge"]["moves"]
    assert sorted(moves, key=lambda n: moves[n]["at"]) == ["lib", "service", "app"]
    rows = {r["name"]: r for r in final["repositories"]}
    assert rows["app"] == {"name": "app", "repo": str(repos["app"]), "review": "approved",
                           "tests": "2 passed", "merge_commit": tip(repos["app"])[:12],
                           "rollback_commit": None, "canary": None, "status": "merged"}


async def test_lib_breaking_app_is_caught_before_any_ref_moves(orchestrator, repos,
                                                               tmp_path) -> None:
    before = _tips(repos)
    issues = tmp_path / "issues"
    result = await orchestrator.run("multi_repo_change", change_input(
        repos, lib_branch="breaking", approval="auto", issues={"folder": str(issues)}))
    assert result.status == "failed", result
    final = result.final_result
    assert final["stage"] == "checks" and final["merged"] == []
    assert _tips(repos) == before  # no ref moved
    assert all(_reflog_moves(r) == [] for r in repos.values())
    app_tests = final["checks"]["app"]["tests"]
    assert app_tests["passed"] is False and app_tests["future_state"] is True
    failing = sorted(f.split(" ")[0] for f in app_tests["failures"])
    assert failing == ["tests/test_app.py::test_banner", "tests/test_app.py::test_page"] or \
        failing == ["tests/test_app.py::test_page", "tests/test_banner.py::test_banner"]
    assert final["checks"]["lib"]["tests"]["passed"] is True
    assert final["checks"]["service"]["tests"]["passed"] is True
    assert [r["status"] for r in final["repositories"]] == ["not merged"] * 3
    # a follow-up issue for the repository that blocks the change, naming the failing tests
    (written,) = list(issues.glob("*.md"))
    text = written.read_text()
    assert text.startswith("# app:") and "tests/test_app.py::test_page" in text
    assert final["followups"]["app"]["kind"] == "file"


async def test_one_approval_lists_every_repository(orchestrator, repos) -> None:
    before = _tips(repos)
    paused, question = await run_until_interrupt(orchestrator, "multi_repo_change",
                                                 change_input(repos))
    assert question["kind"] == "approval"
    plan = question["context"]["plan"]
    assert [p["name"] for p in plan] == ["lib", "service", "app"]
    assert plan[2]["tests"]["counts"] == {"passed": 2} and plan[2]["after"] == ["service"]
    assert plan[1]["after"] == ["lib"]  # from service's pyproject.toml
    assert plan[0]["review"]["verdict"] == "approved"
    assert _tips(repos) == before
    result = await resume(orchestrator, paused.thread_id, {"approve": False, "by": "bob"})
    assert result.status == "failed" and result.final_result["stage"] == "approval"
    assert _tips(repos) == before


async def test_not_atomic_merges_what_is_ready(orchestrator, repos) -> None:
    before = _tips(repos)
    result = await orchestrator.run("multi_repo_change", change_input(
        repos, lib_branch="breaking", approval="auto", atomic=False))
    final = result.final_result
    assert final["status"] == "partial" and final["merged"] == ["lib", "service"]
    assert tip(repos["app"]) == before["app"]
    assert tip(repos["lib"]) != before["lib"]


async def test_bad_input_is_refused_up_front(orchestrator, repos, tmp_path) -> None:
    base = change_input(repos)
    cases = {
        "names must be unique": {"changes": [*base["changes"], base["changes"][0]]},
        "'nope', which is no change": {"changes": [
            {**base["changes"][0], "depends_on": ["nope"]}]},
        "source 'missing' is not a branch": {"changes": [
            {**base["changes"][0], "source": "missing"}]},
        "lib -> service -> lib": {"changes": [
            {**base["changes"][0], "depends_on": ["service"]}, base["changes"][1]]},
    }
    for expected, data in cases.items():
        with pytest.raises(InvalidInput, match=expected):
            await orchestrator.run("multi_repo_change", data)
    (repos["lib"] / "mrlib" / "__init__.py").write_text("dirty\n")
    with pytest.raises(InvalidInput, match="uncommitted changes"):
        await orchestrator.run("multi_repo_change", base)


async def test_a_cycle_allowed_is_one_bundle(orchestrator, repos) -> None:
    data = change_input(repos, approval="auto", allow_cycles=True)
    data["changes"][0]["depends_on"] = ["app"]  # lib -> app -> service -> lib
    result = await orchestrator.run("multi_repo_change", data)
    assert result.status == "completed", result
    assert result.final_result["bundles"] == [["app", "lib", "service"]]
    assert result.final_result["merged"] == ["app", "lib", "service"]


async def test_parallel_independent_repositories_test_at_the_same_time(
        orchestrator_factory, tmp_path) -> None:
    orch = await orchestrator_factory(worker_min_concurrency=4, worker_max_concurrency=8)
    barrier = tmp_path / "barrier"
    names = ["one", "two", "three"]
    repos = make_independent_repos(tmp_path / "repos", names, barrier)
    result = await orch.run("multi_repo_change", {
        "mode": "parallel", "approval": "auto",
        "changes": [{"repo": str(repos[n]), "source": "change"} for n in names]})
    assert result.status == "completed", result
    # each test waited for the others to start: they passed, so they ran at the same time
    assert all(result.final_result["checks"][n]["tests"]["passed"] for n in names)
    marks = {p.name.split("-")[0] + "-" + p.name.split("-")[1]: float(p.name.split("-", 2)[2])
             for p in barrier.iterdir()}
    assert max(marks[f"start-{n}"] for n in names) < min(marks[f"end-{n}"] for n in names)
    # the figure: the three test tasks together against the slowest alone (not asserted)
    state = (await orch.get(result.thread_id)).values
    runs = [(datetime.fromisoformat(state["tests"][n]["started"]),
             datetime.fromisoformat(state["tests"][n]["finished"])) for n in names]
    span = (max(e for _, e in runs) - min(s for s, _ in runs)).total_seconds()
    slowest = max((e - s).total_seconds() for s, e in runs)
    print(f"\nparallel: 3 independent test tasks took {span:.2f}s together, the slowest "
          f"{slowest:.2f}s alone: {span / slowest:.2f}x")


def test_the_cli_runs_the_change_from_a_yaml_file(repos, service_env, tmp_path) -> None:
    before = _tips(repos)
    change = tmp_path / "change.yaml"
    lines = ["approval: auto", "changes:"]
    for item in change_input(repos)["changes"]:
        lines.append(f"  - repo: {item['repo']}")
        lines += [f"    {k}: {json.dumps(v)}" for k, v in item.items() if k != "repo"]
    change.write_text("\n".join(lines) + "\n")
    done = subprocess.run([*ORCHESTRATOR_CMD, "run", "multi_repo_change", "--input",
                           str(change), "--json"], env=service_env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["final_result"]["merged"] == ["lib", "service", "app"]
    assert all(tip(r) != before[n] for n, r in repos.items())
    bad = subprocess.run([*ORCHESTRATOR_CMD, "run", "multi_repo_change", "--set",
                          f"changes=[{{\"repo\": \"{tmp_path}\", \"source\": \"x\"}}]"],
                         env=service_env, capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "is not a git repository" in bad.stderr, bad.stderr


async def test_the_cicd_operations_refuse_what_they_must(orchestrator, repos) -> None:
    lib = repos["lib"]
    add_branch(lib, "clash", {"tests/test_lib.py": "def test_nothing():\n    pass\n"})
    (lib / "tests" / "test_lib.py").write_text("def test_other():\n    pass\n")
    git(lib, "commit", "-qam", "main changes the test")
    before = tip(lib)
    clash = await call_agent("cicd", "prepare_merge", {"repo": str(lib), "source": "clash"},
                             runtime=orchestrator.runtime)
    assert clash.result["prepared"] is False
    assert clash.result["conflicts"] == ["tests/test_lib.py"]
    made = await call_agent("cicd", "prepare_merge", {"repo": str(lib), "source": "change"},
                            runtime=orchestrator.runtime)
    assert made.result["prepared"] is True and made.result["target_commit"] == before
    assert tip(lib) == before  # prepared in the object store: no ref moved
    move = {"repo": str(lib), "ref": "main", "new": made.result["commit"], "old": before}
    with pytest.raises(AgentError, match="requires holding its lock"):
        await call_agent("cicd", "move_ref", move, runtime=orchestrator.runtime)
    with pytest.raises(AgentError, match=r"\{upstream:nope\}"):
        await call_agent("cicd", "run_tests", {
            "repo": str(lib), "ref": "main", "command": "python -m pytest {upstream:nope}"},
            runtime=orchestrator.runtime)
    assert tip(lib) == before


def test_a_yaml_input_file_is_read_as_yaml_without_aliases(tmp_path) -> None:
    import argparse
    import io

    from orchestrator.cli.exits import UsageError
    from orchestrator.cli.run_input import parse_input

    good = tmp_path / "change.yml"
    good.write_text("mode: parallel\nchanges:\n  - {repo: lib, source: change}\n")
    args = argparse.Namespace(input=str(good), set=["atomic=false"])
    assert parse_input(args, io.StringIO()) == {
        "mode": "parallel", "atomic": False, "changes": [{"repo": "lib", "source": "change"}]}
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text("a: &a [x, x]\nb: [*a, *a]\n")
    with pytest.raises(UsageError, match="aliases"):
        parse_input(argparse.Namespace(input=str(bomb), set=[]), io.StringIO())
    listed = tmp_path / "list.yaml"
    listed.write_text("- 1\n")
    with pytest.raises(UsageError, match="must hold a YAML mapping"):
        parse_input(argparse.Namespace(input=str(listed), set=[]), io.StringIO())
