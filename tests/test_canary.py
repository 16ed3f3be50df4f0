"""The canary subgraph against a real HTTP service: stages, health gates, rollback, locks."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

from orchestrator.metrics import CANARY_ROLLBACKS, CANARY_STAGE
from orchestrator.testing import resume, run_until_interrupt

from .support.commands import RECORD, lines, traffic_log_command
from .support.graphs_for_tests import rollout

WORKFLOWS = {"rollout": rollout}


def spec(name: str, service, tmp_path: Path, **overrides: Any) -> dict[str, Any]:
    return {
        "name": name,
        "stage_seconds": 0.1,
        "samples": 2,
        "sample_interval": 0.05,
        "traffic": {"command": traffic_log_command(tmp_path / f"{name}.traffic")},
        "rollback_command": [sys.executable, "-c", RECORD, str(tmp_path / f"{name}.rollback"),
                             "rolled back"],
        "health": {"kind": "http", "url": service.url + "/health"},
        **overrides,
    }


async def test_a_healthy_rollout_goes_through_every_stage(orchestrator_factory, start_service,
                                                          tmp_path) -> None:
    orch = await orchestrator_factory(workflows=WORKFLOWS)
    service = await start_service()
    result = await orch.run("rollout", {"deploy": spec("web", service, tmp_path)})
    assert result.status == "completed", result
    canary = result.final_result["canary"]
    assert canary["status"] == "completed" and canary["percent"] == 100
    assert [s["percent"] for s in canary["stages"]] == [10, 25, 50, 75, 100]
    assert all(s["verdict"] == "healthy" for s in canary["stages"])
    assert lines(tmp_path / "web.traffic") == ["10", "25", "50", "75", "100"]
    assert not (tmp_path / "web.rollback").exists()
    assert CANARY_STAGE.labels("web")._value.get() == 100
    assert not await orch.runtime.locks.is_locked("deploy:web")  # released at the end


async def test_an_unhealthy_stage_rolls_back_with_the_evidence(orchestrator_factory,
                                                               start_service, tmp_path) -> None:
    orch = await orchestrator_factory(workflows=WORKFLOWS)
    service = await start_service()
    service.set_mode("error")
    before = CANARY_ROLLBACKS.labels("api", "automatic")._value.get()
    result = await orch.run("rollout", {"deploy": spec("api", service, tmp_path)})
    assert result.status == "failed"
    canary = result.final_result["canary"]
    assert canary["status"] == "rolled_back" and canary["failed_at"] == 10
    assert canary["rollback"]["mode"] == "automatic"
    evidence = canary["stages"][-1]
    assert evidence["verdict"] == "unhealthy"
    assert {s["issue"] for s in evidence["samples"]} == {"http_5xx"}
    assert "unhealthy at 10%" in canary["reason"]
    assert lines(tmp_path / "api.traffic") == ["10", "0"]  # traffic back to 0, then the command
    assert (tmp_path / "api.rollback").read_text() == "rolled back\n"
    assert CANARY_ROLLBACKS.labels("api", "automatic")._value.get() == before + 1
    assert CANARY_STAGE.labels("api")._value.get() == 0


async def test_a_degraded_stage_is_held_then_rolled_back(orchestrator_factory, start_service,
                                                         tmp_path) -> None:
    orch = await orchestrator_factory(workflows=WORKFLOWS)
    service = await start_service()
    service.set_mode("slow", delay_ms=300)
    result = await orch.run("rollout", {"deploy": spec("slow", service, tmp_path, max_holds=1)})
    canary = result.final_result["canary"]
    assert canary["status"] == "rolled_back"
    assert [(s["percent"], s["verdict"]) for s in canary["stages"]] == [
        (10, "degraded"), (10, "degraded")]  # held once at 10%, then rolled back
    assert {s["issue"] for s in canary["stages"][0]["samples"]} == {"latency"}
    assert lines(tmp_path / "slow.traffic") == ["10", "0"]


async def test_bad_samples_under_the_failure_limit_pass(orchestrator_factory, start_service,
                                                       tmp_path) -> None:
    orch = await orchestrator_factory(workflows=WORKFLOWS)
    service = await start_service()
    # every other request fails: one bad sample of two is under failure_limit 2
    service.set_mode("error", error_rate=0.5)
    result = await orch.run("rollout", {"deploy": spec(
        "flaky", service, tmp_path, stages=[50, 100], failure_limit=2, samples=2)})
    canary = result.final_result["canary"]
    assert canary["status"] == "completed", canary["stages"]


async def test_a_manual_rollback_is_a_resume_value(orchestrator_factory, start_service,
                                                   tmp_path) -> None:
    orch = await orchestrator_factory(workflows=WORKFLOWS)
    service = await start_service()
    paused, question = await run_until_interrupt(
        orch, "rollout", {"deploy": spec("shop", service, tmp_path, pause_after=[25])})
    assert question["kind"] == "canary_gate" and question["context"]["percent"] == 25
    assert question["context"]["evidence"]["verdict"] == "healthy"
    assert question["schema"]["properties"]["action"]["enum"] == ["continue", "rollback"]
    assert lines(tmp_path / "shop.traffic") == ["10", "25"]
    result = await resume(orch, paused.thread_id,
                          {"action": "rollback", "by": "bob", "reason": "saw errors in logs"})
    canary = result.final_result["canary"]
    assert result.status == "failed" and canary["status"] == "rolled_back"
    assert canary["rollback"]["mode"] == "manual"
    assert canary["reason"] == "rolled back by bob: saw errors in logs"
    assert lines(tmp_path / "shop.traffic") == ["10", "25", "0"]


async def test_a_second_rollout_of_the_same_deployment_is_refused(orchestrator_factory,
                                                                  start_service, tmp_path) -> None:
    orch = await orchestrator_factory(workflows=WORKFLOWS)
    service = await start_service()
    first, _ = await run_until_interrupt(
        orch, "rollout", {"deploy": spec("pay", service, tmp_path, pause_after=[10])})
    second = await orch.run("rollout", {"deploy": spec("pay", service, tmp_path)})
    assert second.status == "failed"
    assert second.final_result["canary"]["status"] == "refused"
    assert f"workflow:{first.thread_id}" in second.final_result["canary"]["reason"]
    # a different deployment is not held up
    other = await orch.run("rollout", {"deploy": spec("search", service, tmp_path)})
    assert other.status == "completed"
    assert lines(tmp_path / "pay.traffic") == ["10"]  # the refused one moved no traffic
    finished = await resume(orch, first.thread_id, {"action": "continue", "by": "ops"})
    assert finished.status == "completed"
    again = await orch.run("rollout", {"deploy": spec("pay", service, tmp_path)})
    assert again.status == "completed"  # the lock went with the first rollout


async def test_only_an_explicit_continue_continues(orchestrator_factory, start_service,
                                                   tmp_path) -> None:
    """Review M5: any answer but exactly {"action": "rollback"} used to continue."""
    from langgraph.types import Command

    from orchestrator.errors import InvalidInput
    from orchestrator.runtime import use_runtime

    orch = await orchestrator_factory(workflows=WORKFLOWS)
    service = await start_service()
    paused, _ = await run_until_interrupt(
        orch, "rollout", {"deploy": spec("gate", service, tmp_path, stages=[10, 50, 100],
                                         pause_after=[10])})
    for bad, field in [({"action": "roll back", "by": "oncall", "reason": "errors, STOP"},
                        "action"),
                       ({"action": "continue"}, "by"), ("continue", "answer"),
                       ({"action": "continue", "by": "x", "reson": "typo"}, "reson")]:
        with pytest.raises(InvalidInput, match=field):
            await resume(orch, paused.thread_id, bad)
        assert (await orch.runtime.workflows.get(paused.thread_id)).status == "interrupted"
    assert lines(tmp_path / "gate.traffic") == ["10"]
    # straight through LangGraph (as Studio would), past the facade: asked again, not decided
    graph, config = orch.graph("rollout"), {"configurable": {"thread_id": paused.thread_id}}
    with use_runtime(orch.runtime):
        await graph.ainvoke(Command(resume={"action": "roll back", "by": "oncall"}), config)
    state = await graph.aget_state(config, subgraphs=True)
    again = state.interrupts[0].value
    assert again["kind"] == "canary_gate"
    assert "action" in again["context"]["problem_with_last_answer"]
    assert lines(tmp_path / "gate.traffic") == ["10"]
    assert not (tmp_path / "gate.rollback").exists()
    result = await resume(orch, paused.thread_id, {"action": "continue", "by": "oncall"})
    assert result.status == "completed", result
    assert lines(tmp_path / "gate.traffic") == ["10", "50", "100"]
    assert result.final_result["canary"]["status"] == "completed"


@pytest.mark.parametrize("bad, message", [
    ({"stages": [50, 10]}, "strictly increasing"),
    ({"traffic": {"command": ["x"], "callable": "m:f"}}, "exactly one"),
    ({"health": {"kind": "http", "url": "ftp://x"}}, "health"),
])
async def test_a_bad_spec_fails_before_any_traffic_moves(orchestrator_factory, start_service,
                                                         tmp_path, bad, message) -> None:
    orch = await orchestrator_factory(workflows=WORKFLOWS)
    service = await start_service()
    deploy = {**spec("bad", service, tmp_path), **bad}
    try:
        result = await orch.run("rollout", {"deploy": deploy})
    except Exception as exc:  # the workflow's own model refuses it up front
        assert message in str(exc)
        return
    assert result.status == "failed"
    assert message in str(result.final_result or result.error)
    assert not (tmp_path / "bad.traffic").exists()


TRAFFIC_CALLS: list[tuple[int, str]] = []


def record_traffic(percent: int, deployment: str) -> str:
    """A traffic callable (``{"callable": "tests.test_canary:record_traffic"}``)."""
    TRAFFIC_CALLS.append((percent, deployment))
    return f"{deployment} at {percent}%"


async def test_traffic_can_be_moved_by_a_python_callable(orchestrator_factory, start_service,
                                                         tmp_path) -> None:
    orch = await orchestrator_factory(workflows=WORKFLOWS)
    service = await start_service()
    TRAFFIC_CALLS.clear()
    result = await orch.run("rollout", {"deploy": spec(
        "py", service, tmp_path, stages=[30, 100],
        traffic={"callable": "tests.test_canary:record_traffic"})})
    assert result.status == "completed", result
    assert TRAFFIC_CALLS == [(30, "py"), (100, "py")]
