"""What a model call costs: the override file first, then genai-prices' bundled table.

genai-prices works offline from the snapshot shipped in the package (its auto-update is never
started here, so no price lookup touches the network). The override file
(``ORCHESTRATOR_PRICES_FILE``, YAML or JSON) holds local or negotiated prices per model spec::

    openai:gpt-4o-mini: {input_per_mtok: 0.15, cached_input_per_mtok: 0.075, output_per_mtok: 0.6}

A model neither knows has no price: its calls cost ``None`` (unknown), never $0.
"""

from __future__ import annotations

import functools
import json
import logging
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from orchestrator.errors import InvalidConfiguration

__all__ = ["Price", "PriceTable", "MTOK"]

log = logging.getLogger(__name__)

MTOK = Decimal(1_000_000)


class Price(BaseModel):
    """USD per million tokens; cached input defaults to the input price."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    input_per_mtok: Decimal = Field(ge=0)
    output_per_mtok: Decimal = Field(ge=0)
    cached_input_per_mtok: Decimal | None = Field(None, ge=0)
    source: str = "override"

    def cost(self, input_tokens: int, output_tokens: int, cached_tokens: int = 0) -> Decimal:
        """The cost of a call; ``input_tokens`` includes the cached ones (LangChain's way)."""
        cached_rate = (self.cached_input_per_mtok if self.cached_input_per_mtok is not None
                       else self.input_per_mtok)
        fresh = max(input_tokens - cached_tokens, 0)
        return (fresh * self.input_per_mtok + cached_tokens * cached_rate
                + output_tokens * self.output_per_mtok) / MTOK


@dataclass(frozen=True)
class PriceTable:
    """Prices by model spec (``provider:model``): the overrides, else genai-prices."""

    overrides: dict[str, Price]

    @classmethod
    def load(cls, path: Path | None) -> PriceTable:
        """The table with the overrides of ``path`` (None: genai-prices only).

        Raises:
            InvalidConfiguration: the file cannot be read or an entry has the wrong shape.
        """
        if path is None:
            return cls({})
        try:
            text = path.read_text(encoding="utf-8")
            if path.suffix == ".json":
                raw = json.loads(text)
            else:
                import yaml

                raw = yaml.safe_load(text)
        except (OSError, ValueError) as exc:  # yaml's and json's errors are ValueErrors
            raise InvalidConfiguration(f"ORCHESTRATOR_PRICES_FILE={path}: {exc}") from None
        if not isinstance(raw, dict):
            raise InvalidConfiguration(
                f"ORCHESTRATOR_PRICES_FILE={path}: expected a mapping of 'provider:model' to "
                "{input_per_mtok, cached_input_per_mtok, output_per_mtok}")
        try:
            return cls({str(k): Price.model_validate({**v, "source": f"override:{path.name}"})
                        for k, v in raw.items()})
        except (ValidationError, TypeError) as exc:
            raise InvalidConfiguration(f"ORCHESTRATOR_PRICES_FILE={path}: {exc}") from None

    def price(self, spec: str, provider: str, name: str) -> Price | None:
        """The price of a model: the override for its spec (or ``provider:name``), else
        genai-prices' for (provider, name), else None."""
        found = self.overrides.get(spec) or self.overrides.get(f"{provider}:{name}")
        return found if found is not None else _bundled(provider, name)


class _TieredPrice(Price):
    """A genai-prices model whose rate depends on the prompt's size (tiers): every cost is
    genai-prices' own calculation."""

    provider: str
    name: str

    def cost(self, input_tokens: int, output_tokens: int, cached_tokens: int = 0) -> Decimal:
        from genai_prices import Usage, calc_price

        usage = Usage(input_tokens=input_tokens, output_tokens=output_tokens,
                      cache_read_tokens=cached_tokens)
        return calc_price(usage, self.name, provider_id=self.provider).total_price


#: init_chat_model's provider names that genai-prices spells otherwise
_PROVIDERS = {"google_genai": "google", "google_vertexai": "google", "mistralai": "mistral",
              "bedrock": "aws", "bedrock_converse": "aws", "azure_openai": "azure"}


@functools.lru_cache(maxsize=256)
def _bundled(provider: str, name: str) -> Price | None:
    """genai-prices' price of the model, from the bundled snapshot (no network), looked up
    once per model: a flat price is used as is, a tiered one asks genai-prices per call."""
    from genai_prices import Usage, calc_price

    try:
        found = calc_price(Usage(input_tokens=1), name,
                           provider_id=_PROVIDERS.get(provider, provider)).model_price
    except LookupError:
        try:  # a provider genai-prices names otherwise: it finds the model's own
            found = calc_price(Usage(input_tokens=1), name).model_price
        except LookupError:
            return None
    rates = {"input_per_mtok": getattr(found, "input_mtok", None),
             "output_per_mtok": getattr(found, "output_mtok", None),
             "cached_input_per_mtok": getattr(found, "cache_read_mtok", None)}
    flat = {k: v for k, v in rates.items() if isinstance(v, Decimal)}
    if len(flat) == len([v for v in rates.values() if v is not None]) and len(flat) >= 2:
        return Price(**flat, source="genai-prices")
    base = {k: getattr(v, "base", v) for k, v in rates.items() if v is not None}
    return _TieredPrice(**base, source="genai-prices", provider=provider, name=name)
