"""Budgets that hold (orchestrator/llm/budget.py): reservations under concurrency never let
the settled total pass the limit by more than one call's estimate, settling releases the
reservation, a dead caller's reservation expires, the fallback policy moves to a cheaper
model, and an exhausted budget fails with budget_exceeded without opening a breaker. Real
PostgreSQL and Redis through the plugin's fixtures; in-process fake models."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import random
import uuid
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from langchain_core.messages import AIMessage

from orchestrator.agent import Agent, HandlerError, RequestContext
from orchestrator.calls import call_agent
from orchestrator.errors import BudgetExceeded
from orchestrator.llm.budget import Budgets, Scope
from orchestrator.llm.calls import BudgetSpec
from orchestrator.llm.ledger import batched
from tests.test_llm_ledger import HERE, UsageModel, ask, context, db, namespace, services

__all__ = ["db", "namespace"]  # the fixtures, shared with the ledger's tests

_draws = random.Random()


def _random_usage() -> dict[str, Any]:
    """At most what the estimate assumes (input ~ chars/3 + 4 a message, output max_tokens):
    the real cost never passes the reserved one."""
    inp, out = _draws.randint(1, 7), _draws.randint(0, 50)
    return {"input_tokens": inp, "output_tokens": out, "total_tokens": inp + out}


def random_cost() -> UsageModel:
    return UsageModel(messages=itertools.cycle([AIMessage("ok")]), draw=_random_usage,
                      provider="local", model_name="random", max_tokens=50)


def expensive() -> UsageModel:
    return UsageModel(messages=itertools.cycle([AIMessage("dear")]), provider="local",
                      model_name="expensive", max_tokens=100,
                      usage={"input_tokens": 10, "output_tokens": 10, "total_tokens": 20})


def cheap() -> UsageModel:
    return UsageModel(messages=itertools.cycle([AIMessage("cheap")]), provider="local",
                      model_name="cheap", max_tokens=100,
                      usage={"input_tokens": 10, "output_tokens": 10, "total_tokens": 20})


@pytest.fixture
def prices(tmp_path: Path) -> Path:
    """$1,000 a million tokens ($0.001 a token) for the random model; the expensive one ten
    times the cheap one."""
    path = tmp_path / "prices.json"
    path.write_text(
        f'{{"{HERE}:x": {{"input_per_mtok": 1, "output_per_mtok": 1}},'
        f' "tests.test_llm_budget:random_cost": {{"input_per_mtok": 1000, "output_per_mtok": 1000}},'
        f' "tests.test_llm_budget:expensive": {{"input_per_mtok": 1000, "output_per_mtok": 1000}},'
        f' "tests.test_llm_budget:cheap": {{"input_per_mtok": 100, "output_per_mtok": 100}}}}')
    return path


async def budget_row(db, namespace: str, scope: str) -> dict[str, Any]:
    row = await db.fetchone("SELECT * FROM model_budgets WHERE namespace = %s AND scope = %s",
                            (namespace, scope))
    assert row is not None
    return row


@pytest.mark.parametrize("in_worker", [False, True], ids=["inline", "batched"])
async def test_fifty_concurrent_callers_never_pass_the_limit_by_more_than_one_estimate(
        db, prices, in_worker: bool) -> None:
    """Also as a worker runs handlers (``in_worker``): each caller inside ``batched()``, its
    ledger rows and settles written by the background writer, its reservations held until
    then."""
    spec = "tests.test_llm_budget:random_cost"
    for run in range(20):
        _draws.seed(run)
        ns = f"llm-share-{uuid.uuid4().hex[:8]}"
        models = services(db, ns, chat_model=spec, prices_file=prices)
        thread = f"shared-{run}"
        made: list[int] = []
        largest_estimate = Decimal(0)

        async def caller(models: Any, thread: str, made: list[int]) -> None:
            nonlocal largest_estimate
            ctx = context(models, thread=thread)
            async with batched() if in_worker else contextlib.nullcontext():
                while True:
                    try:
                        await ask(ctx, budget=BudgetSpec(thread_usd=1.0, policy="fail"))
                    except HandlerError as exc:
                        assert exc.code == "budget_exceeded" and exc.blames_input
                        largest_estimate = max(largest_estimate,
                                               Decimal(str(exc.details["estimate"])))
                        return
                    made.append(1)

        await asyncio.wait_for(asyncio.gather(
            *(caller(models, thread, made) for _ in range(50))), 120)
        row = await budget_row(db, ns, f"thread:{thread}")
        total = (await db.fetchone("SELECT sum(cost_usd) AS s FROM model_calls "
                                   "WHERE namespace = %s", (ns,)))["s"]
        assert row["spent_usd"] == total  # settled exactly what the ledger holds
        assert row["spent_usd"] <= Decimal("1.00") + largest_estimate, run
        assert row["reserved_usd"] == 0  # every reservation settled
        assert len(made) >= 10  # the budget was really shared out, not refused at once
        assert await db.fetchone("SELECT 1 FROM model_reservations WHERE namespace = %s",
                                 (ns,)) is None


async def test_settling_releases_the_reservation_and_adds_the_real_cost(
        db, namespace, prices) -> None:
    models = services(db, namespace, chat_model="tests.test_llm_budget:cheap",
                      prices_file=prices, daily_budget_usd=1.0,
                      agent_daily_budget_usd={"developer": 0.5})
    answer = await ask(context(models), budget=BudgetSpec(thread_usd=0.25))
    assert answer.cost_usd == pytest.approx(20 * 100 / 1e6)
    scopes = [r["scope"] for r in await db.fetch(
        "SELECT scope FROM model_budgets WHERE namespace = %s ORDER BY scope", (namespace,))]
    assert [s.split(":")[0] for s in scopes] == ["agent", "namespace", "thread"]
    for scope in scopes:
        row = await budget_row(db, namespace, scope)
        assert row["reserved_usd"] == 0 and row["spent_usd"] == Decimal("0.002")
    assert (await budget_row(db, namespace, "thread:thread-1"))["limit_usd"] == Decimal("0.25")


async def test_a_dead_callers_reservation_expires_and_is_released(db, namespace) -> None:
    budgets = Budgets(db, namespace)
    scope = [Scope("thread:t", Decimal("1.00"))]
    await budgets.reserve(scope, Decimal("0.80"), ttl=0.0)  # its caller dies: never settled
    # the next caller finds the scope full, releases the expired reservation, and fits
    kept = await budgets.reserve(scope, Decimal("0.50"), ttl=600.0)
    assert kept is not None
    row = await budget_row(db, namespace, "thread:t")
    assert row["reserved_usd"] == Decimal("0.50")
    await budgets.release(kept)
    assert (await budget_row(db, namespace, "thread:t"))["reserved_usd"] == 0


async def test_an_exhausted_budget_falls_back_to_a_cheaper_model_or_fails(
        db, namespace, prices) -> None:
    models = services(db, namespace, prices_file=prices, models={"tiers": {
        "large": "tests.test_llm_budget:expensive", "small": "tests.test_llm_budget:cheap"}})
    # the expensive model may cost up to (~4 + 100) tokens x $0.001: more than $0.05
    budget = BudgetSpec(thread_usd=0.05, policy="fallback")
    answer = await ask(context(models), tier="large", budget=budget)
    assert answer.model == "tests.test_llm_budget:cheap" and answer.content == "cheap"
    assert answer.reason and "fallback from tests.test_llm_budget:expensive" in answer.reason
    [row] = await db.fetch("SELECT model, reason, tier FROM model_calls WHERE namespace = %s",
                           (namespace,))
    assert row["model"] == "tests.test_llm_budget:cheap" and row["tier"] == "large"
    assert row["reason"].startswith("fallback from")
    with pytest.raises(HandlerError) as refused:
        await ask(context(models, thread="thread-2"), tier="large",
                  budget=BudgetSpec(thread_usd=0.05, policy="fail"))
    assert refused.value.code == "budget_exceeded" and refused.value.blames_input
    details = refused.value.details
    assert details["scope"] == "thread:thread-2" and details["limit"] == 0.05
    assert details["model"] == "tests.test_llm_budget:expensive"
    assert details["cheaper"] == ["tests.test_llm_budget:cheap"]


async def test_budget_exceeded_reaches_the_requester_and_never_opens_the_breaker(
        orchestrator_factory, prices) -> None:
    async def implement(payload: dict[str, Any], ctx: RequestContext) -> dict[str, Any]:
        await ask(ctx, budget=BudgetSpec(policy="fail"))
        return {}

    agent = Agent("llm_budget_probe").with_handlers({"implement": implement})
    orch = await orchestrator_factory(stand_ins=[agent], builtin=False,
                                      chat_model="tests.test_llm_budget:expensive",
                                      prices_file=prices, breaker_min_calls=2,
                                      agent_daily_budget_usd={"llm_budget_probe": 0.0001})
    for _ in range(6):
        with pytest.raises(BudgetExceeded) as refused:
            await call_agent("llm_budget_probe", "implement", {}, runtime=orch.runtime,
                             timeout=30)
        assert refused.value.code == "budget_exceeded"
        assert refused.value.details["cheaper"] == []
        assert refused.value.details["scope"].startswith("agent:llm_budget_probe:")
    assert await orch.runtime.breaker.state("llm_budget_probe") == "closed"
