"""End to end with language models and no network: the test model server through the real
``langchain-openai`` client, the in-process fakes, the socket guard, and the orchestrator's
model calls, ledger and budgets against them."""

from __future__ import annotations

import asyncio
import json
import os
import random
import socket
import subprocess
import sys
import time
import uuid
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from langchain.chat_models import init_chat_model
from langchain_core.messages import HumanMessage
from langgraph.graph import END, START, StateGraph
from orchestrator.state.schema import MultiAgentState
from pydantic import BaseModel

from orchestrator.agent import RequestContext
from orchestrator.calls import call_agent
from orchestrator.errors import BudgetExceeded
from orchestrator.facade import Orchestrator
from orchestrator.graphs import WorkflowSpec
from orchestrator.llm.calls import BudgetSpec, PromptRef, model_call
from orchestrator.testing import stand_in
from tests.support import socket_guard
from tests.support.fake_models import StreamingUsageFakeChatModel, UsageFakeChatModel
from tests.support.openai_server import (
    OpenAIServer,
    Reply,
    count_tokens,
    last_user_text,
    prompt_text,
)
from tests.support.processes import ORCHESTRATOR_CMD


class Comment(BaseModel):
    file: str
    line: int
    comment: str


def _client(server: OpenAIServer, monkeypatch: pytest.MonkeyPatch, **kwargs):
    for key, value in server.env("openai:test-small").items():
        monkeypatch.setenv(key, value)
    return init_chat_model(os.environ["ORCHESTRATOR_CHAT_MODEL"], **kwargs)


# -- the test model server through langchain-openai -----------------------------------------

async def test_the_server_answers_langchain_openai_with_the_usage_it_counted(
        model_server: OpenAIServer, monkeypatch: pytest.MonkeyPatch) -> None:
    model_server.script = lambda body: f"echo {last_user_text(body)}"
    model = _client(model_server, monkeypatch)
    answer = await model.ainvoke([HumanMessage("hello there")])
    assert answer.content == "echo hello there"
    assert answer.usage_metadata["input_tokens"] == count_tokens("hello there")
    assert answer.usage_metadata["output_tokens"] == count_tokens("echo hello there")
    assert model_server.requests[0]["model"] == "test-small"
    assert model_server.requests[0].get("stream") in (None, False)


async def test_a_streamed_answer_sums_its_chunks_and_reports_usage_only_when_asked(
        model_server: OpenAIServer, monkeypatch: pytest.MonkeyPatch) -> None:
    text = "a fairly long answer streamed eight characters at a time"
    model_server.script = lambda body: Reply(content=text, prompt_tokens=120,
                                             completion_tokens=33, cached_tokens=100)
    model = _client(model_server, monkeypatch, stream_usage=True)
    total = None
    chunks = 0
    async for chunk in model.astream([HumanMessage("go")]):
        total = chunk if total is None else total + chunk
        chunks += 1
    assert chunks > 5 and total.content == text
    assert total.usage_metadata["input_tokens"] == 120
    assert total.usage_metadata["output_tokens"] == 33
    assert total.usage_metadata["input_token_details"]["cache_read"] == 100
    assert model_server.requests[-1]["stream_options"] == {"include_usage": True}

    # a client that does not ask for usage gets none: the ledger must say unknown, not zero
    plain = _client(model_server, monkeypatch, stream_usage=False)
    total = None
    async for chunk in plain.astream([HumanMessage("go")]):
        total = chunk if total is None else total + chunk
    assert total.content == text and not total.usage_metadata


@pytest.mark.parametrize("method", ["json_schema", "function_calling"])
async def test_structured_output_comes_back_in_the_form_the_client_asked_for(
        model_server: OpenAIServer, monkeypatch: pytest.MonkeyPatch, method: str) -> None:
    model_server.script = lambda body: {"file": "a.py", "line": 3, "comment": "unused"}
    model = _client(model_server, monkeypatch).with_structured_output(
        Comment, method=method, include_raw=True)
    out = await model.ainvoke([HumanMessage("review")])
    assert out["parsed"] == Comment(file="a.py", line=3, comment="unused")
    assert out["raw"].usage_metadata["output_tokens"] > 0
    body = model_server.requests[-1]
    if method == "json_schema":
        assert body["response_format"]["type"] == "json_schema"
    else:
        assert body["tools"][0]["function"]["name"] == "Comment"


async def test_no_usage_and_errors_are_answered_as_scripted(
        model_server: OpenAIServer, monkeypatch: pytest.MonkeyPatch) -> None:
    model_server.script = lambda body: Reply(content="quiet", report_usage=False)
    model = _client(model_server, monkeypatch, max_retries=0)
    answer = await model.ainvoke([HumanMessage("x")])
    assert answer.content == "quiet" and answer.usage_metadata is None
    model_server.script = lambda body: Reply(status=400, content="bad request")
    with pytest.raises(Exception, match="bad request"):
        await model.ainvoke([HumanMessage("x")])
    assert len(model_server.exchanges) == 2 and model_server.exchanges[1].usage is None


# -- the fakes ----------------------------------------------------------------------------

async def test_the_fakes_report_usage_streamed_or_not_and_structured_output() -> None:
    model = UsageFakeChatModel(respond=lambda msgs: "x" * 40)
    answer = await model.ainvoke([HumanMessage("y" * 80)])
    assert answer.usage_metadata == {"input_tokens": 20, "output_tokens": 10,
                                     "total_tokens": 30}

    streamed = StreamingUsageFakeChatModel(respond=lambda msgs: "x" * 40)
    total = None
    chunks = []
    async for chunk in streamed.astream([HumanMessage("y" * 80)]):
        chunks.append(chunk)
        total = chunk if total is None else total + chunk
    pieces = [c for c in chunks if c.content]
    assert len(pieces) == 5 and all(c.usage_metadata for c in pieces)
    assert total.usage_metadata["input_tokens"] == 20
    assert total.usage_metadata["output_tokens"] == 10
    assert pieces[-1].usage_metadata["output_tokens"] < 10  # only the sum is the usage

    quiet = UsageFakeChatModel(messages=iter(["a"]), report_usage=False)
    assert (await quiet.ainvoke("q")).usage_metadata is None

    structured = StreamingUsageFakeChatModel(
        respond=lambda msgs: {"file": "b.py", "line": 1, "comment": "c"}
    ).with_structured_output(Comment, include_raw=True)
    out = await structured.ainvoke("review")
    assert out["parsed"] == Comment(file="b.py", line=1, comment="c")
    assert out["raw"].usage_metadata["output_tokens"] > 0


# -- the socket guard -----------------------------------------------------------------------

def test_the_guard_refuses_connections_off_loopback_here_and_in_subprocesses() -> None:
    with socket.socket() as sock, pytest.raises(socket_guard.OffLoopback):
        sock.connect(("192.0.2.1", 443))  # TEST-NET-1: nothing leaves before the refusal
    # recorded, so a caller that swallowed it still fails: forget it for this test only
    assert socket_guard.refused.pop() == ("192.0.2.1", 443)
    with socket.create_server(("127.0.0.1", 0)) as listener, socket.socket() as sock:
        sock.connect(listener.getsockname())  # loopback passes

    code = ("import socket\ns = socket.socket()\n"
            "try:\n    s.connect(('192.0.2.1', 443))\nexcept ConnectionRefusedError as e:\n"
            "    print(type(e).__name__)\n")
    env = socket_guard.subprocess_env(dict(os.environ))
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                         text=True, timeout=30)
    assert out.stdout.strip() == "OffLoopback", out.stderr


# -- budgets shared by concurrent workflows, through the real client -------------------------

class SpendInput(BaseModel):
    calls: int


class SpendState(MultiAgentState, total=False):
    calls: int


async def spend(state: SpendState) -> dict[str, Any]:
    """Ask the thinker ``calls`` times, until a budget refuses (policy fail)."""
    made = 0
    try:
        for i in range(state["calls"]):
            await call_agent("thinker", "think", {"i": i}, subtask=f"think-{i}")
            made += 1
    except BudgetExceeded:
        return {"final_result": {"made": made, "refused": True}}
    return {"final_result": {"made": made, "refused": False}}


_spend = StateGraph(SpendState)
_spend.add_node("spend", spend)
_spend.add_edge(START, "spend")
_spend.add_edge("spend", END)
SPEND = WorkflowSpec("llm_spend", _spend, SpendInput, "model calls until a budget refuses")


async def think(payload: dict[str, Any], ctx: RequestContext) -> dict[str, Any]:
    answer = await model_call(
        ctx, purpose="think", tier="small", prompt=PromptRef("think", "1"),
        messages=[HumanMessage(f"think about {payload['i']} " + "x" * 120)],
        budget=BudgetSpec(policy="fail", node="spend", workflow_type="llm_spend"))
    assert answer is not None
    return {"cost": answer.cost_usd}


@pytest.mark.slow
async def test_fifty_workflows_sharing_one_dollar_never_settle_more_than_one_estimate_over(
        model_server: OpenAIServer, orchestrator_settings, monkeypatch, tmp_path) -> None:
    """20 randomized runs: 50 workflows at once, each calling the model up to 4 times through
    langchain-openai against the test server, share the namespace's $1.00 daily budget."""
    spec = model_server.spec("share")
    for key, value in model_server.env(spec).items():
        monkeypatch.setenv(key, value)
    prices = tmp_path / "prices.yaml"
    # $0.001 an output token: a call's worst case (20 output tokens, ~45 input) is ~$0.0245
    prices.write_text(f"{spec}: {{input_per_mtok: 100, output_per_mtok: 1000}}\n")
    draws = random.Random()

    def script(body: dict[str, Any]) -> Reply:
        # what the estimate assumes at most: input ~ chars/3, output max_tokens (20)
        return Reply(content="ok", prompt_tokens=draws.randint(1, count_tokens(prompt_text(body))),
                     completion_tokens=draws.randint(0, 20))

    model_server.script = script
    thinker = stand_in("thinker", {"think": think})
    started = time.monotonic()
    for run in range(20):
        draws.seed(run)
        settings = orchestrator_settings.model_copy(update={
            "namespace": f"{orchestrator_settings.namespace}r{run}", "chat_model": spec,
            "prices_file": prices, "daily_budget_usd": 1.0, "model_max_output_tokens": 20})
        async with Orchestrator(settings, agents=[thinker], workflows={"llm_spend": SPEND}) as orch:
            threads = [f"share-{run}-{i}" for i in range(50)]
            results = await asyncio.wait_for(asyncio.gather(
                *(orch.run("llm_spend", {"calls": 4}, thread_id=t) for t in threads)), 120)
            db = orch.runtime.db
            ns = settings.namespace
            budget = await db.fetchone(
                "SELECT * FROM model_budgets WHERE namespace = %s AND scope LIKE 'namespace:%%'",
                (ns,))
            ledger = await db.fetchone(
                "SELECT count(*) AS n, sum(cost_usd) AS cost, max(cost_usd) AS top, "
                "sum(input_tokens) AS inp, sum(output_tokens) AS out FROM model_calls "
                "WHERE namespace = %s", (ns,))
        made = sum(r.final_result["made"] for r in results)
        refused = sum(r.final_result["refused"] for r in results)
        # a call's estimate (orchestrator.llm.calls): ~chars/3 + 4 input tokens, 20 output
        estimate = Decimal((140 // 3 + 4) * 100 + 20 * 1000) / 1_000_000
        assert all(r.status == "completed" for r in results)
        assert ledger["n"] == made  # one row per call answered
        assert budget["spent_usd"] == ledger["cost"]  # settled exactly what the ledger holds
        assert budget["reserved_usd"] == 0
        assert budget["spent_usd"] <= Decimal("1.00") + estimate, (run, budget)
        assert refused > 0 and made >= 40, (run, made, refused)  # shared out, then refused
        # the ledger holds exactly the usage the server reported to the client
        served = model_server.usage_totals(spec)
        assert (ledger["inp"], ledger["out"]) == (served["prompt_tokens"],
                                                 served["completion_tokens"])
        model_server.exchanges.clear()
    assert time.monotonic() - started < 170


@pytest.mark.parametrize("stream", [False, True])
async def test_a_call_through_langchain_openai_is_recorded_with_the_usage_served(
        model_server: OpenAIServer, orchestrator_factory, monkeypatch, tmp_path,
        stream: bool) -> None:
    spec = model_server.spec(f"ledger-{stream}")
    for key, value in model_server.env(spec).items():
        monkeypatch.setenv(key, value)
    prices = tmp_path / "prices.yaml"
    prices.write_text(f"{spec}: {{input_per_mtok: 1, cached_input_per_mtok: 0.5, "
                      "output_per_mtok: 4}\n")
    model_server.script = lambda body: Reply(content="a considered answer " * 4,
                                             prompt_tokens=300, completion_tokens=40,
                                             cached_tokens=100)

    async def ask_once(payload: dict[str, Any], ctx: RequestContext) -> dict[str, Any]:
        answer = await model_call(ctx, purpose="think", prompt=PromptRef("think", "2"),
                                  messages=[HumanMessage("why?")], stream=stream,
                                  budget=BudgetSpec(thread_usd=1.0, node="spend"))
        return {"content": answer.content, "cost": answer.cost_usd}

    orch = await orchestrator_factory(stand_ins=[stand_in("thinker", {"think": ask_once})],
                                      workflows={"llm_spend": SPEND}, chat_model=spec,
                                      prices_file=prices)
    thread = f"ledger-{stream}-{os.getpid()}"
    result = await orch.run("llm_spend", {"calls": 1}, thread_id=thread)
    assert result.status == "completed" and result.final_result["made"] == 1
    assert model_server.requests[-1].get("stream", False) is stream
    row = await orch.runtime.db.fetchone(
        "SELECT * FROM model_calls WHERE namespace = %s AND thread_id = %s",
        (orch.runtime.settings.namespace, thread))
    assert (row["input_tokens"], row["cached_tokens"], row["output_tokens"]) == (300, 100, 40)
    assert row["cost_usd"] == Decimal(200 * 1 + 100 * 0.5 + 40 * 4) / 1_000_000
    assert (row["model"], row["provider"], row["prompt"], row["node"]) == (
        spec, "openai", "think@2", "spend")


# -- a plan of descriptions, end to end through the CLI and the real client -----------------

_GREET = ('from app.config import GREETING\n\n\ndef greet(name: str) -> str:\n'
          '    return f"{GREETING}, {name}"\n')


def _describe_repo(path: Path) -> dict[str, Any]:
    """A repository whose test imports the file a description-only task asks for, and the
    plan (data) for it."""
    (path / "tests").mkdir(parents=True)
    (path / "tests" / "test_greet.py").write_text(
        "from app.greet import greet\n\n\n"
        "def test_greet() -> None:\n    assert greet(\"ann\") == \"hello, ann\"\n")
    for args in (["init", "-q", "-b", "main"], ["add", "."], ["commit", "-qm", "tests"]):
        subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@e", "-C", str(path),
                        *args], check=True, capture_output=True, timeout=30)
    return {"repo": str(path), "retry_delay": 0, "integration_command": "python -c pass",
            "tasks": [
                {"id": "init", "file": "app/__init__.py", "kind": "new",
                 "description": "the package, empty"},
                {"id": "config", "file": "app/config.py", "kind": "new",
                 "description": "GREETING, the word greet() starts with: hello"},
                {"id": "greet", "file": "app/greet.py", "kind": "new",
                 "depends_on": ["config"],
                 "description": "greet(name) returns the configured greeting and the name"}]}


def _writes_files(body: dict[str, Any]) -> str:
    asked = last_user_text(body)
    if "`app/greet.py`" in asked:
        return f"```python\n{_GREET}```"
    if "`app/config.py`" in asked:
        return 'GREETING = "hello"\n'
    return '"""The package."""\n'


def _cli(env: dict[str, str], *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([*ORCHESTRATOR_CMD, *args], env=env, capture_output=True, text=True,
                          timeout=timeout)


@pytest.mark.slow
async def test_a_plan_of_descriptions_runs_end_to_end_with_a_budget_question(
        model_server: OpenAIServer, service_env, tmp_path) -> None:
    """``orchestrator run plan_execution`` in a subprocess, its agents in it, the developer's
    model behind langchain-openai and the test server: tiers chosen, a budget question
    answered "switch" through ``orchestrator resume``, the ledger through ``orchestrator
    costs``; no connection leaves loopback, in the test or the CLI. Two tasks ask the same
    question in parallel: one answer answers both."""
    pricey, cheap = model_server.spec("pricey"), model_server.spec("cheap")
    prices = tmp_path / "prices.yaml"
    prices.write_text(f"{pricey}: {{input_per_mtok: 1000, output_per_mtok: 1000}}\n"
                      f"{cheap}: {{input_per_mtok: 0.5, output_per_mtok: 2}}\n")
    env = socket_guard.subprocess_env({
        **service_env, **model_server.env(pricey),
        "ORCHESTRATOR_MODELS": json.dumps({"agents": {"qa": {"small": cheap}}}),
        "ORCHESTRATOR_PRICES_FILE": str(prices)})
    model_server.script = _writes_files
    plan = _describe_repo(tmp_path / "repo")
    source = tmp_path / "input.json"
    # the pricey model's worst case (4096 output tokens at $1000/Mtok) does not fit in $1
    source.write_text(json.dumps({"plan": plan, "budget_usd": 1.0, "budget_policy": "ask"}))
    thread = f"describe-{uuid.uuid4().hex[:8]}"

    ran = await asyncio.to_thread(_cli, env, "run", "plan_execution", "--input", str(source),
                                  "--thread-id", thread, "--json")
    assert ran.returncode == 3, ran.stdout + ran.stderr  # paused on the budget question
    paused = json.loads(ran.stdout)
    question = paused["interrupts"][0]["value"]
    assert question["kind"] == "budget"
    assert question["context"]["budget"]["cheaper"] == [cheap]
    assert model_server.requests == []  # refused before any call was made

    answer = json.dumps({"action": "switch", "model": cheap, "by": "ana"})
    done = await asyncio.to_thread(_cli, env, "resume", thread, "--value", answer, "--json")
    assert done.returncode == 0, done.stdout + done.stderr
    result = json.loads(done.stdout)
    assert result["status"] == "completed", result
    assert (tmp_path / "repo" / "app" / "greet.py").read_text() == _GREET
    report = result["final_result"]
    assert {t: report["tasks"][t]["tier"] for t in ("init", "config", "greet")} == {
        "init": "small", "config": "small", "greet": "small"}
    assert all(report["tasks"][t]["tier_reason"] for t in ("init", "config", "greet"))
    assert {r["model"] for r in model_server.requests} == {cheap.partition(":")[2]}

    costs = await asyncio.to_thread(_cli, env, "costs", "--thread", thread, "--json")
    assert costs.returncode == 0, costs.stderr
    rows = json.loads(costs.stdout)
    served = model_server.usage_totals(cheap)
    assert len(rows) == len(model_server.exchanges) == 3
    assert {r["model"] for r in rows} == {cheap} and {r["tier"] for r in rows} == {"small"}
    assert sum(r["input_tokens"] for r in rows) == served["prompt_tokens"]
    assert sum(r["output_tokens"] for r in rows) == served["completion_tokens"]
    expected = sum(Decimal(r["input_tokens"]) * Decimal("0.5")
                   + Decimal(r["output_tokens"]) * 2 for r in rows) / 1_000_000
    assert Decimal(str(sum(r["cost_usd"] for r in rows))) == pytest.approx(expected)
    assert all(r["prompt"].startswith("developer_write@") for r in rows)
