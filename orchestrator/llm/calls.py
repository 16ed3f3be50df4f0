"""``model_call``: the one way an agent's handler asks a chat model.

It resolves the model for the agent type and tier (:mod:`orchestrator.llm.config`; None when
there is none: the caller keeps its rule-based path), estimates the call's worst-case cost,
reserves it on every budget scope the call falls in, calls the model, records one ledger row
and settles the reservation to the real cost (:mod:`orchestrator.llm.budget`,
:mod:`orchestrator.llm.ledger`). What it adds to a call is kept to one round trip (the
reservation, committed before the model is called); inside a worker the ledger row and the
settle are written by the ledger's background writer, before the request is answered
(:func:`orchestrator.llm.ledger.batched`); the model's provider, name and metric children are
looked up once per model, not per call. ``python -m bench.llm`` measures it.

A budget that cannot take the estimate: with ``BudgetSpec.policy == "fallback"`` the next
cheaper configured model that keeps the call's capabilities is tried; otherwise (and when none
fits) the handler fails with ``budget_exceeded`` (``HandlerError``, blaming the input) whose
details say which scope, its limit, what was spent, the estimate and the cheaper models. The
requester's ``call_agent`` raises :class:`~orchestrator.errors.BudgetExceeded`, and a graph
node whose policy is ``ask`` asks a person with :func:`orchestrator.llm.policy.ask_budget`.
"""

from __future__ import annotations

import functools
import json
import logging
import re
import time
from datetime import UTC, datetime
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ValidationError

from orchestrator.agent import HandlerError
from orchestrator.errors import AgentErrorCode
from orchestrator.llm.budget import BudgetRefused, Reservation, Scope, day_scopes
from orchestrator.llm.config import ModelChoice, chat_model_for, provider_and_name
from orchestrator.llm.ledger import CallRecord
from orchestrator.llm.prices import Price, PriceTable
from orchestrator.llm.services import ModelServices
from orchestrator.llm.types import BudgetSpec, ModelAnswer, PromptRef, Usage
from orchestrator.metrics import MODEL_CALLS, MODEL_CALLS_UNPRICED, MODEL_COST, MODEL_TOKENS

if TYPE_CHECKING:
    from langchain_core.language_models import BaseChatModel
    from langchain_core.messages import BaseMessage

    from orchestrator.agent import RequestContext

__all__ = ["model_call", "ModelAnswer", "PromptRef", "BudgetSpec", "Usage"]

log = logging.getLogger(__name__)


async def model_call(
    ctx: RequestContext,
    *,
    purpose: str,
    tier: str = "medium",
    messages: list[BaseMessage],
    prompt: PromptRef,
    schema: type[BaseModel] | None = None,
    stream: bool = False,
    budget: BudgetSpec | None = None,
    model: str | None = None,
) -> ModelAnswer | None:
    """Ask the model configured for ``ctx``'s agent type and ``tier`` (or ``model``, a spec).

    Args:
        purpose: what the call is for (``write_file``, ``review``...), recorded in the ledger.
        schema: a pydantic model the answer must fit (structured output).
        stream: stream the answer (the usage is summed over the chunks).
        budget: the workflow's budget and policy (default: no workflow budget, policy ask).

    Returns:
        The answer, or None when no model is configured for the agent type and tier.

    Raises:
        HandlerError: ``budget_exceeded`` (blames the input) when the budgets cannot take the
            call and the policy found no cheaper model that fits.
    """
    services = ctx.models or _without_database(ctx.chat_model_spec)
    first = model or services.choice.spec_for(ctx.agent_type, tier)
    if first is None:
        return None
    budget = budget or BudgetSpec()
    scopes = _scopes(ctx, services, budget)
    structured = schema is not None and _structured(chat_model_for(first))
    cheaper = _cheaper(services, first) if budget.policy == "fallback" else None
    candidates = [first, *(cheaper or ())]
    refusal: BudgetRefused | None = None
    for spec in candidates:
        chat, provider, name = _model(spec)
        if structured and not _structured(chat):
            continue
        price = services.prices.price(spec, provider, name)
        estimate = _estimate(messages, chat, price, services.max_output_tokens)
        reservation = None
        if services.budgets is not None and scopes:
            try:
                reservation = await services.budgets.reserve(scopes, estimate, _ttl(ctx))
            except BudgetRefused as exc:
                refusal = refusal or exc
                continue
        reason = None if spec == first else f"fallback from {first}: {refusal}"
        return await _call(ctx, services, spec, chat, provider, price, reservation,
                           purpose=purpose, tier=tier, messages=messages, prompt=prompt,
                           schema=schema, stream=stream, budget=budget, reason=reason)
    assert refusal is not None  # every candidate was refused, or skipped for a capability
    if cheaper is None:
        cheaper = _cheaper(services, first)
    raise HandlerError(
        AgentErrorCode.BUDGET_EXCEEDED,
        f"{refusal}; raise the budget, switch to a cheaper model"
        + (f" ({', '.join(cheaper)})" if cheaper else "") + " or let the policy fall back",
        blames_input=True, details={**refusal.details(), "model": first, "cheaper": cheaper})


async def _call(ctx: RequestContext, services: ModelServices, spec: str, chat: BaseChatModel,
                provider: str, price: Price | None, reservation: Reservation | None, *,
                purpose: str, tier: str, messages: list[BaseMessage], prompt: PromptRef,
                schema: type[BaseModel] | None, stream: bool, budget: BudgetSpec,
                reason: str | None) -> ModelAnswer:
    sequence = next(ctx.model_sequence)
    started = time.perf_counter()
    try:
        message, parsed = await _invoke(chat, messages, schema, stream)
    except BaseException:
        if reservation is not None and services.budgets is not None:
            try:
                await services.budgets.release(reservation)
            except Exception as exc:  # it expires anyway
                log.warning("could not release budget reservation %d: %s", reservation.id, exc)
        raise
    latency_ms = (time.perf_counter() - started) * 1000
    usage = Usage.of(message)
    cost: Decimal | None = None
    if price is not None and usage.known:
        cost = price.cost(usage.input_tokens or 0, usage.output_tokens or 0,
                          usage.cached_tokens or 0)
    _count(spec, ctx.agent_type, usage, cost, price)
    if services.ledger is not None:
        await services.ledger.record(CallRecord(
            thread_id=ctx.request.correlation_id, workflow_type=budget.workflow_type,
            node=budget.node, agent_type=ctx.agent_type, request_id=ctx.request.request_id,
            execution=ctx.execution, sequence=sequence, model=spec, provider=provider,
            input_tokens=usage.input_tokens, cached_tokens=usage.cached_tokens,
            output_tokens=usage.output_tokens, reasoning_tokens=usage.reasoning_tokens,
            cost_usd=cost, price_source=price.source if price is not None else None,
            latency_ms=latency_ms, prompt=str(prompt), tier=tier, purpose=purpose,
            reason=reason), reservation)
    return ModelAnswer(content=_text(message), parsed=parsed, model=spec, usage=usage,
                       cost_usd=float(cost) if cost is not None else None, tier=tier,
                       reason=reason)


def _count(spec: str, agent_type: str, usage: Usage, cost: Decimal | None,
           price: Price | None) -> None:
    calls, tokens, spent = _counters(spec, agent_type)
    calls.inc()
    for counter, value in zip(tokens, (usage.input_tokens, usage.cached_tokens,
                                       usage.output_tokens, usage.reasoning_tokens),
                              strict=True):
        if value:
            counter.inc(value)
    if cost is not None:
        spent.inc(float(cost))
    else:
        MODEL_CALLS_UNPRICED.labels(spec, "no_price" if price is None else "no_usage").inc()


@functools.lru_cache(maxsize=1024)
def _counters(spec: str, agent_type: str) -> tuple[Any, tuple[Any, ...], Any]:
    """The metrics' children of a model and agent type, looked up once (not per call)."""
    return (MODEL_CALLS.labels(spec, agent_type),
            tuple(MODEL_TOKENS.labels(spec, agent_type, kind)
                  for kind in ("input", "cached", "output", "reasoning")),
            MODEL_COST.labels(spec, agent_type))


_models: dict[str, tuple[BaseChatModel, str, str]] = {}


def _model(spec: str) -> tuple[BaseChatModel, str, str]:
    """(chat model, provider, model name) of ``spec``: the provider and name are worked out
    once per chat model (a factory's model is asked, which is not free), not per call."""
    chat = chat_model_for(spec)
    known = _models.get(spec)
    if known is None or known[0] is not chat:  # new, or chat_model_for's cache was cleared
        known = _models[spec] = (chat, *provider_and_name(spec, chat))
    return known


async def _invoke(chat: BaseChatModel, messages: list[BaseMessage],
                  schema: type[BaseModel] | None, stream: bool) -> tuple[Any, Any]:
    """(the model's message, the parsed answer or None)."""
    if schema is not None and not stream and _structured(chat):
        out = await chat.with_structured_output(schema, include_raw=True).ainvoke(messages)
        return out["raw"], out.get("parsed")  # type: ignore[index,union-attr]
    if stream:
        total: Any = None
        async for chunk in chat.astream(messages):
            total = chunk if total is None else total + chunk  # sums usage_metadata too
        message = total
    else:
        message = await chat.ainvoke(messages)
    return message, (_parse_json(schema, _text(message)) if schema is not None else None)


def _text(message: Any) -> str:
    if message is None:
        return ""
    text = getattr(message, "text", None)
    return text if isinstance(text, str) else str(getattr(message, "content", ""))


def _parse_json(schema: type[BaseModel], text: str) -> Any:
    """The schema instance in a reply that is (or fences) a JSON object, or None."""
    fenced = re.search(r"```(?:json)?\s*(.*?)```", text, re.DOTALL)
    raw = fenced.group(1) if fenced else text[text.find("{"):text.rfind("}") + 1]
    try:
        return schema.model_validate(json.loads(raw))
    except (ValueError, ValidationError):
        return None


def _structured(chat: BaseChatModel) -> bool:
    """Whether the model does structured output itself (tool calling), as the call needs."""
    from langchain_core.language_models import BaseChatModel

    profile = getattr(chat, "profile", None) or {}
    if isinstance(profile, dict) and "structured_output" in profile:
        return bool(profile["structured_output"] or profile.get("tool_calling"))
    return type(chat).bind_tools is not BaseChatModel.bind_tools


def _scopes(ctx: RequestContext, services: ModelServices, budget: BudgetSpec) -> list[Scope]:
    scopes = day_scopes(ctx.agent_type, services.daily_budget_usd,
                        services.agent_daily_budget_usd)
    thread = ctx.request.correlation_id
    if thread and budget.thread_usd is not None:
        scopes.append(Scope(f"thread:{thread}", Decimal(str(budget.thread_usd))))
    return scopes


def _estimate(messages: list[BaseMessage], chat: Any, price: Price | None,
              default_max_output: int) -> Decimal:
    """The call's worst-case cost: its input (about 3 characters a token, counted without
    the provider's tokenizer, which may need the network) and the most it may write."""
    if price is None:
        return Decimal(0)
    chars = sum(len(m.content) if isinstance(m.content, str) else len(json.dumps(m.content))
                for m in messages)
    input_tokens = chars // 3 + 4 * len(messages)
    max_output = (getattr(chat, "max_tokens", None) or getattr(chat, "max_completion_tokens", None)
                  or default_max_output)
    return price.cost(input_tokens, int(max_output))


def _cheaper(services: ModelServices, spec: str) -> list[str]:
    """The configured models priced below ``spec`` (input plus output rate), cheapest last
    in the order they are tried: the next cheaper first."""
    def rate(candidate: str) -> Decimal | None:
        try:
            _, provider, name = _model(candidate)
        except Exception:
            return None
        price = services.prices.price(candidate, provider, name)
        return None if price is None else price.input_per_mtok + price.output_per_mtok

    own = rate(spec)
    if own is None:
        return []
    priced = [(r, c) for c in services.choice.configured() if c != spec
              for r in [rate(c)] if r is not None and r < own]
    return [c for _, c in sorted(priced, reverse=True)]


def _ttl(ctx: RequestContext) -> float:
    """How long a reservation outlives a caller that never settles: the request's deadline
    and a minute, or 15 minutes."""
    deadline = ctx.request.deadline
    if deadline is None:
        return 900.0
    return max((deadline - datetime.now(UTC)).total_seconds(), 0.0) + 60.0


@functools.cache
def _without_database(spec: str | None) -> ModelServices:
    """The services of a handler run without a worker (``Agent.call_locally``): the default
    model only, nothing recorded or reserved."""
    return ModelServices(choice=ModelChoice(spec), prices=PriceTable({}))
