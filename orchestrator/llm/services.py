"""What :func:`~orchestrator.llm.calls.model_call` needs from its process: the configured
models, the price table, the ledger and the budgets, built once from the settings and the
database pool and handed to every handler through ``RequestContext.models``."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from orchestrator.llm.config import ModelChoice
from orchestrator.llm.prices import PriceTable

if TYPE_CHECKING:
    from orchestrator.llm.budget import Budgets
    from orchestrator.llm.ledger import Ledger
    from orchestrator.settings import Settings
    from orchestrator.state.db import Database

__all__ = ["ModelServices"]


@dataclass
class ModelServices:
    choice: ModelChoice
    prices: PriceTable
    max_output_tokens: int = 4096
    daily_budget_usd: float | None = None
    agent_daily_budget_usd: dict[str, float] = field(default_factory=dict)
    ledger: Ledger | None = None
    budgets: Budgets | None = None

    @classmethod
    def from_settings(cls, settings: Settings, db: Database | None = None) -> ModelServices:
        """The services of a process; without ``db`` nothing is recorded or reserved (a
        command run without a database, such as a local ``orchestrator plan``)."""
        from orchestrator.llm.budget import Budgets
        from orchestrator.llm.ledger import Ledger

        return cls(
            choice=ModelChoice(settings.chat_model, settings.models),
            prices=PriceTable.load(settings.prices_file),
            max_output_tokens=settings.model_max_output_tokens,
            daily_budget_usd=settings.daily_budget_usd,
            agent_daily_budget_usd=dict(settings.agent_daily_budget_usd),
            ledger=Ledger(db, settings.namespace) if db is not None else None,
            budgets=Budgets(db, settings.namespace) if db is not None else None,
        )
