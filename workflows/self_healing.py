"""``self_healing``: probe a service, diagnose, apply a runbook fix, verify; escalate.

    detect ─healthy─────────────────────────────────────────────▶ END
       ├─4xx (misconfigured)─────────────────────────▶ escalate
       └─▶ diagnose ─▶ fix ─▶ verify ─healthy──────────────────▶ END (healed)
              ▲         │        ├─attempts left─▶ diagnose
              │         │        ├─4xx, or out of attempts─▶ escalate ─give up─▶ END
              │         └─the fix failed───────────────────▶ escalate
              └──────────── fix ◀── (a human's action) ◀────────┘

* ``detect`` and ``verify`` ask the infrastructure agent to probe ``health_url`` (and
  ``metrics_url``); ``verify`` keeps probing up to ``verify_timeout`` while the service
  comes back.
* ``diagnose`` asks it which issue to treat (rules over the evidence, or a chat model when
  one is configured).
  It then chooses the runbook action to try (:mod:`orchestrator.learning.runbooks`): the
  issue's actions a person's ``rules`` allow, ordered by their verified successes at that issue
  on this service (a Beta-Bernoulli posterior whose prior is the runbook's order; seeded
  sampling with ``exploration: {"seed": n}``); the best one not yet tried in this run, or the
  runbook's last allowed action once all were. The choice and its reason go to
  ``healing["choice"]`` and are appended to ``healing["choices"]``; with no allowed action it
  escalates saying why.
* ``fix`` applies the chosen action under the ``service:<name>`` lock.
* ``escalate`` pauses with the evidence (``healing["escalation"]``: why, and what was seen)
  when the health or metrics URL answers 4xx (a misconfiguration: no restart is tried), when a
  fix did not work (a command exited non-zero, a started process died at once), or once
  ``max_attempts`` fixes failed to heal (a typed question, ``EscalationAnswer``); resume with
  ``{"action": {"type": "restart"|"command"|"wait", ...}, "by": ...}`` to try something, or
  ``{"give_up": true, "by": ..., "comment": ...}``. A malformed answer (a bare string, a
  typo'd key) is asked again, never taken as a give-up.

Every fix is recorded once with what verification then found (``learn_healing``, see
:mod:`orchestrator.learning.store`): what the next incident's choice learns from.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from langgraph.graph import END, START, StateGraph
from orchestrator.state.schema import MultiAgentState, merge_updates, now_iso
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic.json_schema import SkipJsonSchema

from orchestrator.calls import AGENT_RETRY
from orchestrator.contracts.base import problems
from orchestrator.contracts.health import Thresholds
from orchestrator.contracts.infrastructure import (
    DIAGNOSE,
    FIX,
    PROBE,
    Diagnose,
    Fix,
    FixAction,
    Probe,
    RestartSpec,
    service_lock,
)
from orchestrator.graphs import WorkflowSpec
from orchestrator.learning.runbooks import Exploration, HealingRules, action_key, choose
from orchestrator.learning.store import HealingOutcome, recording, run_store
from orchestrator.metrics import HEALING_ATTEMPTS, HEALING_OUTCOMES
from orchestrator.questions import Answer, ask

__all__ = ["SelfHealingInput", "SelfHealingState", "builder", "workflow", "DEFAULT_RUNBOOK"]

ISSUES = ("down", "http_5xx", "error_rate", "latency")
DEFAULT_RUNBOOK: dict[str, list[dict[str, Any]]] = {kind: [{"type": "restart"}] for kind in ISSUES}


def _action(value: Any) -> dict[str, Any]:
    """A runbook action as given (``"restart"`` is ``{"type": "restart"}``), checked against
    the infrastructure agent's :class:`~orchestrator.contracts.infrastructure.FixAction`; an
    optional ``name`` is what its outcomes are learned under."""
    if isinstance(value, str):
        value = {"type": value}
    if isinstance(value, dict) and "name" in value:
        if not isinstance(value["name"], str) or not value["name"].strip():
            raise ValueError("an action's 'name' is a non-empty string")
    try:
        _fix_action(value)
    except ValidationError as exc:
        raise ValueError(problems(exc, "action")) from None
    return value


def _fix_action(action: dict[str, Any]) -> FixAction:
    """The agent's action: the runbook's without its ``name``."""
    return FixAction.model_validate({k: v for k, v in action.items() if k != "name"})


class SelfHealingInput(BaseModel):
    """What ``self_healing`` needs. ``restart``, the runbook's actions and ``thresholds`` are
    checked by the infrastructure agent's contract, which the agent checks them with too."""

    model_config = ConfigDict(extra="forbid")

    service: str = Field(min_length=1, pattern=r"^[\w.:/-]+$")
    health_url: str = Field(pattern=r"^https?://", description="HTTP health endpoint")
    metrics_url: str | None = Field(None, pattern=r"^https?://",
                                    description="Prometheus metrics endpoint")
    runbook: dict[str, list[dict[str, Any]]] = Field(
        default_factory=lambda: {k: list(v) for k, v in DEFAULT_RUNBOOK.items()},
        description="issue kind (down, http_5xx, error_rate, latency) -> actions to try")
    max_attempts: int = Field(3, ge=1, le=100)
    restart: RestartSpec | None = Field(
        None, description='{"command": [argv]} or {"start": [argv], "pid_file": path}')
    thresholds: Thresholds = Field(default_factory=Thresholds)
    verify_timeout: float = Field(15.0, ge=0, description="seconds a fix has to take effect")
    rules: HealingRules = Field(
        default_factory=HealingRules,
        description='a person\'s rules, over what was learned: {"never": [{"service": "db", '
        '"action": "restart"}]}')
    exploration: Exploration | None = Field(
        None, description='{"seed": n}: sample the learned order (Thompson) instead of '
        "taking the best")

    @field_validator("runbook", mode="before")
    @classmethod
    def _runbook(cls, value: Any) -> Any:
        if not isinstance(value, dict) or not value:
            raise ValueError("the runbook maps issue kinds to actions")
        unknown = sorted(set(value) - set(ISSUES))
        if unknown:
            raise ValueError(f"unknown issue kind(s) {', '.join(unknown)}; "
                             f"known: {', '.join(ISSUES)}")
        runbook = {kind: [_action(a) for a in (acts if isinstance(acts, list) else [acts])]
                   for kind, acts in value.items()}
        for kind, actions in runbook.items():
            keys = [action_key(a) for a in actions]
            twice = sorted({k for k in keys if keys.count(k) > 1})
            if twice:
                raise ValueError(f"the runbook's {kind} actions {', '.join(twice)} appear twice "
                                 "(outcomes are learned per action): give them distinct "
                                 "'name's, or list each once")
        return runbook

    @model_validator(mode="after")
    def _restart_given(self) -> SelfHealingInput:
        restarts = any(a["type"] == "restart" for acts in self.runbook.values() for a in acts)
        if restarts and self.restart is None:
            raise ValueError("the runbook restarts the service, so give 'restart': "
                             '{"command": [argv]} or {"start": [argv], "pid_file": path}')
        return self


class SelfHealingState(MultiAgentState, total=False):
    service: str
    health_url: str
    metrics_url: str | None
    runbook: dict[str, list[dict[str, Any]]]
    max_attempts: int
    restart: dict[str, Any] | None
    thresholds: dict[str, float]
    verify_timeout: float
    rules: dict[str, Any]
    exploration: dict[str, Any] | None
    healing: dict[str, Any]


def _misconfiguration(state: SelfHealingState,
                      samples: list[dict[str, Any]]) -> dict[str, Any] | None:
    """Why to escalate at once when a probed URL answered 4xx, with the evidence; else None.

    A 4xx is an answer, so the service runs: the probe or the service is misconfigured, and
    restarting it would not help.
    """
    for index, sample in enumerate(samples):  # the probe's samples: health, then metrics
        if sample.get("issue") == "http_4xx":
            url = state["health_url"] if index == 0 else state.get("metrics_url")
            return {"why": "misconfigured",
                    "reason": f"{url} answered {sample.get('http_status')}: the service answers, "
                    "but the URL or the service is misconfigured; a restart would not fix it",
                    "evidence": {"url": url, "http_status": sample.get("http_status"),
                                 "body": sample.get("body"), "detail": sample.get("detail")}}
    return None


def _probe(state: SelfHealingState, wait_healthy: float = 0.0) -> Probe:
    return Probe(health_url=state["health_url"], metrics_url=state.get("metrics_url"),
                 thresholds=Thresholds.model_validate(state.get("thresholds") or {}),
                 wait_healthy=wait_healthy)


async def detect(state: SelfHealingState) -> dict[str, Any]:
    call = await PROBE.call(_probe(state), subtask="detect")
    probed = call.result.model_dump(mode="json")
    healing = {"status": "healthy" if call.result.healthy else "unhealthy",
               "detected": probed, "evidence": probed["samples"], "attempts": [],
               "started_at": now_iso(),
               "escalation": _misconfiguration(state, probed["samples"])}
    if healing["escalation"]:
        healing["status"] = "misconfigured"
    update = merge_updates(call.updates, {"healing": healing, "workflow_type": "self_healing"})
    if call.result.healthy:
        HEALING_OUTCOMES.labels(state["service"], "healthy").inc()
        update["final_result"] = {"status": "completed", "outcome": "healthy",
                                  "service": state["service"], "attempts": 0,
                                  "evidence": probed["samples"]}
    return update


def after_detect(state: SelfHealingState) -> Literal["diagnose", "escalate", "__end__"]:
    if state.get("final_result"):
        return END
    return "escalate" if state["healing"].get("escalation") else "diagnose"


async def diagnose(state: SelfHealingState) -> dict[str, Any]:
    healing = dict(state["healing"])
    kinds = sorted(state.get("runbook") or {})
    call = await DIAGNOSE.call(Diagnose(samples=healing["evidence"], kinds=kinds),
                               subtask=f"diagnose:{len(healing['attempts']) + 1}")
    healing["diagnosis"] = call.result.model_dump(mode="json")
    choice = await _choose(state, healing)
    healing.update(choice=choice, choices=[*healing.get("choices", []), choice])
    if choice["action"] is None:  # escalate (after_diagnose), saying why
        healing["escalation"] = {
            "why": "no_allowed_action" if choice["excluded"] else "no_runbook_action",
            "reason": choice["reason"], "evidence": healing["evidence"]}
    return merge_updates(call.updates, {"healing": healing})


def _tried(attempts: list[dict[str, Any]], kind: str) -> set[str]:
    """The keys of the runbook actions tried for ``kind`` in this run."""
    return {a.get("action_key") or action_key(a["action"]) for a in attempts
            if a["issue"] == kind and not a.get("manual")}


async def _choose(state: SelfHealingState, healing: dict[str, Any]) -> dict[str, Any]:
    """The runbook action to try for the diagnosed issue, learned from this service's
    recorded outcomes (the runbook's order when they cannot be read), with its reason."""
    service, kind = state["service"], healing["diagnosis"]["kind"]
    number = len(healing["attempts"]) + 1
    evidence: dict[str, tuple[int, int]] = {}
    found = await run_store()
    if found is not None:
        async with recording("healing_evidence", service=service, issue=kind):
            evidence = await found[0].healing_evidence(service, kind)
    exploration = state.get("exploration")
    choice = choose(
        service=service, issue=kind, actions=(state.get("runbook") or {}).get(kind) or [],
        evidence=evidence, tried=_tried(healing["attempts"], kind),
        rules=HealingRules.model_validate(state.get("rules") or {}),
        exploration=Exploration.model_validate(exploration) if exploration else None,
        stream=f"{found[1] if found else '-'}|{number}")
    return choice.as_state(attempt=number, at=now_iso())


def _next_action(state: SelfHealingState) -> dict[str, Any] | None:
    healing = state["healing"]
    manual = healing.get("manual_action")
    if manual:
        return manual
    return (healing.get("choice") or {}).get("action")


def _untried_action_left(state: SelfHealingState, kind: str, key: str, number: int) -> bool:
    """Whether the choice's order holds another allowed action for ``kind`` than those tried
    so far and ``key`` (the last one repeats, and repeating a fix that failed outright would
    only fail again), within ``max_attempts``."""
    if kind == "manual" or number >= int(state.get("max_attempts", 3)):
        return False
    tried = _tried(state["healing"]["attempts"], kind) | {key}
    return any(k not in tried for k in (state["healing"].get("choice") or {}).get("order", []))


async def _record(state: SelfHealingState, attempt: dict[str, Any], verified: bool) -> None:
    """Record a fix and what verification found, once (never failing the run)."""
    found = await run_store()
    if found is None:
        return
    store, thread_id = found
    healing = state["healing"]
    issue = (healing.get("diagnosis") or {}).get("kind") or attempt["issue"]
    recover_s = None
    if verified and healing.get("started_at"):
        recover_s = (datetime.fromisoformat(now_iso())
                     - datetime.fromisoformat(healing["started_at"])).total_seconds()
    await store.record_healing(HealingOutcome(
        thread_id=thread_id, attempt=attempt["n"], service=state["service"], issue=issue,
        action_key=attempt.get("action_key") or action_key(attempt["action"]),
        action=attempt["action"], manual=bool(attempt.get("manual")),
        fix_ok=bool(attempt["result"].get("ok")), verified=verified, recover_s=recover_s))


def after_diagnose(state: SelfHealingState) -> Literal["fix", "escalate"]:
    return "fix" if _next_action(state) is not None else "escalate"


async def fix(state: SelfHealingState) -> dict[str, Any]:
    healing = dict(state["healing"])
    action = _next_action(state)
    assert action is not None
    number = len(healing["attempts"]) + 1
    kind = healing["diagnosis"]["kind"] if not healing.get("manual_action") else "manual"
    key = action_key(action)
    HEALING_ATTEMPTS.labels(state["service"], kind, action["type"]).inc()
    call = await FIX.call(
        Fix(service=state["service"], action=_fix_action(action),
            restart=state.get("restart")),
        locks=[service_lock(state["service"])], subtask=f"fix:{number}",
    )
    done = call.result.model_dump(mode="json")
    attempt = {"n": number, "issue": kind, "action": action, "action_key": key, "result": done,
               "manual": bool(healing.get("manual_action")), "at": now_iso()}
    escalation = None
    if not call.result.ok and not _untried_action_left(state, kind, key, number):
        # it did not even run (a start that died at once, a failing command), and the runbook
        # has nothing else to try: a human has to look at why
        escalation = {"why": "fix_failed",
                      "reason": f"fix {number} ({action['type']}) did not work: "
                      f"{call.result.detail}",
                      "evidence": done}
        await _record(state, attempt, verified=False)  # no verification follows
    healing.update(attempts=[*healing["attempts"], attempt], manual_action=None,
                   escalation=escalation)
    return merge_updates(call.updates, {
        "healing": healing,
        "subtask_status": {f"fix:{number}": "done" if call.result.ok else "failed"}})


def after_fix(state: SelfHealingState) -> Literal["verify", "escalate"]:
    return "escalate" if state["healing"].get("escalation") else "verify"


async def verify(state: SelfHealingState) -> dict[str, Any]:
    healing = dict(state["healing"])
    number = len(healing["attempts"])
    call = await PROBE.call(
        _probe(state, wait_healthy=float(state.get("verify_timeout", 15.0))),
        timeout=float(state.get("verify_timeout", 15.0)) + 60, subtask=f"verify:{number}",
    )
    healthy, samples = call.result.healthy, call.result.model_dump(mode="json")["samples"]
    attempts = list(healing["attempts"])
    attempts[-1] = {**attempts[-1], "verified": healthy}
    await _record(state, attempts[-1], verified=healthy)
    healing.update(attempts=attempts, evidence=samples,
                   status="healed" if healthy else "unhealthy",
                   escalation=_misconfiguration(state, samples))
    automatic = [a for a in attempts if not a.get("manual")]
    if healing["escalation"]:
        healing["status"] = "misconfigured"
    elif not healthy and (
            healing.get("escalated") or len(automatic) >= int(state.get("max_attempts", 3))):
        healing["escalation"] = {
            "why": "not_healed",
            "reason": f"still unhealthy after {len(attempts)} fix attempt(s): "
            f"{', '.join(call.result.issues) or 'no issue named'}",
            "evidence": samples}
    update = merge_updates(call.updates, {"healing": healing})
    if healthy:
        HEALING_OUTCOMES.labels(state["service"], "healed").inc()
        update["final_result"] = {"status": "completed", "outcome": "healed",
                                  "service": state["service"], "attempts": len(attempts),
                                  "history": attempts, "evidence": samples}
    return update


def after_verify(state: SelfHealingState) -> Literal["diagnose", "escalate", "__end__"]:
    if state.get("final_result"):
        return END
    return "escalate" if state["healing"].get("escalation") else "diagnose"


class _Closed(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class RestartAction(_Closed):
    type: Literal["restart"]


class CommandAction(_Closed):
    type: Literal["command"]
    argv: list[str] = Field(min_length=1, description="the command, without a shell")
    timeout: float = Field(60.0, gt=0, le=3600)


class WaitAction(_Closed):
    type: Literal["wait"]
    seconds: float = Field(ge=0, le=3600)


HealingAction = Annotated[RestartAction | CommandAction | WaitAction, Field(discriminator="type")]


class EscalationAnswer(Answer):
    """The answer to an escalation: an ``action`` to try, or ``give_up: true`` (one of them)."""

    model_config = ConfigDict(json_schema_extra={
        "oneOf": [{"required": ["action"]}, {"required": ["give_up"]}],
        "examples": [
            {"action": {"type": "restart"}, "by": "oncall"},
            {"action": {"type": "command", "argv": ["systemctl", "restart", "db"]},
             "by": "oncall"},
            {"give_up": True, "by": "oncall", "comment": "needs a new disk"},
        ]})

    action: HealingAction | SkipJsonSchema[None] = None
    give_up: Literal[True] | SkipJsonSchema[None] = None
    comment: str | None = Field(None, max_length=4000)

    @model_validator(mode="after")
    def _one_of(self) -> EscalationAnswer:
        given = {"action", "give_up"} & self.model_fields_set
        if len(given) != 1 or (self.action is None and self.give_up is None):
            raise ValueError("give either 'action' (what to try) or 'give_up': true, not both")
        return self


async def escalate(state: SelfHealingState) -> dict[str, Any]:
    healing = dict(state["healing"])
    diagnosis = healing.get("diagnosis") or {}
    # a malformed answer never decides (nor gives up): ask() asks again, saying what was wrong
    answer = ask(
        EscalationAnswer, kind="escalation",
        question=f"{state['service']}: "
        + ((healing.get("escalation") or {}).get("reason")
           or f"still unhealthy after {len(healing['attempts'])} fix attempts")
        + ". What should be tried?",
        context={"service": state["service"], "escalation": healing.get("escalation"),
                 "diagnosis": diagnosis, "attempts": healing["attempts"],
                 "evidence": healing["evidence"]})
    if answer.action is None:
        HEALING_OUTCOMES.labels(state["service"], "gave_up").inc()
        return {"healing": {**healing, "status": "gave_up"}, "final_result": {
            "status": "failed", "outcome": "gave_up", "service": state["service"],
            "attempts": len(healing["attempts"]), "history": healing["attempts"],
            "reason": f"given up by {answer.by}: {answer.comment or 'no comment'}",
            "evidence": healing["evidence"]}}
    HEALING_OUTCOMES.labels(state["service"], "escalated").inc()
    action = answer.action.model_dump(exclude_unset=True)
    return {"healing": {**healing, "escalated": True, "manual_action": action,
                        "manual_by": answer.by, "manual_comment": answer.comment,
                        "diagnosis": {**diagnosis, "kind": diagnosis.get("kind", "manual")}}}


def after_escalate(state: SelfHealingState) -> Literal["fix", "escalate", "__end__"]:
    if state.get("final_result"):
        return END
    return "fix" if state["healing"].get("manual_action") else "escalate"


builder: StateGraph = StateGraph(SelfHealingState)
builder.add_node("detect", detect, retry_policy=AGENT_RETRY)
builder.add_node("diagnose", diagnose, retry_policy=AGENT_RETRY)
builder.add_node("fix", fix, retry_policy=AGENT_RETRY)
builder.add_node("verify", verify, retry_policy=AGENT_RETRY)
builder.add_node("escalate", escalate)
builder.add_edge(START, "detect")
builder.add_conditional_edges("detect", after_detect, ["diagnose", "escalate", END])
builder.add_conditional_edges("diagnose", after_diagnose, ["fix", "escalate"])
builder.add_conditional_edges("fix", after_fix, ["verify", "escalate"])
builder.add_conditional_edges("verify", after_verify, ["diagnose", "escalate", END])
builder.add_conditional_edges("escalate", after_escalate, ["fix", "escalate", END])

workflow = WorkflowSpec(
    name="self_healing",
    builder=builder,
    input_model=SelfHealingInput,
    description="probe a service, diagnose, apply runbook fixes under the service lock, "
    "verify; escalate to a human when it cannot heal",
)
