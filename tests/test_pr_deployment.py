"""pr_deployment on a real git repository: review, tests, approval, merge, canary."""

from __future__ import annotations

import asyncio
import json
import subprocess
from pathlib import Path

import pytest
from langgraph.types import Command

from orchestrator.calls import call_agent
from orchestrator.errors import AgentError, InvalidInput
from orchestrator.runtime import use_runtime
from orchestrator.testing import resume, run_until_interrupt

from .support.commands import lines, traffic_log_command
from .support.fixture_repo import add_branch, git
from .support.processes import ORCHESTRATOR_CMD


def branch(repo: Path, name: str = "main") -> str:
    return git(repo, "rev-parse", name)


def worktrees(repo: Path) -> list[str]:
    return [line for line in git(repo, "worktree", "list", "--porcelain").splitlines()
            if line.startswith("worktree ")]


def deliver(repo: Path, source: str, **extra) -> dict:
    return {"repo": str(repo), "source": source, **extra}


async def test_a_passing_branch_is_reviewed_tested_and_merged(orchestrator, fixture_repo) -> None:
    before = branch(fixture_repo)
    result = await orchestrator.run("pr_deployment",
                                    deliver(fixture_repo, "feature-pass", approval="auto"))
    assert result.status == "completed", result
    final = result.final_result
    assert final["review"] == {"verdict": "approved", "files": ["calc/mul.py", "tests/test_mul.py"],
                               "findings": 0, "counts": {}}
    assert final["tests"]["passed"] is True and final["tests"]["counts"] == {"passed": 4}
    merged = branch(fixture_repo)
    assert final["merged"] is True and final["commit"] == merged
    parents = git(fixture_repo, "rev-list", "--parents", "-n", "1", merged).split()[1:]
    assert parents == [before, branch(fixture_repo, "feature-pass")]  # a real merge commit
    assert (fixture_repo / "calc" / "mul.py").exists()  # main is checked out: updated in place
    assert worktrees(fixture_repo) == [f"worktree {fixture_repo}"]  # test worktree removed
    state = (await orchestrator.get(result.thread_id)).values
    assert set(state["agent_assignments"]) >= {"review", "tests", "merge"}


async def test_a_failing_branch_fails_with_the_findings_and_the_failed_test(
    orchestrator, fixture_repo
) -> None:
    before = branch(fixture_repo)
    result = await orchestrator.run("pr_deployment", deliver(fixture_repo, "feature-fail"))
    assert result.status == "failed"  # no approval asked: the checks failed
    final = result.final_result
    assert final["stage"] == "checks" and final["merged"] is False
    review_reason, tests_reason = final["reasons"]
    assert "calc/div.py:3 F401" in review_reason
    assert tests_reason.startswith("tests: 1 failed") and "tests/test_div.py::test_div" in tests_reason
    assert final["tests"]["counts"] == {"failed": 1, "passed": 3}
    assert branch(fixture_repo) == before
    assert worktrees(fixture_repo) == [f"worktree {fixture_repo}"]


async def test_the_review_threshold_is_configurable(orchestrator, fixture_repo) -> None:
    review = await call_agent("code_review", "review", {
        "repo": str(fixture_repo), "source": "feature-fail", "max_findings": 1},
        runtime=orchestrator.runtime)
    assert review.result["verdict"] == "approved"
    assert review.result["findings"] == [{"file": "calc/div.py", "line": 3, "column": 8,
                                          "code": "F401", "message": "`os` imported but unused"}]


async def test_approval_pauses_with_the_summary_and_the_merge_names_the_approver(
    orchestrator, fixture_repo
) -> None:
    paused, question = await run_until_interrupt(orchestrator, "pr_deployment",
                                                 deliver(fixture_repo, "feature-pass"))
    assert question["kind"] == "approval"
    assert question["context"]["summary"]["tests"]["counts"] == {"passed": 4}
    assert question["context"]["summary"]["review"]["verdict"] == "approved"
    # the question carries its answer's JSON Schema: a strict boolean, and who answers
    schema = question["schema"]
    assert schema["properties"]["approve"]["type"] == "boolean"
    assert set(schema["required"]) == {"approve", "by"} and not schema["additionalProperties"]
    result = await resume(orchestrator, paused.thread_id,
                          {"approve": True, "by": "alice", "comment": "ship it"})
    assert result.status == "completed"
    assert result.final_result["decision"]["by"] == "alice"
    assert git(fixture_repo, "log", "-1", "--format=%s") == \
        "Merge feature-pass into main (approved by alice)"


async def test_a_rejection_merges_nothing(orchestrator, fixture_repo) -> None:
    before = branch(fixture_repo)
    paused, _ = await run_until_interrupt(orchestrator, "pr_deployment",
                                          deliver(fixture_repo, "feature-pass"))
    result = await resume(orchestrator, paused.thread_id,
                          {"approve": False, "by": "bob", "comment": "not this week"})
    assert result.status == "failed"
    assert result.final_result["reasons"] == ["rejected by bob: not this week"]
    assert branch(fixture_repo) == before


async def test_the_string_false_is_refused_and_never_merges(orchestrator, fixture_repo) -> None:
    """Review H2: {"approve": "false"} used to approve (a non-empty string is truthy)."""
    before = branch(fixture_repo)
    paused, _ = await run_until_interrupt(orchestrator, "pr_deployment",
                                          deliver(fixture_repo, "feature-pass"))
    for bad in ({"approve": "false", "by": "reviewer", "comment": "NO, do not merge"},
                {"approved": True, "by": "reviewer"}, "yes", None):
        with pytest.raises(InvalidInput, match="approve" if bad else "waits for an answer"):
            await resume(orchestrator, paused.thread_id, bad)
        record = await orchestrator.runtime.workflows.get(paused.thread_id)
        assert record.status == "interrupted" and record.error is None  # nothing moved
        details = await orchestrator.get(paused.thread_id)
        assert details.interrupts[0]["value"]["kind"] == "approval"  # still pending
        assert branch(fixture_repo) == before
    # straight through LangGraph (Studio, a direct call), past the facade: asked again
    graph = orchestrator.graph("pr_deployment")
    config = {"configurable": {"thread_id": paused.thread_id}}
    with use_runtime(orchestrator.runtime):
        await graph.ainvoke(Command(resume={"approve": "false", "by": "reviewer"}), config)
    state = await graph.aget_state(config)
    assert state.next == ("approve",) and "decision" not in state.values
    assert "approve: Input should be a valid boolean" in \
        state.interrupts[0].value["context"]["problem_with_last_answer"]
    assert branch(fixture_repo) == before
    result = await resume(orchestrator, paused.thread_id, {"approve": False, "by": "x"})
    assert result.status == "failed" and result.final_result["stage"] == "approval"
    assert result.final_result["reasons"] == ["rejected by x: no comment"]
    assert branch(fixture_repo) == before


async def test_a_conflict_fails_naming_the_files_and_leaves_the_repository_clean(
    orchestrator, fixture_repo
) -> None:
    before = branch(fixture_repo)
    result = await orchestrator.run("pr_deployment",
                                    deliver(fixture_repo, "feature-conflict", approval="auto"))
    assert result.status == "failed"
    assert result.final_result["stage"] == "merge"
    assert result.final_result["conflicts"] == ["calc/__init__.py"]
    assert branch(fixture_repo) == before
    assert git(fixture_repo, "status", "--porcelain") == ""
    assert not (fixture_repo / ".git" / "MERGE_HEAD").exists()


async def test_a_target_that_is_not_checked_out_is_merged_in_a_worktree(
    orchestrator, fixture_repo
) -> None:
    git(fixture_repo, "branch", "release", "main~1")
    git(fixture_repo, "checkout", "-q", "feature-fail")  # neither source nor target
    result = await orchestrator.run("pr_deployment", deliver(
        fixture_repo, "feature-pass", target="release", approval="auto"))
    assert result.status == "completed", result
    assert branch(fixture_repo, "release") == result.final_result["commit"]
    assert git(fixture_repo, "rev-parse", "--abbrev-ref", "HEAD") == "feature-fail"
    assert git(fixture_repo, "status", "--porcelain") == ""
    assert worktrees(fixture_repo) == [f"worktree {fixture_repo}"]


async def test_a_merge_needs_the_repository_lock(orchestrator, fixture_repo) -> None:
    with pytest.raises(AgentError, match="missing_fencing_token"):
        await call_agent("cicd", "merge", {"repo": str(fixture_repo), "source": "feature-pass"},
                         runtime=orchestrator.runtime)


@pytest.mark.parametrize("change, message", [
    ({"repo": "/nonexistent/repo"}, "does not exist"),
    ({"source": "no-such-branch"}, "source 'no-such-branch' is not a branch"),
    ({"target": "feature-pass~1"}, "is not a branch"),
    ({"approval": "maybe"}, "approval"),
    ({"deploy": {"name": "x", "traffic": {}, "health": {}, "stages": [50, 10]}},
     "strictly increasing"),
])
async def test_bad_input_is_refused_up_front(orchestrator, fixture_repo, change, message) -> None:
    with pytest.raises(InvalidInput, match=message):
        await orchestrator.run("pr_deployment", {**deliver(fixture_repo, "feature-pass"), **change})
    assert await orchestrator.list_workflows() == []


async def test_not_a_repository_is_refused(orchestrator, tmp_path) -> None:
    with pytest.raises(InvalidInput, match="is not a git repository"):
        await orchestrator.run("pr_deployment", {"repo": str(tmp_path), "source": "x"})


async def test_merge_then_canary_rollout(orchestrator, fixture_repo, start_service,
                                         tmp_path) -> None:
    service = await start_service()
    log = tmp_path / "traffic"
    deploy = {"name": "calc", "stages": [50, 100], "stage_seconds": 0.1, "samples": 2,
              "sample_interval": 0.05, "traffic": {"command": traffic_log_command(log)},
              "health": {"url": service.url + "/health"}}
    result = await orchestrator.run("pr_deployment", deliver(
        fixture_repo, "feature-pass", approval="auto", deploy=deploy))
    assert result.status == "completed", result
    assert result.final_result["canary"]["status"] == "completed"
    assert lines(log) == ["50", "100"]


async def test_a_rolled_back_canary_fails_the_delivery(orchestrator, fixture_repo,
                                                       start_service, tmp_path) -> None:
    service = await start_service()
    service.set_mode("error")
    log = tmp_path / "traffic"
    deploy = {"name": "calc-bad", "stage_seconds": 0, "samples": 2, "sample_interval": 0,
              "traffic": {"command": traffic_log_command(log)},
              "health": {"url": service.url + "/health"}}
    result = await orchestrator.run("pr_deployment", deliver(
        fixture_repo, "feature-pass", approval="auto", deploy=deploy))
    assert result.status == "failed"
    final = result.final_result
    assert final["merged"] is True and final["stage"] == "canary"
    assert final["canary"]["status"] == "rolled_back"
    assert "unhealthy at 10%" in final["reasons"][0]
    assert lines(log) == ["10", "0"]


@pytest.mark.slow
async def test_cli_run_pause_and_resume(service_env, fixture_repo) -> None:
    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*ORCHESTRATOR_CMD, *args], env=service_env, capture_output=True,
                              text=True, timeout=120)

    paused = cli("run", "pr_deployment", "--set", f"repo={fixture_repo}",
                 "--set", "source=feature-pass", "--thread-id", "pr-cli", "--json")
    assert paused.returncode == 3, paused.stderr
    assert json.loads(paused.stdout)["interrupts"][0]["value"]["kind"] == "approval"
    done = cli("resume", "pr-cli", "--value", '{"approve": true, "by": "cli"}', "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["final_result"]["merged"] is True
    bad = cli("run", "pr_deployment", "--set", f"repo={fixture_repo}", "--set", "source=nope")
    assert bad.returncode == 2 and "source 'nope' is not a branch" in bad.stderr


async def test_a_merge_refused_for_a_dirty_target_runs_again_once_it_is_clean(
    orchestrator_factory, fixture_repo
) -> None:
    """Review R2: the merge's stored error was replayed to the resume, from a new process too
    (its call indexes start at 0), so cleaning the tree and resuming changed nothing."""
    first = await orchestrator_factory()
    paused, _ = await run_until_interrupt(first, "pr_deployment",
                                          deliver(fixture_repo, "feature-pass"))
    tracked = fixture_repo / "calc" / "__init__.py"
    original = tracked.read_text()
    tracked.write_text(original + "# local edit, not committed\n")  # dirty after validation
    failed = await resume(first, paused.thread_id, {"approve": True, "by": "alice"})
    assert failed.status == "failed" and "uncommitted" in failed.error["message"], failed.error
    tracked.write_text(original)  # the cause is fixed
    second = await orchestrator_factory()  # a new process: its call indexes start at 0
    result = await second.resume(paused.thread_id)
    assert result.status == "completed", result.error
    assert result.final_result["merged"] is True
    assert git(fixture_repo, "log", "-1", "--format=%s") == \
        "Merge feature-pass into main (approved by alice)"


LEAK_TEST = '''import json
import os


def test_leak():
    with open({out!r}, "w") as handle:
        json.dump(dict(os.environ), handle)
'''


async def test_the_tests_under_review_get_no_secret_and_no_service_urls(
    orchestrator_factory, fixture_repo, tmp_path, monkeypatch
) -> None:
    """Review H6: a branch's test wrote the worker's os.environ to a file, bus secret and
    database and Redis URLs included."""
    secrets = {"ORCHESTRATOR_BUS_SECRET": "s3cr3t-value",
               "ORCHESTRATOR_DATABASE_URL": "postgresql://postgres@127.0.0.1:5432/adv",
               "ORCHESTRATOR_REDIS_URL": "redis://127.0.0.1:6379/9"}
    for name, value in {**secrets, "DEPLOY_TOKEN": "configured", "PLAIN": "kept"}.items():
        monkeypatch.setenv(name, value)
    orch = await orchestrator_factory(bus_secret="s3cr3t-value",
                                      child_env_withhold=("DEPLOY_*",))
    out = tmp_path / "environ.json"
    add_branch(fixture_repo, "feature-leak", {"tests/test_leak.py": LEAK_TEST.format(out=str(out))})
    result = await orch.run("pr_deployment", deliver(fixture_repo, "feature-leak",
                                                     approval="auto", max_findings=1))  # E501
    assert result.status == "completed", result
    assert result.final_result["tests"]["counts"] == {"passed": 3}
    leaked = json.loads(out.read_text())
    assert not [name for name in leaked if name.startswith("ORCHESTRATOR_")], sorted(leaked)
    assert "DEPLOY_TOKEN" not in leaked and leaked["PLAIN"] == "kept"
    assert "-p no:orchestrator" in leaked["PYTEST_ADDOPTS"]


async def test_a_file_named_like_a_ruff_option_hides_no_finding(orchestrator, fixture_repo) -> None:
    """Review M2: an empty file named --extend-exclude=*.py made ruff skip every file, and the
    branch was approved and merged."""
    before = branch(fixture_repo)
    add_branch(fixture_repo, "feature-inject", {"bad.py": "import os\nimport sys\n",
                                                "--extend-exclude=*.py": ""})
    result = await orchestrator.run("pr_deployment",
                                    deliver(fixture_repo, "feature-inject", approval="auto"))
    assert result.status == "failed", result
    review = result.final_result["review"]
    assert review["verdict"] == "changes_requested" and review["findings"] == 2, review
    assert result.final_result["merged"] is False and branch(fixture_repo) == before


@pytest.mark.slow
async def test_a_dirty_target_tree_is_refused_before_the_tests_run(
    orchestrator, fixture_repo, service_env
) -> None:
    tracked = fixture_repo / "calc" / "__init__.py"
    tracked.write_text(tracked.read_text() + "# local edit\n")
    (fixture_repo / "notes.txt").write_text("untracked files do not matter\n")
    with pytest.raises(InvalidInput, match=r"uncommitted changes to calc/__init__.py; commit or "
                                           r"stash them"):
        await orchestrator.run("pr_deployment", deliver(fixture_repo, "feature-pass"))
    cli = await asyncio.to_thread(
        subprocess.run, [*ORCHESTRATOR_CMD, "run", "pr_deployment", "--set",
                         f"repo={fixture_repo}", "--set", "source=feature-pass"],
        env=service_env, capture_output=True, text=True, timeout=120)
    assert cli.returncode == 2 and "calc/__init__.py" in cli.stderr, cli.stderr
    # the target not checked out there: its work tree is not the merge's business
    git(fixture_repo, "stash", "-q")
    git(fixture_repo, "checkout", "-q", "feature-conflict")
    tracked.write_text(tracked.read_text() + "# another local edit\n")
    result = await orchestrator.run("pr_deployment",
                                    deliver(fixture_repo, "feature-pass", approval="auto"))
    assert result.status == "completed" and result.final_result["merged"] is True, result


async def test_a_repository_path_is_never_stripped(orchestrator, tmp_path) -> None:
    """Review L6: repo="r5 " was validated (and merged) as r5."""
    from orchestrator.workflows.pr_deployment import PRDeploymentInput

    from .support.fixture_repo import make_fixture_repo

    make_fixture_repo(tmp_path / "r5")
    spaced = make_fixture_repo(tmp_path / "r5 ")
    checked = PRDeploymentInput.model_validate({"repo": str(spaced), "source": "feature-pass"})
    assert checked.repo == str(spaced.resolve())
    make_fixture_repo(tmp_path / "r6")
    with pytest.raises(InvalidInput, match="does not exist"):
        await orchestrator.run("pr_deployment", deliver(tmp_path / "r6 ", "feature-pass"))
