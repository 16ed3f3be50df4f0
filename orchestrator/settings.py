"""Typed settings, read once at the edge (CLI, ``Orchestrator.from_env()``) and passed down.

Library code never reads ``os.environ``: it receives a :class:`Settings`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)

from .errors import InvalidInput
from .llm.config import SPEC_PATTERN, ModelsConfig

__all__ = ["Settings", "RetentionRule", "ENV_PREFIX", "DATA_DIR_NAME", "find_data_dir"]

ENV_PREFIX = "ORCHESTRATOR_"
DATA_DIR_NAME = ".orchestrator"


def find_data_dir(start: Path) -> Path | None:
    """The nearest ``.orchestrator`` folder in ``start`` or above it, the way git finds
    ``.git``: a command run from a sub-folder uses the project's data dir."""
    start = start.absolute()
    for folder in (start, *start.parents):
        candidate = folder / DATA_DIR_NAME
        try:
            if candidate.is_dir():
                return candidate
        except OSError:  # a parent we may not look into
            continue
    return None


class RetentionRule(BaseModel):
    """How long the checkpoints of a finished workflow are kept, by the age of its workflow
    row (``updated_at``: when it last changed, i.e. when it ended). Unset: never."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    keep_latest_after_days: float | None = Field(
        None, ge=0, description="older than this, only the latest checkpoint is kept (and the "
        "named ones)")
    delete_after_days: float | None = Field(
        None, ge=0, description="older than this, every checkpoint is deleted (a thread with "
        "named checkpoints keeps those and its latest); the workflow row keeps its result")

    @model_validator(mode="after")
    def _delete_after_keep(self) -> RetentionRule:
        keep, delete = self.keep_latest_after_days, self.delete_after_days
        if keep is not None and delete is not None and delete < keep:
            raise ValueError("delete_after_days must not be shorter than keep_latest_after_days")
        return self


#: statuses whose threads may be pruned; running, interrupted and queued ones never are
PRUNABLE_STATUSES = ("completed", "failed", "cancelled")

DEFAULT_RETENTION: dict[str, RetentionRule] = {
    "completed": RetentionRule(keep_latest_after_days=7, delete_after_days=90),
    "failed": RetentionRule(keep_latest_after_days=30),
    "cancelled": RetentionRule(keep_latest_after_days=30),
}


class Settings(BaseModel):
    """Runtime configuration. Every field can be set from ``ORCHESTRATOR_<FIELD>``."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    database_url: str | None = Field(
        None, description="PostgreSQL URL; unset starts the embedded PostgreSQL in data_dir"
    )
    redis_url: str | None = Field(
        None, description="Redis URL; unset starts the embedded Redis in data_dir"
    )
    data_dir: Path = Field(
        Path(DATA_DIR_NAME),
        description="home of the embedded services; from_env: the nearest .orchestrator folder "
        "in the current directory or above, else ./.orchestrator",
    )
    namespace: str = Field(
        "orchestrator",
        pattern=r"^[A-Za-z0-9_.-]{1,64}$",
        description="isolates Redis keys, agents, locks and workflows sharing one database",
    )
    local_agents: bool = Field(
        True, description="host the built-in agents in the orchestrator's own process"
    )
    durability: Literal["sync", "async", "exit"] = Field(
        "sync", description="LangGraph checkpoint durability mode"
    )
    heartbeat_interval: float = Field(2.0, gt=0, description="agent heartbeat period, seconds")
    agent_offline_after: float = Field(
        10.0, gt=0, description="an agent missing heartbeats this long is offline, seconds"
    )
    request_timeout: float = Field(300.0, gt=0, description="default agent call timeout, seconds")
    response_retention: int = Field(
        86_400, gt=0, description="how long agents keep responses for redelivered requests, s"
    )
    events_maxlen: int = Field(10_000, gt=0, description="cap of the broadcast events stream")
    worker_min_concurrency: int = Field(
        2, ge=1, description="handlers run at once per agent type, at least (autoscaled)"
    )
    worker_max_concurrency: int = Field(
        10, ge=1, description="handlers run at once per agent type, at most (autoscaled)"
    )
    visibility_timeout: float = Field(
        30.0, gt=0, description="a request unacknowledged this long is reclaimed, seconds"
    )
    max_deliveries: int = Field(
        3, ge=1, description="deliveries of one request before it is dead-lettered"
    )
    breaker_window: float = Field(30.0, gt=0, description="circuit breaker window, seconds")
    breaker_min_calls: int = Field(
        10, ge=1, description="calls in the window before the breaker may open"
    )
    breaker_cooldown: float = Field(
        15.0, gt=0, description="an open breaker lets probe calls through after this, seconds"
    )
    bus_secret: SecretStr | None = Field(
        None, description="sign every bus message with HMAC-SHA256 and refuse unsigned ones"
    )
    workflow_lease: float = Field(
        15.0, gt=0, description="a running workflow whose owner is silent this long is orphaned"
    )
    pool_max_size: int = Field(10, ge=2, description="PostgreSQL pool size per process")
    pool_timeout: float = Field(
        30.0, gt=0,
        description="seconds a statement waits for a free PostgreSQL connection before it fails "
                    "(a checkpoint write that fails so fails its workflow, which can be resumed)",
    )
    redis_max_connections: int = Field(
        64, ge=4, description="Redis connections per process (callers wait for a free one)"
    )
    chat_model: str | None = Field(
        None, pattern=SPEC_PATTERN,
        description="the default chat model of every agent and tier: 'provider:model' "
        "(openai:gpt-4o-mini, made by LangChain's init_chat_model; the provider's own variables "
        "such as OPENAI_BASE_URL apply), or 'module:factory', a callable returning a chat model "
        "(unset, and no ORCHESTRATOR_MODELS: agents use their rules only)",
    )
    models: ModelsConfig | None = Field(
        None, description='models per tier and agent type, JSON: {"tiers": {"small": "openai:'
        'gpt-4o-mini", "large": "openai:gpt-4.1"}, "agents": {"developer": {"large": "..."}}}; '
        "unset entries fall back to the tier, then to chat_model",
    )
    prices_file: Path | None = Field(
        None, description="YAML or JSON model prices that win over genai-prices' table: "
        '{"provider:model": {"input_per_mtok", "cached_input_per_mtok", "output_per_mtok"}}',
    )
    daily_budget_usd: float | None = Field(
        None, ge=0, description="what the namespace's model calls may cost per UTC day, USD")
    agent_daily_budget_usd: dict[str, float] = Field(
        default_factory=dict, description='per agent type, USD per UTC day, JSON: '
        '{"developer": 5.0}')
    model_max_output_tokens: int = Field(
        4096, ge=1, description="output tokens a call's worst-case cost estimate assumes when "
        "the model sets no max_tokens of its own")

    # -- the service (`orchestrator serve`): run queue, runners, sweepers ------------------------
    run_lease: float = Field(
        15.0, gt=0, description="a runner holds a claimed run this long without renewing it; "
        "after that the sweeper hands the run to another runner and its writes are refused",
    )
    sweep_interval: float = Field(
        2.0, gt=0, description="how often the cluster's sweeper looks for runs of dead runners")
    run_max_attempts: int = Field(
        5, ge=1, description="a run that failed or was handed back this many times is dead")
    run_retry_backoff: float = Field(
        2.0, ge=0, description="first delay before a run is retried, seconds (doubles each try)")
    drain_grace: float = Field(
        1.5, ge=0, description="on SIGTERM a runner lets the step in flight finish within this "
        "many seconds, then stops it and hands its unfinished runs back (another runner has "
        "them within 2 s by default; a stopped step is safe to redo: its agent calls keep "
        "their request ids, so work already done is answered from the response store)",
    )

    # -- retention: the checkpoints of finished workflows (orchestrator.service.retention) ------
    retention_policy: dict[str, RetentionRule] = Field(
        default_factory=lambda: dict(DEFAULT_RETENTION),
        description="per workflow status (completed, failed, cancelled), a JSON object such as "
        '{"completed": {"keep_latest_after_days": 7, "delete_after_days": 90}}; it replaces the '
        "default whole (a status left out is never pruned; running, interrupted and queued "
        "ones never are)",
    )
    retention_interval: float = Field(
        3600.0, gt=0, description="how often the cluster's sweeper runs a retention pass, s")
    retention_batch_size: int = Field(
        500, ge=1, description="threads pruned per transaction (short ones: runs go on)")

    child_env_withhold: tuple[str, ...] = Field(
        (), description="variables (names or shell patterns such as AWS_*, comma separated) "
        "withheld from the processes agents start, besides ORCHESTRATOR_*, which always is",
    )

    @field_validator("child_env_withhold", mode="before")
    @classmethod
    def _split_names(cls, value: object) -> object:
        if isinstance(value, str):  # from the environment: "AWS_*, GITHUB_TOKEN"
            return tuple(part.strip() for part in value.split(",") if part.strip())
        return value

    @field_validator("models", mode="before")
    @classmethod
    def _parse_models(cls, value: object) -> object:
        return ModelsConfig.parse(value)

    @field_validator("agent_daily_budget_usd", mode="before")
    @classmethod
    def _parse_agent_budgets(cls, value: object) -> object:
        return ModelsConfig.parse(value)  # JSON text from the environment

    @field_validator("retention_policy", mode="before")
    @classmethod
    def _parse_policy(cls, value: object) -> object:
        if isinstance(value, str):  # from the environment: JSON
            try:
                value = json.loads(value)
            except json.JSONDecodeError as exc:
                raise ValueError(f"is not JSON ({exc.msg} at character {exc.pos})") from None
        if isinstance(value, dict):
            wrong = sorted(set(value) - set(PRUNABLE_STATUSES))
            if wrong:
                raise ValueError(f"statuses {wrong} cannot have a rule: only "
                                 f"{', '.join(PRUNABLE_STATUSES)} threads are ever pruned")
        return value

    @model_validator(mode="after")
    def _concurrency_bounds(self) -> Settings:
        if self.worker_min_concurrency > self.worker_max_concurrency:
            raise ValueError("worker_min_concurrency must not exceed worker_max_concurrency")
        return self

    @classmethod
    def from_env(
        cls, environ: Mapping[str, str] | None = None, *, cwd: Path | None = None,
        **overrides: object,
    ) -> Settings:
        """Build settings from ``ORCHESTRATOR_*`` variables; ``overrides`` win.

        Without ``ORCHESTRATOR_DATA_DIR`` the data dir is the nearest ``.orchestrator`` folder
        in ``cwd`` (default: the current directory) or above it, else ``cwd/.orchestrator``.

        Raises:
            InvalidInput: a variable has a value of the wrong shape; the message names it.
        """
        env = os.environ if environ is None else environ
        values: dict[str, object] = {}
        for name in cls.model_fields:
            raw = env.get(ENV_PREFIX + name.upper())
            if raw is not None and raw != "":
                values[name] = raw
        values.update({k: v for k, v in overrides.items() if v is not None})
        if "data_dir" not in values:
            here = Path.cwd() if cwd is None else cwd
            values["data_dir"] = find_data_dir(here) or here.absolute() / DATA_DIR_NAME
        try:
            return cls(**values)  # type: ignore[arg-type]
        except ValidationError as exc:
            problems = "; ".join(
                f"{ENV_PREFIX}{'.'.join(str(p) for p in err['loc']).upper() or 'SETTINGS'}: "
                f"{err['msg']}"
                for err in exc.errors()
            )
            raise InvalidInput(f"bad configuration: {problems}") from None

    def redacted(self) -> dict[str, object]:
        """The settings as a dict with passwords in URLs masked, for display."""
        data = self.model_dump(mode="json")
        for key in ("database_url", "redis_url"):
            if data.get(key):
                data[key] = _mask_password(str(data[key]))
        return data


def _mask_password(url: str) -> str:
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(url)
    if parts.password:
        netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
        return urlunsplit(parts._replace(netloc=netloc))
    return url
