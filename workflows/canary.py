"""The canary rollout subgraph, shared by ``pr_deployment`` and ``plan_execution``.

    begin → shift → observe ─healthy──▶ gate ─next stage─▶ shift …
                       │  ▲                 └─last stage─▶ done
                       │  └─degraded (hold)
                       └─unhealthy──────▶ rollback

* ``begin`` takes the ``deploy:<name>`` lock for the workflow (a second rollout of the same
  deployment is refused; the same rollout resuming after a crash keeps it) and has the
  deployer agent check the spec.
* ``shift`` has the deployer set the stage's traffic percentage (fenced by the lock's token)
  and records when the stage started.
* ``observe`` has the deployer wait out the rest of the stage and sample health; a crash
  resumes the stage where it was, waiting only what is left of it. Degraded holds the stage
  and observes again (``max_holds`` times); unhealthy rolls back.
* ``gate`` pauses for a human after the stages in ``pause_after`` (a typed question,
  ``GateAnswer``: resume with ``{"action": "continue", "by": ...}`` or
  ``{"action": "rollback", "by": ..., "reason": ...}``). Only an explicit ``continue``
  continues; any other answer is refused and asked again.
* ``rollback`` sets traffic to 0, runs the rollback command and ends the rollout failed,
  with the evidence.

The parent graph puts the spec in ``deploy`` and reads the outcome from ``canary``. Each
stage observation and the rollout's end (completed, or rolled back and why) are recorded once
in ``learn_canary`` (:mod:`orchestrator.learning.store`).
"""

from __future__ import annotations

import time
from typing import Any, Literal

from langgraph.graph import END, START, StateGraph
from orchestrator.state.schema import MultiAgentState, merge_updates, now_iso
from pydantic import ConfigDict, Field, ValidationError, field_validator

from orchestrator.calls import AGENT_RETRY, failure_updates
from orchestrator.contracts.base import problems
from orchestrator.contracts.deployer import (
    OBSERVE,
    ROLLBACK,
    SET_TRAFFIC,
    VALIDATE,
    CanaryCheck,
    Observe,
    Rollback,
    SetTraffic,
    Validate,
    deployment_lock,
)
from orchestrator.errors import AgentError, ResourceLocked
from orchestrator.learning.store import run_store
from orchestrator.locks.held import hold_lock, release_lock
from orchestrator.metrics import CANARY_ROLLBACKS, CANARY_STAGE
from orchestrator.questions import Answer, ask
from orchestrator.runtime import emit_event

__all__ = ["CanarySpec", "CanaryState", "GateAnswer", "canary_graph", "validate_canary",
           "DEFAULT_STAGES"]

DEFAULT_STAGES = [10, 25, 50, 75, 100]


class CanarySpec(CanaryCheck):
    """A canary rollout: the deployer's part of it (``traffic``, ``health``, ``thresholds``,
    the rollback command and the sampling: :class:`~orchestrator.contracts.deployer.CanaryCheck`,
    its contract's) and the stages the workflow walks through."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, pattern=r"^[\w.:/-]+$", description="deployment name")
    stages: list[int] = Field(default_factory=lambda: list(DEFAULT_STAGES))
    stage_seconds: float = Field(30.0, ge=0, description="time at each stage before judging")
    max_holds: int = Field(1, ge=0, description="degraded re-observations before rollback")
    pause_after: list[int] = Field(default_factory=list,
                                   description="stages after which a human must continue")
    lock_ttl: float = Field(3600.0, gt=0, description="seconds the deploy lock outlives a "
                            "silent rollout (it is extended at every stage)")

    @field_validator("stages")
    @classmethod
    def _increasing(cls, stages: list[int]) -> list[int]:
        if not stages:
            raise ValueError("needs at least one stage")
        if any(not 0 < s <= 100 for s in stages) or stages != sorted(set(stages)):
            raise ValueError("stages must be strictly increasing percentages in 1..100")
        return stages


class CanaryState(MultiAgentState, total=False):
    deploy: dict[str, Any]
    canary: dict[str, Any]


async def validate_canary(deploy: dict[str, Any], *, subtask: str = "canary_validate"
                          ) -> tuple[dict[str, Any], dict[str, Any]]:
    """The spec checked by the workflow's model and by the deployer agent, with defaults, and
    the state updates recording the deployer's call.

    Raises:
        AgentError: the deployer refused a field (``invalid_input``, naming it).
    """
    spec = CanarySpec.model_validate(deploy)
    call = await VALIDATE.call(Validate(spec=spec), subtask=subtask)
    return {**spec.model_dump(mode="json"), **call.result.model_dump(mode="json")}, call.updates


async def _learn(state: CanaryState, canary: dict[str, Any], event: str, **row: Any) -> None:
    """Record a stage observation (``event`` "stage") or the end of the rollout ("end")."""
    found = await run_store()
    if found is None:
        return
    store, thread_id = found
    write = store.record_canary_stage if event == "stage" else store.record_canary_end
    await write(thread_id=thread_id, deployment=canary["deployment"],
                workflow_type=state.get("workflow_type"), **row)


def _spec(state: CanaryState) -> CanarySpec:
    return CanarySpec.model_validate(state["deploy"])


def _event(event_type: str, state: CanaryState, canary: dict[str, Any], **data: Any) -> None:
    """Publish a ``canary.*`` event of this rollout (the console draws its stages)."""
    emit_event(event_type, {"workflow_type": state.get("workflow_type"),
                            "deployment": canary.get("deployment"),
                            "percent": canary.get("percent"), "stage": canary.get("stage"),
                            **data})


async def begin(state: CanaryState) -> dict[str, Any]:
    try:
        spec = _spec(state)
    except ValidationError as exc:
        return {"canary": {"deployment": (state.get("deploy") or {}).get("name"),
                           "status": "failed",
                           "reason": f"bad canary spec: {problems(exc, 'deploy')}",
                           "stages": [], "percent": None}, "updated_at": now_iso()}
    try:
        await hold_lock(deployment_lock(spec.name), ttl=spec.lock_ttl)
    except ResourceLocked as exc:
        reason = (f"deployment {spec.name!r} is already being rolled out by {exc.holder}; "
                  "wait for it to finish or roll it back")
        return {"canary": {"deployment": spec.name, "status": "refused", "reason": reason,
                           "stages": [], "percent": None}, "updated_at": now_iso()}
    try:
        checked, updates = await validate_canary(state["deploy"])
    except AgentError as exc:
        await release_lock(deployment_lock(spec.name))
        return merge_updates(failure_updates(exc), {
            "canary": {"deployment": spec.name, "status": "failed", "reason": str(exc),
                       "stages": [], "percent": None}, "updated_at": now_iso()})
    return merge_updates(updates, {"deploy": checked, "canary": {
        "deployment": spec.name, "status": "running", "stage": 0, "percent": 0, "holds": 0,
        "stages": [], "started_at": now_iso()}, "updated_at": now_iso()})


async def shift(state: CanaryState) -> dict[str, Any]:
    spec, canary = _spec(state), dict(state["canary"])
    percent = spec.stages[canary["stage"]]
    # extend the lock for this stage
    lease = await hold_lock(deployment_lock(spec.name), ttl=spec.lock_ttl)
    call = await SET_TRAFFIC.call(
        SetTraffic(deployment=spec.name, percent=percent, traffic=spec.traffic),
        fencing={lease.resource: lease.token}, subtask=f"canary:{percent}%",
    )
    CANARY_STAGE.labels(spec.name).set(percent)
    canary.update(percent=percent, holds=0, stage_started=time.time())
    _event("canary.stage", state, canary)
    return merge_updates(call.updates, {"canary": canary})


async def observe(state: CanaryState) -> dict[str, Any]:
    spec, canary = _spec(state), dict(state["canary"])
    # after a crash only what is left of the stage is waited out
    wait = max(0.0, canary["stage_started"] + spec.stage_seconds - time.time())
    payload = Observe(health=spec.health, thresholds=spec.thresholds, samples=spec.samples,
                      interval=spec.sample_interval, failure_limit=spec.failure_limit,
                      wait=round(wait, 3))
    timeout = wait + spec.samples * (spec.sample_interval + 30) + 60
    call = await OBSERVE.call(payload, timeout=timeout,
                              subtask=f"canary:{canary['percent']}%:observe")
    result = call.result
    record = {"percent": canary["percent"], "verdict": result.verdict, "reason": result.reason,
              "samples": [s.model_dump(mode="json") for s in result.samples], "at": now_iso()}
    canary["stages"] = [*canary["stages"], record]
    await _learn(state, canary, "stage", seq=len(canary["stages"]) - 1,
                 percent=canary["percent"], verdict=result.verdict, reason=result.reason,
                 holds=canary["holds"])
    _event("canary.observed", state, canary, verdict=result.verdict, reason=result.reason,
           samples=record["samples"])
    if result.verdict == "healthy":
        canary["next"] = "gate"
    elif result.verdict == "degraded" and canary["holds"] < spec.max_holds:
        canary["next"] = "observe"  # hold the stage: a fresh observation window
        canary["holds"] += 1
        canary["stage_started"] = time.time()
        _event("canary.hold", state, canary, holds=canary["holds"], reason=result.reason)
    else:
        canary["next"] = "rollback"
    return merge_updates(call.updates, {"canary": canary})


def after_observe(state: CanaryState) -> Literal["observe", "gate", "rollback"]:
    return state["canary"]["next"]


class GateAnswer(Answer):
    """The answer to a canary gate: only an explicit ``continue`` continues."""

    model_config = ConfigDict(json_schema_extra={"examples": [
        {"action": "continue", "by": "oncall", "reason": "error rate flat"},
        {"action": "rollback", "by": "oncall", "reason": "errors in the logs"},
    ]})

    action: Literal["continue", "rollback"]
    reason: str | None = Field(None, max_length=4000)


async def gate(state: CanaryState) -> dict[str, Any]:
    spec, canary = _spec(state), dict(state["canary"])
    percent = canary["percent"]
    if percent in spec.pause_after and percent != spec.stages[-1]:
        answer = ask(GateAnswer, kind="canary_gate",
                     question=f"{spec.name} is healthy at {percent}%: continue or roll back?",
                     context={"deployment": spec.name, "percent": percent,
                              "evidence": canary["stages"][-1]})
        decision = {"by": answer.by, "reason": answer.reason, "at": now_iso()}
        if answer.action != "continue":
            canary["manual_rollback"] = decision
            return {"canary": canary}
        canary["continued"] = [*canary.get("continued", []), {"percent": percent, **decision}]
    canary["stage"] += 1
    return {"canary": canary}


def after_gate(state: CanaryState) -> Literal["shift", "rollback", "done"]:
    spec, canary = _spec(state), state["canary"]
    if canary.get("manual_rollback"):
        return "rollback"
    return "done" if canary["stage"] >= len(spec.stages) else "shift"


async def rollback(state: CanaryState) -> dict[str, Any]:
    spec, canary = _spec(state), dict(state["canary"])
    manual = canary.get("manual_rollback")
    mode = "manual" if manual else "automatic"
    reason = (f"rolled back by {manual.get('by') or 'a human'}: {manual.get('reason') or 'no reason given'}"
              if manual else f"unhealthy at {canary['percent']}%: {canary['stages'][-1]['reason']}")
    lease = await hold_lock(deployment_lock(spec.name), ttl=spec.lock_ttl)
    call = await ROLLBACK.call(
        Rollback(deployment=spec.name, traffic=spec.traffic,
                 rollback_command=spec.rollback_command, reason=reason, mode=mode),
        fencing={lease.resource: lease.token}, subtask="canary:rollback",
    )
    await release_lock(deployment_lock(spec.name))
    CANARY_STAGE.labels(spec.name).set(0)
    CANARY_ROLLBACKS.labels(spec.name, mode).inc()
    _event("canary.rollback", state, canary, mode=mode, reason=reason)
    await _learn(state, canary, "end", verdict="rolled_back", percent=canary["percent"],
                 reason=reason, mode=mode)
    canary.update(status="rolled_back", failed_at=canary["percent"], percent=0, reason=reason,
                  rollback={"mode": mode, **call.result.model_dump(mode="json")},
                  finished_at=now_iso())
    return merge_updates(call.updates, {"canary": canary})


async def done(state: CanaryState) -> dict[str, Any]:
    spec, canary = _spec(state), dict(state["canary"])
    await release_lock(deployment_lock(spec.name))
    await _learn(state, canary, "end", verdict="completed", percent=canary.get("percent"))
    canary.update(status="completed", finished_at=now_iso())
    return {"canary": canary, "updated_at": now_iso()}


def after_begin(state: CanaryState) -> Literal["shift", "__end__"]:
    return "shift" if state["canary"]["status"] == "running" else END


_builder = StateGraph(CanaryState)
_builder.add_node("begin", begin, retry_policy=AGENT_RETRY)
_builder.add_node("shift", shift, retry_policy=AGENT_RETRY)
_builder.add_node("observe", observe, retry_policy=AGENT_RETRY)
_builder.add_node("gate", gate)
_builder.add_node("rollback", rollback, retry_policy=AGENT_RETRY)
_builder.add_node("done", done, retry_policy=AGENT_RETRY)
_builder.add_edge(START, "begin")
_builder.add_conditional_edges("begin", after_begin, ["shift", END])
_builder.add_edge("shift", "observe")
_builder.add_conditional_edges("observe", after_observe, ["observe", "gate", "rollback"])
_builder.add_conditional_edges("gate", after_gate, ["shift", "rollback", "done"])
_builder.add_edge("rollback", END)
_builder.add_edge("done", END)

#: The compiled subgraph; add it to a parent graph as a node (it uses the parent's
#: checkpointer, so a crash mid-rollout resumes inside it).
canary_graph = _builder.compile()
