"""Agents that reason with a chat model (issue 15, item 1 and 2): the developer writes a file
from a description and fixes it from QA's evidence, code_review counts the model's comments
in its verdict, plan_execution chooses and records each task's tier, and a budget question
answered "switch" carries on with the cheaper model. The models are in-process fakes that
report usage (tests/support/fake_models.py), configured as ``module:factory`` specs of this
module; no network.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
from langchain_core.messages import BaseMessage
from orchestrator.agents.code_review import agent as code_review

from orchestrator.errors import InvalidAnswer
from orchestrator.llm.config import ModelChoice
from orchestrator.llm.prices import PriceTable
from orchestrator.llm.services import ModelServices
from orchestrator.testing import resume, run_until_interrupt

from .support.fake_models import UsageFakeChatModel, messages_text

HERE = "tests.test_llm_agents"

_GREET = ('from app.config import GREETING\n\n\ndef greet(name: str) -> str:\n'
          '    return f"{GREETING}, {name}"\n')
_SHOUT_WRONG = "def shout(text: str) -> str:\n    return text\n"
_SHOUT = "def shout(text: str) -> str:\n    return text.upper() + \"!\"\n"


def _code(messages: list[BaseMessage]) -> str:
    """The coder's answer: the file the prompt asks for (a first draft of shout.py that
    fails its test; the fix is right), fenced as models often do."""
    asked = messages[-1].content
    if "`app/greet.py`" in asked:
        return f"```python\n{_GREET}```"
    if "Fix the file `app/shout.py`" in asked:
        return _SHOUT
    if "`app/shout.py`" in asked:
        return _SHOUT_WRONG
    return "unexpected prompt"


_CODER = UsageFakeChatModel(respond=_code, model_name="coder")


def coder() -> UsageFakeChatModel:
    return _CODER


_PRICEY = UsageFakeChatModel(respond=lambda m: "PRICEY = True\n", model_name="pricey")
_CHEAP = UsageFakeChatModel(respond=lambda m: "CHEAP = True\n", model_name="cheap")


def pricey() -> UsageFakeChatModel:
    return _PRICEY


def cheap() -> UsageFakeChatModel:
    return _CHEAP


def _git(repo: Path, *args: str) -> None:
    subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True)


def _repo(path: Path) -> Path:
    """A repository whose tests import the files the plans below write."""
    (path / "tests").mkdir(parents=True)
    (path / "tests" / "test_greet.py").write_text(
        "from app.greet import greet\n\n\n"
        "def test_greet() -> None:\n    assert greet(\"ann\") == \"hello, ann\"\n")
    (path / "tests" / "test_shout.py").write_text(
        "from app.shout import shout\n\n\n"
        "def test_shout() -> None:\n    assert shout(\"hi\") == \"HI!\"\n")
    _git(path, "init", "-q", "-b", "main")
    _git(path, "-c", "user.name=t", "-c", "user.email=t@e", "add", ".")
    _git(path, "-c", "user.name=t", "-c", "user.email=t@e", "commit", "-qm", "tests")
    return path


def _plan(repo: Path, *tasks: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"repo": str(repo), "retry_delay": 0, "integration_command": "python -c pass",
            "tasks": [{"id": "init", "file": "app/__init__.py", "kind": "new", "content": ""},
                      {"id": "config", "file": "app/config.py", "kind": "new",
                       "content": 'GREETING = "hello"\n'}, *tasks], **extra}


GREET = {"id": "greet", "file": "app/greet.py", "kind": "new", "depends_on": ["config"],
         "description": "greet(name) returns the configured greeting and the name"}
SHOUT = {"id": "shout", "file": "app/shout.py", "kind": "new",
         "description": "shout(text) returns the text in capitals with an exclamation mark"}


async def test_a_description_only_task_is_written_by_the_model_and_passes_qa(
        orchestrator_factory, tmp_path) -> None:
    orch = await orchestrator_factory(chat_model=f"{HERE}:coder")
    repo = _repo(tmp_path / "repo")
    _CODER.prompts.clear()
    result = await orch.run("plan_execution", {"plan": _plan(repo, GREET)})
    assert result.status == "completed", result
    assert (repo / "app" / "greet.py").read_text() == _GREET
    prompt = next(messages_text(p) for p in _CODER.prompts if "`app/greet.py`" in
                  p[-1].content)
    # its context: the description, the file it depends on, the test that imports it
    assert "the configured greeting" in prompt
    assert 'GREETING = "hello"' in prompt and "def test_greet" in prompt
    state = (await orch.get(result.thread_id)).values
    attempt = state["tasks"]["greet"]["attempts"][0]
    assert attempt["qa"]["tests"] == ["tests/test_greet.py"]  # QA ran the test, and it passed
    assert attempt["develop"]["action"] == "generated"
    assert attempt["develop"]["model"] == f"{HERE}:coder"
    # the tier: chosen by plan_execution, kept in the state and the report with its reason
    task = result.final_result["tasks"]["greet"]
    assert task["tier"] == state["tasks"]["greet"]["tier"] == attempt["tier"] == "small"
    assert task["tier_reason"].startswith("score ")


async def test_a_qa_failure_comes_back_as_evidence_and_the_retry_moves_up_a_tier(
        orchestrator_factory, tmp_path) -> None:
    orch = await orchestrator_factory(chat_model=f"{HERE}:coder")
    repo = _repo(tmp_path / "repo")
    _CODER.prompts.clear()
    result = await orch.run("plan_execution", {"plan": _plan(repo, SHOUT)})
    assert result.status == "completed", result
    assert (repo / "app" / "shout.py").read_text() == _SHOUT
    fix = [messages_text(p) for p in _CODER.prompts if "Fix the file `app/shout.py`" in
           p[-1].content]
    assert len(fix) == 1
    # the first draft and QA's failure of it are the fix's evidence
    assert "return text\n" in fix[0] and "test_shout" in fix[0]
    task = result.final_result["tasks"]["shout"]
    assert task["attempts"] == 2
    assert task["tiers"] == ["small", "medium"]
    assert "attempt 2 after a failure: up from small" in task["tier_reason"]
    state = (await orch.get(result.thread_id)).values
    assert [a["develop"]["action"] for a in state["tasks"]["shout"]["attempts"]
            if "develop" in a] == ["model"]


async def test_a_description_only_fix_shows_the_model_the_file_it_changes(
        orchestrator_factory, tmp_path) -> None:
    """A ``fix`` task of an existing file, given only a description: its first attempt's
    prompt holds the file as it is (the model changes it, it does not write it blind)."""
    orch = await orchestrator_factory(chat_model=f"{HERE}:coder")
    repo = _repo(tmp_path / "repo")
    (repo / "app").mkdir()
    (repo / "app" / "__init__.py").write_text("")
    (repo / "app" / "shout.py").write_text("def shout(text: str) -> str:\n    return text  # LOUDER\n")
    _git(repo, "-c", "user.name=t", "-c", "user.email=t@e", "add", ".")
    _git(repo, "-c", "user.name=t", "-c", "user.email=t@e", "commit", "-qm", "shout")
    _CODER.prompts.clear()
    fix = {**SHOUT, "kind": "fix", "description": "shout(text) must shout: capitals and a !"}
    plan = {**_plan(repo, fix), "tasks": [fix]}
    result = await orch.run("plan_execution", {"plan": plan})
    assert result.status == "completed", result
    first = next(messages_text(p) for p in _CODER.prompts if "`app/shout.py`" in p[-1].content)
    assert "return text  # LOUDER" in first  # the file as it was, before the fix
    assert (repo / "app" / "shout.py").read_text() == _SHOUT


async def test_without_a_model_a_description_only_task_fails_saying_one_is_needed(
        orchestrator_factory, tmp_path) -> None:
    orch = await orchestrator_factory()
    repo = _repo(tmp_path / "repo")
    paused, question = await run_until_interrupt(
        orch, "plan_execution", {"plan": _plan(repo, GREET, max_attempts=1)})
    assert question["kind"] == "dead_letter" and question["context"]["task"] == "greet"
    evidence = question["context"]["evidence"]
    assert evidence["stage"] == "develop"
    assert "a chat model must write it, and none is configured" in evidence["reason"]
    assert not (repo / "app" / "greet.py").exists()
    await resume(orch, paused.thread_id, {"action": "abort", "by": "dev"})


# -- code_review ----------------------------------------------------------------------------------

_REVIEW = {"comments": [
    {"file": "calc.py", "line": 2, "severity": "error", "comment": "divides by zero"},
    {"file": "calc.py", "line": 1, "severity": "info", "comment": "name it better"},
    {"file": "elsewhere.py", "line": 1, "severity": "error", "comment": "not in the change"},
]}
_REVIEWER = UsageFakeChatModel(respond=lambda m: _REVIEW, model_name="reviewer")


def reviewer() -> UsageFakeChatModel:
    return _REVIEWER


def _review_repo(path: Path) -> Path:
    path.mkdir()
    (path / "calc.py").write_text("X = 1\n")
    _git(path, "init", "-q", "-b", "main")
    _git(path, "-c", "user.name=t", "-c", "user.email=t@e", "add", ".")
    _git(path, "-c", "user.name=t", "-c", "user.email=t@e", "commit", "-qm", "one")
    _git(path, "checkout", "-qb", "feat")
    (path / "calc.py").write_text("def ratio(a: int, b: int) -> float:\n    return a / b\n")
    _git(path, "-c", "user.name=t", "-c", "user.email=t@e", "commit", "-qam", "ratio")
    return path


async def _review(repo: Path, spec: str | None, **payload: Any) -> dict[str, Any]:
    services = ModelServices(choice=ModelChoice(spec), prices=PriceTable({}))
    return await code_review.call_locally(
        "review", {"repo": str(repo), "source": "feat", **payload}, models=services)


async def test_code_review_counts_the_models_comments_in_its_verdict(tmp_path) -> None:
    repo = _review_repo(tmp_path / "repo")
    _REVIEWER.prompts.clear()
    found = await _review(repo, f"{HERE}:reviewer")
    assert found["findings"] == [] and found["reviewed_by"] == "ruff+model"
    # the comment on a file outside the change is dropped
    assert [(c["file"], c["line"], c["severity"]) for c in found["comments"]] == [
        ("calc.py", 2, "error"), ("calc.py", 1, "info")]
    assert found["counted_comments"] == 1 and found["verdict"] == "changes_requested"
    assert "return a / b" in messages_text(_REVIEWER.prompts[-1])  # the model saw the diff
    # the threshold is the payload's: one error comment tolerated; or every comment counted
    assert (await _review(repo, f"{HERE}:reviewer", max_comments=1))["passed"] is True
    strict = await _review(repo, f"{HERE}:reviewer", comment_severity="info", max_comments=1)
    assert strict["counted_comments"] == 2 and strict["passed"] is False


async def test_code_review_without_a_model_is_ruff_only(tmp_path) -> None:
    found = await _review(_review_repo(tmp_path / "repo"), None)
    assert found["reviewed_by"] == "ruff" and found["comments"] == []
    assert found["verdict"] == "approved" and found["model"] is None


# -- budgets ------------------------------------------------------------------------------------


async def test_a_budget_question_answered_switch_continues_on_the_cheaper_model(
        orchestrator_factory, tmp_path) -> None:
    prices = tmp_path / "prices.json"
    prices.write_text(json.dumps({
        f"{HERE}:pricey": {"input_per_mtok": 1000, "output_per_mtok": 1000},
        f"{HERE}:cheap": {"input_per_mtok": 0.01, "output_per_mtok": 0.01}}))
    orch = await orchestrator_factory(
        models={"tiers": dict.fromkeys(("small", "medium", "large"), f"{HERE}:pricey"),
                "agents": {"qa": {"small": f"{HERE}:cheap"}}},
        prices_file=str(prices))
    repo = _repo(tmp_path / "repo")
    task = {"id": "flags", "file": "app/flags.py", "kind": "new", "description": "a flag"}
    # the pricey model's worst case (4096 output tokens at $1000/Mtok) does not fit in $1
    paused, question = await run_until_interrupt(orch, "plan_execution", {
        "plan": _plan(repo, task), "budget_usd": 1.0, "budget_policy": "ask"})
    assert question["kind"] == "budget"
    details = question["context"]["budget"]
    assert details["model"] == f"{HERE}:pricey" and details["cheaper"] == [f"{HERE}:cheap"]
    # a malformed answer is refused, and the question stays; one that fits the schema but
    # not the rules (switch to no model) never decides: the question is asked again
    with pytest.raises(InvalidAnswer):
        await resume(orch, paused.thread_id, {"action": "later", "by": "alice"})
    again = await resume(orch, paused.thread_id, {"action": "switch", "by": "alice"})
    assert again.status == "interrupted"
    assert "switch needs model" in again.interrupts[0]["value"]["context"][
        "problem_with_last_answer"]
    assert not (repo / "app" / "flags.py").exists()
    result = await resume(orch, paused.thread_id,
                          {"action": "switch", "model": f"{HERE}:cheap", "by": "alice"})
    assert result.status == "completed", result
    assert (repo / "app" / "flags.py").read_text() == "CHEAP = True\n"
    state = (await orch.get(result.thread_id)).values
    assert state["budget_model"] == f"{HERE}:cheap"
    decisions = result.final_result["budget"]["decisions"]
    assert [(d["action"], d["model"], d["by"]) for d in decisions] == [
        ("switch", f"{HERE}:cheap", "alice")]
    assert state["tasks"]["flags"]["attempts"][-1]["develop"]["model"] == f"{HERE}:cheap"


async def test_a_budget_question_answered_stop_fails_the_run_with_the_reason(
        orchestrator_factory, tmp_path) -> None:
    prices = tmp_path / "prices.json"
    prices.write_text(json.dumps({f"{HERE}:pricey": {"input_per_mtok": 1000,
                                                     "output_per_mtok": 1000}}))
    orch = await orchestrator_factory(chat_model=f"{HERE}:pricey", prices_file=str(prices))
    repo = _repo(tmp_path / "repo")
    task = {"id": "flags", "file": "app/flags.py", "kind": "new", "description": "a flag"}
    paused, question = await run_until_interrupt(orch, "plan_execution", {
        "plan": _plan(repo, task), "budget_usd": 0.5})
    assert question["kind"] == "budget" and question["context"]["task"] == "flags"
    result = await resume(orch, paused.thread_id, {"action": "stop", "by": "bob"})
    assert result.status == "failed"
    assert result.final_result["stage"] == "budget"
    assert "stopped by bob at the budget question of flags" in result.final_result["reasons"][0]
    assert not (repo / "app" / "flags.py").exists()
