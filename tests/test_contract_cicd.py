"""One rule on both sides of the bus: ``pr_deployment``'s input and the ``code_review`` and
``cicd`` agents refuse a repository, a ref, a command or a dirty target with the same rule
(``orchestrator.contracts.repos``, the ``cicd`` contract), and the ``repo:<path>`` lock the
graph takes is the one the agent checks."""

from __future__ import annotations

import re

import pytest
from orchestrator.agents import cicd as cicd_agent
from orchestrator.workflows import pr_deployment
from orchestrator.workflows.pr_deployment import PRDeploymentInput

from orchestrator.calls import call_agent
from orchestrator.contracts import repos
from orchestrator.contracts.cicd import MERGE, Merge, Merged
from orchestrator.errors import AgentError, AgentErrorCode, InvalidInput

from .support.fixture_repo import git


async def refused_by_graph(orchestrator, data: dict) -> str:
    with pytest.raises(InvalidInput) as info:
        await orchestrator.run("pr_deployment", data)
    assert await orchestrator.list_workflows() == []  # refused before any work
    return str(info.value)


async def refused_by_agent(orchestrator, agent_type: str, request_type: str, payload: dict,
                           code: str = AgentErrorCode.INVALID_INPUT, **kwargs) -> str:
    with pytest.raises(AgentError) as info:
        await call_agent(agent_type, request_type, payload, runtime=orchestrator.runtime,
                         **kwargs)
    assert info.value.error_code == code, info.value
    return str(info.value)


async def test_a_ref_starting_with_a_dash_is_refused_by_the_graph_and_both_agents(
    orchestrator, fixture_repo
) -> None:
    bad = "--upload-pack=touch pwned"
    rule = re.escape(f"{bad!r} is not a branch or commit: it starts with '-'")
    repo = str(fixture_repo)
    graph = await refused_by_graph(orchestrator, {"repo": repo, "source": bad})
    assert re.search(f"'source': {rule}", graph), graph
    graph = await refused_by_graph(orchestrator, {"repo": repo, "source": "feature-pass",
                                                  "target": bad})
    assert re.search(f"'target': {rule}", graph), graph
    for agent_type, request_type, field, extra in (
        ("code_review", "review", "source", {}),
        ("code_review", "review", "target", {"source": "feature-pass"}),
        ("cicd", "run_tests", "ref", {}),
        ("cicd", "merge", "source", {}),
        ("cicd", "merge", "target", {"source": "feature-pass"}),
    ):
        message = await refused_by_agent(orchestrator, agent_type, request_type,
                                         {"repo": repo, field: bad, **extra})
        assert re.search(f"payload.{field}: Value error, {rule}", message), message
    assert not (fixture_repo / "pwned").exists()


async def test_a_ref_naming_no_commit_is_refused_alike(orchestrator, fixture_repo) -> None:
    top = git(fixture_repo, "rev-parse", "--show-toplevel")
    rule = f"'no-such-branch' is not a branch or commit of {top}"
    graph = await refused_by_graph(orchestrator, {"repo": str(fixture_repo),
                                                  "source": "no-such-branch"})
    assert f"source {rule}" in graph, graph
    for agent_type, request_type, payload in (
        ("code_review", "review", {"source": "no-such-branch"}),
        ("cicd", "run_tests", {"ref": "no-such-branch"}),
    ):
        message = await refused_by_agent(orchestrator, agent_type, request_type,
                                         {"repo": str(fixture_repo), **payload})
        assert rule in message, message


async def test_a_target_that_is_not_a_branch_is_refused_alike(orchestrator, fixture_repo) -> None:
    """``feature-pass~1`` names a commit, but no branch to merge into (rev-parse of
    ``refs/heads/feature-pass~1`` would read it as a commit of ``feature-pass``)."""
    top = git(fixture_repo, "rev-parse", "--show-toplevel")
    rule = f"'feature-pass~1' is not a branch of {top}"
    graph = await refused_by_graph(orchestrator, {"repo": str(fixture_repo), "source": "feature-fail",
                                                  "target": "feature-pass~1"})
    assert f"target {rule}" in graph, graph
    payload = {"repo": str(fixture_repo), "source": "feature-fail", "target": "feature-pass~1"}
    message = await refused_by_agent(orchestrator, "cicd", "merge", payload,
                                     locks=[repos.repo_lock(fixture_repo)])
    assert rule in message, message


async def test_a_repository_is_refused_alike(orchestrator, tmp_path) -> None:
    for path, rule in ((tmp_path / "missing", "does not exist; give the path of a git repository"),
                       (tmp_path, "is not a git repository")):
        graph = await refused_by_graph(orchestrator, {"repo": str(path), "source": "x"})
        assert f"{path} {rule}" in graph, graph
        for agent_type, request_type, payload in (
            ("code_review", "review", {"source": "x"}),
            ("cicd", "run_tests", {"ref": "x"}),
            ("cicd", "run_command", {}),
        ):
            message = await refused_by_agent(orchestrator, agent_type, request_type,
                                             {"repo": str(path), **payload})
            assert f"{path} {rule}" in message, message


async def test_an_empty_command_is_refused_alike(orchestrator, fixture_repo) -> None:
    graph = await refused_by_graph(orchestrator, {"repo": str(fixture_repo),
                                                  "source": "feature-pass", "test_command": " "})
    assert "'test_command': the command is empty" in graph, graph
    for request_type, extra in (("run_tests", {"ref": "main"}), ("run_command", {})):
        message = await refused_by_agent(orchestrator, "cicd", request_type, {
            "repo": str(fixture_repo), "command": " ", **extra})
        assert "payload.command: Value error, the command is empty" in message, message


@pytest.mark.parametrize("request_type, payload, field", [
    ("review", {"source": "feature-pass", "max_findings": -1}, "max_findings"),
    ("review", {"source": "feature-pass", "max_findings": "1"}, "max_findings"),
    ("review", {}, "source"),
    ("review", {"source": "feature-pass", "branch": "x"}, "branch"),
])
async def test_a_malformed_review_names_the_field(orchestrator, fixture_repo, request_type,
                                                  payload, field) -> None:
    message = await refused_by_agent(orchestrator, "code_review", request_type,
                                     {"repo": str(fixture_repo), **payload})
    assert f"payload.{field}" in message, message


@pytest.mark.parametrize("request_type, payload, field", [
    ("run_tests", {"ref": "main", "timeout": 0}, "timeout"),
    ("run_tests", {"ref": "main", "timeout": "600"}, "timeout"),
    ("run_tests", {"ref": "main", "command": "pytest 'unclosed"}, "command"),
    ("run_command", {"command": [1, 2]}, "command"),
    ("run_command", {"repo": ""}, "repo"),
    ("merge", {"source": "feature-pass", "message": 3}, "message"),
])
async def test_a_malformed_cicd_payload_names_the_field(orchestrator, fixture_repo, request_type,
                                                        payload, field) -> None:
    message = await refused_by_agent(orchestrator, "cicd", request_type,
                                     {"repo": str(fixture_repo), **payload})
    assert f"payload.{field}" in message, message


async def test_a_dirty_target_is_refused_by_the_graph_and_the_agent_alike(
    orchestrator, fixture_repo
) -> None:
    tracked = fixture_repo / "calc" / "__init__.py"
    tracked.write_text(tracked.read_text() + "# local edit\n")
    rule = "with uncommitted changes to calc/__init__.py; commit or stash them"
    graph = await refused_by_graph(orchestrator, {"repo": str(fixture_repo),
                                                  "source": "feature-pass"})
    assert rule in graph, graph
    message = await refused_by_agent(
        orchestrator, "cicd", "merge", {"repo": str(fixture_repo), "source": "feature-pass"},
        code=AgentErrorCode.DIRTY_WORKTREE, locks=[repos.repo_lock(fixture_repo)])
    assert rule in message, message


async def test_the_lock_the_graph_takes_is_the_one_the_agent_checks(
    orchestrator, fixture_repo, tmp_path
) -> None:
    assert pr_deployment.repo_lock is cicd_agent.repo_lock is repos.repo_lock  # one function
    link = tmp_path / "link"
    link.symlink_to(fixture_repo)
    spelled = f"{link}/"  # another spelling of the same repository
    checked = PRDeploymentInput.model_validate({"repo": spelled, "source": "feature-pass"})
    graphs_lock = repos.repo_lock(checked.repo)  # what the merge node passes
    assert graphs_lock == f"repo:{fixture_repo.resolve()}"
    # the lock on the name as given is not the agent's: it refuses the merge
    await refused_by_agent(orchestrator, "cicd", "merge", {"repo": spelled, "source": "feature-pass"},
                           code=AgentErrorCode.MISSING_FENCING_TOKEN, locks=[f"repo:{spelled}"])
    call = await MERGE.call(Merge(repo=spelled, source="feature-pass"), locks=[graphs_lock],
                            runtime=orchestrator.runtime)
    assert isinstance(call.result.root, Merged) and call.result.root.already_merged is False
    assert git(fixture_repo, "rev-parse", "main") == call.result.root.commit
