"""The ``ask`` budget policy: when a model-using agent refuses a call for its budget
(:class:`~orchestrator.errors.BudgetExceeded`), the graph node asks a person what to do
instead of stopping dead::

    try:
        call = await implement_op.call(payload)
    except BudgetExceeded as exc:
        if policy != "ask":
            raise
        decision = ask_budget(exc)
        if decision.action == "raise":   # run again with budget_usd=decision.budget_usd
        elif decision.action == "switch":  # run again with model=decision.model
        else:                            # stop: end the run, recording who stopped it

It is an ``interrupt`` (see :mod:`orchestrator.questions`) with a typed answer: a malformed
one never decides, the question is asked again.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import ConfigDict, Field, model_validator

from orchestrator.errors import BudgetExceeded
from orchestrator.questions import Answer, ask

__all__ = ["BudgetAnswer", "ask_budget"]


class BudgetAnswer(Answer):
    """What to do about an exhausted budget: raise it (``budget_usd``, the workflow's new
    total), switch to a cheaper model (``model``, a spec), or stop the run."""

    model_config = ConfigDict(json_schema_extra={"examples": [
        {"action": "raise", "budget_usd": 5.0, "by": "alice"},
        {"action": "switch", "model": "openai:gpt-4o-mini", "by": "alice"},
        {"action": "stop", "by": "alice"},
    ]})

    action: Literal["raise", "switch", "stop"]
    budget_usd: float | None = Field(None, gt=0, description="with raise: the new budget, USD")
    model: str | None = Field(None, min_length=3, pattern=r"^[\w.-]+:\S+$",
                              description="with switch: the model to use (provider:model)")

    @model_validator(mode="after")
    def _complete(self) -> BudgetAnswer:
        if self.action == "raise" and self.budget_usd is None:
            raise ValueError("raise needs budget_usd, the new budget")
        if self.action == "switch" and self.model is None:
            raise ValueError("switch needs model, one of the cheaper models in the context")
        return self


def ask_budget(exc: BudgetExceeded, *, context: dict[str, Any] | None = None) -> BudgetAnswer:
    """Ask (inside a graph node) what to do about ``exc``; the question's context carries
    the refusal's details (scope, limit, spent, estimate, model, cheaper models)."""
    details = dict(exc.details)
    scope = details.get("scope", "a budget")
    question = (f"model budget {scope} is exhausted (${details.get('spent', 0):.4f} spent of "
                f"${details.get('limit', 0):.4f}): raise it, switch to a cheaper model, or stop?")
    return ask(BudgetAnswer, kind="budget", question=question,
               context={**(context or {}), "budget": details})
