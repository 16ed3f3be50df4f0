"""plan_execution keeps its word: parallel pauses, a cache that checks the working tree, the
imports that patches add, skipped tasks that do not read as a success, and input errors that
never open a circuit breaker (issue 10, item 5)."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import pytest
from orchestrator.agents.lib.depgraph import analyze, patch_additions

from orchestrator import cli
from orchestrator.agent import HandlerError, builtin_agents
from orchestrator.calls import call_agent
from orchestrator.contracts.developer import file_lock
from orchestrator.errors import AgentError
from orchestrator.messages import AgentResponse, ErrorInfo
from orchestrator.testing import stand_in

from .support.fixture_repo import git


def small_repo(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    git(path, "init", "-q", "-b", "main")
    (path / "pyproject.toml").write_text('[project]\nname = "small"\nversion = "0.1.0"\n\n'
                                         '[tool.ruff.lint]\nselect = ["E", "F"]\n')
    git(path, "add", "-A")
    git(path, "commit", "-q", "-m", "configuration")
    return path


def two_tasks(repo: Path, **fields: Any) -> dict[str, Any]:
    return {"repo": str(repo), "integration_command": "python -c pass", "max_parallel": 4,
            "retry_delay": 0.05, **fields, "tasks": [
                {"id": "a", "file": "pkg/a.py", "kind": "new", "content": "A = 1\n"},
                {"id": "b", "file": "pkg/b.py", "kind": "new", "content": "B = 2\n"}]}


async def test_two_tasks_pausing_at_once_pause_dispatch_and_resume_completes(
    orchestrator_factory, tmp_path
) -> None:
    everyone = builtin_agents()
    without_developer = [a for t, a in everyone.items() if t != "developer"]
    orch = await orchestrator_factory(builtin=False, stand_ins=without_developer)
    repo = small_repo(tmp_path / "repo")
    stopped = await orch.run("plan_execution", {"plan": two_tasks(repo)}, thread_id="unavail-1")
    # both tasks paused in one step: no InvalidUpdateError, the run stops saying what to do
    assert stopped.status == "failed", stopped
    assert stopped.error["code"] == "agent_unavailable", stopped.error
    assert "developer" in stopped.error["message"]
    state = (await orch.get("unavail-1")).values
    assert {t: r["status"] for t, r in state["tasks"].items()} == {"a": "pending",
                                                                  "b": "pending"}
    assert {p["task"] for p in state["pauses"]} >= {"a", "b"}
    assert state["pause_until"] > 0
    # with a developer, resume carries on from the checkpoint and completes
    full = await orchestrator_factory()
    done = await full.resume("unavail-1")
    assert done.status == "completed", done
    assert done.final_result["done"] == ["a", "b"]
    assert (repo / "pkg" / "a.py").read_text() == "A = 1\n"


async def test_errors_that_blame_the_input_never_open_the_breaker(
    orchestrator_factory, tmp_path
) -> None:
    async def refuse(payload, ctx):
        raise HandlerError(payload["code"], "the request is wrong",
                           blames_input=payload["blames_input"])

    picky, clumsy = stand_in("picky", {"do": refuse}), stand_in("clumsy", {"do": refuse})
    orch = await orchestrator_factory(stand_ins=[picky, clumsy], breaker_min_calls=4,
                                      breaker_window=30)
    rt = orch.runtime
    repo = small_repo(tmp_path / "repo")
    bad_patch = ("--- a/pkg/a.py\n+++ b/pkg/a.py\n@@ -1 +1 @@\n-NOT THERE\n+A = 2\n")
    task = {"id": "a", "file": "pkg/a.py", "kind": "fix", "patch": bad_patch}
    for _ in range(10):  # a plan of non-applying patches: the developer is fine
        with pytest.raises(AgentError) as raised:
            await call_agent("developer", "develop", {"repo": str(repo), "task": task},
                             locks=[file_lock(repo, "pkg/a.py")], runtime=rt)
        assert raised.value.error_code == "patch_failed"
    for _ in range(10):  # a failing plan command
        with pytest.raises(AgentError, match="command_failed"):
            await call_agent("developer", "develop", {"repo": str(repo), "task": {
                "id": "c", "file": "pkg/c.py", "kind": "new", "command": "python -c 'exit(3)'"}},
                locks=[file_lock(repo, "pkg/c.py")], runtime=rt)
    for _ in range(10):  # a code no list knows, marked where it is raised
        with pytest.raises(AgentError):
            await call_agent("picky", "do", {"code": "no_such_thing", "blames_input": True},
                             runtime=rt)
    assert await rt.breaker.state("developer") == "closed"
    assert await rt.breaker.state("picky") == "closed"
    # the same error unmarked is the agent's: it does open the breaker (the test can fail)
    for _ in range(4):
        with pytest.raises(AgentError):
            await call_agent("clumsy", "do", {"code": "no_such_thing", "blames_input": False},
                             runtime=rt)
    assert await rt.breaker.state("clumsy") == "open"


def test_the_input_blame_travels_in_the_error_info() -> None:
    info = ErrorInfo(code="patch_failed", message="no", blames_input=True)
    response = AgentResponse(request_id="r", source="s", status="error", error=info)
    again = AgentResponse.model_validate_json(response.model_dump_json())
    assert again.error is not None and again.error.blames_input is True
    assert ErrorInfo(code="x", message="y").blames_input is False  # old senders: not blamed


INIT_PATCH = """\
--- a/pkg/__init__.py
+++ b/pkg/__init__.py
@@ -1 +1,9 @@
 \"\"\"A package.\"\"\"
+from . import extra
+
+
+def helpers():
+    from pkg.tools import (
+        tool,
+    )
+    return tool, extra
"""


def test_the_imports_a_patch_adds_are_dependencies(tmp_path) -> None:
    repo = small_repo(tmp_path / "repo")
    (repo / "pkg").mkdir()
    (repo / "pkg" / "__init__.py").write_text('"""A package."""\n')
    assert patch_additions(INIT_PATCH, "pkg/__init__.py").splitlines()[0] == "from . import extra"
    assert patch_additions(INIT_PATCH, "pkg/other.py") == ""  # hunks of other files: none
    files = ["pkg/__init__.py", "pkg/extra.py", "pkg/tools.py", "web/a.ts", "web/b.ts"]
    overrides = {"pkg/extra.py": "X = 1\n", "pkg/tools.py": "def tool(): ...\n",
                 "web/a.ts": "export const a = 1;\n", "web/b.ts": "export const b = 2;\n"}
    before = analyze(repo, paths=files, overrides=overrides)
    assert before.edges == []  # the file on disk imports nothing
    ts_patch = "@@ -1 +1,2 @@\n export const a = 1;\n+import { b } from './b';\n"
    after = analyze(repo, paths=files, overrides=overrides, additions={
        "pkg/__init__.py": patch_additions(INIT_PATCH, "pkg/__init__.py"),
        "web/a.ts": patch_additions(ts_patch, "web/a.ts")})
    assert after.edges == [("pkg/__init__.py", "pkg/extra.py"), ("pkg/__init__.py", "pkg/tools.py"),
                           ("web/a.ts", "web/b.ts")]
    assert after.errors == {}  # fragments are not syntax errors of the file


async def test_a_patch_task_runs_after_the_module_its_patch_imports(
    orchestrator_factory, tmp_path
) -> None:
    orch = await orchestrator_factory()
    repo = small_repo(tmp_path / "repo")
    (repo / "pkg").mkdir()
    (repo / "pkg" / "__init__.py").write_text('"""A package."""\n')
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "package")
    patch = INIT_PATCH.replace("pkg.tools", "pkg.extra").replace("tool,", "X,").replace(
        "return tool, extra", "return X, extra")
    plan = {"repo": str(repo), "integration_command": "python -c 'import pkg'", "tasks": [
        {"id": "init", "file": "pkg/__init__.py", "kind": "fix", "patch": patch},
        {"id": "extra", "file": "pkg/extra.py", "kind": "new", "content": "X = 1\n"}]}
    result = await orch.run("plan_execution", {"plan": plan})
    assert result.status == "completed", result
    assert result.final_result["batches"] == [["extra"], ["init"]]
    state = (await orch.get(result.thread_id)).values
    assert state["analysis"]["edges"] == [["init", "extra"]]
    init, extra = (state["tasks"][t]["attempts"][-1] for t in ("init", "extra"))
    assert init["started"] >= extra["finished"]


def five_tasks(repo: Path) -> dict[str, Any]:
    return {"repo": str(repo), "integration_command": "python -c pass", "max_parallel": 4,
            "tasks": [{"id": f"m{i}", "file": f"pkg/m{i}.py", "kind": "new",
                       "content": f"VALUE = {i}\n"} for i in range(5)]}


async def test_a_cache_hit_counts_only_if_the_repository_still_holds_the_result(
    orchestrator_factory, tmp_path
) -> None:
    orch = await orchestrator_factory()
    repo = small_repo(tmp_path / "repo")
    plan = five_tasks(repo)
    first = await orch.run("plan_execution", {"plan": plan})
    assert first.status == "completed", first
    assert first.final_result["cache"] == {"hits": 0, "misses": 5}
    # an unchanged repository: every task comes from the cache
    again = await orch.run("plan_execution", {"plan": plan})
    assert again.final_result["cache"] == {"hits": 5, "misses": 0}
    # the repository is reset, one file changed: the tasks run again and write their files
    git(repo, "clean", "-fdxq")
    (repo / "pkg").mkdir()
    (repo / "pkg" / "m4.py").write_text("VALUE = 'changed by hand'\n")
    (repo / "pkg" / "m3.py").write_text("VALUE = 3\n")  # what the task writes: still true
    reset = await orch.run("plan_execution", {"plan": plan})
    assert reset.status == "completed", reset
    assert reset.final_result["cache"] == {"hits": 1, "misses": 4}
    for i in range(5):
        assert (repo / "pkg" / f"m{i}.py").read_text() == f"VALUE = {i}\n"
    tasks = reset.final_result["tasks"]
    assert {t for t, r in tasks.items() if r.get("stale_cache_hits")} == {"m0", "m1", "m2", "m4"}
    # the stale entries were replaced by the new results: the next run hits them
    last = await orch.run("plan_execution", {"plan": plan})
    assert last.final_result["cache"] == {"hits": 5, "misses": 0}
    state = (await orch.get(last.thread_id)).values
    assert {r["attempts"][-1]["cached_from"] for t, r in state["tasks"].items()
            if t != "m3"} == {reset.thread_id}


def test_a_plan_that_finishes_with_skipped_tasks_is_partial_and_exits_4(
    monkeypatch, orchestrator_settings, tmp_path
) -> None:
    for key in ("DATABASE_URL", "REDIS_URL", "NAMESPACE"):
        monkeypatch.setenv(f"ORCHESTRATOR_{key}", str(getattr(orchestrator_settings, key.lower())))
    repo = small_repo(tmp_path / "repo")
    plan = {"repo": str(repo), "integration_command": "python -c pass", "max_attempts": 1,
            "tasks": [{"id": "good", "file": "pkg/good.py", "kind": "new", "content": "A = 1\n"},
                      {"id": "bad", "file": "pkg/bad.py", "kind": "new",
                       "content": "B = UNDEFINED\n"},  # F821: QA fails, nothing fixes it
                      {"id": "user", "file": "pkg/user.py", "kind": "new",
                       "content": "from pkg.bad import B\n\nC = B\n"}]}
    (tmp_path / "plan.json").write_text(json.dumps(plan))

    def cli_run(*argv: str) -> tuple[int, str]:
        out, err = io.StringIO(), io.StringIO()
        code = cli.main(list(argv), stdout=out, stderr=err, stdin=io.StringIO(""))
        return code, out.getvalue() + err.getvalue()

    code, out = cli_run("run", "plan_execution", "--set", f"plan={tmp_path / 'plan.json'}",
                        "--json")
    assert code == cli.EXIT_INTERRUPTED, out
    thread_id = json.loads(out)["thread_id"]
    code, out = cli_run("resume", thread_id, "--value", '{"action": "skip", "by": "me"}',
                        "--json")
    assert code == cli.EXIT_PARTIAL == 4, out
    result = json.loads(out)
    final = result["final_result"]
    assert final["status"] == "partial" and final["skipped"] == ["bad", "user"]
    assert final["done"] == ["good"]
    assert final["reasons"] == ["2 of 3 tasks skipped: bad, user; left in the tree as their "
                                "last attempt wrote them: pkg/bad.py"]
    # the skipped task's file stays as its last attempt wrote it (documented); the task that
    # depends on it never ran
    assert final["left_in_tree"] == ["pkg/bad.py"]
    assert (repo / "pkg" / "bad.py").read_text() == "B = UNDEFINED\n"
    assert not (repo / "pkg" / "user.py").exists()
