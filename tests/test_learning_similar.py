"""Similar past fixes (issue 17, item 4): trigram similarity without embeddings finds a past
failure like the one at hand and leaves unlike ones out; the fix request of a real
plan_execution run carries the repository's similar past fixes (how they were fixed, which
prompt version fixed them first time) into the developer's prompt, and each fix attempt's
outcome is recorded once; a failure that took two fix attempts is fixed at the first the next
time, by a model that follows the past fix its prompt shows. Real PostgreSQL; the chat models
are in-process fakes."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from langchain_core.messages import BaseMessage

from orchestrator.learning.fixes import fix_stats, record_fix, reset_fixes, similar_fixes
from orchestrator.learning.similar import failure_key, rank, similarity, trigrams

from .support.fake_models import UsageFakeChatModel, messages_text

HERE = "tests.test_learning_similar"

SHOUT_FAILED = """tests failed: tests/test_shout.py
tests/test_shout.py::test_shout
    def test_shout() -> None:
>       assert shout("hi") == "HI!"
E       AssertionError: assert 'hi' == 'HI!'
tests/test_shout.py:5: AssertionError
1 failed in 0.04s"""
SHOUT_FAILED_AGAIN = """tests failed: tests/test_shout.py
tests/test_shout.py::test_shout
>       assert shout("hey") == "HEY!"
E       AssertionError: assert 'hey' == 'HEY!'
tests/test_shout.py:9: AssertionError
1 failed in 0.31s"""
UNUSED_IMPORT = "lint: 1 finding\nF401 `os` imported but unused\nF401 `sys` imported but unused"
SYNTAX = "syntax-error: expected ':' at line 3 of app/config.py"


def test_similar_failures_are_found_and_dissimilar_ones_are_not() -> None:
    assert similarity(SHOUT_FAILED, SHOUT_FAILED_AGAIN) > 0.6
    assert similarity(SHOUT_FAILED, UNUSED_IMPORT) < 0.2  # below MIN_SCORE (0.25)
    assert similarity(SHOUT_FAILED, SYNTAX) < 0.2
    # numbers standing alone (line numbers, timings) do not count; rule codes do
    assert failure_key("E501 line 12 too long (99 > 88)") == "e501 line too long ( > )"
    assert similarity("F401 unused at line 3", "F401 unused at line 70") == 1.0
    assert similarity("F401 unused", "E501 unused") < 1.0
    ranked = rank(failure_key(SHOUT_FAILED),
                  [UNUSED_IMPORT, SHOUT_FAILED_AGAIN, SYNTAX, SHOUT_FAILED],
                  text=failure_key, limit=3)
    assert [r.item for r in ranked] == [SHOUT_FAILED, SHOUT_FAILED_AGAIN]  # best first, no noise
    assert ranked[0].score == 1.0
    # the repository's path is not part of the comparison
    assert failure_key("/srv/r/app/x.py: broken", repo="/srv/r") == "app/x.py: broken"


async def test_python_and_pg_trgm_give_the_same_similarity(orchestrator) -> None:
    """Where pg_trgm can be installed the database computes the same figure: it is installed
    in a transaction that is rolled back (nothing left behind for other tests)."""
    db = orchestrator.runtime.db
    if await db.fetchone("SELECT 1 FROM pg_available_extensions WHERE name = 'pg_trgm'") is None:
        pytest.skip("pg_trgm is not available on this server")
    texts = [SHOUT_FAILED, SHOUT_FAILED_AGAIN, UNUSED_IMPORT, SYNTAX, "déjà vu: naïve café"]
    async with db.connection() as conn, conn.transaction(force_rollback=True):
        await conn.execute("CREATE EXTENSION IF NOT EXISTS pg_trgm")
        for a in texts:
            for b in texts:
                ka, kb = failure_key(a), failure_key(b)
                cur = await conn.execute("SELECT similarity(%s, %s) AS s", (ka, kb))
                ours = len(trigrams(ka) & trigrams(kb)) / len(trigrams(ka) | trigrams(kb))
                assert (await cur.fetchone())["s"] == pytest.approx(ours, abs=1e-6), (a, b)


async def _past(db: Any, ns: str, repo: str, failure: str, fix: str, *, task: str,
                fixed: bool = True, prompt: str | None = "developer_fix@2",
                first_time: bool = True) -> bool:
    return await record_fix(db, ns, thread_id="old", task_id=task, attempt=2, repo=repo,
                            file="app/shout.py", kind="new", failure=failure, fix=fix,
                            action="model", prompt=prompt, tier="medium", model="m",
                            fixed=fixed, first_time=first_time)


async def test_past_fixes_of_the_repository_most_similar_first(orchestrator, tmp_path) -> None:
    db, ns = orchestrator.runtime.db, orchestrator.settings.namespace
    repo, other = str(tmp_path / "repo"), str(tmp_path / "other")
    assert await _past(db, ns, repo, SHOUT_FAILED_AGAIN, "+upper", task="a")
    assert not await _past(db, ns, repo, SHOUT_FAILED_AGAIN, "+again", task="a")  # once only
    assert await _past(db, ns, repo, UNUSED_IMPORT, "-import os", task="b")
    assert await _past(db, ns, repo, SHOUT_FAILED, "+never", task="c", fixed=False)
    assert await _past(db, ns, other, SHOUT_FAILED, "+elsewhere", task="d")
    found = await similar_fixes(db, ns, repo, SHOUT_FAILED, backend="python")
    # the similar fixed one; not the unlike one, the unfixed one, nor another repository's
    assert [f["fix"] for f in found] == ["+upper"]
    assert found[0]["prompt"] == "developer_fix@2" and found[0]["first_time"] is True
    assert 0.6 < found[0]["score"] < 1.0
    stats = await fix_stats(db, ns, repo=repo)
    assert stats["prompt"] == [{"prompt": "developer_fix@2", "attempts": 3, "fixed": 2,
                                "first_time": 2, "fixed_rate": 0.6667,
                                "first_time_rate": 0.6667}]
    assert await reset_fixes(db, ns, repo=repo) == 3
    assert await similar_fixes(db, ns, repo, SHOUT_FAILED, backend="python") == []
    assert len(await similar_fixes(db, ns, other, SHOUT_FAILED, backend="python")) == 1


# --- a real plan_execution fix path ---------------------------------------------------------

_SHOUT_WRONG = "def shout(text: str) -> str:\n    return text\n"
_SHOUT = "def shout(text: str) -> str:\n    return text.upper() + \"!\"\n"


def _code(messages: list[BaseMessage]) -> str:
    """A first draft of shout.py that fails its test; the fix is right."""
    asked = messages[-1].content
    if "Fix the file `app/shout.py`" in asked:
        return _SHOUT
    if "`app/shout.py`" in asked:
        return _SHOUT_WRONG
    return ""


_CODER = UsageFakeChatModel(respond=_code, model_name="coder")


def coder() -> UsageFakeChatModel:
    return _CODER


def _git(repo: Path, *args: str) -> None:
    subprocess.run(["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@e", *args],
                   check=True, capture_output=True)


def _repo(path: Path) -> Path:
    (path / "tests").mkdir(parents=True)
    (path / "tests" / "test_shout.py").write_text(
        "from app.shout import shout\n\n\n"
        "def test_shout() -> None:\n    assert shout(\"hi\") == \"HI!\"\n")
    _git(path, "init", "-q", "-b", "main")
    _git(path, "add", ".")
    _git(path, "commit", "-qm", "tests")
    return path


def _plan(repo: Path) -> dict[str, Any]:
    return {"repo": str(repo), "retry_delay": 0, "integration_command": "python -c pass",
            "tasks": [{"id": "init", "file": "app/__init__.py", "kind": "new", "content": ""},
                      {"id": "shout", "file": "app/shout.py", "kind": "new",
                       "description": "shout(text) returns the text in capitals and '!'"}]}


def _fix_prompts() -> list[str]:
    return [messages_text(p) for p in _CODER.prompts
            if "Fix the file `app/shout.py`" in p[-1].content]


async def test_the_fix_request_carries_the_similar_past_fixes_of_the_repository(
        orchestrator_factory, tmp_path) -> None:
    orch = await orchestrator_factory(chat_model=f"{HERE}:coder")
    db, ns = orch.runtime.db, orch.settings.namespace
    repo = _repo(tmp_path / "repo")
    resolved = str(repo.resolve())
    # an unlike fixed failure of the same repository, and this very failure in another one
    await _past(db, ns, resolved, UNUSED_IMPORT, "-import os  # UNLIKE-FIX", task="lint")
    await _past(db, ns, str(tmp_path / "elsewhere"), SHOUT_FAILED, "+ OTHER-REPO-FIX",
                task="far")
    _CODER.prompts.clear()

    first = await orch.run("plan_execution", {"plan": _plan(repo)})
    assert first.status == "completed", first
    [prompt] = _fix_prompts()
    similar_part = prompt.split("Similar failures of this repository fixed before")[1]
    assert "(none)" in similar_part  # nothing like it yet: the unlike fix stays out
    assert "UNLIKE-FIX" not in prompt and "OTHER-REPO-FIX" not in prompt
    rows = await db.fetch("SELECT * FROM learn_fixes WHERE namespace = %s AND task_id = 'shout'",
                          (ns,))
    assert len(rows) == 1
    row = rows[0]
    assert (row["thread_id"], row["attempt"], row["fixed"], row["first_time"]) == (
        first.thread_id, 2, True, True)
    assert row["prompt"] == "developer_fix@2" and row["action"] == "model"
    assert row["repo"] == resolved and row["kind"] == "new"
    assert "+    return text.upper()" in row["fix"] and "-    return text" in row["fix"]
    assert "test_shout" in row["failure"]

    # the same task in the same repository fails the same way again (a new run, the files
    # gone): its fix request carries the first run's fix, how and by which prompt
    shutil.rmtree(repo / "app")
    _CODER.prompts.clear()
    second = await orch.run("plan_execution", {"plan": _plan(repo)})
    assert second.status == "completed", second
    [prompt] = _fix_prompts()
    similar_part = prompt.split("Similar failures of this repository fixed before")[1]
    assert "1. `app/shout.py` (new task), similarity 1.00" in similar_part
    assert "fixed at the first try by developer_fix@2 on tier medium" in similar_part
    assert "+    return text.upper()" in similar_part and "test_shout" in similar_part
    assert "UNLIKE-FIX" not in prompt and "OTHER-REPO-FIX" not in prompt
    count = await db.fetchone(
        "SELECT count(*) AS n FROM learn_fixes WHERE namespace = %s AND task_id = 'shout' "
        "AND fixed AND first_time", (ns,))
    assert count["n"] == 2


# --- a fix that learns: the second time, the past fix makes the first fix attempt right -------

_HALF = "def shout(text: str) -> str:\n    return text.upper()\n"


def _learner(messages: list[BaseMessage]) -> str:
    """A model that fixes shout.py in two tries (capitals first, then the '!'), unless its
    prompt shows a past fix of this failure that adds the '!': then it follows it at once."""
    asked = messages[-1].content
    if "Fix the file `app/shout.py`" in asked:
        past = asked.split("Similar failures of this repository fixed before")[1]
        if '+    return text.upper() + "!"' in past or "return text.upper()\n" in asked.split(
                "The file now:")[1].split("The files it depends on")[0]:
            return _SHOUT
        return _HALF
    if "`app/shout.py`" in asked:
        return _SHOUT_WRONG
    return ""


_LEARNER = UsageFakeChatModel(respond=_learner, model_name="learner")


def learner() -> UsageFakeChatModel:
    return _LEARNER


async def test_a_failure_fixed_in_two_tries_is_fixed_at_the_first_the_next_time(
        orchestrator_factory, tmp_path) -> None:
    """The recorded outcome changes the next decision: the same failure took two fix attempts
    the first time; the next run's fix request carries that fix, and the first fix attempt
    is right (learn stats: first-try rate of developer_fix@2 from 0 to 1 fix in 2)."""
    orch = await orchestrator_factory(chat_model=f"{HERE}:learner")
    db, ns = orch.runtime.db, orch.settings.namespace
    repo = _repo(tmp_path / "repo")
    first = await orch.run("plan_execution", {"plan": _plan(repo)})
    assert first.status == "completed", first
    assert first.final_result["tasks"]["shout"]["attempts"] == 3
    shutil.rmtree(repo / "app")
    second = await orch.run("plan_execution", {"plan": _plan(repo)})
    assert second.status == "completed", second
    assert second.final_result["tasks"]["shout"]["attempts"] == 2
    rows = await db.fetch(
        "SELECT thread_id, attempt, fixed, first_time FROM learn_fixes WHERE namespace = %s "
        "AND task_id = 'shout' ORDER BY recorded_at, id", (ns,))
    assert [(r["thread_id"], r["attempt"], r["fixed"], r["first_time"]) for r in rows] == [
        (first.thread_id, 2, False, False), (first.thread_id, 3, True, False),
        (second.thread_id, 2, True, True)]
    stats = await fix_stats(db, ns, repo=str(repo))
    assert stats["prompt"] == [{"prompt": "developer_fix@2", "attempts": 3, "fixed": 2,
                                "first_time": 1, "fixed_rate": 0.6667,
                                "first_time_rate": 0.3333}]
