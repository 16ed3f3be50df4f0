"""The ``deployer`` agent: canary traffic changes, health observation, rollback.

Request types:

* ``validate`` ``{"spec"}`` → the canary spec's traffic, health and thresholds, checked and
  filled with defaults (an ``invalid_input`` error names the bad field).
* ``set_traffic`` ``{"deployment", "percent", "traffic"}`` → ``{"percent", "output"}``.
  Guarded by ``deploy:<deployment>``: the request must carry that lock's fencing token.
  ``traffic`` is ``{"command": [argv...], "timeout": 60}`` (run without a shell, ``{percent}``
  and ``{deployment}`` substituted in each argument) or ``{"callable": "module:function"}``
  (called as ``function(percent, deployment)``, sync or async).
* ``observe`` ``{"health", "thresholds", "wait", "samples", "interval", "failure_limit"}`` →
  waits ``wait`` seconds (the rest of the stage), then samples the health source and returns
  an :class:`~orchestrator.agents.lib.health.Observation` (``verdict`` healthy, degraded or unhealthy).
* ``rollback`` ``{"deployment", "traffic", "rollback_command"}`` → traffic to 0, then the
  rollback command (argv, no shell). Fenced like ``set_traffic``.
"""

from __future__ import annotations

import asyncio
import importlib
import inspect
from typing import Any, Literal

from orchestrator.agents._payload import parse_payload
from orchestrator.agents.lib.health import HealthSource, Thresholds, observe
from orchestrator.agents.lib.proc import run
from pydantic import BaseModel, ConfigDict, Field, model_validator

from orchestrator.agent import Agent, HandlerError, RequestContext
from orchestrator.errors import AgentErrorCode

__all__ = ["agent", "TrafficSpec", "ObserveSpec", "deploy_resource"]

agent = Agent(
    "deployer",
    capabilities=["canary", "traffic", "health-gates", "rollback"],
    version="1",
    description="canary stages through a traffic command and a health source",
)


def deploy_resource(deployment: str) -> str:
    """The lock name guarding a deployment's rollout."""
    return f"deploy:{deployment}"


class TrafficSpec(BaseModel):
    """How traffic is moved: a command template, or a Python callable."""

    model_config = ConfigDict(extra="forbid")

    command: list[str] | None = Field(None, min_length=1)
    callable: str | None = Field(None, pattern=r"^[\w.]+:[\w.]+$")
    timeout: float = Field(60.0, gt=0)

    @model_validator(mode="after")
    def _one_way(self) -> TrafficSpec:
        if (self.command is None) == (self.callable is None):
            raise ValueError("give exactly one of 'command' (a list of arguments) or "
                             "'callable' ('module:function')")
        return self


class ObserveSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    health: HealthSource
    thresholds: Thresholds = Field(default_factory=Thresholds)
    samples: int = Field(3, ge=1, le=1000)
    interval: float = Field(1.0, ge=0)
    failure_limit: int = Field(2, ge=1)


class CanaryCheck(BaseModel):
    """The parts of a canary spec the deployer owns (the rest is the workflow's)."""

    model_config = ConfigDict(extra="ignore")

    traffic: TrafficSpec
    health: HealthSource
    thresholds: Thresholds = Field(default_factory=Thresholds)
    rollback_command: list[str] | None = Field(None, min_length=1)
    samples: int = Field(3, ge=1, le=1000)
    sample_interval: float = Field(1.0, ge=0)
    failure_limit: int = Field(2, ge=1)


def _deployment(payload: dict[str, Any]) -> str:
    name = payload.get("deployment")
    if not isinstance(name, str) or not name:
        raise HandlerError(AgentErrorCode.INVALID_INPUT, "payload needs 'deployment', the deployment's name")
    return name


@agent.handler("validate")
async def validate(payload: dict[str, Any], ctx: RequestContext) -> dict[str, Any]:
    checked = parse_payload(CanaryCheck, payload.get("spec"), "deploy")
    return checked.model_dump(mode="json")


async def _move_traffic(spec: TrafficSpec, deployment: str, percent: int) -> str:
    if spec.command is not None:
        argv = [a.replace("{percent}", str(percent)).replace("{deployment}", deployment)
                for a in spec.command]
        done = await run(argv, timeout=spec.timeout)
        output = (done.stdout + done.stderr).strip()[-2000:]
        if done.timed_out:
            raise HandlerError(AgentErrorCode.TRAFFIC_COMMAND_FAILED,
                               f"{argv[0]} timed out after {spec.timeout:g}s", retryable=True)
        if done.returncode != 0:
            raise HandlerError(AgentErrorCode.TRAFFIC_COMMAND_FAILED,
                               f"{' '.join(argv)} exited {done.returncode}: {output}",
                               blames_input=True)
        return output
    module_name, _, attr = (spec.callable or "").partition(":")
    try:
        fn: Any = importlib.import_module(module_name)
        for part in attr.split("."):
            fn = getattr(fn, part)
    except (ImportError, AttributeError) as exc:
        raise HandlerError(AgentErrorCode.INVALID_INPUT, f"traffic callable {spec.callable}: {exc}") from None
    outcome = fn(percent, deployment)
    if inspect.isawaitable(outcome):
        outcome = await asyncio.wait_for(outcome, spec.timeout)
    return "" if outcome is None else str(outcome)


def _percent(payload: dict[str, Any]) -> int:
    percent = payload.get("percent")
    if not isinstance(percent, int) or not 0 <= percent <= 100:
        raise HandlerError(AgentErrorCode.INVALID_INPUT, "'percent' must be a whole number from 0 to 100")
    return percent


@agent.handler("set_traffic")
async def set_traffic(payload: dict[str, Any], ctx: RequestContext) -> dict[str, Any]:
    deployment, percent = _deployment(payload), _percent(payload)
    spec = parse_payload(TrafficSpec, payload.get("traffic"), "traffic")
    await ctx.check_fencing(deploy_resource(deployment))
    output = await _move_traffic(spec, deployment, percent)
    ctx.log.info("%s: traffic at %d%%", deployment, percent)
    return {"deployment": deployment, "percent": percent, "output": output}


@agent.handler("observe")
async def observe_stage(payload: dict[str, Any], ctx: RequestContext) -> dict[str, Any]:
    wait = payload.get("wait", 0)
    if not isinstance(wait, int | float) or wait < 0:
        raise HandlerError(AgentErrorCode.INVALID_INPUT, "'wait' must be a number of seconds >= 0")
    spec = parse_payload(ObserveSpec, {k: v for k, v in payload.items() if k != "wait"}, "observe")
    if wait:
        await asyncio.sleep(wait)
    observation = await observe(spec.health, spec.thresholds, samples=spec.samples,
                                interval=spec.interval, failure_limit=spec.failure_limit)
    return observation.model_dump(mode="json")


class _Rollback(BaseModel):
    model_config = ConfigDict(extra="forbid")

    deployment: str = Field(min_length=1)
    traffic: TrafficSpec
    rollback_command: list[str] | None = Field(None, min_length=1)
    timeout: float = Field(300.0, gt=0)
    reason: str = ""
    mode: Literal["automatic", "manual"] = "automatic"


@agent.handler("rollback")
async def rollback(payload: dict[str, Any], ctx: RequestContext) -> dict[str, Any]:
    spec = parse_payload(_Rollback, payload, "rollback")
    await ctx.check_fencing(deploy_resource(spec.deployment))
    traffic_output = await _move_traffic(spec.traffic, spec.deployment, 0)
    command_output = None
    if spec.rollback_command:
        done = await run(spec.rollback_command, timeout=spec.timeout)
        command_output = (done.stdout + done.stderr).strip()[-2000:]
        if done.returncode != 0 or done.timed_out:
            raise HandlerError(
                AgentErrorCode.ROLLBACK_FAILED,
                f"traffic is at 0%, but the rollback command {' '.join(spec.rollback_command)} "
                f"failed (exit {done.returncode}): {command_output}; finish the rollback by hand",
                blames_input=True)
    ctx.log.warning("%s rolled back (%s): %s", spec.deployment, spec.mode, spec.reason)
    return {"deployment": spec.deployment, "percent": 0, "traffic_output": traffic_output,
            "rollback_output": command_output}
