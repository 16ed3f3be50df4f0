"""The values of a model call that travel: the prompt's reference, the workflow's budget as a
request carries it, and the answer with its usage. Plain data (pydantic and dataclasses): the
contracts import them without importing LangChain."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["PromptRef", "BudgetSpec", "Usage", "ModelAnswer", "BudgetPolicy"]

BudgetPolicy = Literal["ask", "fallback", "fail"]


@dataclass(frozen=True)
class PromptRef:
    """The prompt template a call used (``agents/prompts/NAME.md`` at ``version``)."""

    name: str
    version: str

    def __str__(self) -> str:
        return f"{self.name}@{self.version}"


class BudgetSpec(BaseModel):
    """The workflow's budget as a request carries it (a contract's ``budget`` field).

    ``node`` and ``workflow_type`` say where the call comes from, for the ledger (the workflow
    type is looked up from the thread when not given).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    thread_usd: float | None = Field(None, ge=0, description="the workflow's budget_usd")
    policy: BudgetPolicy = "ask"
    node: str | None = None
    workflow_type: str | None = None


@dataclass(frozen=True)
class Usage:
    """Tokens of a call; None is unknown (the provider did not say), never 0."""

    input_tokens: int | None = None
    cached_tokens: int | None = None
    output_tokens: int | None = None
    reasoning_tokens: int | None = None

    @classmethod
    def of(cls, message: Any) -> Usage:
        """From a message's ``usage_metadata`` (cached: ``input_token_details.cache_read``,
        reasoning: ``output_token_details.reasoning``)."""
        meta = getattr(message, "usage_metadata", None)
        if not meta:
            return cls()
        return cls(meta.get("input_tokens"),
                   (meta.get("input_token_details") or {}).get("cache_read"),
                   meta.get("output_tokens"),
                   (meta.get("output_token_details") or {}).get("reasoning"))

    @property
    def known(self) -> bool:
        return self.input_tokens is not None and self.output_tokens is not None


@dataclass(frozen=True)
class ModelAnswer:
    """A model's answer: its text, the parsed ``schema`` instance (None when no schema was
    asked for, or the reply did not fit it), the model spec that answered, its usage and cost
    (None: unknown), the tier asked for, and why another model answered, if one did."""

    content: str
    parsed: Any
    model: str
    usage: Usage
    cost_usd: float | None
    tier: str
    reason: str | None = None
