"""Outcome records (orchestrator.learning.store): written once per attempt, never failing a
workflow, agent calls written off the call's path in batches, and the readers B3's CLI and
console show."""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator

import pytest
from orchestrator.state.db import Database
from orchestrator.state.migrations import migrate
from psycopg import OperationalError

from orchestrator.facade import Orchestrator
from orchestrator.learning.store import (
    RECORD_FAILURES,
    CallRecorder,
    HealingOutcome,
    LearningStore,
    flush_calls,
)
from orchestrator.testing import resume, run_until_interrupt

from .support.commands import RECORD, traffic_log_command
from .support.fixture_repo import add_branch
from .support.graphs_for_tests import rollout
from .support.healing_sim import SimServices


@pytest.fixture
async def store(orchestrator_settings) -> AsyncIterator[LearningStore]:
    async with Database.connect(orchestrator_settings.database_url) as db:
        await migrate(db)
        yield LearningStore(db, orchestrator_settings.namespace)


def outcome(attempt: int, key: str, verified: bool, *, thread: str = "t-1",
            service: str = "web", issue: str = "latency") -> HealingOutcome:
    return HealingOutcome(thread_id=thread, attempt=attempt, service=service, issue=issue,
                          action_key=key, action={"type": "restart"}, manual=False,
                          fix_ok=True, verified=verified, recover_s=3.0 if verified else None)


def failures(record: str) -> float:
    return RECORD_FAILURES.labels(record)._value.get()


async def test_a_healing_attempt_is_recorded_once(store) -> None:
    assert await store.record_healing(outcome(1, "restart", False)) is True
    # the node re-run after a crash writes the same attempt again: nothing is added
    assert await store.record_healing(outcome(1, "restart", True)) is False
    assert await store.record_healing(outcome(2, "reload", True)) is True
    await store.record_healing(outcome(1, "reload", True, thread="t-2"))
    await store.record_healing(outcome(1, "reload", True, thread="t-3", service="db"))
    assert await store.healing_evidence("web", "latency") == {"restart": (0, 1),
                                                              "reload": (2, 0)}
    assert await store.healing_evidence("web", "down") == {}
    other = LearningStore(store.db, store.namespace + "x")  # another namespace sees nothing
    assert await other.healing_evidence("web", "latency") == {}
    stats = await store.healing_stats(service="web")
    assert [(s["action_key"], s["attempts"], s["verified"], s["failed"], s["success_rate"])
            for s in stats] == [("reload", 2, 2, 0, 1.0), ("restart", 1, 0, 1, 0.0)]
    assert stats[0]["median_recover_s"] == 3.0 and stats[1]["median_recover_s"] is None
    assert [s["service"] for s in await store.healing_stats()] == ["db", "web", "web"]
    assert await store.healing_stats(kind="down") == []


async def test_a_write_that_fails_is_logged_and_counted_never_raised(orchestrator_settings,
                                                                     caplog) -> None:
    async with Database.connect(orchestrator_settings.database_url) as db:
        await migrate(db)
        broken = LearningStore(db, orchestrator_settings.namespace)
    before = failures("healing"), failures("canary"), failures("review")
    # the pool is closed: every write fails, none raises
    assert await broken.record_healing(outcome(1, "restart", True)) is False
    assert await broken.record_canary_end(thread_id="t", deployment="web",
                                          verdict="completed", percent=100) is False
    assert await broken.record_review(thread_id="t", repo="/r", branch="b", rules={},
                                      approved=True, by="x") == 0
    assert (failures("healing"), failures("canary"), failures("review")) == \
        (before[0] + 1, before[1] + 1, before[2] + 1)
    assert "recording a healing outcome failed (thread_id=t-1, attempt=1)" in caplog.text


async def test_agent_calls_are_recorded_off_the_call_path(orchestrator_factory, store) -> None:
    sims = SimServices()
    orch = await orchestrator_factory(stand_ins=[sims.agent()])
    sims.add("web", seed=1)
    sims["web"].incident()
    result = await orch.run("self_healing", sims.heal_input("web"))
    assert result.final_result["outcome"] == "healed"
    await flush_calls(orch.runtime)
    stats = {(s["agent_type"], s["request_type"]): s for s in await store.call_stats()}
    attempts = result.final_result["attempts"]
    # detect + a verify per fix; a diagnosis and a fix per attempt
    assert {k: s["calls"] for k, s in stats.items()} == {
        ("infrastructure", "probe"): 1 + attempts, ("infrastructure", "diagnose"): attempts,
        ("infrastructure", "fix"): attempts}
    probe = stats[("infrastructure", "probe")]
    assert probe["statuses"] == {"success": 1 + attempts} and probe["error_rate"] == 0.0
    assert 0 < probe["p50_ms"] <= probe["p95_ms"]
    rows = await store.db.fetch("SELECT DISTINCT thread_id, attempt FROM learn_calls "
                                "WHERE namespace = %s", (store.namespace,))
    assert [r["thread_id"] for r in rows] == [result.thread_id]
    assert await store.call_stats(agent_type="deployer") == []


async def test_call_records_go_out_in_batches_once_each(store, monkeypatch) -> None:
    recorder = CallRecorder(store.db, store.namespace)
    writes: list[int] = []
    real = recorder._write

    async def counted(batch):
        writes.append(len(batch))
        await real(batch)

    monkeypatch.setattr(recorder, "_write", counted)
    for i in range(1200):
        recorder.add(("t", "qa", "check", f"r-{i}", 1, "success", 2.0, 1.7e9))
    recorder.add(("t", "qa", "check", "r-0", 1, "success", 9.0, 1.7e9))  # the same again
    recorder.add(("t", "qa", "check", "r-0", 2, "success", 9.0, 1.7e9))  # a new attempt
    recorder.add(("t", "qa", "check", "r-1", 1, "timeout", 9.0, 1.7e9))  # sent again
    await recorder.flush()
    assert writes == [500, 500, 203]  # one statement per batch
    [stat] = await store.call_stats(agent_type="qa")
    assert stat["calls"] == 1202 and stat["statuses"] == {"success": 1201, "timeout": 1}


async def test_a_refused_call_row_does_not_take_its_batch(store) -> None:
    recorder = CallRecorder(store.db, store.namespace)
    before = failures("calls")
    recorder.add(("t", "qa", "check", "good-1", 1, "success", 1.0, 1.7e9))
    recorder.add(("t", "qa", "check\x00", "bad", 1, "success", 1.0, 1.7e9))  # jsonb refuses
    recorder.add(("t", "qa", "check", "good-2", 1, "success", 1.0, 1.7e9))
    await recorder.flush()
    rows = await store.db.fetch("SELECT request_id FROM learn_calls WHERE namespace = %s "
                                "ORDER BY request_id", (store.namespace,))
    assert [r["request_id"] for r in rows] == ["good-1", "good-2"]
    assert failures("calls") == before + 1


async def test_call_records_wait_out_a_database_outage(store, monkeypatch) -> None:
    recorder = CallRecorder(store.db, store.namespace)
    recorder.max_backoff = 0.01
    real, failed = recorder._write, []

    async def away_twice(batch):
        if len(failed) < 2:
            failed.append(len(batch))
            raise OperationalError("connection refused")
        await real(batch)

    monkeypatch.setattr(recorder, "_write", away_twice)
    recorder.add(("t", "qa", "check", "r-1", 1, "success", 1.0, 1.7e9))
    await recorder.flush()
    assert failed == [1, 1]
    assert [s["calls"] for s in await store.call_stats()] == [1]


async def test_canary_stages_and_the_rollback_cause_are_recorded(
    orchestrator_factory, start_service, store, tmp_path
) -> None:
    orch = await orchestrator_factory(workflows={"rollout": rollout})
    service = await start_service()
    spec = {"stage_seconds": 0.1, "samples": 2, "sample_interval": 0.05,
            "traffic": {"command": traffic_log_command(tmp_path / "traffic")},
            "rollback_command": [sys.executable, "-c", RECORD, str(tmp_path / "rb"), "x"],
            "health": {"kind": "http", "url": service.url + "/health"},
            "thresholds": {"latency_ms": 5000}}
    ok = await orch.run("rollout", {"deploy": {**spec, "name": "web", "stages": [50, 100]}})
    assert ok.status == "completed", ok
    service.set_mode("error")
    bad = await orch.run("rollout", {"deploy": {**spec, "name": "api", "stages": [10, 100]}})
    assert bad.status == "failed"
    rows = await store.db.fetch(
        "SELECT thread_id, deployment, event, seq, percent, verdict, mode FROM learn_canary "
        "WHERE namespace = %s ORDER BY deployment, event, seq", (store.namespace,))
    assert [(r["deployment"], r["event"], r["seq"], r["percent"], r["verdict"], r["mode"])
            for r in rows] == [
        ("api", "end", 0, 10, "rolled_back", "automatic"),
        ("api", "stage", 0, 10, "unhealthy", None),
        ("web", "end", 0, 100, "completed", None),
        ("web", "stage", 0, 50, "healthy", None),
        ("web", "stage", 1, 100, "healthy", None)]
    stats = {s["deployment"]: s for s in await store.canary_stats()}
    assert stats["web"]["completed"] == 1 and stats["web"]["last_rollback"] is None
    assert stats["web"]["observations"] == {"healthy": 2}
    assert stats["api"]["rolled_back"] == 1
    assert stats["api"]["last_rollback"]["reason"].startswith("unhealthy at 10%")
    assert stats["api"]["last_rollback"]["mode"] == "automatic"


async def test_review_answers_record_the_rules_overridden_or_upheld(orchestrator, fixture_repo,
                                                                    store) -> None:
    # one unused import (F401), tests still passing: the review passes with max_findings 1
    add_branch(fixture_repo, "feature-lint", {"calc/extra.py": "import os\n"})
    add_branch(fixture_repo, "feature-lint-2", {"calc/extra2.py": "import sys\n"})
    for branch, approve in (("feature-lint", True), ("feature-lint-2", False)):
        paused, question = await run_until_interrupt(orchestrator, "pr_deployment", {
            "repo": str(fixture_repo), "source": branch, "max_findings": 1})
        assert question["context"]["summary"]["review"]["counts"] == {"F401": 1}
        await resume(orchestrator, paused.thread_id,
                     {"approve": approve, "by": "alice", "comment": "fine"})
    [f401] = await store.review_stats()
    assert (f401["rule"], f401["answers"], f401["overridden"], f401["upheld"],
            f401["findings"]) == ("F401", 2, 1, 1, 2)
    rows = await store.db.fetch("SELECT branch, approved, answered_by FROM learn_reviews "
                                "WHERE namespace = %s ORDER BY branch", (store.namespace,))
    assert [(r["branch"], r["approved"], r["answered_by"]) for r in rows] == [
        ("feature-lint", True, "alice"), ("feature-lint-2", False, "alice")]


async def test_forget_deletes_a_service_or_everything(store) -> None:
    await store.record_healing(outcome(1, "restart", True))
    await store.record_healing(outcome(1, "restart", True, thread="t-2", service="db"))
    await store.record_review(thread_id="t", repo="/r", branch="b", rules={"E501": 2},
                              approved=True, by="x")
    assert await store.forget(service="web") == {"learn_healing": 1}
    assert [s["service"] for s in await store.healing_stats()] == ["db"]
    assert await store.forget() == {"learn_healing": 1, "learn_calls": 0, "learn_canary": 0,
                                    "learn_reviews": 1}
    assert await store.healing_stats() == [] and await store.review_stats() == []


async def test_call_records_queued_when_the_runtime_closes_are_written(orchestrator_settings,
                                                                      store) -> None:
    """Closing the runtime writes what is still queued before its pool closes (a process that
    ends right after a workflow keeps the records of its last calls)."""
    sims = SimServices()
    sims.add("web", seed=1)
    async with Orchestrator(orchestrator_settings, agents=[sims.agent()]) as orch:
        result = await orch.run("self_healing", sims.heal_input("web"))  # healthy: one probe
        lost_before = failures("calls")
    rows = await store.db.fetch("SELECT request_type FROM learn_calls WHERE namespace = %s "
                                "AND thread_id = %s", (store.namespace, result.thread_id))
    assert [r["request_type"] for r in rows] == ["probe"]
    assert failures("calls") == lost_before
