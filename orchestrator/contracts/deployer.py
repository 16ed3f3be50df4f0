"""The ``deployer`` agent's contract: canary traffic changes, health observation, rollback.

Request types:

* ``validate`` (:data:`VALIDATE`) ``{"spec"}`` → the canary spec's traffic, health and
  thresholds, checked and filled with defaults (:class:`CanaryCheck`; an ``invalid_input``
  error names the bad field). The spec's other fields are the workflow's, and ignored.
* ``set_traffic`` (:data:`SET_TRAFFIC`) ``{"deployment", "percent", "traffic"}`` →
  ``{"deployment", "percent", "output"}``. Guarded by the :func:`deployment_lock` lock
  (``deploy:<deployment>``): the request must carry that lock's fencing token. ``traffic`` is
  ``{"command": [argv...], "timeout": 60}`` (run without a shell, ``{percent}`` and
  ``{deployment}`` substituted in each argument) or ``{"callable": "module:function"}``
  (called as ``function(percent, deployment)``, sync or async).
* ``observe`` (:data:`OBSERVE`) ``{"health", "thresholds", "wait", "samples", "interval",
  "failure_limit"}`` → waits ``wait`` seconds (the rest of the stage), then samples the health
  source and returns an :class:`~orchestrator.contracts.health.Observation` (``verdict``
  healthy, degraded or unhealthy).
* ``rollback`` (:data:`ROLLBACK`) ``{"deployment", "traffic", "rollback_command"}`` → traffic
  to 0, then the rollback command (argv, no shell): ``{"deployment", "percent": 0,
  "traffic_output", "rollback_output"}``. Fenced like ``set_traffic``.
"""

from __future__ import annotations

from typing import Literal

from pydantic import ConfigDict, Field, SerializeAsAny, model_validator

from orchestrator.contracts.base import Contract, Operation
from orchestrator.contracts.health import HealthSource, Observation, Thresholds

__all__ = [
    "AGENT_TYPE", "OBSERVE", "ROLLBACK", "SET_TRAFFIC", "VALIDATE", "CanaryCheck", "Observe",
    "RolledBack", "Rollback", "SetTraffic", "TrafficSet", "TrafficSpec", "Validate",
    "deployment_lock",
]

AGENT_TYPE = "deployer"


def deployment_lock(deployment: str) -> str:
    """The lock name guarding a deployment's rollout: ``deploy:<deployment>``."""
    return f"deploy:{deployment}"


class TrafficSpec(Contract):
    """How traffic is moved: a command template, or a Python callable."""

    command: list[str] | None = Field(None, min_length=1)
    callable: str | None = Field(None, pattern=r"^[\w.]+:[\w.]+$")
    timeout: float = Field(60.0, gt=0)

    @model_validator(mode="after")
    def _one_way(self) -> TrafficSpec:
        if (self.command is None) == (self.callable is None):
            raise ValueError("give exactly one of 'command' (a list of arguments) or "
                             "'callable' ('module:function')")
        return self


class CanaryCheck(Contract):
    """The parts of a canary spec the deployer owns (the rest is the workflow's, whose spec
    extends this one; fields the deployer does not know are ignored here)."""

    model_config = ConfigDict(extra="ignore")

    traffic: TrafficSpec = Field(
        description='{"command": [argv with {percent}]} or {"callable": "module:function"}')
    health: HealthSource = Field(description='{"kind": "http"|"prometheus", "url": ...}')
    thresholds: Thresholds = Field(default_factory=Thresholds)
    rollback_command: list[str] | None = Field(None, min_length=1)
    samples: int = Field(3, ge=1, le=1000)
    sample_interval: float = Field(1.0, ge=0)
    failure_limit: int = Field(2, ge=1)


class Validate(Contract):
    #: The whole canary spec goes on the wire (a subclass's fields too); the deployer reads
    #: its own parts.
    spec: SerializeAsAny[CanaryCheck]


class SetTraffic(Contract):
    deployment: str = Field(min_length=1, description="the deployment's name")
    percent: int = Field(ge=0, le=100, description="a whole number from 0 to 100")
    traffic: TrafficSpec


class TrafficSet(Contract):
    deployment: str
    percent: int
    output: str = Field(description="the traffic command's output (its end), or what the "
                        "callable returned")


class Observe(Contract):
    health: HealthSource
    thresholds: Thresholds = Field(default_factory=Thresholds)
    samples: int = Field(3, ge=1, le=1000)
    interval: float = Field(1.0, ge=0)
    failure_limit: int = Field(2, ge=1)
    wait: float = Field(0.0, ge=0, description="seconds to wait before the first sample")


class Rollback(Contract):
    deployment: str = Field(min_length=1)
    traffic: TrafficSpec
    rollback_command: list[str] | None = Field(None, min_length=1)
    timeout: float = Field(300.0, gt=0)
    reason: str = ""
    mode: Literal["automatic", "manual"] = "automatic"


class RolledBack(Contract):
    deployment: str
    percent: int
    traffic_output: str
    rollback_output: str | None = Field(description="the rollback command's output (its "
                                        "end), None without a command")


VALIDATE = Operation(AGENT_TYPE, "validate", Validate, CanaryCheck)
SET_TRAFFIC = Operation(AGENT_TYPE, "set_traffic", SetTraffic, TrafficSet)
OBSERVE = Operation(AGENT_TYPE, "observe", Observe, Observation)
ROLLBACK = Operation(AGENT_TYPE, "rollback", Rollback, RolledBack)
