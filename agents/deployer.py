"""The ``deployer`` agent: canary traffic changes, health observation, rollback.

Its request types, their payloads and answers, and the ``deploy:<deployment>`` lock are its
contract's: :mod:`orchestrator.contracts.deployer`. Health is sampled and judged by
:mod:`orchestrator.agents.lib.health`.
"""

from __future__ import annotations

import asyncio
import importlib
import inspect
from typing import Any

from orchestrator.agents.lib.health.probe import observe
from orchestrator.agents.lib.proc import run

from orchestrator.agent import Agent, HandlerError, RequestContext
from orchestrator.contracts.deployer import (
    OBSERVE,
    ROLLBACK,
    SET_TRAFFIC,
    VALIDATE,
    CanaryCheck,
    Observe,
    Rollback,
    RolledBack,
    SetTraffic,
    TrafficSet,
    TrafficSpec,
    Validate,
    deployment_lock,
)
from orchestrator.contracts.health import Observation
from orchestrator.errors import AgentErrorCode

__all__ = ["agent"]

agent = Agent(
    "deployer",
    capabilities=["canary", "traffic", "health-gates", "rollback"],
    version="1",
    description="canary stages through a traffic command and a health source",
)


@agent.handler(VALIDATE)
async def validate(payload: Validate, ctx: RequestContext) -> CanaryCheck:
    return payload.spec


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


@agent.handler(SET_TRAFFIC)
async def set_traffic(payload: SetTraffic, ctx: RequestContext) -> TrafficSet:
    await ctx.check_fencing(deployment_lock(payload.deployment))
    output = await _move_traffic(payload.traffic, payload.deployment, payload.percent)
    ctx.log.info("%s: traffic at %d%%", payload.deployment, payload.percent)
    return TrafficSet(deployment=payload.deployment, percent=payload.percent, output=output)


@agent.handler(OBSERVE)
async def observe_stage(payload: Observe, ctx: RequestContext) -> Observation:
    if payload.wait:
        await asyncio.sleep(payload.wait)
    return await observe(payload.health, payload.thresholds, samples=payload.samples,
                         interval=payload.interval, failure_limit=payload.failure_limit)


@agent.handler(ROLLBACK)
async def rollback(payload: Rollback, ctx: RequestContext) -> RolledBack:
    await ctx.check_fencing(deployment_lock(payload.deployment))
    traffic_output = await _move_traffic(payload.traffic, payload.deployment, 0)
    command_output = None
    if payload.rollback_command:
        done = await run(payload.rollback_command, timeout=payload.timeout)
        command_output = (done.stdout + done.stderr).strip()[-2000:]
        if done.returncode != 0 or done.timed_out:
            raise HandlerError(
                AgentErrorCode.ROLLBACK_FAILED,
                f"traffic is at 0%, but the rollback command {' '.join(payload.rollback_command)} "
                f"failed (exit {done.returncode}): {command_output}; finish the rollback by hand",
                blames_input=True)
    ctx.log.warning("%s rolled back (%s): %s", payload.deployment, payload.mode, payload.reason)
    return RolledBack(deployment=payload.deployment, percent=0, traffic_output=traffic_output,
                      rollback_output=command_output)
