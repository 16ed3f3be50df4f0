"""What every benchmark shares: settings, statistics and the result format.

Each benchmark module has ``async def run(quick: bool = False) -> list[Result]`` (the suite
runner, ``python -m bench``, calls it) and can run alone with ``python -m bench.<module>``.
A :class:`Result` carries the figures, the baseline measured in the same run when there is
one, the ratio between them, the target and whether it held. These machines are shared and
noisy: a ratio to a baseline measured in the same run is what means something.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from orchestrator.settings import Settings

__all__ = ["Result", "settings", "subprocess_env", "summary", "percentile", "print_result"]


@dataclass
class Result:
    benchmark: str
    target: str
    met: bool | None  # None: nothing to compare (a figure is only reported)
    figures: dict[str, Any] = field(default_factory=dict)
    baseline: dict[str, Any] | None = None
    ratio: float | None = None
    notes: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def settings(name: str, **overrides: Any) -> Settings:
    """Settings from ``ORCHESTRATOR_*`` (embedded services when unset), in a namespace of the
    benchmark's own so runs never see each other's keys, locks or workflows."""
    return Settings.from_env(namespace=f"bench-{name}-{uuid.uuid4().hex[:8]}", **overrides)


def subprocess_env(base: Settings, **overrides: Any) -> dict[str, str]:
    """The environment of a helper process (a worker, a lock holder) on ``base``'s services
    and namespace, hosting no built-in agents; ``overrides`` set more ``ORCHESTRATOR_*``
    variables (``database_url=...`` becomes ``ORCHESTRATOR_DATABASE_URL``)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ORCHESTRATOR_")}
    env.update({
        "ORCHESTRATOR_NAMESPACE": base.namespace,
        "ORCHESTRATOR_DATABASE_URL": base.database_url or "",
        "ORCHESTRATOR_REDIS_URL": base.redis_url or "",
        "ORCHESTRATOR_DATA_DIR": str(base.data_dir),
        "ORCHESTRATOR_LOCAL_AGENTS": "false",
        "PYTHONUNBUFFERED": "1",
    })
    env.update({f"ORCHESTRATOR_{k.upper()}": str(v) for k, v in overrides.items()})
    return env


def percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    if not ordered:
        return float("nan")
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


def summary(samples_s: list[float]) -> dict[str, float]:
    """Median, p95 and p99 of durations given in seconds, in milliseconds."""
    return {
        "n": len(samples_s),
        "median_ms": round(statistics.median(samples_s) * 1000, 4),
        "p95_ms": round(percentile(samples_s, 95) * 1000, 4),
        "p99_ms": round(percentile(samples_s, 99) * 1000, 4),
    }


def print_result(result: Result) -> None:
    verdict = {True: "met", False: "NOT met", None: "-"}[result.met]
    print(f"== {result.benchmark}: {verdict} (target: {result.target})")
    if result.baseline is not None:
        print(f"   baseline: {json.dumps(result.baseline)}")
    print(f"   figures:  {json.dumps(result.figures)}")
    if result.ratio is not None:
        print(f"   ratio:    {result.ratio:.2f}")
    if result.notes:
        print(f"   notes:    {result.notes}")


def run_standalone(module: str, doc: str | None,
                   run: Callable[..., Awaitable[list[Result]]]) -> int:
    """``python -m bench.<module> [--quick]``: run one module's benchmarks, print each result
    and then the JSON of all of them (what ``python -m bench --only <module>`` runs too)."""
    parser = argparse.ArgumentParser(prog=f"python -m bench.{module}",
                                     description=(doc or "").strip().splitlines()[0] or None)
    parser.add_argument("--quick", action="store_true", help="a short smoke run")
    args = parser.parse_args()
    results = asyncio.run(run(quick=args.quick))
    for result in results:
        print_result(result)
    print(json.dumps({"results": [r.to_dict() for r in results]}))
    return 0
