"""Judging health: one sample against the thresholds, and one verdict over several samples.

Thresholds (:func:`apply_thresholds`), once a probe's answer is known to be a health answer
(a 2xx or 3xx, or a metrics page), first match wins:

* error_rate >= ``error_rate_unhealthy`` → unhealthy ``error_rate``; >= ``error_rate_degraded``
  → degraded ``error_rate``;
* p95 (reported by the service or computed from its metrics, else the measured response time)
  > ``latency_ms`` → degraded ``latency``;
* otherwise healthy.

:func:`judge`: unhealthy if the number of unhealthy samples >= ``failure_limit``; else degraded
if unhealthy + degraded >= ``failure_limit``; else healthy. ``failure_limit`` is clamped to
``[1, len(samples)]``.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from datetime import UTC, datetime

from orchestrator.contracts.health import ISSUE_ORDER, Issue, Sample, Status, Thresholds

__all__ = ["apply_thresholds", "fmt_ms", "judge", "make_sample"]


def make_sample(
    status: Status,
    issue: Issue | None,
    detail: str,
    code: int | None = None,
    elapsed: float | None = None,
    error_rate: float | None = None,
    p95: float | None = None,
    *,
    body: str | None = None,
) -> Sample:
    """A :class:`Sample` taken now; times are rounded to the microsecond, the detail ends
    with a full stop."""
    return Sample(
        status=status,
        issue=issue,
        http_status=code,
        response_ms=None if elapsed is None else round(elapsed, 3),
        error_rate=error_rate,
        p95_ms=None if p95 is None else round(p95, 3),
        detail=detail if detail.endswith(".") else detail + ".",
        at=datetime.now(UTC).isoformat(timespec="milliseconds"),
        body=body,
    )


def apply_thresholds(
    limits: Thresholds,
    said: str,
    code: int,
    elapsed: float,
    error_rate: float | None,
    p95: float | None,
) -> Sample:
    """The sample of a health answer (``said`` describes it) judged by ``limits``."""
    seen = (code, elapsed, error_rate, p95)
    if error_rate is not None and error_rate >= limits.error_rate_unhealthy:
        return make_sample(
            "unhealthy", "error_rate",
            f"{said}: error rate {error_rate:.1%} >= {limits.error_rate_unhealthy:.1%}",
            *seen,
        )
    if error_rate is not None and error_rate >= limits.error_rate_degraded:
        return make_sample(
            "degraded", "error_rate",
            f"{said}: error rate {error_rate:.1%} >= {limits.error_rate_degraded:.1%}",
            *seen,
        )
    latency, what = (p95, "p95") if p95 is not None else (elapsed, "response time")
    if latency > limits.latency_ms:
        return make_sample(
            "degraded", "latency",
            f"{said}: {what} {fmt_ms(latency)} > {fmt_ms(limits.latency_ms)}",
            *seen,
        )
    return make_sample("healthy", None, said, *seen)


def judge(samples: list[Sample], failure_limit: int) -> tuple[str, str]:
    """Turn samples into one verdict.

    Unhealthy if at least ``failure_limit`` samples are unhealthy; else degraded if at least
    ``failure_limit`` are unhealthy or degraded; else healthy. ``failure_limit`` is clamped to
    ``[1, len(samples)]``, so a limit above the number of samples means "all of them".

    Returns:
        ``(verdict, reason)``; the reason gives the counts and the most common issue.

    Raises:
        ValueError: if there are no samples.
    """
    if not samples:
        raise ValueError("judge needs at least one sample")
    total = len(samples)
    limit = min(max(int(failure_limit), 1), total)
    limit_text = f"failure limit {limit}"
    if limit != failure_limit:
        limit_text += f" (clamped from {failure_limit})"
    unhealthy = [s for s in samples if s.status == "unhealthy"]
    degraded = [s for s in samples if s.status == "degraded"]
    if len(unhealthy) >= limit:
        return "unhealthy", (
            f"{len(unhealthy)} of {total} samples unhealthy ({_top_issue(unhealthy)}) "
            f">= {limit_text}"
        )
    bad = unhealthy + degraded
    if len(bad) >= limit:
        counts = f"{len(degraded)} degraded"
        if unhealthy:
            counts = f"{len(unhealthy)} unhealthy + {counts}"
        return "degraded", (
            f"{counts} of {total} samples ({_top_issue(bad)}) >= {limit_text}"
        )
    if not bad:
        return "healthy", f"all {total} samples healthy"
    return "healthy", (
        f"{len(bad)} of {total} samples unhealthy or degraded ({_top_issue(bad)}) "
        f"< {limit_text}"
    )


def _top_issue(samples: Iterable[Sample]) -> str:
    """The most common issue; the most severe of those equally common."""
    counts = Counter(s.issue for s in samples if s.issue is not None)
    if not counts:
        return "no issue recorded"
    best = max(counts.values())
    return next(issue for issue in ISSUE_ORDER if counts.get(issue) == best)  # type: ignore[call-overload]


def fmt_ms(ms: float) -> str:
    """Milliseconds as said in a sample's detail: ``12 ms``, ``3.4 ms``."""
    return f"{ms:.0f} ms" if ms >= 10 else f"{ms:.1f} ms"
