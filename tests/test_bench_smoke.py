"""The benchmark suite runs (``python -m bench --quick``): a smoke test, never a timed one —
it checks that every benchmark runs to the end and reports, not what figures it gets."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from bench.__main__ import MODULES

pytestmark = pytest.mark.slow


async def test_every_benchmark_runs_and_reports(service_env, tmp_path) -> None:
    import asyncio

    summary = tmp_path / "bench.json"
    done = await asyncio.to_thread(
        subprocess.run, [sys.executable, "-m", "bench", "--quick", "--json", str(summary),
                         # the peers run on their own (test_peers_run_and_report): a minute more
                         "--only", *(m for m in MODULES if m != "peers")],
        env=service_env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    document = json.loads(summary.read_text())
    assert document["crashed"] == []
    names = {r["benchmark"] for r in document["results"]}
    assert names >= {"bus_round_trip", "bus_throughput", "lock_acquire_release", "lock_handover",
                     "checkpointed_steps", "workflows_at_scale", "memory_in_flight",
                     "dependency_analysis_10k", "dependency_analysis_vs_grimp",
                     # the service and its console (issues 13 and 14)
                     "fenced_checkpoint_writes", "prune_under_load", "enqueue_to_running",
                     "runs_per_s_3_vs_1", "console_runs_list", "sse_fanout_500",
                     "step_to_browser_row",
                     # how cost grows (issue 18, item 3)
                     "growth_bus", "growth_workflows", "growth_locks", "growth_depgraph",
                     "growth_sse"}
    for result in document["results"]:
        assert result["figures"] or result["notes"], result  # it measured something, or said why


async def test_growth_runs_at_the_smallest_sizes_with_profiles(service_env, tmp_path) -> None:
    """``python -m bench.growth --quick --profile`` on two ladders: each reports a figure at
    each of its sizes (or says why it skipped one), and py-spy summaries of the largest size."""
    import asyncio

    done = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "bench.growth", "--quick", "--profile", "--only", "bus", "locks"],
        env=service_env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
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


@pytest.mark.timeout(400)
async def test_peers_run_and_report(service_env, tmp_path) -> None:
    """``python -m bench --quick --only peers``: every system set up answers, each result
    carries its figures per system (with lost and duplicated counts), and the peer table is
    printed; no figure is judged. A peer that could not be set up must say why."""
    import asyncio

    summary = tmp_path / "peers.json"
    done = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "bench", "--quick", "--only", "peers", "--json", str(summary)],
        env=service_env, capture_output=True, text=True, timeout=380)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "| work | ours | Celery" in done.stdout
    results = {r["benchmark"]: r for r in json.loads(summary.read_text())["results"]}
    assert set(results) == {"peer_round_trip", "peer_throughput", "peer_workflow_one_at_a_time",
                            "peer_workflows_100_at_once"}
    trips, batches = results["peer_round_trip"]["figures"], results["peer_throughput"]["figures"]
    notes = results["peer_round_trip"]["notes"]
    for peer in ("celery", "dramatiq_fast", "arq_fast"):
        assert peer in trips or "not measured" in notes, notes
    assert set(trips) - {"ping"} == set(batches), (trips, batches)
    for name, figures in trips.items():
        assert figures["median_ms"] > 0 and figures["p99_ms"] >= figures["median_ms"], name
    for name, figures in batches.items():
        assert figures["requests_per_s"] > 0, name
        assert isinstance(figures["lost"], int) and isinstance(figures["duplicated"], int), name
    for benchmark in ("peer_workflow_one_at_a_time", "peer_workflows_100_at_once"):
        assert {"ours", "dbos", "bare_langgraph"} <= set(results[benchmark]["figures"])


def test_peer_rounds_rotate_and_count() -> None:
    """The peers' arithmetic: rounds rotate the order and stop at the budget; lost and
    duplicated come from what the client got back and what the worker counted."""
    import asyncio

    from bench import peers

    order: list[str] = []

    def entry(name: str):
        async def measure() -> dict[str, int]:
            order.append(name)
            return {name: len(order)}
        return name, measure

    notes: list[str] = []
    out = asyncio.run(peers._rounds(3, [entry("a"), entry("b"), entry("c")], 60, notes))
    assert order == ["a", "b", "c", "b", "c", "a", "c", "a", "b"]
    assert out == {"a": [1, 6, 8], "b": [2, 4, 9], "c": [3, 5, 7]} and notes == []
    order.clear()
    out = asyncio.run(peers._rounds(3, [entry("a"), entry("b")], 0, notes))
    assert order == ["a", "b"] and len(notes) == 1  # no time left for a second round
    figures = peers._throughput_of([
        {"elapsed": 0.5, "ok": 100, "distinct": 100, "executions": 101, "unique": 100},
        {"elapsed": 1.0, "ok": 97, "distinct": 97, "executions": 99, "unique": 99},
    ], 100)
    assert figures["lost"] == 3 and figures["duplicated"] == 1
    assert figures["requests_per_s"] == 150.0 and figures["min"] == 100.0
