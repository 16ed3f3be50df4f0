"""The ledger of model calls (orchestrator/llm): one row per call really made, with tokens and
cost that are exact or NULL (unknown), never a made-up 0; prices from genai-prices offline or
the override file. Real PostgreSQL through the plugin's database; chat models are in-process
fakes that report usage; nothing leaves the machine."""

from __future__ import annotations

import itertools
import logging
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from langchain_core.language_models.fake_chat_models import GenericFakeChatModel
from langchain_core.messages import AIMessage, HumanMessage
from langchain_core.outputs import ChatGenerationChunk, ChatResult
from orchestrator.state.db import Database
from orchestrator.state.migrations import migrate
from prometheus_client import REGISTRY

from orchestrator.agent import Agent, RequestContext
from orchestrator.llm.calls import BudgetSpec, PromptRef, model_call
from orchestrator.llm.config import ModelChoice, ModelsConfig, chat_model_for
from orchestrator.llm.services import ModelServices
from orchestrator.llm.tiers import choose_tier
from orchestrator.messages import AgentRequest
from orchestrator.settings import Settings

HERE = "tests.test_llm_ledger"
PROMPT = PromptRef("write_file", "3")


class UsageModel(GenericFakeChatModel):
    """A fake chat model that reports ``usage`` (None: no usage at all) as a provider would,
    and names itself ``provider``/``model_name`` for the price table. Streamed, the usage is
    spread over the chunks (input on the first, one output token each): only the sum is the
    call's."""

    usage: dict[str, Any] | None = None
    provider: str = "openai"
    model_name: str = "gpt-4o-mini"
    max_tokens: int | None = None
    draw: Callable[[], dict[str, Any]] | None = None  # a fresh usage per call

    def _usage(self) -> dict[str, Any] | None:
        return self.draw() if self.draw is not None else self.usage

    def _generate(self, *args: Any, **kwargs: Any) -> ChatResult:
        result = super()._generate(*args, **kwargs)
        result.generations[0].message.usage_metadata = self._usage()  # type: ignore[attr-defined]
        return result

    def _stream(self, *args: Any, **kwargs: Any) -> Iterator[ChatGenerationChunk]:
        usage = self._usage()
        for i, chunk in enumerate(super()._stream(*args, **kwargs)):
            if usage is not None:
                inp = usage["input_tokens"] if i == 0 else 0
                chunk.message.usage_metadata = {  # type: ignore[attr-defined]
                    "input_tokens": inp, "output_tokens": 1, "total_tokens": inp + 1}
            yield chunk

    def _get_ls_params(self, **kwargs: Any) -> Any:
        return {"ls_provider": self.provider, "ls_model_name": self.model_name}


FULL_USAGE = {"input_tokens": 1000, "output_tokens": 200, "total_tokens": 1200,
              "input_token_details": {"cache_read": 400},
              "output_token_details": {"reasoning": 50}}


def _answers() -> Iterator[AIMessage]:
    return itertools.cycle([AIMessage("one two three four five")])


def priced() -> UsageModel:
    """gpt-4o-mini as genai-prices knows it."""
    return UsageModel(messages=_answers(), usage=FULL_USAGE)


def unpriced() -> UsageModel:
    """A model no price table knows."""
    return UsageModel(messages=_answers(), usage=FULL_USAGE, provider="local",
                      model_name="mystery-7b")


def silent() -> UsageModel:
    """A provider that reports no usage."""
    return UsageModel(messages=_answers(), usage=None)


# -- fixtures -----------------------------------------------------------------------------------


@pytest.fixture
async def db(orchestrator_database_url: str) -> AsyncIterator[Database]:
    async with Database.connect(orchestrator_database_url, max_size=20) as database:
        await migrate(database)
        yield database


@pytest.fixture
def namespace() -> str:
    return f"llm-{uuid.uuid4().hex[:10]}"


def services(db: Database, namespace: str, **settings: Any) -> ModelServices:
    return ModelServices.from_settings(
        Settings(namespace=namespace, database_url="postgresql://unused", redis_url="redis://unused",
                 **settings), db)


def context(models: ModelServices | None, *, thread: str | None = "thread-1",
            agent_type: str = "developer", request_id: str | None = None) -> RequestContext:
    request = AgentRequest(request_id=request_id or str(uuid.uuid4()), source="test",
                           target=agent_type, request_type="implement", reply_to="test",
                           correlation_id=thread)
    return RequestContext(request=request, agent_id=f"{agent_type}@test", agent_type=agent_type,
                          log=logging.LoggerAdapter(logging.getLogger(__name__)), models=models)


async def ask(ctx: RequestContext, **kwargs: Any) -> Any:
    return await model_call(ctx, purpose="write_file", messages=[HumanMessage("write it")],
                            prompt=PROMPT, **kwargs)


async def rows(db: Database, namespace: str) -> list[dict[str, Any]]:
    return await db.fetch("SELECT * FROM model_calls WHERE namespace = %s ORDER BY id",
                          (namespace,))


def metric(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


# -- the ledger ---------------------------------------------------------------------------------


async def test_each_call_is_one_row_with_its_tokens_cost_and_origin(db, namespace) -> None:
    models = services(db, namespace, chat_model=f"{HERE}:priced")
    ctx = context(models)
    first = await ask(ctx, tier="large", budget=BudgetSpec(node="implement",
                                                           workflow_type="plan_execution"))
    await ask(ctx)
    found = await rows(db, namespace)
    assert len(found) == 2
    row = found[0]
    assert (row["sequence"], found[1]["sequence"]) == (0, 1)
    assert (row["input_tokens"], row["cached_tokens"], row["output_tokens"],
            row["reasoning_tokens"]) == (1000, 400, 200, 50)
    # gpt-4o-mini: $0.15 input, $0.075 cached input, $0.60 output per million tokens
    expected = (Decimal(600) * Decimal("0.15") + Decimal(400) * Decimal("0.075")
                + Decimal(200) * Decimal("0.6")) / 1_000_000
    assert row["cost_usd"] == expected and first.cost_usd == pytest.approx(float(expected))
    assert row["price_source"] == "genai-prices"
    assert (row["thread_id"], row["node"], row["workflow_type"], row["agent_type"]) == (
        "thread-1", "implement", "plan_execution", "developer")
    assert (row["model"], row["provider"], row["prompt"], row["tier"], row["purpose"]) == (
        f"{HERE}:priced", "openai", "write_file@3", "large", "write_file")
    assert row["request_id"] == ctx.request.request_id and row["latency_ms"] >= 0
    assert first.content == "one two three four five" and first.model == f"{HERE}:priced"


async def test_a_streamed_call_records_the_sum_of_its_chunks(db, namespace) -> None:
    models = services(db, namespace, chat_model=f"{HERE}:priced")
    answer = await ask(context(models), stream=True)
    [row] = await rows(db, namespace)
    # five words stream as nine chunks (words and spaces): one output token each
    assert answer.content == "one two three four five"
    assert (row["input_tokens"], row["output_tokens"]) == (1000, answer.usage.output_tokens)
    assert row["output_tokens"] > 1  # not the last chunk's alone
    assert row["cost_usd"] is not None


async def test_no_usage_reported_is_unknown_never_zero(db, namespace) -> None:
    models = services(db, namespace, chat_model=f"{HERE}:silent")
    before = metric("orchestrator_model_calls_unpriced_total", model=f"{HERE}:silent",
                    why="no_usage")
    answer = await ask(context(models))
    [row] = await rows(db, namespace)
    assert [row[k] for k in ("input_tokens", "cached_tokens", "output_tokens",
                             "reasoning_tokens", "cost_usd")] == [None] * 5
    assert answer.cost_usd is None and answer.usage.input_tokens is None
    assert metric("orchestrator_model_calls_unpriced_total", model=f"{HERE}:silent",
                  why="no_usage") == before + 1


async def test_a_model_without_a_price_has_no_cost_and_is_counted(db, namespace) -> None:
    models = services(db, namespace, chat_model=f"{HERE}:unpriced")
    labels = {"model": f"{HERE}:unpriced", "why": "no_price"}
    before = metric("orchestrator_model_calls_unpriced_total", **labels)
    tokens_before = metric("orchestrator_model_tokens_total", model=f"{HERE}:unpriced",
                           agent_type="developer", kind="input")
    await ask(context(models))
    [row] = await rows(db, namespace)
    assert row["cost_usd"] is None and row["price_source"] is None
    assert row["input_tokens"] == 1000  # the tokens are known all the same
    assert metric("orchestrator_model_calls_unpriced_total", **labels) == before + 1
    assert metric("orchestrator_model_tokens_total", model=f"{HERE}:unpriced",
                  agent_type="developer", kind="input") == tokens_before + 1000


async def test_the_override_file_wins_over_genai_prices(db, namespace, tmp_path: Path) -> None:
    prices = tmp_path / "prices.yaml"
    prices.write_text(f"{HERE}:priced:\n  input_per_mtok: 1.0\n  output_per_mtok: 2.0\n"
                      f"{HERE}:unpriced: {{input_per_mtok: 3, output_per_mtok: 4}}\n")
    models = services(db, namespace, chat_model=f"{HERE}:priced", prices_file=prices)
    await ask(context(models))
    await ask(context(models), model=f"{HERE}:unpriced")
    first, second = await rows(db, namespace)
    # no cached rate given: cached input costs the input rate
    assert first["cost_usd"] == Decimal("0.0014") and first["price_source"] == "override:prices.yaml"
    assert second["cost_usd"] == Decimal("0.0038")


async def test_no_model_configured_leaves_the_rule_based_path(db, namespace) -> None:
    assert await ask(context(services(db, namespace))) is None
    assert await ask(context(None)) is None
    assert await rows(db, namespace) == []


async def test_a_re_executed_request_is_recorded_again_a_rewritten_row_once(
        db, namespace) -> None:
    models = services(db, namespace, chat_model=f"{HERE}:priced")
    request_id = str(uuid.uuid4())
    await ask(context(models, request_id=request_id))  # the execution that crashed after it
    await ask(context(models, request_id=request_id))  # the re-execution: the model ran again
    first, second = await rows(db, namespace)
    assert first["request_id"] == second["request_id"] == request_id
    assert first["execution"] != second["execution"]
    # the same execution's row written twice (a retried write) stays one row
    from dataclasses import fields

    from orchestrator.llm.ledger import CallRecord

    again = CallRecord(**{f.name: first[f.name] for f in fields(CallRecord)})
    assert models.ledger is not None
    await models.ledger.record(again, None)
    assert len(await rows(db, namespace)) == 2


async def test_a_redelivered_request_answered_from_the_store_records_nothing(
        orchestrator_factory) -> None:
    async def implement(payload: dict[str, Any], ctx: RequestContext) -> dict[str, Any]:
        answer = await ask(ctx)
        return {"content": answer.content}

    agent = Agent("llm_ledger_probe", capabilities=["python"]).with_handlers(
        {"implement": implement})
    orch = await orchestrator_factory(stand_ins=[agent], builtin=False,
                                      chat_model=f"{HERE}:priced")
    rt = orch.runtime
    request = AgentRequest(source=rt.process_id, target="llm_ledger_probe",
                           request_type="implement", reply_to=rt.bus.reply_stream,
                           correlation_id=f"thread-{uuid.uuid4().hex[:8]}")
    first = await rt.bus.request(request, 30)
    again = await rt.bus.request(request.model_copy(), 30)  # sent again: the stored answer
    assert first.status == again.status == "success" and first.result == again.result
    found = await rt.db.fetch("SELECT * FROM model_calls WHERE request_id = %s",
                              (request.request_id,))
    assert len(found) == 1 and found[0]["agent_type"] == "llm_ledger_probe"


async def test_batched_calls_are_written_when_the_block_ends_and_settle_their_reservations(
        db, namespace) -> None:
    from orchestrator.llm.ledger import batched

    models = services(db, namespace, chat_model=f"{HERE}:priced", daily_budget_usd=10.0,
                      agent_daily_budget_usd={"developer": 5.0})
    assert models.ledger is not None
    models.ledger.linger = 60.0  # only the block's end writes them
    async with batched():
        answers = [await ask(context(models, thread=f"t-{i}"),
                             budget=BudgetSpec(thread_usd=1.0)) for i in range(3)]
        assert await rows(db, namespace) == []  # queued: off the calls' path
        reserved = await db.fetch("SELECT reserved_usd FROM model_budgets WHERE namespace = %s",
                                  (namespace,))
        assert reserved and all(r["reserved_usd"] > 0 for r in reserved)  # still held
    found = await rows(db, namespace)  # the block's end waited for them
    assert len(found) == 3 and [r["thread_id"] for r in found] == ["t-0", "t-1", "t-2"]
    total = sum(Decimal(str(a.cost_usd)) for a in answers)
    assert sum(r["cost_usd"] for r in found) == pytest.approx(total)
    budgets = {r["scope"].split(":")[0] + (":t" if r["scope"].startswith("thread") else ""): r
               for r in await db.fetch("SELECT * FROM model_budgets WHERE namespace = %s",
                                       (namespace,))}
    assert budgets["namespace"]["spent_usd"] == budgets["agent"]["spent_usd"] == sum(
        r["cost_usd"] for r in found)
    assert all(r["reserved_usd"] == 0 for r in budgets.values())
    assert await db.fetchone("SELECT 1 FROM model_reservations WHERE namespace = %s",
                             (namespace,)) is None


async def test_a_row_the_database_refuses_does_not_take_its_batch_with_it(
        db, namespace, caplog: pytest.LogCaptureFixture) -> None:
    from dataclasses import replace

    from orchestrator.llm.ledger import CallRecord, batched

    models = services(db, namespace)
    assert models.ledger is not None
    good = CallRecord(thread_id="t", workflow_type=None, node=None, agent_type="developer",
                      request_id=str(uuid.uuid4()), execution="e", sequence=0, model="m",
                      provider="p", input_tokens=1, cached_tokens=None, output_tokens=1,
                      reasoning_tokens=None, cost_usd=Decimal("0.5"), price_source="x",
                      latency_ms=1.0, prompt="p@1", tier="small", purpose="write_file",
                      reason=None)
    bad = replace(good, sequence=1, purpose="nul\x00byte")  # PostgreSQL takes no NUL in text
    later = replace(good, sequence=2)
    models.ledger.linger = 60.0
    async with batched():
        for row in (good, bad, later):
            await models.ledger.record(row, None)
    assert [r["sequence"] for r in await rows(db, namespace)] == [0, 2]
    assert "sequence 1) refused: dropped" in caplog.text


async def test_a_workers_answer_is_stored_only_after_its_ledger_rows(
        orchestrator_factory) -> None:
    import asyncio

    returned = asyncio.Event()

    async def implement(payload: dict[str, Any], ctx: RequestContext) -> dict[str, Any]:
        answer = await ask(ctx)
        returned.set()
        return {"content": answer.content}

    agent = Agent("llm_ledger_order_probe").with_handlers({"implement": implement})
    orch = await orchestrator_factory(stand_ins=[agent], builtin=False,
                                      chat_model=f"{HERE}:priced")
    rt = orch.runtime
    request = AgentRequest(source=rt.process_id, target="llm_ledger_order_probe",
                           request_type="implement", reply_to=rt.bus.reply_stream,
                           correlation_id=f"thread-{uuid.uuid4().hex[:8]}")
    async with rt.db.transaction() as conn:
        # the ledger's insert waits behind this lock; the model call itself does not
        await conn.execute("LOCK TABLE model_calls IN SHARE MODE")
        answering = asyncio.create_task(rt.bus.request(request, 30))
        await asyncio.wait_for(returned.wait(), 30)  # the handler is done, its row queued
        for _ in range(300):  # the background writer's insert is waiting for the lock
            if await rt.db.fetchone(
                    "SELECT 1 FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                    "AND query LIKE %s", ("%INSERT INTO model_calls%",)):
                break
            await asyncio.sleep(0.01)
        else:
            raise AssertionError("the ledger's insert never waited for the lock")
        done, _ = await asyncio.wait({answering}, timeout=0.5)
        assert not done  # no answer while the row is not written...
        assert await rt.bus.stored_response(request.request_id) is None  # ...nor stored
    response = await asyncio.wait_for(answering, 30)  # the lock gone: row, then answer
    assert response.status == "success"
    found = await rt.db.fetch("SELECT * FROM model_calls WHERE request_id = %s",
                              (request.request_id,))
    assert len(found) == 1


# -- choosing the model -------------------------------------------------------------------------


def test_models_fall_back_from_agent_to_tier_to_the_default() -> None:
    choice = ModelChoice("openai:gpt-4o-mini", ModelsConfig.model_validate({
        "tiers": {"large": "openai:gpt-4.1"},
        "agents": {"developer": {"large": "anthropic:claude-sonnet-4-5"}}}))
    assert choice.spec_for("developer", "large") == "anthropic:claude-sonnet-4-5"
    assert choice.spec_for("code_review", "large") == "openai:gpt-4.1"
    assert choice.spec_for("developer", "small") == "openai:gpt-4o-mini"
    assert ModelChoice(None).spec_for("developer", "medium") is None


def test_provider_specs_go_through_init_chat_model_and_factories_still_work(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "test")
    monkeypatch.setenv("OPENAI_BASE_URL", "http://127.0.0.1:9/v1")
    chat_model_for.cache_clear()
    model = chat_model_for("openai:gpt-4o-mini")
    assert type(model).__name__ == "ChatOpenAI" and model.model_name == "gpt-4o-mini"
    assert "127.0.0.1:9" in str(model.root_async_client.base_url)  # the provider's variable
    assert isinstance(chat_model_for(f"{HERE}:priced"), UsageModel)
    chat_model_for.cache_clear()


def test_settings_read_the_model_configuration_from_the_environment() -> None:
    settings = Settings.from_env({
        "ORCHESTRATOR_CHAT_MODEL": "openai:gpt-4o-mini",
        "ORCHESTRATOR_MODELS": '{"tiers": {"small": "openai:gpt-4.1-nano"}}',
        "ORCHESTRATOR_AGENT_DAILY_BUDGET_USD": '{"developer": 2.5}',
        "ORCHESTRATOR_DAILY_BUDGET_USD": "10"})
    assert settings.models is not None and settings.models.tiers == {"small": "openai:gpt-4.1-nano"}
    assert settings.agent_daily_budget_usd == {"developer": 2.5}
    assert settings.daily_budget_usd == 10
    from orchestrator.errors import InvalidInput

    with pytest.raises(InvalidInput, match="ORCHESTRATOR_MODELS"):
        Settings.from_env({"ORCHESTRATOR_MODELS": '{"tiers": {"huge": "openai:x"}}'})


def test_a_retry_moves_up_one_tier_and_says_why() -> None:
    assert choose_tier(20, 0, 1, True) == ("small", "score 0 (small, self-contained, new)")
    tier, reason = choose_tier(20, 0, 1, True, attempt=2)
    assert tier == "medium" and "attempt 2" in reason and "up from small" in reason
    assert choose_tier(20, 0, 1, True, attempt=5)[0] == "large"
    assert choose_tier(150, 3, 0, False)[0] == "medium"
    assert choose_tier(400, 6, 6, False)[0] == "large"


# -- orchestrator costs -------------------------------------------------------------------------


async def test_costs_prints_the_ledger_rows_totals_and_recommendations(
        db, namespace, orchestrator_settings, monkeypatch: pytest.MonkeyPatch) -> None:
    import asyncio
    import io
    import json

    from orchestrator.cli import main

    models = services(db, namespace, chat_model=f"{HERE}:priced")
    for _ in range(3):  # right first time on the large tier, three times
        await ask(context(models, thread="t-large"), tier="large")
    await model_call(context(models, thread="t-other"), purpose="review", model=f"{HERE}:unpriced",
                     messages=[HumanMessage("review it")], prompt=PromptRef("review", "1"))
    monkeypatch.setenv("ORCHESTRATOR_DATABASE_URL", orchestrator_settings.database_url)
    monkeypatch.setenv("ORCHESTRATOR_REDIS_URL", orchestrator_settings.redis_url)
    monkeypatch.setenv("ORCHESTRATOR_NAMESPACE", namespace)

    def run(*argv: str) -> str:
        out, err = io.StringIO(), io.StringIO()
        assert main(list(argv), stdout=out, stderr=err) == 0, err.getvalue()
        return out.getvalue()

    listed = json.loads(await asyncio.to_thread(run, "costs", "--json", "--since", "1h"))
    assert len(listed) == 4
    assert {"thread_id", "model", "input_tokens", "output_tokens", "cost_usd"} <= set(listed[0])
    assert [r["cost_usd"] is None for r in listed] == [False, False, False, True]
    one = json.loads(await asyncio.to_thread(run, "costs", "--json", "--thread", "t-other"))
    assert [r["model"] for r in one] == [f"{HERE}:unpriced"]
    text = await asyncio.to_thread(run, "costs", "--by", "agent")
    assert "developer" in text and "TOTAL" in text and "1 calls have no cost" in text
    assert "developer write_file: 3 requests on the large tier" in text
    assert f"no price known for {HERE}:unpriced" in text
