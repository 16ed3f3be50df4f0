"""What the agents' child processes get and how they are started (issue 10, items 4, 6, 8, 10):
no ORCHESTRATOR_* variable and nothing configured as withheld, ``--`` before file names,
temporary files no committed file can redirect, worktrees added one at a time per repository
and leftovers pruned, unittest failures named by id, and never this project's pytest plugin
in the tests under review."""

from __future__ import annotations

import asyncio
import fcntl
import json
import logging
import os
import shutil
import sys
from pathlib import Path

import pytest
from orchestrator.agents import cicd, developer, qa
from orchestrator.agents.deployer import _move_traffic
from orchestrator.agents.lib import testrun
from orchestrator.agents.lib.proc import git as agent_git
from orchestrator.agents.lib.proc import resolve_repo, run

from orchestrator.agent import RequestContext
from orchestrator.calls import call_agent
from orchestrator.childenv import child_environment, withholding
from orchestrator.contracts.deployer import TrafficSpec
from orchestrator.contracts.developer import file_lock as file_resource
from orchestrator.contracts.repos import run_git as workflow_git
from orchestrator.messages import AgentRequest
from orchestrator.settings import Settings

from .support.fixture_repo import add_branch, git

SECRETS = {
    "ORCHESTRATOR_BUS_SECRET": "s3cr3t-value",
    "ORCHESTRATOR_DATABASE_URL": "postgresql://postgres@127.0.0.1:5432/leak",
    "ORCHESTRATOR_REDIS_URL": "redis://127.0.0.1:6379/9",
}
DUMP_ENV = "import json, os, sys; print(json.dumps(dict(os.environ)))"


@pytest.fixture
def secret_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """The worker's environment holds the secrets, a configured-sensitive and a plain one."""
    for name, value in SECRETS.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("LEAKY_TOKEN", "configured-as-sensitive")
    monkeypatch.setenv("PLAIN_VARIABLE", "children-need-this")


def assert_clean(env: dict[str, str], *, configured: bool = True) -> None:
    assert not [k for k in env if k.upper().startswith("ORCHESTRATOR_")], env
    assert env.get("PLAIN_VARIABLE") == "children-need-this"  # not an empty environment
    if configured:
        assert "LEAKY_TOKEN" not in env


def local_ctx(agent_type: str, fencing: dict[str, int] | None = None) -> RequestContext:
    request = AgentRequest(source="test", target=agent_type, request_type="x",
                           reply_to="test", fencing=fencing or {})
    return RequestContext(request=request, agent_id=f"{agent_type}@test", agent_type=agent_type,
                          log=logging.LoggerAdapter(logging.getLogger("test"), {}))


# --- the environment builder and the setting -------------------------------------------------

def test_the_builder_withholds_orchestrator_variables_and_configured_patterns() -> None:
    base = {**SECRETS, "orchestrator_lower": "x", "AWS_SECRET_ACCESS_KEY": "a",
            "GITHUB_TOKEN": "g", "HOME": "/home/u", "PATH": "/bin"}
    assert child_environment(base=base) == {
        "AWS_SECRET_ACCESS_KEY": "a", "GITHUB_TOKEN": "g", "HOME": "/home/u", "PATH": "/bin"}
    assert child_environment({"EXTRA": "1"}, base=base, withhold=["AWS_*", "github_token"]) == {
        "HOME": "/home/u", "PATH": "/bin", "EXTRA": "1"}
    with withholding(["AWS_*"]):
        assert "AWS_SECRET_ACCESS_KEY" not in child_environment(base=base)
    assert "AWS_SECRET_ACCESS_KEY" in child_environment(base=base)


def test_the_setting_is_read_from_the_environment_as_a_comma_separated_list() -> None:
    settings = Settings.from_env({"ORCHESTRATOR_CHILD_ENV_WITHHOLD": "AWS_*, GITHUB_TOKEN,,"})
    assert settings.child_env_withhold == ("AWS_*", "GITHUB_TOKEN")
    assert Settings.from_env({}).child_env_withhold == ()


# --- one test per kind of launcher -----------------------------------------------------------

async def test_run_gives_children_no_secret(secret_env) -> None:
    with withholding(["LEAKY_*"]):
        done = await run([sys.executable, "-c", DUMP_ENV])
    assert_clean(json.loads(done.stdout))


async def test_git_runs_without_the_secret(secret_env, tmp_path) -> None:
    git(tmp_path, "init", "-q")
    # an alias starting with "!" runs a shell command with git's own environment
    done = await agent_git(tmp_path, "-c", "alias.dumpenv=!env", "dumpenv")
    env = dict(line.split("=", 1) for line in done.stdout.splitlines() if "=" in line)
    assert_clean(env, configured=False)
    assert env["GIT_TERMINAL_PROMPT"] == "0"


def test_the_workflows_git_runs_without_the_secret(secret_env, tmp_path) -> None:
    git(tmp_path, "init", "-q")
    done = workflow_git(str(tmp_path), "-c", "alias.dumpenv=!env", "dumpenv")
    env = dict(line.split("=", 1) for line in done.stdout.splitlines() if "=" in line)
    assert_clean(env, configured=False)


async def test_traffic_and_plan_commands_run_without_the_secret(secret_env, tmp_path) -> None:
    out = tmp_path / "traffic.json"
    spec = TrafficSpec(command=[sys.executable, "-c",
                                f"import json, os; open({str(out)!r}, 'w').write("
                                "json.dumps(dict(os.environ)))"])
    with withholding(["LEAKY_*"]):
        await _move_traffic(spec, "web", 10)
        git(tmp_path, "init", "-q")
        await developer._run_command(tmp_path, [sys.executable, "-c", DUMP_ENV.replace(
            "print(", f"open({str(tmp_path / 'plan.json')!r}, 'w').write(")], 30)
    assert_clean(json.loads(out.read_text()))
    assert_clean(json.loads((tmp_path / "plan.json").read_text()))


async def test_the_worker_applies_the_configured_setting(
    secret_env, orchestrator_factory, fixture_repo
) -> None:
    orch = await orchestrator_factory(child_env_withhold=("LEAKY_*",))
    call = await call_agent("cicd", "run_command", {
        "repo": str(fixture_repo), "command": [sys.executable, "-c", DUMP_ENV]},
        runtime=orch.runtime)
    tail = call.result["output_tail"]
    assert_clean(json.loads(tail[tail.index("{"):]))


# --- paths are never stripped (L6) -----------------------------------------------------------

async def test_a_repository_path_ending_in_a_space_is_that_path(tmp_path) -> None:
    for name in ("r5", "r5 "):
        git_dir = tmp_path / name
        git_dir.mkdir()
        git(git_dir, "init", "-q")
    assert await resolve_repo(str(tmp_path / "r5 ")) == (tmp_path / "r5 ").resolve()
    assert await resolve_repo(str(tmp_path / "r5")) == (tmp_path / "r5").resolve()


# --- temporary files (M1) --------------------------------------------------------------------

async def test_a_committed_symlink_at_the_old_temp_name_does_not_redirect_a_write(
    tmp_path,
) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()
    git(repo, "init", "-q", "-b", "main")
    outside = tmp_path / "outside.txt"
    outside.write_text("untouched\n")
    (repo / "money.py").write_text("AMOUNT = 1\n")
    # the name the developer agent used to write through: .<name>.<pid>.tmp
    os.symlink(outside, repo / f".money.py.{os.getpid()}.tmp")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "a trap")
    resource = file_resource(repo, "money.py")
    result = await developer.develop(
        {"repo": str(repo), "task": {"id": "t", "file": "money.py", "kind": "edit",
                                     "content": "AMOUNT = 2\n"}},
        local_ctx("developer", {resource: 1}))
    assert result["changed"] is True
    assert outside.read_text() == "untouched\n"
    target = repo / "money.py"
    assert not target.is_symlink() and target.read_text() == "AMOUNT = 2\n"
    assert sorted(p.name for p in repo.iterdir() if p.name.startswith(".money")) == [
        f".money.py.{os.getpid()}.tmp"]  # no temporary file left behind


# --- "--" before file names (M2) -------------------------------------------------------------

async def test_qa_lints_a_file_named_like_an_option(tmp_path) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()
    git(repo, "init", "-q", "-b", "main")
    (repo / "pyproject.toml").write_text('[tool.ruff.lint]\nselect = ["F"]\n')
    (repo / "--select=F401").write_text("")
    (repo / "bad.py").write_text("import os\nimport sys\n")
    findings = await qa._ruff(repo, "--select=F401")
    assert findings == []  # linted as an (empty) file, not read as an option
    assert [f["code"] for f in await qa._ruff(repo, "bad.py")] == ["F401", "F401"]


# --- unittest failures carry their ids (item 10) ---------------------------------------------

UNITTEST_CASE = '''import unittest


class DivTest(unittest.TestCase):
    def test_div(self):
        self.assertEqual(6 * 3, 2)

    def test_one(self):
        self.assertEqual(1, 1)
'''


async def test_unittest_failures_are_named_by_their_test_id(orchestrator, fixture_repo) -> None:
    add_branch(fixture_repo, "feature-unittest", {"tests/__init__.py": "",
                                                  "tests/test_div_case.py": UNITTEST_CASE})
    call = await call_agent("cicd", "run_tests", {
        "repo": str(fixture_repo), "ref": "feature-unittest",
        "command": "python -m unittest tests.test_div_case"}, runtime=orchestrator.runtime)
    result = call.result
    assert result["passed"] is False
    assert result["counts"] == {"failed": 1, "errors": 0, "skipped": 0, "passed": 1}
    assert result["failures"] == ["tests.test_div_case.DivTest.test_div - AssertionError: 18 != 2"]
    assert result["reason"] == ("1 failed, 0 errors: tests.test_div_case.DivTest.test_div - "
                                "AssertionError: 18 != 2")


def test_failure_parsing_of_both_runners() -> None:
    pytest_out = ("FAILED tests/test_div.py::test_div - assert 18 == 2\n"
                  "ERROR tests/test_x.py - ImportError\n1 failed, 1 error in 0.1s\n")
    assert testrun.test_failures(pytest_out) == ["tests/test_div.py::test_div - assert 18 == 2",
                                              "tests/test_x.py - ImportError"]
    old_python = ("=" * 70 + "\nERROR: test_err (pkg.test_m.Case)\n" + "-" * 70 +
                  "\nTraceback (most recent call last):\nKeyError: 'k'\n\n" + "-" * 70 +
                  "\nRan 1 test in 0.0s\n\nFAILED (errors=1)\n")
    assert testrun.test_failures(old_python) == ["pkg.test_m.Case.test_err - KeyError: 'k'"]


# --- this project's pytest plugin stays out of the tests under review (item 10) --------------

PLUGIN_PROBE = '''def test_the_orchestrator_plugin_is_not_loaded(request, from_conftest):
    assert from_conftest == "the repository's own conftest"
    assert not request.config.pluginmanager.has_plugin("orchestrator")
'''
CONFTEST = '''import pytest


@pytest.fixture
def from_conftest():
    return "the repository's own conftest"
'''


@pytest.mark.slow
async def test_tests_under_review_never_load_this_projects_plugin(
    orchestrator, fixture_repo, monkeypatch
) -> None:
    # installed plugins are autoloaded, as on a worker (tests/conftest.py turns that off)
    monkeypatch.delenv("PYTEST_DISABLE_PLUGIN_AUTOLOAD", raising=False)
    add_branch(fixture_repo, "feature-probe", {"tests/conftest.py": CONFTEST,
                                               "tests/test_probe.py": PLUGIN_PROBE})
    for request_type, extra in (("run_tests", {"ref": "feature-probe"}),):
        call = await call_agent("cicd", request_type, {
            "repo": str(fixture_repo), "command": "python -m pytest -q tests/test_probe.py",
            **extra}, runtime=orchestrator.runtime, timeout=120)
        assert call.result["passed"] is True, call.result["output_tail"]
        assert call.result["counts"]["passed"] == 1
    git(fixture_repo, "checkout", "-q", "feature-probe")  # qa runs in the work tree as it is
    checked = await qa._run_tests(fixture_repo, ["tests/test_probe.py"],
                                  "python -m pytest -q", 120)
    assert checked["passed"] is True, checked["output_tail"]


# --- worktrees: one at a time per repository, leftovers pruned (M6, L8) ----------------------

def registered(repo: Path) -> list[str]:
    return [line.removeprefix("worktree ") for line in
            git(repo, "worktree", "list", "--porcelain").splitlines()
            if line.startswith("worktree ")]


async def test_concurrent_test_runs_on_one_repository_all_succeed(fixture_repo) -> None:
    payload = {"repo": str(fixture_repo), "ref": "main", "command": ["true"]}
    for _ in range(4):  # before: "fatal: failed to read .git/worktrees/tree3/commondir"
        results = await asyncio.gather(*(cicd.run_tests(payload, local_ctx("cicd"))
                                         for _ in range(8)))
        assert [r["passed"] for r in results] == [True] * 8
    assert registered(fixture_repo) == [str(fixture_repo)]
    assert not list((fixture_repo / ".git" / "worktrees").glob("*"))


async def test_another_process_holding_the_repositorys_worktree_lock_is_waited_for(
    fixture_repo,
) -> None:
    # what a second worker on this host holds while it adds or removes a worktree
    fd = os.open(fixture_repo / ".git" / "orchestrator-worktrees.lock", os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        running = asyncio.ensure_future(cicd.run_tests(
            {"repo": str(fixture_repo), "ref": "main", "command": ["true"]}, local_ctx("cicd")))
        await asyncio.sleep(0.5)
        assert not running.done()
        assert registered(fixture_repo) == [str(fixture_repo)]  # nothing added meanwhile
    finally:
        os.close(fd)
    assert (await running)["passed"] is True
    assert registered(fixture_repo) == [str(fixture_repo)]


async def test_worktrees_left_by_a_killed_run_are_pruned_by_the_next_run(
    fixture_repo, tmp_path
) -> None:
    gone_parent = tmp_path / "orch-wt-deleted"
    killed_parent = tmp_path / "orch-wt-killed"
    live_parent = tmp_path / "orch-wt-live"
    other = tmp_path / "someone-elses-worktree"
    for parent in (gone_parent, killed_parent, live_parent):
        parent.mkdir()
        git(fixture_repo, "worktree", "add", "-q", "--detach", str(parent / parent.name), "main")
        (parent / "owner.lock").touch()
    git(fixture_repo, "worktree", "add", "-q", "--detach", str(other), "main")
    shutil.rmtree(gone_parent)  # a killed run's folder, deleted since (a tmp cleaner, a reboot)
    shutil.rmtree(other)  # not ours: never pruned by the agent
    fd = os.open(live_parent / "owner.lock", os.O_RDWR)
    fcntl.flock(fd, fcntl.LOCK_EX)  # a run still going on
    try:
        result = await cicd.run_tests({"repo": str(fixture_repo), "ref": "main",
                                       "command": [sys.executable, "-c", "pass"]},
                                      local_ctx("cicd"))
        assert result["passed"] is True
        assert registered(fixture_repo) == [str(fixture_repo), str(live_parent / live_parent.name),
                                            str(other)]
        assert not killed_parent.exists() and (live_parent / live_parent.name).is_dir()
    finally:
        os.close(fd)
    git(fixture_repo, "worktree", "prune")
