"""Health sampling against a real HTTP service (``tests/support/service_app.py``) run as a subprocess."""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
from orchestrator.agents.lib.health.judge import judge
from orchestrator.agents.lib.health.probe import Prober, observe
from orchestrator.agents.lib.health.prometheus import _histogram_quantile

from orchestrator.contracts.health import HealthSource, Observation, Sample, Thresholds
from tests.support.service_app import ServiceProcess

StartService = Callable[..., Awaitable[ServiceProcess]]


async def hit(service: ServiceProcess, count: int, *, concurrent: bool = False) -> list[int]:
    """Send ``count`` GET /health requests; returns their status codes."""
    async with httpx.AsyncClient(base_url=service.url, trust_env=False, timeout=5) as client:
        if concurrent:
            responses = await asyncio.gather(*(client.get("/health") for _ in range(count)))
        else:
            responses = [await client.get("/health") for _ in range(count)]
    return [r.status_code for r in responses]


def http_source(service: ServiceProcess, path: str = "/health", **kwargs: Any) -> HealthSource:
    return HealthSource(url=service.url + path, **kwargs)


def prom_source(service: ServiceProcess, **kwargs: Any) -> HealthSource:
    return HealthSource(kind="prometheus", url=service.url + "/metrics", **kwargs)


def made(status: str, issue: str | None = None) -> Sample:
    return Sample(
        status=status,  # type: ignore[arg-type]
        issue=issue,  # type: ignore[arg-type]
        http_status=None,
        response_ms=None,
        error_rate=None,
        p95_ms=None,
        detail="made up",
        at=datetime.now(UTC).isoformat(),
    )


# --- kind "http" ------------------------------------------------------------------------------


async def test_ok_service_is_healthy(start_service: StartService) -> None:
    service = await start_service()
    result = await observe(http_source(service), samples=3, interval=0.05)
    assert isinstance(result, Observation)
    assert result.verdict == "healthy"
    assert result.reason == "all 3 samples healthy"
    assert len(result.samples) == 3
    for sample in result.samples:
        assert (sample.status, sample.issue, sample.http_status) == ("healthy", None, 200)
        assert sample.response_ms is not None and 0 < sample.response_ms < 200
        assert sample.error_rate is None and sample.p95_ms is None
        assert f"GET {service.url}/health answered 200 in" in sample.detail
        assert datetime.fromisoformat(sample.at).utcoffset().total_seconds() == 0  # type: ignore[union-attr]


async def test_error_mode_is_unhealthy_http_5xx(start_service: StartService) -> None:
    service = await start_service(mode="error")
    result = await observe(http_source(service), samples=2, interval=0)
    assert result.verdict == "unhealthy"
    assert [(s.status, s.issue, s.http_status) for s in result.samples] == [
        ("unhealthy", "http_5xx", 500)
    ] * 2
    assert result.reason == "2 of 2 samples unhealthy (http_5xx) >= failure limit 2"
    assert "answered 500" in result.samples[0].detail


async def test_client_error_is_a_misconfiguration_not_a_5xx(start_service: StartService) -> None:
    service = await start_service()
    sample = await Prober(http_source(service, "/no-such-path")).sample()
    assert (sample.status, sample.issue, sample.http_status) == ("degraded", "http_4xx", 404)
    assert f"GET {service.url}/no-such-path answered 404" in sample.detail
    assert "misconfigured" in sample.detail
    assert sample.body == '{"error": "no such path: /no-such-path"}'


async def test_slow_service_is_degraded_by_latency(start_service: StartService) -> None:
    service = await start_service(mode="slow", delay_ms=300)
    sample = await Prober(http_source(service)).sample()
    assert (sample.status, sample.issue, sample.http_status) == ("degraded", "latency", 200)
    assert sample.response_ms is not None and sample.response_ms >= 300
    assert sample.p95_ms is None
    assert "response time" in sample.detail and "> 200 ms" in sample.detail


async def test_json_body_reports_error_rate_and_latency(start_service: StartService) -> None:
    service = await start_service()
    prober = Prober(http_source(service))

    await asyncio.to_thread(service.set_mode, "ok", extra={"error_rate": 0.07})
    sample = await prober.sample()
    assert (sample.status, sample.issue, sample.error_rate) == ("degraded", "error_rate", 0.07)

    await asyncio.to_thread(service.set_mode, "ok", extra={"error_rate": 0.2})
    sample = await prober.sample()
    assert (sample.status, sample.issue, sample.error_rate) == ("unhealthy", "error_rate", 0.2)

    lenient = Prober(http_source(service), Thresholds(error_rate_degraded=0.1, error_rate_unhealthy=0.5))
    assert (await lenient.sample()).status == "degraded"

    await asyncio.to_thread(service.set_mode, "ok", extra={"p95_latency_ms": 450, "error_rate": 0.01})
    sample = await prober.sample()
    assert (sample.status, sample.issue, sample.p95_ms) == ("degraded", "latency", 450)
    assert "p95 450 ms > 200 ms" in sample.detail

    await asyncio.to_thread(service.set_mode, "ok", extra={"error_rate": 5})  # not a fraction
    sample = await prober.sample()
    assert (sample.status, sample.error_rate) == ("healthy", None)
    assert "ignored error_rate" in sample.detail


# --- kind "prometheus" ------------------------------------------------------------------------


async def test_prometheus_error_rate_half(start_service: StartService) -> None:
    service = await start_service(mode="error", error_rate=0.5)
    prober = Prober(prom_source(service))
    baseline = await prober.sample()
    assert (baseline.status, baseline.error_rate, baseline.p95_ms) == ("healthy", None, None)

    codes = await hit(service, 10)
    assert codes.count(500) == 5
    sample = await prober.sample()
    assert sample.error_rate == pytest.approx(0.5)
    assert (sample.status, sample.issue, sample.http_status) == ("unhealthy", "error_rate", 200)
    assert sample.p95_ms is not None and sample.p95_ms <= 5
    assert "10 requests since the last scrape, 50.0% 5xx" in sample.detail


async def test_prometheus_window_uses_deltas(start_service: StartService) -> None:
    service = await start_service()
    prober = Prober(prom_source(service))
    await hit(service, 30)
    first = await prober.sample()
    assert (first.status, first.error_rate) == ("healthy", 0.0)
    assert "30 requests since start" in first.detail

    await asyncio.to_thread(service.set_mode, "error")
    await hit(service, 3)
    second = await prober.sample()
    # Over the cumulative totals this would be 3/33 (9%, merely degraded); the window says 100%.
    assert second.error_rate == pytest.approx(1.0)
    assert (second.status, second.issue) == ("unhealthy", "error_rate")

    quiet = await prober.sample()
    assert (quiet.status, quiet.issue, quiet.error_rate, quiet.p95_ms) == (
        "healthy",
        None,
        None,
        None,
    )
    assert "0 requests since the last scrape" in quiet.detail


async def test_prometheus_slow_service_p95(start_service: StartService) -> None:
    service = await start_service(mode="slow", delay_ms=300)
    prober = Prober(prom_source(service))
    await prober.sample()
    await hit(service, 3, concurrent=True)
    sample = await prober.sample()
    assert sample.p95_ms is not None
    # Every request took 300 ms and a bit: the 0.25..0.5 s bucket, interpolated.
    assert 250 < sample.p95_ms <= 500
    assert (sample.status, sample.issue) == ("degraded", "latency")
    assert sample.response_ms is not None and sample.response_ms < 200  # the scrape is fast


async def test_prometheus_counter_reset_after_restart(start_service: StartService) -> None:
    service = await start_service()
    prober = Prober(prom_source(service))
    await hit(service, 10)
    assert (await prober.sample()).error_rate == 0.0

    old_pid, old_port = service.pid, service.port
    await asyncio.to_thread(service.restart)
    assert service.port == old_port and service.pid != old_pid
    assert service.argv[service.argv.index("--port") + 1] == str(old_port)
    await asyncio.to_thread(service.set_mode, "error")
    await hit(service, 2)

    sample = await prober.sample()
    # The counters went from 10 (all 200) to 2 (both 500): the restart's 2 requests are the window.
    assert sample.error_rate == pytest.approx(1.0)
    assert (sample.status, sample.issue) == ("unhealthy", "error_rate")
    assert "counters were reset" in sample.detail
    assert "2 requests since start" in sample.detail


async def test_prometheus_endpoint_errors(start_service: StartService) -> None:
    service = await start_service()
    missing = await Prober(HealthSource(kind="prometheus", url=service.url + "/nope")).sample()
    assert (missing.status, missing.issue, missing.http_status) == ("unhealthy", "http_4xx", 404)
    assert missing.body == '{"error": "no such path: /nope"}'
    not_metrics = await Prober(HealthSource(kind="prometheus", url=service.url + "/health")).sample()
    assert (not_metrics.status, not_metrics.issue) == ("unhealthy", "http_5xx")
    assert "Prometheus text format" in not_metrics.detail


# --- a service that is gone --------------------------------------------------------------------


async def test_killed_service_is_down(start_service: StartService) -> None:
    service = await start_service()
    http, prom = Prober(http_source(service)), Prober(prom_source(service))
    assert (await http.sample()).status == "healthy"
    assert (await prom.sample()).status == "healthy"

    await asyncio.to_thread(service.kill)
    for prober in (http, prom):
        sample = await prober.sample()
        assert (sample.status, sample.issue, sample.http_status) == ("unhealthy", "down", None)
        assert "could not connect" in sample.detail
    result = await observe(http_source(service), samples=2, interval=0, failure_limit=1)
    assert result.verdict == "unhealthy"
    assert result.reason == "2 of 2 samples unhealthy (down) >= failure limit 1"


async def test_timeout_is_down(start_service: StartService) -> None:
    service = await start_service(mode="slow", delay_ms=1500)
    started = time.monotonic()
    sample = await Prober(http_source(service, timeout=0.2)).sample()
    assert time.monotonic() - started < 1.0
    assert (sample.status, sample.issue) == ("unhealthy", "down")
    assert "did not answer within 0.2 s" in sample.detail


# --- judge, quantiles, validation ---------------------------------------------------------------


def test_judge_counts_and_clamps() -> None:
    healthy, degraded = made("healthy"), made("degraded", "latency")
    down, bad = made("unhealthy", "down"), made("unhealthy", "http_5xx")

    assert judge([healthy, degraded, healthy], 0) == (
        "degraded",
        "1 degraded of 3 samples (latency) >= failure limit 1 (clamped from 0)",
    )
    assert judge([down, bad, bad], 10) == (
        "unhealthy",
        "3 of 3 samples unhealthy (http_5xx) >= failure limit 3 (clamped from 10)",
    )
    # Unhealthy samples count towards "degraded" too.
    assert judge([down, degraded, healthy], 2) == (
        "degraded",
        "1 unhealthy + 1 degraded of 3 samples (down) >= failure limit 2",
    )
    assert judge([down, healthy, healthy], 2) == (
        "healthy",
        "1 of 3 samples unhealthy or degraded (down) < failure limit 2",
    )
    assert judge([healthy], 3)[0] == "healthy"
    assert judge([degraded], 3)[0] == "degraded"  # clamped to 1 of 1
    with pytest.raises(ValueError, match="at least one sample"):
        judge([], 1)


def test_histogram_quantile_interpolates_like_promql() -> None:
    def buckets(**by_le: float) -> dict[tuple[tuple[str, str], ...], float]:
        return {(("le", le.replace("_", ".").replace("inf", "+Inf")),): v for le, v in by_le.items()}

    # 2 observations in (0.25, 0.5]: rank 1.9 of 2 → 0.25 + 0.25 * 0.95.
    assert _histogram_quantile(0.95, buckets(**{"0_25": 0, "0_5": 2, "inf": 2})) == pytest.approx(
        0.4875
    )
    # The first bucket starts at 0.
    assert _histogram_quantile(0.95, buckets(**{"0_1": 10, "inf": 10})) == pytest.approx(0.095)
    # In +Inf: the highest finite bound.
    assert _histogram_quantile(0.95, buckets(**{"0_1": 1, "1_0": 1, "inf": 5})) == 1.0
    assert _histogram_quantile(0.95, buckets(**{"0_1": 0, "inf": 0})) is None
    assert _histogram_quantile(0.95, buckets(**{"0_1": 3})) is None  # no +Inf bucket
    # Other labels are summed per bound.
    mixed: dict[tuple[tuple[str, str], ...], float] = {
        (("le", "0.1"), ("path", "/a")): 1.0,
        (("le", "+Inf"), ("path", "/a")): 1.0,
        (("le", "0.1"), ("path", "/b")): 0.0,
        (("le", "+Inf"), ("path", "/b")): 1.0,
    }
    assert _histogram_quantile(0.5, mixed) == pytest.approx(0.1)
    assert math.isclose(_histogram_quantile(0.25, mixed) or 0, 0.05)


def test_bad_settings_raise_value_error() -> None:
    for url in ("ftp://example.com/health", "localhost:8080/health", "127.0.0.1"):
        with pytest.raises(ValueError, match="must start with http:// or https://"):
            HealthSource(url=url)
    with pytest.raises(ValueError, match="has no host"):
        HealthSource(url="http://")
    with pytest.raises(ValueError):
        HealthSource(url="http://127.0.0.1/health", timeout=0)
    with pytest.raises(ValueError):
        HealthSource(url="http://127.0.0.1/health", retries=3)  # type: ignore[call-arg]  # extra fields are refused
    with pytest.raises(ValueError, match="must not exceed"):
        Thresholds(error_rate_degraded=0.5, error_rate_unhealthy=0.2)
    with pytest.raises(ValueError):
        Thresholds(error_rate_unhealthy=1.5)


async def test_observe_rejects_bad_arguments() -> None:
    source = HealthSource(url="http://127.0.0.1:9/health")
    with pytest.raises(ValueError, match="samples must be an integer >= 1"):
        await observe(source, samples=0)
    with pytest.raises(ValueError, match="interval must be a finite number of seconds >= 0"):
        await observe(source, interval=-1)
    with pytest.raises(ValueError, match="failure_limit must be an integer >= 1"):
        await observe(source, failure_limit=0)
