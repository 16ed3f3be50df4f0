"""Which chat model serves a call: configuration per tier and per agent type, and building
the model from its name.

A model is named by a spec. ``provider:model`` (``openai:gpt-4o-mini``) is made by LangChain's
``init_chat_model``, so the provider's own settings (``OPENAI_BASE_URL``, ``OPENAI_API_KEY``...)
apply. The older ``module:factory`` form (a callable returning a chat model) still works when
the part before ``:`` is an importable module holding that callable: tests use it for fakes.

``ORCHESTRATOR_MODELS`` picks per tier and per agent type; what it leaves unset falls back to
the tier, then to ``ORCHESTRATOR_CHAT_MODEL``. No model anywhere: :meth:`ModelChoice.spec_for`
answers None and agents keep their rule-based path.
"""

from __future__ import annotations

import functools
import importlib
import json
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from orchestrator.errors import InvalidConfiguration

if TYPE_CHECKING:
    from langchain_core.language_models import BaseChatModel

__all__ = ["Tier", "TIERS", "ModelsConfig", "ModelChoice", "chat_model_for", "provider_and_name"]

Tier = Literal["small", "medium", "large"]
TIERS: tuple[Tier, ...] = ("small", "medium", "large")

#: a model spec: ``provider:model`` or ``module:factory`` (model names may hold ``-./:``)
SPEC_PATTERN = r"^[\w.-]+:\S+$"


class ModelsConfig(BaseModel):
    """``ORCHESTRATOR_MODELS``: ``{"tiers": {"small": "openai:gpt-4o-mini", ...},
    "agents": {"developer": {"large": "openai:gpt-4.1"}}}``."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    tiers: dict[Tier, str] = Field(default_factory=dict)
    agents: dict[str, dict[Tier, str]] = Field(default_factory=dict)

    @field_validator("tiers")
    @classmethod
    def _tier_specs(cls, value: dict[str, str]) -> dict[str, str]:
        for spec in value.values():
            _check_spec(spec)
        return value

    @field_validator("agents")
    @classmethod
    def _agent_specs(cls, value: dict[str, dict[str, str]]) -> dict[str, dict[str, str]]:
        for tiers in value.values():
            for spec in tiers.values():
                _check_spec(spec)
        return value

    @classmethod
    def parse(cls, value: object) -> object:
        """The settings' before-validator: JSON text from the environment, or a dict."""
        if isinstance(value, str):
            try:
                return json.loads(value)
            except json.JSONDecodeError as exc:
                raise ValueError(f"is not JSON ({exc.msg} at character {exc.pos})") from None
        return value


def _check_spec(spec: str) -> None:
    import re

    if not re.match(SPEC_PATTERN, spec):
        raise ValueError(f"{spec!r} is not a model spec: write provider:model "
                         "(openai:gpt-4o-mini) or module:factory")


class ModelChoice:
    """The configured models of a process: which spec serves (agent type, tier)."""

    def __init__(self, default: str | None, models: ModelsConfig | None = None) -> None:
        self.default = default
        self.models = models or ModelsConfig()

    def spec_for(self, agent_type: str, tier: str) -> str | None:
        """The agent's own model for the tier, else the tier's, else the default; or None."""
        own = self.models.agents.get(agent_type, {})
        return own.get(tier) or self.models.tiers.get(tier) or self.default  # type: ignore[call-overload]

    def configured(self) -> list[str]:
        """Every spec named anywhere in the configuration, once each (fallback candidates)."""
        specs = [*self.models.tiers.values()]
        for tiers in self.models.agents.values():
            specs.extend(tiers.values())
        if self.default:
            specs.append(self.default)
        return list(dict.fromkeys(specs))


@functools.cache
def chat_model_for(spec: str) -> BaseChatModel:
    """The chat model named by ``spec``, built once per process.

    Raises:
        InvalidConfiguration: neither a factory nor a model ``init_chat_model`` can make.
    """
    factory = _factory(spec)
    if factory is not None:
        try:
            model = factory()
        except TypeError as exc:
            raise InvalidConfiguration(f"model {spec}: the factory failed: {exc}") from None
    else:
        from langchain.chat_models import init_chat_model

        try:
            model = init_chat_model(spec, **_STREAM_USAGE.get(spec.partition(":")[0], {}))
        except (ImportError, ValueError) as exc:
            raise InvalidConfiguration(
                f"model {spec}: {exc}; name it provider:model (openai:gpt-4o-mini, with "
                "langchain-openai installed) or module:factory") from None
    if not hasattr(model, "ainvoke"):
        raise InvalidConfiguration(f"model {spec} is not a LangChain chat model")
    return model


#: langchain-openai asks for usage in streamed answers (``stream_options.include_usage``) only
#: when talking to api.openai.com by default: with ``OPENAI_BASE_URL`` set (a proxy, a local
#: server) a streamed call would come back with no usage, recorded as unknown
_STREAM_USAGE: dict[str, dict[str, Any]] = {"openai": {"stream_usage": True},
                                            "azure_openai": {"stream_usage": True}}


def _factory(spec: str) -> Any | None:
    """The callable of a ``module:factory`` spec, or None when ``spec`` is not one."""
    module_name, _, attr = spec.partition(":")
    try:
        target: Any = importlib.import_module(module_name)
        for part in attr.split("."):
            target = getattr(target, part)
    except (ImportError, AttributeError, ValueError):
        return None
    return target if callable(target) else None


def provider_and_name(spec: str, model: Any) -> tuple[str, str]:
    """(provider, model name) for the ledger and the price table: a ``provider:model``
    spec's own parts, or what the chat model reports of itself (LangSmith's parameters)."""
    if _factory(spec) is None:
        provider, _, name = spec.partition(":")
        return provider, name
    try:
        params = model._get_ls_params()
    except Exception:  # a model of someone else's that reports nothing
        params = {}
    return str(params.get("ls_provider") or "unknown"), str(params.get("ls_model_name") or spec)
