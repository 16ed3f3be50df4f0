"""Probing a service: :class:`Prober` takes one sample at a time, :func:`observe` a few some
time apart, judged into one verdict.

Rules for one sample, first match wins:

``kind="http"`` (GET the URL, redirects are not followed):

* no answer (connection refused, connect error, timeout, connection dropped) → unhealthy ``down``;
* status >= 500 → unhealthy ``http_5xx``;
* status 4xx → degraded ``http_4xx``: the service answers, but not what we asked for. A wrong
  path or a refused probe is a misconfiguration, worth a look, not a rollback or a restart on
  its own; the detail names the status and the URL, and ``body`` keeps an excerpt of the answer;
* a JSON object body may report ``error_rate`` (0..1) and ``p95_ms`` (or ``p95_latency_ms`` /
  ``latency_ms``), judged by the thresholds (:func:`~.judge.apply_thresholds`), like the
  measured response time when the body reports no p95. Bodies that are not JSON are fine: 2xx
  and 3xx are judged by response time.

``kind="prometheus"`` (GET the metrics text):

* no answer → unhealthy ``down``; a 4xx status → unhealthy ``http_4xx`` (the metrics URL is
  wrong or refused); any other non-2xx status, or a body that does not parse as the
  Prometheus text format → unhealthy ``http_5xx``;
* then the error rate and p95 of the window since the previous scrape of the same
  :class:`Prober` (see :mod:`~.prometheus`), judged by the thresholds as for ``http``, with the
  scrape's own response time standing in for p95 when the window saw no requests.

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
from collections.abc import Mapping
from typing import Any

import httpx
from orchestrator.agents.lib.health.judge import apply_thresholds, fmt_ms, judge, make_sample
from orchestrator.agents.lib.health.prometheus import Scrape, fmt_count, parse_scrape, window

from orchestrator.contracts.health import HealthSource, Observation, Sample, Thresholds

__all__ = ["Prober", "observe"]

logger = logging.getLogger(__name__)

# Characters of a 4xx answer's body kept as evidence.
_BODY_EXCERPT = 300
_P95_KEYS = ("p95_ms", "p95_latency_ms", "latency_ms")
# Parsing a large metrics page is CPU work done in a thread; this bounds the wait for it.
_MIN_PARSE_TIMEOUT = 5.0


class Prober:
    """Takes samples of one service.

    A Prober keeps the previous successful Prometheus scrape, so each ``prometheus`` sample
    describes the window since the one before it. Use one Prober per watched service.
    """

    def __init__(self, source: HealthSource, thresholds: Thresholds | None = None) -> None:
        self.source = source
        self.thresholds = thresholds if thresholds is not None else Thresholds()
        self._previous: Scrape | None = None
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
            return make_sample("unhealthy", "down", f"GET {url} {failure}")
        code = response.status_code
        said = f"GET {url} answered {code} in {fmt_ms(elapsed)}"
        error_rate, p95, notes = _read_body(response)
        if notes:
            said += f" ({'; '.join(notes)})"
        seen = (code, elapsed, error_rate, p95)
        if code >= 500:
            return make_sample("unhealthy", "http_5xx", said, *seen)
        if code >= 400:
            return make_sample(
                "degraded", "http_4xx",
                f"{said}: a client error, not a health answer; the health URL or the probe is "
                "misconfigured",
                *seen, body=_excerpt(response),
            )
        return apply_thresholds(self.thresholds, said, code, elapsed, error_rate, p95)

    async def _sample_prometheus(self) -> Sample:
        url = self.source.url
        response, elapsed, failure = await self._get()
        if response is None:
            return make_sample("unhealthy", "down", f"GET {url} {failure}")
        code = response.status_code
        said = f"GET {url} answered {code} in {fmt_ms(elapsed)}"
        if 400 <= code < 500:
            return make_sample(
                "unhealthy", "http_4xx",
                f"{said}, not metrics; the metrics URL or the probe is misconfigured",
                code, elapsed, body=_excerpt(response),
            )
        if not 200 <= code < 300:
            return make_sample("unhealthy", "http_5xx", f"{said}, not metrics", code, elapsed)
        try:
            scrape = await asyncio.wait_for(
                asyncio.to_thread(parse_scrape, response.text, self.source),
                timeout=max(_MIN_PARSE_TIMEOUT, self.source.timeout),
            )
        except TimeoutError:
            return make_sample(
                "unhealthy", "http_5xx", f"{said}, but its metrics took too long to parse",
                code, elapsed,
            )
        except Exception as exc:  # the parser's errors on bad input are not all ValueError
            return make_sample(
                "unhealthy", "http_5xx",
                f"{said}, but not in the Prometheus text format ({_reason(exc)})",
                code, elapsed,
            )
        seen = window(self._previous, scrape, self.source.status_label)
        first = self._previous is None
        self._previous = scrape
        said += (
            f": {fmt_count(seen.requests)} requests "
            f"{'since start' if first or seen.reset else 'since the last scrape'}"
        )
        if seen.error_rate is not None:
            said += f", {seen.error_rate:.1%} 5xx"
        if seen.p95_ms is not None:
            said += f", p95 {fmt_ms(seen.p95_ms)}"
        if seen.reset:
            said += " (counters were reset: the process restarted)"
        if seen.notes:
            said += f" ({'; '.join(seen.notes)})"
        return apply_thresholds(self.thresholds, said, code, elapsed, seen.error_rate,
                                seen.p95_ms)


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
        failure_limit: how many bad samples make the verdict (>= 1); see :func:`~.judge.judge`.

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


def _ms_since(started: float) -> float:
    return (time.perf_counter() - started) * 1000.0


def _seconds(value: float) -> str:
    return f"{value:g} s"


def _reason(exc: BaseException) -> str:
    text = str(exc).strip()
    return text or type(exc).__name__
