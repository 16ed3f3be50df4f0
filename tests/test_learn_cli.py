"""``orchestrator learn stats`` and ``orchestrator learn reset`` (issue 17, item 6) in-process
against real PostgreSQL: outcome records written with the real writers (healing, plan tasks,
fixes), success rates by prompt version, tier and kind, the filters, and a reset that needs
--yes, deletes exactly what it names and makes the learned decisions forget it."""

from __future__ import annotations

import asyncio
import io
import json
from pathlib import Path
from typing import Any

import pytest

from orchestrator.cli import main
from orchestrator.learning.fixes import record_fix, similar_fixes
from orchestrator.learning.store import HealingOutcome, LearningStore
from orchestrator.learning.tasks import TaskAttempt, insert_attempt

FAILED = "tests failed: tests/test_a.py::test_a - AssertionError: assert 'a' == 'A'"


@pytest.fixture
def learn(orchestrator, monkeypatch: pytest.MonkeyPatch):
    """``learn(*argv)`` runs ``orchestrator learn ...`` on the test's namespace: (exit, out, err)."""
    settings = orchestrator.settings
    monkeypatch.setenv("ORCHESTRATOR_DATABASE_URL", settings.database_url)
    monkeypatch.setenv("ORCHESTRATOR_REDIS_URL", settings.redis_url)
    monkeypatch.setenv("ORCHESTRATOR_NAMESPACE", settings.namespace)

    async def run(*argv: str) -> tuple[int, str, str]:
        out, err = io.StringIO(), io.StringIO()
        code = await asyncio.to_thread(main, ["learn", *argv], stdout=out, stderr=err)
        return code, out.getvalue(), err.getvalue()

    return run


async def _seed(orch: Any, repo: Path, other: Path) -> None:
    db, ns = orch.runtime.db, orch.settings.namespace
    store = LearningStore(db, ns)
    n = 0
    for service, issue, action, verified in (
            [("web", "latency", "reload", i < 9) for i in range(10)]
            + [("web", "latency", "restart", i < 1) for i in range(2)]
            + [("db", "down", "restart", True)]):
        n += 1
        await store.record_healing(HealingOutcome(
            thread_id=f"h{n}", attempt=1, service=service, issue=issue, action_key=action,
            action={"type": action}, manual=False, fix_ok=True, verified=verified,
            recover_s=2.0 if verified else None))
    for task, attempt, status, kind, tier in (("a", 1, "failed", "new", "small"),
                                              ("a", 2, "passed", "new", "medium"),
                                              ("b", 1, "passed", "fix", "small"),
                                              ("c", 1, "cached", "fix", "small")):
        await insert_attempt(db, ns, TaskAttempt(
            thread_id="p1", task_id=task, attempt=attempt, repo=str(repo), kind=kind,
            file=f"app/{task}.py", size=10, dependencies=0, tier=tier, seconds=4.0 * attempt,
            status=status, qa_first_time=status == "passed" and attempt == 1))
    for task, where, prompt, fixed, first in (("a", repo, "developer_fix@1", False, False),
                                              ("b", repo, "developer_fix@2", True, True),
                                              ("c", repo, "developer_fix@2", True, False),
                                              ("d", other, None, True, True)):
        await record_fix(db, ns, thread_id="p1", task_id=task, attempt=2, repo=str(where),
                         file=f"app/{task}.py", kind="new", failure=FAILED, fix="+x",
                         action="model" if prompt else "ruff-fix", prompt=prompt,
                         tier="medium", model=None, fixed=fixed, first_time=first)


async def test_stats_by_prompt_version_tier_and_kind(orchestrator, learn, tmp_path) -> None:
    repo, other = tmp_path / "repo", tmp_path / "other"
    await _seed(orchestrator, repo, other)
    code, out, err = await learn("stats", "--json")
    assert code == 0, err
    stats = json.loads(out)
    assert set(stats) == {"fixes", "tasks", "healing", "canary", "calls", "reviews"}
    by_prompt = {r["prompt"]: r for r in stats["fixes"]["prompt"]}
    assert by_prompt["developer_fix@1"] == {
        "prompt": "developer_fix@1", "attempts": 1, "fixed": 0, "first_time": 0,
        "fixed_rate": 0.0, "first_time_rate": 0.0}
    assert (by_prompt["developer_fix@2"]["fixed"], by_prompt["developer_fix@2"]["first_time"],
            by_prompt["developer_fix@2"]["first_time_rate"]) == (2, 1, 0.5)
    assert by_prompt["(no model)"]["fixed"] == 1
    assert stats["fixes"]["tier"] == [{"tier": "medium", "attempts": 4, "fixed": 3,
                                       "first_time": 2, "fixed_rate": 0.75,
                                       "first_time_rate": 0.5}]
    tasks_by_kind = {r["kind"]: r for r in stats["tasks"]["kind"]}
    # new: a failed first attempt, then a pass; fix: a first-time pass (the cache hit is no work)
    assert tasks_by_kind["new"] == {
        "kind": "new", "attempts": 2, "passed": 1, "pass_rate": 0.5, "first_attempts": 1,
        "first_time": 0, "first_time_rate": 0.0, "median_s": 8.0}
    assert (tasks_by_kind["fix"]["attempts"], tasks_by_kind["fix"]["first_time_rate"]) == (1, 1.0)
    healing = {(r["service"], r["action_key"]): r for r in stats["healing"]}
    assert healing[("web", "reload")]["verified"] == 9
    assert healing[("web", "reload")]["success_rate"] == pytest.approx(0.9)

    # one service: its healing only (sections without a service are left out)
    code, out, err = await learn("stats", "--service", "web", "--json")
    assert code == 0, err
    narrowed = json.loads(out)
    assert set(narrowed) == {"healing", "canary"}
    assert {r["service"] for r in narrowed["healing"]} == {"web"}
    # one repository's fixes and tasks
    code, out, err = await learn("stats", "--repo", str(other), "--json")
    narrowed = json.loads(out)
    assert set(narrowed) == {"fixes", "tasks", "reviews"}
    assert narrowed["fixes"]["prompt"] == [{"prompt": "(no model)", "attempts": 1, "fixed": 1,
                                            "first_time": 1, "fixed_rate": 1.0,
                                            "first_time_rate": 1.0}]
    assert narrowed["tasks"]["kind"] == []
    # the text: tables per section with the rates
    code, out, err = await learn("stats", "--kind", "latency")
    assert code == 0, err
    assert "healing by service, issue and action" in out
    assert "reload" in out and "9 (90%)" in out and "1 (50%)" in out
    assert "fixes by prompt" in out  # no fix of kind latency: the table says so
    assert "(nothing recorded)" in out


async def test_reset_needs_yes_and_forgets_only_what_it_names(orchestrator, learn,
                                                              tmp_path) -> None:
    db, ns = orchestrator.runtime.db, orchestrator.settings.namespace
    repo, other = tmp_path / "repo", tmp_path / "other"
    await _seed(orchestrator, repo, other)

    async def count(table: str) -> int:
        row = await db.fetchone(f"SELECT count(*) AS n FROM {table} WHERE namespace = %s", (ns,))
        return row["n"]

    before = {t: await count(t) for t in ("learn_healing", "learn_tasks", "learn_fixes")}
    assert before == {"learn_healing": 13, "learn_tasks": 4, "learn_fixes": 4}
    # bad usage: exit 2, saying what to do; nothing deleted
    code, _, err = await learn("reset", "--service", "web")
    assert code == 2 and "--yes" in err and "service 'web'" in err
    code, _, err = await learn("reset", "--yes")
    assert code == 2 and "--service S, --repo R or --all" in err
    with pytest.raises(SystemExit) as exc:
        await learn("reset", "--service", "web", "--all", "--yes")
    assert exc.value.code == 2
    assert {t: await count(t) for t in before} == before

    code, out, err = await learn("reset", "--service", "web", "--yes", "--json")
    assert code == 0, err
    assert json.loads(out) == {"learn_healing": 12}
    assert await LearningStore(db, ns).healing_evidence("web", "latency") == {}
    assert await LearningStore(db, ns).healing_evidence("db", "down") == {"restart": (1, 0)}

    assert await similar_fixes(db, ns, str(repo), FAILED, backend="python")
    code, out, err = await learn("reset", "--repo", str(repo), "--yes")
    assert code == 0, err
    assert "3 learn_fixes" in out and "4 learn_tasks" in out
    assert await similar_fixes(db, ns, str(repo), FAILED, backend="python") == []
    assert len(await similar_fixes(db, ns, str(other), FAILED, backend="python")) == 1

    code, out, err = await learn("reset", "--all", "--yes", "--json")
    assert code == 0, err
    assert json.loads(out)["learn_fixes"] == 1 and json.loads(out)["learn_healing"] == 1
    assert {t: await count(t) for t in before} == dict.fromkeys(before, 0)
