"""Health sampling of a running service, for canary stages and self-healing.

A :class:`Prober` takes one :class:`Sample` of a service at a time; :func:`observe` takes a few
samples some time apart and :func:`judge` turns them into one verdict. Every probe is bounded by
``HealthSource.timeout`` (the whole request: connect, send, read the body), so nothing here
waits for ever and nothing blocks the event loop.

Rules for one sample, first match wins:

``kind="http"`` (GET the URL, redirects are not followed):

* no answer (connection refused, connect error, timeout, connection dropped) → unhealthy ``down``;
* status >= 500 → unhealthy ``http_5xx``;
* status 4xx → degraded ``http_4xx``: the service answers, but not what we asked for. A wrong
  path or a refused probe is a misconfiguration, worth a look, not a rollback or a restart on
  its own; the detail names the status and the URL, and ``body`` keeps an excerpt of the answer;
* a JSON object body may report ``error_rate`` (0..1) and ``p95_ms`` (or ``p95_latency_ms`` /
  ``latency_ms``); error_rate >= ``error_rate_unhealthy`` → unhealthy ``error_rate``;
  >= ``error_rate_degraded`` → degraded ``error_rate``;
* p95 (from the body, else the measured response time) > ``latency_ms`` → degraded ``latency``;
* otherwise healthy. Bodies that are not JSON are fine: 2xx and 3xx are judged by response time.

``kind="prometheus"`` (GET the metrics text, parsed with ``prometheus_client``'s parser):

* no answer → unhealthy ``down``; a 4xx status → unhealthy ``http_4xx`` (the metrics URL is
  wrong or refused); any other non-2xx status, or a body that does not parse as the
  Prometheus text format → unhealthy ``http_5xx``;
* the window is the time since the previous successful scrape of the same :class:`Prober` (the
  first scrape uses the cumulative totals). error_rate = increase of ``error_metric`` series whose
  ``status_label`` starts with ``"5"`` / increase of all ``error_metric`` series; no requests in
  the window → error_rate is ``None``, which is not an issue;
* p95 comes from the increases of the ``latency_metric`` histogram's ``_bucket`` series in the
  same window, interpolated linearly within the bucket like PromQL's ``histogram_quantile``
  (a quantile in the ``+Inf`` bucket gives the highest finite bound), in milliseconds;
* a counter that went down means the process restarted: the whole metric's window is then its
  new cumulative value (resets are detected per metric, not per series, because a restart
  resets every series at once and a lone series could already have climbed past its old value);
* then the thresholds as for ``http``, with the scrape's own response time standing in for p95
  when the window saw no requests.

:func:`judge`: unhealthy if the number of unhealthy samples >= ``failure_limit``; else degraded
if unhealthy + degraded >= ``failure_limit``; else healthy. ``failure_limit`` is clamped to
``[1, len(samples)]``.

Probes go straight to the URL: proxy settings from the environment are ignored, since a health
probe through a proxy measures the proxy.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import ssl
import time
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

import httpx
from prometheus_client.parser import text_string_to_metric_families
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

__all__ = [
    "HealthSource",
    "Observation",
    "Prober",
    "Sample",
    "Thresholds",
    "judge",
    "observe",
]

logger = logging.getLogger(__name__)

Status = Literal["healthy", "degraded", "unhealthy"]
Issue = Literal["down", "http_5xx", "http_4xx", "latency", "error_rate"]

# Most severe first: breaks ties when naming the most common issue.
_ISSUE_SEVERITY: tuple[str, ...] = ("down", "http_5xx", "http_4xx", "error_rate", "latency")
# Characters of a 4xx answer's body kept as evidence.
_BODY_EXCERPT = 300
_P95_KEYS = ("p95_ms", "p95_latency_ms", "latency_ms")
# Parsing a large metrics page is CPU work done in a thread; this bounds the wait for it.
_MIN_PARSE_TIMEOUT = 5.0


class HealthSource(BaseModel):
    """Where and how to probe a service.

    ``url`` is the health endpoint for ``kind="http"`` and the metrics endpoint for
    ``kind="prometheus"``. ``timeout`` bounds each probe as a whole, in seconds.
    """

    model_config = ConfigDict(extra="forbid")

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


class Thresholds(BaseModel):
    """When a sample stops being healthy. Error rates are fractions (0..1)."""

    model_config = ConfigDict(extra="forbid")

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


class Sample(BaseModel):
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


class Observation(BaseModel):
    """A verdict over a few samples, with the samples it rests on."""

    verdict: Status
    samples: list[Sample]
    reason: str


@dataclass
class _Scrape:
    """Cumulative values of the metrics one scrape saw, keyed by the series' labels."""

    requests: dict[tuple[tuple[str, str], ...], float] = field(default_factory=dict)
    buckets: dict[tuple[tuple[str, str], ...], float] = field(default_factory=dict)


@dataclass
class _Window:
    error_rate: float | None
    p95_ms: float | None
    requests: float
    reset: bool
    notes: list[str]


class Prober:
    """Takes samples of one service.

    A Prober keeps the previous successful Prometheus scrape, so each ``prometheus`` sample
    describes the window since the one before it. Use one Prober per watched service.
    """

    def __init__(self, source: HealthSource, thresholds: Thresholds | None = None) -> None:
        self.source = source
        self.thresholds = thresholds if thresholds is not None else Thresholds()
        self._previous: _Scrape | None = None
        self._ssl_context: ssl.SSLContext | None = None
        # Samples of one Prober run one at a time, so each Prometheus window follows the last.
        self._lock = asyncio.Lock()

    async def sample(self) -> Sample:
        """Probe the service once (concurrent calls on one Prober take turns).

        Returns:
            A :class:`Sample`; an unreachable service is an unhealthy sample, not an exception.
        """
        async with self._lock:
            if self.source.kind == "prometheus":
                result = await self._sample_prometheus()
            else:
                result = await self._sample_http()
        logger.debug("health sample of %s: %s", self.source.url, result.detail)
        return result

    async def _get(self) -> tuple[httpx.Response | None, float, str | None]:
        """GET the source URL: (response, elapsed ms, why it failed)."""
        if self._ssl_context is None:
            # Building an SSL context reads the CA bundle (~30 ms measured): keep it off the
            # event loop and build it once per Prober, not once per request.
            self._ssl_context = await asyncio.to_thread(httpx.create_ssl_context)
        timeout = self.source.timeout
        started = time.perf_counter()
        try:
            async with asyncio.timeout(timeout):
                async with httpx.AsyncClient(
                    verify=self._ssl_context,
                    timeout=timeout,
                    follow_redirects=False,
                    trust_env=False,
                ) as client:
                    response = await client.get(self.source.url)
        except (TimeoutError, httpx.TimeoutException):
            return None, _ms_since(started), f"did not answer within {_seconds(timeout)}"
        except httpx.ConnectError as exc:
            return None, _ms_since(started), f"could not connect ({_reason(exc)})"
        except (httpx.TransportError, OSError) as exc:
            return None, _ms_since(started), f"failed ({_reason(exc)})"
        return response, _ms_since(started), None

    async def _sample_http(self) -> Sample:
        url = self.source.url
        response, elapsed, failure = await self._get()
        if response is None:
            return _sample("unhealthy", "down", f"GET {url} {failure}")
        code = response.status_code
        said = f"GET {url} answered {code} in {_fmt_ms(elapsed)}"
        error_rate, p95, notes = _read_body(response)
        if notes:
            said += f" ({'; '.join(notes)})"
        seen = (code, elapsed, error_rate, p95)
        if code >= 500:
            return _sample("unhealthy", "http_5xx", said, *seen)
        if code >= 400:
            return _sample(
                "degraded", "http_4xx",
                f"{said}: a client error, not a health answer; the health URL or the probe is "
                "misconfigured",
                *seen, body=_excerpt(response),
            )
        return self._apply_thresholds(said, code, elapsed, error_rate, p95)

    async def _sample_prometheus(self) -> Sample:
        url = self.source.url
        response, elapsed, failure = await self._get()
        if response is None:
            return _sample("unhealthy", "down", f"GET {url} {failure}")
        code = response.status_code
        said = f"GET {url} answered {code} in {_fmt_ms(elapsed)}"
        if 400 <= code < 500:
            return _sample(
                "unhealthy", "http_4xx",
                f"{said}, not metrics; the metrics URL or the probe is misconfigured",
                code, elapsed, body=_excerpt(response),
            )
        if not 200 <= code < 300:
            return _sample("unhealthy", "http_5xx", f"{said}, not metrics", code, elapsed)
        try:
            scrape = await asyncio.wait_for(
                asyncio.to_thread(_parse_scrape, response.text, self.source),
                timeout=max(_MIN_PARSE_TIMEOUT, self.source.timeout),
            )
        except TimeoutError:
            return _sample(
                "unhealthy", "http_5xx", f"{said}, but its metrics took too long to parse",
                code, elapsed,
            )
        except Exception as exc:  # the parser's errors on bad input are not all ValueError
            return _sample(
                "unhealthy", "http_5xx",
                f"{said}, but not in the Prometheus text format ({_reason(exc)})",
                code, elapsed,
            )
        window = _window(self._previous, scrape, self.source.status_label)
        first = self._previous is None
        self._previous = scrape
        said += (
            f": {_fmt_count(window.requests)} requests "
            f"{'since start' if first or window.reset else 'since the last scrape'}"
        )
        if window.error_rate is not None:
            said += f", {window.error_rate:.1%} 5xx"
        if window.p95_ms is not None:
            said += f", p95 {_fmt_ms(window.p95_ms)}"
        if window.reset:
            said += " (counters were reset: the process restarted)"
        if window.notes:
            said += f" ({'; '.join(window.notes)})"
        return self._apply_thresholds(said, code, elapsed, window.error_rate, window.p95_ms)

    def _apply_thresholds(
        self,
        said: str,
        code: int,
        elapsed: float,
        error_rate: float | None,
        p95: float | None,
    ) -> Sample:
        limits = self.thresholds
        seen = (code, elapsed, error_rate, p95)
        if error_rate is not None and error_rate >= limits.error_rate_unhealthy:
            return _sample(
                "unhealthy", "error_rate",
                f"{said}: error rate {error_rate:.1%} >= {limits.error_rate_unhealthy:.1%}",
                *seen,
            )
        if error_rate is not None and error_rate >= limits.error_rate_degraded:
            return _sample(
                "degraded", "error_rate",
                f"{said}: error rate {error_rate:.1%} >= {limits.error_rate_degraded:.1%}",
                *seen,
            )
        latency, what = (p95, "p95") if p95 is not None else (elapsed, "response time")
        if latency > limits.latency_ms:
            return _sample(
                "degraded", "latency",
                f"{said}: {what} {_fmt_ms(latency)} > {_fmt_ms(limits.latency_ms)}",
                *seen,
            )
        return _sample("healthy", None, said, *seen)


async def observe(
    source: HealthSource,
    thresholds: Thresholds | None = None,
    *,
    samples: int = 3,
    interval: float = 1.0,
    failure_limit: int = 2,
) -> Observation:
    """Take ``samples`` samples ``interval`` seconds apart and judge them.

    Args:
        source: the service to probe.
        thresholds: when a sample is degraded or unhealthy; defaults to :class:`Thresholds()`.
        samples: how many samples to take (>= 1).
        interval: seconds between samples (>= 0); there is no wait after the last one.
        failure_limit: how many bad samples make the verdict (>= 1); see :func:`judge`.

    Returns:
        The :class:`Observation`: verdict, samples and the reason.

    Raises:
        ValueError: if ``samples``, ``interval`` or ``failure_limit`` is out of range.
    """
    if isinstance(samples, bool) or not isinstance(samples, int) or samples < 1:
        raise ValueError(f"samples must be an integer >= 1, got {samples!r}")
    if isinstance(interval, bool) or not isinstance(interval, int | float) or not (
        math.isfinite(interval) and interval >= 0
    ):
        raise ValueError(f"interval must be a finite number of seconds >= 0, got {interval!r}")
    if isinstance(failure_limit, bool) or not isinstance(failure_limit, int) or failure_limit < 1:
        raise ValueError(f"failure_limit must be an integer >= 1, got {failure_limit!r}")
    prober = Prober(source, thresholds)
    taken: list[Sample] = []
    for index in range(samples):
        if index:
            await asyncio.sleep(interval)
        taken.append(await prober.sample())
    verdict, reason = judge(taken, failure_limit)
    return Observation(verdict=verdict, samples=taken, reason=reason)  # type: ignore[arg-type]


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
    counts = Counter(s.issue for s in samples if s.issue is not None)
    if not counts:
        return "no issue recorded"
    best = max(counts.values())
    return next(issue for issue in _ISSUE_SEVERITY if counts.get(issue) == best)  # type: ignore[call-overload]


def _sample(
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


def _excerpt(response: httpx.Response) -> str:
    """The start of a body as text, whitespace folded, for evidence."""
    text = response.content[: _BODY_EXCERPT * 4].decode("utf-8", "replace")
    text = " ".join(text.split())
    return text if len(text) <= _BODY_EXCERPT else text[: _BODY_EXCERPT - 1] + "…"


def _read_body(response: httpx.Response) -> tuple[float | None, float | None, list[str]]:
    """error_rate and p95 (ms) from a JSON object body, if it reports them."""
    if not response.content:
        return None, None, []
    try:
        body = json.loads(response.content)
    except ValueError:  # not JSON (or not UTF-8): judged by status and time alone
        return None, None, []
    if not isinstance(body, Mapping):
        return None, None, []
    notes: list[str] = []
    error_rate = _number(body.get("error_rate"))
    if error_rate is not None and not 0 <= error_rate <= 1:
        notes.append(f"ignored error_rate {error_rate}: not within 0..1")
        error_rate = None
    p95 = None
    for key in _P95_KEYS:
        value = _number(body.get(key))
        if value is not None and value >= 0:
            p95 = value
            break
    return error_rate, p95, notes


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def _parse_scrape(text: str, source: HealthSource) -> _Scrape:
    """The series of the error counter and the latency histogram in one metrics page."""
    counter_names = {
        source.error_metric,
        source.error_metric.removesuffix("_total"),
        source.error_metric.removesuffix("_total") + "_total",
    }
    bucket_name = source.latency_metric + "_bucket"
    scrape = _Scrape()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name in counter_names:
                scrape.requests[_labels(sample.labels)] = float(sample.value)
            elif sample.name == bucket_name and "le" in sample.labels:
                scrape.buckets[_labels(sample.labels)] = float(sample.value)
    return scrape


def _labels(labels: Mapping[str, str]) -> tuple[tuple[str, str], ...]:
    return tuple(sorted(labels.items()))


def _increase(
    previous: Mapping[tuple[tuple[str, str], ...], float] | None,
    current: Mapping[tuple[tuple[str, str], ...], float],
) -> tuple[dict[tuple[tuple[str, str], ...], float], bool]:
    """Per-series increase since ``previous``, and whether the metric was reset."""
    if previous is None:
        return dict(current), False
    if any(value < previous.get(key, 0.0) for key, value in current.items()):
        return dict(current), True
    return {key: value - previous.get(key, 0.0) for key, value in current.items()}, False


def _window(previous: _Scrape | None, current: _Scrape, status_label: str) -> _Window:
    notes: list[str] = []
    requests, requests_reset = _increase(
        previous.requests if previous else None, current.requests
    )
    buckets, buckets_reset = _increase(previous.buckets if previous else None, current.buckets)
    total = sum(requests.values())
    error_rate: float | None = None
    if not current.requests:
        notes.append("no request counter found")
    elif total > 0:
        errors = sum(
            value
            for key, value in requests.items()
            if dict(key).get(status_label, "").startswith("5")
        )
        error_rate = min(max(errors / total, 0.0), 1.0)
    if not current.buckets:
        notes.append("no latency histogram found")
    p95 = _histogram_quantile(0.95, buckets)
    return _Window(
        error_rate=error_rate,
        p95_ms=None if p95 is None else p95 * 1000.0,
        requests=total,
        reset=requests_reset or buckets_reset,
        notes=notes,
    )


def _histogram_quantile(
    q: float, buckets: Mapping[tuple[tuple[str, str], ...], float]
) -> float | None:
    """PromQL's ``histogram_quantile`` over bucket increases (all other labels summed)."""
    by_bound: dict[float, float] = {}
    for key, value in buckets.items():
        try:
            bound = float(dict(key)["le"])
        except (KeyError, ValueError):
            continue
        by_bound[bound] = by_bound.get(bound, 0.0) + value
    if math.inf not in by_bound:
        return None
    bounds = sorted(by_bound)
    counts: list[float] = []
    for bound in bounds:  # bucket counts are cumulative: enforce it, as Prometheus does
        counts.append(max(by_bound[bound], counts[-1] if counts else 0.0))
    total = counts[-1]
    if total <= 0:
        return None
    finite = [bound for bound in bounds if bound != math.inf]
    if not finite:
        return None
    rank = q * total
    index = next(i for i, count in enumerate(counts) if count >= rank)
    if bounds[index] == math.inf:
        return finite[-1]
    upper = bounds[index]
    if index == 0:
        lower, below = (0.0 if upper > 0 else upper), 0.0
    else:
        lower, below = bounds[index - 1], counts[index - 1]
    in_bucket = counts[index] - below
    if in_bucket <= 0:
        return upper
    return lower + (upper - lower) * ((rank - below) / in_bucket)


def _ms_since(started: float) -> float:
    return (time.perf_counter() - started) * 1000.0


def _fmt_ms(ms: float) -> str:
    return f"{ms:.0f} ms" if ms >= 10 else f"{ms:.1f} ms"


def _fmt_count(value: float) -> str:
    return f"{value:.0f}" if value == int(value) else f"{value:g}"


def _seconds(value: float) -> str:
    return f"{value:g} s"


def _reason(exc: BaseException) -> str:
    text = str(exc).strip()
    return text or type(exc).__name__
