"""plan_execution keeps its word: parallel pauses, a cache that checks the working tree, the
imports that patches add, skipped tasks that do not read as a success, and input errors that
never open a circuit breaker (issue 10, item 5)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from orchestrator.agent import builtin_agents

from .fixture_repo import git


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
