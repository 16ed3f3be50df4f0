"""Language models for agents: which model serves a call (:mod:`.config`, :mod:`.tiers`),
what it costs (:mod:`.prices`), the ledger (:mod:`.ledger`), budgets (:mod:`.budget`), the
one call agents make (:func:`model_call`, in :mod:`.calls`) and the budget question graphs
ask (:mod:`.policy`).

Importing this package is light (contracts import :class:`BudgetSpec` and :data:`Tier`):
``model_call`` and the LangChain machinery load on first use.
"""

from __future__ import annotations

from typing import Any

from orchestrator.llm.config import TIERS, Tier
from orchestrator.llm.tiers import choose_tier
from orchestrator.llm.types import BudgetPolicy, BudgetSpec, ModelAnswer, PromptRef, Usage

__all__ = ["TIERS", "Tier", "choose_tier", "BudgetPolicy", "BudgetSpec", "ModelAnswer",
           "PromptRef", "Usage", "model_call"]


def __getattr__(name: str) -> Any:
    if name == "model_call":
        from orchestrator.llm.calls import model_call

        return model_call
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
