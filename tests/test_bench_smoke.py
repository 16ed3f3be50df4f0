"""The benchmark suite runs (``python -m bench --quick``): a smoke test, never a timed one —
it checks that every benchmark runs to the end and reports, not what figures it gets."""

from __future__ import annotations

import pytest

from bench.__main__ import MODULES

from .support.bench_runs import assert_every_result_reports, run_quick

pytestmark = pytest.mark.slow


@pytest.mark.timeout(320)
async def test_every_benchmark_runs_and_reports(service_env, tmp_path) -> None:
    # the peers and the growth ladders have smoke tests of their own
    # (test_bench_peers_smoke.py, test_bench_growth_smoke.py)
    _, document = await run_quick(
        service_env, tmp_path / "bench.json",
        (m for m in MODULES if m not in ("peers", "growth")), timeout=300)
    assert_every_result_reports(document)
    names = {r["benchmark"] for r in document["results"]}
    assert names >= {"bus_round_trip", "bus_throughput", "lock_acquire_release", "lock_handover",
                     "checkpointed_steps", "workflows_at_scale", "memory_in_flight",
                     "dependency_analysis_10k", "dependency_analysis_vs_grimp",
                     # the service and its console (issues 13 and 14)
                     "fenced_checkpoint_writes", "prune_under_load", "enqueue_to_running",
                     "runs_per_s_3_vs_1", "console_runs_list", "sse_fanout_500",
                     "step_to_browser_row"}
