"""``python -m bench.growth --quick`` runs (a smoke test, never a timed one): every ladder
reports a figure at each of its smallest sizes or says why it skipped one."""

from __future__ import annotations

import json

import pytest

from .support.bench_runs import assert_every_result_reports, run_module, run_quick

pytestmark = pytest.mark.slow


@pytest.mark.timeout(300)
async def test_every_growth_ladder_runs_at_its_smallest_sizes(service_env, tmp_path) -> None:
    _, document = await run_quick(service_env, tmp_path / "growth.json", ["growth"], timeout=280)
    assert_every_result_reports(document)
    names = {r["benchmark"] for r in document["results"]}
    assert names == {"growth_bus", "growth_workflows", "growth_locks", "growth_depgraph",
                     "growth_sse"}


async def test_growth_runs_at_the_smallest_sizes_with_profiles(service_env, tmp_path) -> None:
    """``python -m bench.growth --quick --profile`` on two ladders: each reports a figure at
    each of its sizes (or says why it skipped one), and py-spy summaries of the largest size."""
    done = await run_module(service_env, "bench.growth", "--quick", "--profile", "--only", "bus",
                            "locks", timeout=300)
    assert "| what | figure | at each size | growth per x10 |" in done.stdout
    results = json.loads(done.stdout.strip().splitlines()[-1])["results"]
    assert [r["benchmark"] for r in results] == ["growth_bus", "growth_locks"]
    for result in results:
        figures = result["figures"]
        measured = {size for series in figures["series"].values() for size in series}
        assert measured | set(figures["skipped"]) == {str(s) for s in figures["sizes"]}, figures
        profile = figures["profile"]  # the largest size measured: one summary per process
        assert profile["size"] in figures["sizes"] and profile["processes"], figures
        for summary in profile["processes"]:
            assert "top_own" in summary or "error" in summary, summary


def test_growth_flags_what_grows_worse_than_linear() -> None:
    """The growth arithmetic: what linear means for a total, a cost per item and a rate."""
    from bench.growth import Ladder, Series, growth_table

    total = Series("analyze", "s", "total", {1_000: 1.0, 10_000: 9.0, 100_000: 200.0})
    per_item = Series("memory per workflow", "KB", "per_item", {100: 150.0, 1_000: 160.0})
    rate = Series("throughput", "req/s", "rate", {1: 1_000.0, 10: 3_000.0, 100: 1_000.0})
    info = Series("completed", "share", "info", {100: 1.0, 1_000: 0.5})
    assert [round(f, 2) for *_, f, _c in total.steps()] == [9.0, 22.22]
    assert len(total.flagged()) == 1 and "10,000 -> 100,000" in total.flagged()[0]
    assert per_item.flagged() == []
    assert len(rate.flagged()) == 1 and "10 -> 100" in rate.flagged()[0]  # a third per request
    assert info.flagged() == []
    table = growth_table([Ladder("depgraph", (1_000, 10_000, 100_000), [total])])
    assert "| depgraph (files) | analyze (s) | 1,000: 1 · 10,000: 9 · 100,000: 200 |" in table
    assert "**yes**" in table


async def test_a_size_that_fails_is_flagged_and_ends_nothing_else() -> None:
    """A size whose measurement raises (10,000 workflows in one process ran out of pool
    connections) is recorded as failed, flagged, and the run goes on instead of crashing."""
    from bench.growth import Ladder, Series, _Bound, _sized

    ladder = Ladder("workflows", (100, 1000), [Series("runs/s", "wf/s", "rate")])

    async def fine():
        return {"runs/s": 30.0}, {}

    async def breaks():
        raise RuntimeError("PoolTimeout: couldn't get a connection after 30.00 sec")

    bound = _Bound(60)
    assert await _sized(ladder, bound, 100, 100, fine)
    assert not await _sized(ladder, bound, 1000, 1000, breaks)
    result = ladder.result(False, "")
    assert result.met is False
    assert result.figures["skipped"]["1000"].startswith("failed: RuntimeError: PoolTimeout")
    assert any("1,000: failed" in flag for flag in result.figures["worse_than_linear"])
