"""Health on the wire: where and how a service is probed (:class:`HealthSource`), when a sample
stops being healthy (:class:`Thresholds`), and what a probe found (:class:`Sample`, and
:class:`Observation`, a verdict over a few samples).

The ``deployer`` contract (its ``observe`` request and the canary spec) and the
``infrastructure`` contract (its ``probe`` request) both carry these; the health library
(:mod:`orchestrator.agents.lib.health`) takes and makes them.
"""

from __future__ import annotations

import math
from typing import Literal

import httpx
from pydantic import Field, field_validator, model_validator

from orchestrator.contracts.base import Contract

__all__ = ["ISSUE_ORDER", "HealthSource", "Issue", "Observation", "Sample", "Status",
           "Thresholds"]

Status = Literal["healthy", "degraded", "unhealthy"]
Issue = Literal["down", "http_5xx", "http_4xx", "latency", "error_rate"]

#: Issue kinds, gravest first: a verdict names the most common issue (ties go to the gravest),
#: and the infrastructure agent's rules treat the gravest one seen.
ISSUE_ORDER: tuple[str, ...] = ("down", "http_5xx", "http_4xx", "error_rate", "latency")


class HealthSource(Contract):
    """Where and how to probe a service.

    ``url`` is the health endpoint for ``kind="http"`` and the metrics endpoint for
    ``kind="prometheus"``. ``timeout`` bounds each probe as a whole, in seconds.
    """

    kind: Literal["http", "prometheus"] = "http"
    url: str
    timeout: float = Field(default=2.0, gt=0)
    error_metric: str = "http_requests_total"
    status_label: str = "status"
    latency_metric: str = "http_request_duration_seconds"

    @field_validator("url")
    @classmethod
    def _check_url(cls, value: str) -> str:
        value = value.strip()
        if not value.lower().startswith(("http://", "https://")):
            raise ValueError(f"url must start with http:// or https://, got {value!r}")
        try:
            host = httpx.URL(value).host
        except httpx.InvalidURL as exc:
            raise ValueError(f"url {value!r} is not a valid URL: {exc}") from None
        if not host:
            raise ValueError(f"url {value!r} has no host")
        return value

    @field_validator("timeout")
    @classmethod
    def _check_timeout(cls, value: float) -> float:
        if not math.isfinite(value):
            raise ValueError("timeout must be a finite number of seconds")
        return value


class Thresholds(Contract):
    """When a sample stops being healthy. Error rates are fractions (0..1)."""

    error_rate_degraded: float = Field(default=0.05, ge=0, le=1)
    error_rate_unhealthy: float = Field(default=0.10, ge=0, le=1)
    latency_ms: float = Field(default=200.0, gt=0)

    @model_validator(mode="after")
    def _check_order(self) -> Thresholds:
        if self.error_rate_degraded > self.error_rate_unhealthy:
            raise ValueError(
                f"error_rate_degraded ({self.error_rate_degraded}) must not exceed "
                f"error_rate_unhealthy ({self.error_rate_unhealthy})"
            )
        return self


class Sample(Contract):
    """One probe of a service and what it showed."""

    status: Status
    issue: Issue | None
    http_status: int | None
    response_ms: float | None
    error_rate: float | None
    p95_ms: float | None
    detail: str
    at: str
    #: An excerpt of the body of an answer that tells what is wrong (a 4xx), else None.
    body: str | None = None


class Observation(Contract):
    """A verdict over a few samples, with the samples it rests on."""

    verdict: Status
    samples: list[Sample]
    reason: str
