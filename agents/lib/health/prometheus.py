"""A Prometheus metrics page read for health: the request counter and the latency histogram
of one scrape (:func:`parse_scrape`), and what changed between two scrapes (:func:`window`).

* The window is the time since the previous successful scrape (the first scrape uses the
  cumulative totals). error_rate = increase of ``error_metric`` series whose ``status_label``
  starts with ``"5"`` / increase of all ``error_metric`` series; no requests in the window →
  error_rate is ``None``, which is not an issue;
* p95 comes from the increases of the ``latency_metric`` histogram's ``_bucket`` series in the
  same window, interpolated linearly within the bucket like PromQL's ``histogram_quantile``
  (a quantile in the ``+Inf`` bucket gives the highest finite bound), in milliseconds;
* a counter that went down means the process restarted: the whole metric's window is then its
  new cumulative value (resets are detected per metric, not per series, because a restart
  resets every series at once and a lone series could already have climbed past its old value).

The text is parsed with ``prometheus_client``'s parser.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

from prometheus_client.parser import text_string_to_metric_families

from orchestrator.contracts.health import HealthSource

__all__ = ["Scrape", "Window", "fmt_count", "parse_scrape", "window"]

Series = tuple[tuple[str, str], ...]


@dataclass
class Scrape:
    """Cumulative values of the metrics one scrape saw, keyed by the series' labels."""

    requests: dict[Series, float] = field(default_factory=dict)
    buckets: dict[Series, float] = field(default_factory=dict)


@dataclass
class Window:
    """What happened between two scrapes."""

    error_rate: float | None
    p95_ms: float | None
    requests: float
    reset: bool
    notes: list[str]


def parse_scrape(text: str, source: HealthSource) -> Scrape:
    """The series of the error counter and the latency histogram in one metrics page."""
    counter_names = {
        source.error_metric,
        source.error_metric.removesuffix("_total"),
        source.error_metric.removesuffix("_total") + "_total",
    }
    bucket_name = source.latency_metric + "_bucket"
    scrape = Scrape()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name in counter_names:
                scrape.requests[_labels(sample.labels)] = float(sample.value)
            elif sample.name == bucket_name and "le" in sample.labels:
                scrape.buckets[_labels(sample.labels)] = float(sample.value)
    return scrape


def _labels(labels: Mapping[str, str]) -> Series:
    return tuple(sorted(labels.items()))


def _increase(
    previous: Mapping[Series, float] | None,
    current: Mapping[Series, float],
) -> tuple[dict[Series, float], bool]:
    """Per-series increase since ``previous``, and whether the metric was reset."""
    if previous is None:
        return dict(current), False
    if any(value < previous.get(key, 0.0) for key, value in current.items()):
        return dict(current), True
    return {key: value - previous.get(key, 0.0) for key, value in current.items()}, False


def window(previous: Scrape | None, current: Scrape, status_label: str) -> Window:
    """The window from ``previous`` (None: since the process started) to ``current``."""
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
    return Window(
        error_rate=error_rate,
        p95_ms=None if p95 is None else p95 * 1000.0,
        requests=total,
        reset=requests_reset or buckets_reset,
        notes=notes,
    )


def _histogram_quantile(q: float, buckets: Mapping[Series, float]) -> float | None:
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


def fmt_count(value: float) -> str:
    """A request count as said in a sample's detail (no ``.0`` on whole numbers)."""
    return f"{value:.0f}" if value == int(value) else f"{value:g}"
