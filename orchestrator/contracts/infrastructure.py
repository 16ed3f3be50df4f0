"""The ``infrastructure`` agent's contract: probe a running service, diagnose it, apply
runbook fixes.

Request types:

* ``probe`` (:data:`PROBE`) ``{"health_url", "metrics_url"?, "thresholds"?, "timeout"?,
  "window"?, "wait_healthy"?}`` → ``{"healthy", "issues", "attempts", "samples"}``. One HTTP
  health sample, plus a Prometheus sample over ``window`` seconds when ``metrics_url`` is
  given. With ``wait_healthy`` (seconds) it probes every half second until healthy or out of
  time — how a fix is verified while the service comes up — or until a URL answers 4xx
  (``http_4xx``: a misconfigured probe does not heal by waiting).
* ``diagnose`` (:data:`DIAGNOSE`) ``{"samples", "kinds"}`` → ``{"kind", "reason", "by"}``
  (and ``"rules"``, the rules' choice, when ``by`` is ``"model"``): the issue to treat.
  Rules pick the gravest issue seen (down > http_5xx > http_4xx > error_rate > latency); when
  a chat model is configured (``ORCHESTRATOR_CHAT_MODEL``) it is asked first, and its answer
  is used only if it names one of ``kinds``.
* ``fix`` (:data:`FIX`) ``{"service", "action", "restart"}`` → what was done
  (:class:`FixResult`). Guarded by the :func:`service_lock` lock (``service:<name>``): the
  request must carry that lock's fencing token. ``action`` is ``{"type": "restart"}``,
  ``{"type": "command", "argv": [...], "timeout": 60}`` or ``{"type": "wait", "seconds": N}``.
  ``restart`` says how: ``{"command": [argv]}`` (e.g. a service manager), or ``{"start":
  [argv], "pid_file", "cwd"?, "env"?, "log_file"?, "settle"?}``: the process in the pid file
  is stopped (SIGTERM, then SIGKILL) and ``start`` is launched in a session of its own. A
  start is recorded beside the pid file (``<pid_file>.restart.json``: the request id, the pid,
  its start time and command line), so a redelivered request does not restart the service a
  second time.

  A fix that did not work answers ``"ok": false`` with the evidence, not an error: a command
  that exits non-zero or times out (``exit_code``, ``output``: its last lines), a start
  command that cannot run or whose process is gone within ``settle`` seconds (``exit_code``,
  ``log_tail``: the last lines it logged).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, SerializerFunctionWrapHandler, model_serializer, model_validator

from orchestrator.contracts.base import Contract, Operation
from orchestrator.contracts.health import Sample, Thresholds

__all__ = [
    "AGENT_TYPE", "DIAGNOSE", "FIX", "PROBE", "Diagnose", "Diagnosis", "Fix", "FixAction",
    "FixResult", "Probe", "ProbeResult", "RestartSpec", "StalePidFile", "service_lock",
]

AGENT_TYPE = "infrastructure"


def service_lock(service: str) -> str:
    """The lock name guarding a service's fixes: ``service:<name>``."""
    return f"service:{service}"


class _AsGiven(Contract):
    """An answer whose optional fields are on the wire only when the agent gave them (each
    answer's shape stays what it is, without nulls for the other shapes' fields)."""

    @model_serializer(mode="wrap")
    def _given(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        data = handler(self)
        return {key: value for key, value in data.items() if key in self.model_fields_set}


class Probe(Contract):
    health_url: str
    metrics_url: str | None = None
    thresholds: Thresholds = Field(default_factory=Thresholds)
    timeout: float = Field(2.0, gt=0)
    window: float = Field(1.0, ge=0)
    wait_healthy: float = Field(0.0, ge=0, le=3600)


class ProbeResult(Contract):
    healthy: bool
    issues: list[str] = Field(description="the issues of the samples that were not healthy")
    attempts: int = Field(description="how many times it probed")
    samples: list[Sample] = Field(description="the last probe's: health, then metrics")


class Diagnose(Contract):
    samples: list[dict[str, Any]] = Field(description="probe samples, the evidence")
    kinds: list[str] | None = Field(None, description="the issue kinds the runbook treats "
                                    "(none: every kind)")


class Diagnosis(_AsGiven):
    kind: str = Field(description="the issue to treat, or 'none' when all was healthy")
    reason: str
    by: Literal["rules", "model"]
    rules: str | None = Field(None, description="what the rules chose, when the model decided")


class RestartSpec(Contract):
    command: list[str] | None = Field(None, min_length=1)
    start: list[str] | None = Field(None, min_length=1)
    pid_file: str | None = None
    cwd: str | None = None
    env: dict[str, str] = Field(default_factory=dict)
    log_file: str | None = None
    stop_timeout: float = Field(5.0, gt=0)
    timeout: float = Field(60.0, gt=0)
    #: Seconds the started process must stay up to count as started.
    settle: float = Field(1.0, ge=0, le=60)

    @model_validator(mode="after")
    def _one_way(self) -> RestartSpec:
        if (self.command is None) == (self.start is None):
            raise ValueError("give exactly one of 'command' or 'start' (with 'pid_file')")
        if self.start is not None and not self.pid_file:
            raise ValueError("'start' needs 'pid_file', where the service's pid is kept")
        return self


class FixAction(Contract):
    type: Literal["restart", "command", "wait"]
    argv: list[str] | None = Field(None, min_length=1)
    timeout: float = Field(60.0, gt=0)
    seconds: float = Field(0.0, ge=0, le=3600)

    @model_validator(mode="after")
    def _argv(self) -> FixAction:
        if self.type == "command" and not self.argv:
            raise ValueError("a 'command' action needs 'argv'")
        return self


class Fix(Contract):
    service: str = Field(min_length=1, description="the service's name")
    action: FixAction
    #: How to restart the service; a ``restart`` action without it is refused by the agent
    #: (``invalid_input``), as an answer the workflow records, not as a workflow's own error.
    restart: RestartSpec | None = None


class StalePidFile(Contract):
    pid: int
    reason: str = Field(description="why that pid is not the service")


class FixResult(_AsGiven):
    """What a fix did. Every answer has ``action``, ``ok`` and ``detail``; the others depend
    on the action: a command (or a restart by command) has ``exit_code`` and ``output`` (and
    ``timed_out`` when it ran); a restart of a process has ``pid``, ``stopped_pid``,
    ``stale_pid_file`` (and ``exit_code`` and ``log_tail`` when it did not stay up;
    ``replayed`` when a redelivered request found its own restart done)."""

    action: Literal["restart", "command", "wait"]
    ok: bool
    detail: str
    exit_code: int | None = None
    timed_out: bool | None = None
    output: str | None = None
    pid: int | None = None
    stopped_pid: int | None = None
    stale_pid_file: StalePidFile | None = None
    log_tail: str | None = None
    replayed: bool | None = None


PROBE = Operation(AGENT_TYPE, "probe", Probe, ProbeResult)
DIAGNOSE = Operation(AGENT_TYPE, "diagnose", Diagnose, Diagnosis)
FIX = Operation(AGENT_TYPE, "fix", Fix, FixResult)
