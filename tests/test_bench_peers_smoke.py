"""``python -m bench --quick --only peers`` runs (a smoke test, never a timed one): every peer
set up answers or says why, and the peers' arithmetic."""

from __future__ import annotations

import pytest

from .support.bench_runs import run_quick

pytestmark = pytest.mark.slow


@pytest.mark.timeout(400)
async def test_peers_run_and_report(service_env, tmp_path) -> None:
    """``python -m bench --quick --only peers``: every system set up answers, each result
    carries its figures per system (with lost and duplicated counts), and the peer table is
    printed; no figure is judged. A peer that could not be set up must say why."""
    done, document = await run_quick(service_env, tmp_path / "peers.json", ["peers"],
                                     timeout=380)
    assert "| work | ours | Celery" in done.stdout
    results = {r["benchmark"]: r for r in document["results"]}
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
