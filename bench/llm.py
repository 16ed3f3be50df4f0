"""Ledger and budget overhead per model call (issue 15, item 7).

* ``model_call_overhead``: the same in-process fake chat model (it reports usage, answers at
  once) called bare (``ainvoke``: the baseline) and through
  :func:`orchestrator.llm.calls.model_call` with a workflow budget, a namespace daily budget
  and an agent daily budget (so each call reserves on three scopes and records its ledger row
  and settle on the real PostgreSQL), in alternating rounds so both see the same machine.
  The calls run as the worker runs a handler: inside :func:`orchestrator.llm.ledger.batched`,
  so the reservation (one statement) is on the call's path and the ledger row + settle are
  written by the background writer. Figure: the median per call of each and the difference.
  Target: the median added ≤ 1 ms.
* ``request_ledger_flush``: what the worker then waits for once per request, when it leaves
  ``batched()`` (the rows written before the answer is stored), after a handler whose last
  step was a model call: the worst case (a handler with work after its call waits less). A
  figure, no target.

    python -m bench.llm [--quick]

Uses ORCHESTRATOR_DATABASE_URL / ORCHESTRATOR_REDIS_URL (embedded services when unset).
"""

from __future__ import annotations

import itertools
import logging
import statistics
import time
import uuid
from typing import Any

from langchain_core.language_models.fake_chat_models import GenericFakeChatModel
from langchain_core.messages import AIMessage, HumanMessage
from langchain_core.outputs import ChatResult

from orchestrator.agent import RequestContext
from orchestrator.llm.calls import BudgetSpec, PromptRef, chat_model_for, model_call
from orchestrator.llm.ledger import batched
from orchestrator.messages import AgentRequest
from orchestrator.runtime import Runtime

from .common import Result, run_standalone, settings, summary

__all__ = ["run"]

_TARGET = "median ledger + budget overhead per model call ≤ 1 ms"
_SPEC = "bench.llm:fake_model"


class _Model(GenericFakeChatModel):
    def _generate(self, *args: Any, **kwargs: Any) -> ChatResult:
        result = super()._generate(*args, **kwargs)
        result.generations[0].message.usage_metadata = {  # type: ignore[attr-defined]
            "input_tokens": 120, "output_tokens": 40, "total_tokens": 160}
        return result

    async def _agenerate(self, *args: Any, **kwargs: Any) -> ChatResult:
        # on the event loop, as a provider's async client is (the fake's default runs
        # _generate in a thread, a hop that is no part of a real call)
        return self._generate(*args, **kwargs)

    def _get_ls_params(self, **kwargs: Any) -> Any:
        return {"ls_provider": "openai", "ls_model_name": "gpt-4o-mini"}


def fake_model() -> _Model:
    """A model that answers at once with usage, priced as gpt-4o-mini (genai-prices)."""
    return _Model(messages=itertools.cycle([AIMessage("done")]))


async def run(quick: bool = False) -> list[Result]:
    rounds, per_round = (4, 25) if quick else (20, 100)
    base = settings("llm", local_agents=False, chat_model=_SPEC, daily_budget_usd=1_000_000,
                    agent_daily_budget_usd={"developer": 1_000_000})
    async with Runtime.open(base, agents=[]) as rt:
        from orchestrator.llm.services import ModelServices

        models = ModelServices.from_settings(base, rt.db)
        chat = chat_model_for(_SPEC)
        messages = [HumanMessage("write shop/discounts.py from its description")]
        prompt, budget = PromptRef("bench", "1"), BudgetSpec(thread_usd=1_000_000)
        bare: list[float] = []
        through: list[float] = []
        flushes: list[float] = []
        for _ in range(10):  # the first statements of a connection are slower (not prepared)
            await model_call(_context(models), purpose="warm", messages=messages,
                             prompt=prompt, budget=budget)
        for _ in range(rounds):
            for _ in range(per_round):
                started = time.perf_counter()
                await chat.ainvoke(messages)
                bare.append(time.perf_counter() - started)
            ctx = _context(models)
            async with batched():  # a handler making per_round calls
                for _ in range(per_round):
                    started = time.perf_counter()
                    await model_call(ctx, purpose="bench", messages=messages, prompt=prompt,
                                     budget=budget)
                    through.append(time.perf_counter() - started)
            for _ in range(per_round // 10):  # handlers whose last step is their one call
                block = batched()
                await block.__aenter__()
                await model_call(_context(models), purpose="bench", messages=messages,
                                 prompt=prompt, budget=budget)
                started = time.perf_counter()
                await block.__aexit__(None, None, None)
                flushes.append(time.perf_counter() - started)
        rows = (await rt.db.fetchone("SELECT count(*) AS n FROM model_calls WHERE namespace = %s",
                                     (base.namespace,)) or {})["n"]
        await rt.db.execute("DELETE FROM model_calls WHERE namespace = %s", (base.namespace,))
        await rt.db.execute("DELETE FROM model_budgets WHERE namespace = %s", (base.namespace,))
    added = (statistics.median(through) - statistics.median(bare)) * 1000
    figures = {**summary(through), "added_median_ms": round(added, 4), "ledger_rows": rows,
               "budget_scopes": 3}
    return [Result("model_call_overhead", _TARGET, added <= 1.0, figures, summary(bare),
                   round(statistics.median(through) / statistics.median(bare), 2),
                   "model_call in batched(): reserve on 3 scopes (1 statement) on the call's "
                   "path; ledger rows + settles by the background writer (1 statement a "
                   "batch); baseline: the bare fake model's ainvoke"),
            Result("request_ledger_flush", "a figure (no target)", None, summary(flushes),
                   notes="leaving batched() right after a handler's one model call: the wait "
                   "for its ledger row + settle, once per request, before its answer")]


def _context(models: Any) -> RequestContext:
    request = AgentRequest(source="bench", target="developer", request_type="implement",
                           reply_to="bench", correlation_id=f"bench-{uuid.uuid4().hex[:8]}")
    return RequestContext(request=request, agent_id="developer@bench", agent_type="developer",
                          log=logging.LoggerAdapter(logging.getLogger(__name__)), models=models)


if __name__ == "__main__":
    raise SystemExit(run_standalone("llm", __doc__, run))
