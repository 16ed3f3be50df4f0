"""The call path back to state: a failed agent call records itself in the run's state
(``error_log``, ``agent_status``) in every graph where a call can fail; call updates are merged
with the state's own reducers; Studio compiles graphs as the facade does."""

from __future__ import annotations

from typing import Any

from orchestrator.state.schema import merge_updates

from orchestrator.agent import HandlerError
from orchestrator.testing import stand_in

from .support.fixture_plan import make_plan_repo


def failing(code: str, message: str):
    async def handler(payload, ctx):
        raise HandlerError(code, message)

    return handler


def entries(values: dict[str, Any], code: str) -> list[dict[str, Any]]:
    return [e for e in values.get("error_log") or [] if e.get("code") == code]


def test_call_updates_merge_with_the_states_reducers() -> None:
    call = {"agent_assignments": {"a": "agent-1"}, "agent_status": {"agent-1": "error"},
            "error_log": [{"code": "x"}], "updated_at": "2026-01-02T00:00:00+00:00"}
    node = {"partial_results": {"a": 1}, "agent_status": {"agent-2": "success"},
            "error_log": [{"code": "y"}], "updated_at": "2026-01-01T00:00:00+00:00",
            "final_result": {"status": "failed"}}
    merged = merge_updates(call, node, {"partial_results": {"b": 2}})
    assert merged == {
        "agent_assignments": {"a": "agent-1"},
        "agent_status": {"agent-1": "error", "agent-2": "success"},  # merged, not replaced
        "error_log": [{"code": "x"}, {"code": "y"}],  # appended
        "updated_at": "2026-01-02T00:00:00+00:00",  # the later one
        "partial_results": {"a": 1, "b": 2},
        "final_result": {"status": "failed"},  # no reducer: the later value
    }
    assert call["agent_status"] == {"agent-1": "error"}  # inputs are not mutated


async def test_parallel_docs_failed_call_is_in_error_log(
    orchestrator_factory, fixture_package, tmp_path
) -> None:
    docs = stand_in("docs", {"list_modules": failing("no_modules", "cannot list modules")},
                    keep_builtin=True)
    orch = await orchestrator_factory(stand_ins=[docs])
    failed = await orch.run("parallel_docs", {"package": str(fixture_package),
                                              "output": str(tmp_path / "out")}, "docs-err")
    assert failed.status == "failed", failed
    values = (await orch.get("docs-err")).values
    [entry] = entries(values, "no_modules")
    assert entry["message"] == "cannot list modules"
    assert entry["node"].startswith("discover") and entry["subtask"] == "discover"
    assert "error" in values["agent_status"].values()
    assert values["agent_assignments"]["discover"] in values["agent_status"]


async def test_pr_deployment_failed_call_is_in_error_log(
    orchestrator_factory, fixture_repo
) -> None:
    review = stand_in("code_review", {"review": failing("ruff_crashed", "ruff crashed")})
    orch = await orchestrator_factory(stand_ins=[review])
    failed = await orch.run("pr_deployment", {"repo": str(fixture_repo),
                                              "source": "feature-pass"}, "pr-err")
    assert failed.status == "failed" and "ruff crashed" in failed.error["message"], failed
    values = (await orch.get("pr-err")).values
    [entry] = entries(values, "ruff_crashed")
    assert entry["message"] == "ruff crashed" and entry["node"].startswith("review")
    assert values["agent_status"][values["agent_assignments"]["review"]] == "error"


async def test_self_healing_failed_call_is_in_error_log_and_a_second_failure_too(
    orchestrator_factory,
) -> None:
    infra = stand_in("infrastructure", {"probe": failing("probe_broken", "cannot probe")})
    orch = await orchestrator_factory(stand_ins=[infra])
    heal = {"service": "calc", "health_url": "http://127.0.0.1:9/health",
            "restart": {"command": ["true"]}}
    failed = await orch.run("self_healing", heal, "heal-err")
    assert failed.status == "failed" and "cannot probe" in failed.error["message"], failed
    values = (await orch.get("heal-err")).values
    [entry] = entries(values, "probe_broken")
    assert entry["node"].startswith("detect") and entry["subtask"] == "detect"
    again = await orch.resume("heal-err")  # fails again at the same node: both are kept
    assert again.status == "failed", again
    assert len(entries((await orch.get("heal-err")).values, "probe_broken")) == 2


async def test_plan_execution_failed_call_is_in_error_log(
    orchestrator_factory, tmp_path
) -> None:
    developer = stand_in("developer", {"develop": failing("cannot_write", "disk is full")},
                         keep_builtin=True)
    orch = await orchestrator_factory(stand_ins=[developer])
    _repo, plan = make_plan_repo(tmp_path / "repo", max_attempts=1, retry_delay=0.01,
                                 integration_command="python -c pass")
    plan["tasks"] = [t for t in plan["tasks"] if t["id"] == "config"]
    result = await orch.run("plan_execution", {"plan": plan}, "plan-err")
    assert result.status in ("failed", "interrupted"), result
    values = (await orch.get("plan-err")).values
    [entry] = entries(values, "cannot_write")
    assert entry["message"] == "disk is full" and entry["subtask"] == "config:develop:1"
    assert values["agent_status"][values["agent_assignments"]["config:develop:1"]] == "error"


async def test_studio_compiles_graphs_as_the_facade_does_with_the_task_cache(
    orchestrator, monkeypatch
) -> None:
    from orchestrator.state.cache import PostgresCache
    from orchestrator.workflows import studio

    monkeypatch.setattr(studio, "_runtime", orchestrator.runtime)  # as _server_runtime opens
    monkeypatch.setattr(studio, "_compiled", {})
    async with studio.plan_execution({}) as graph:
        assert isinstance(graph.cache, PostgresCache)  # plan_execution's CachePolicy works
        assert isinstance(orchestrator.graph("plan_execution").cache, PostgresCache)
        async with studio.plan_execution({}) as again:
            assert again is graph  # compiled once per process


async def test_pr_deployment_input_is_validated_once_per_run_off_the_event_loop(
    orchestrator_factory, fixture_repo, monkeypatch
) -> None:
    import asyncio

    from orchestrator.workflows import pr_deployment

    real_top = pr_deployment.repository_top
    checks: list[bool] = []  # one per validation (git rev-parse --show-toplevel): on the loop?

    def repository_top(path):
        try:
            asyncio.get_running_loop()
            checks.append(True)
        except RuntimeError:
            checks.append(False)
        return real_top(path)

    monkeypatch.setattr(pr_deployment, "repository_top", repository_top)
    review = stand_in("code_review", {"review": failing("ruff_crashed", "ruff crashed")})
    orch = await orchestrator_factory(stand_ins=[review])
    failed = await orch.run("pr_deployment", {"repo": str(fixture_repo),
                                              "source": "feature-pass"})
    assert failed.status == "failed", failed
    assert checks == [False]  # once (not again in the graph's validate node), in a thread


async def test_a_call_that_reached_no_agent_is_in_error_log_too(
    orchestrator_factory, fixture_package, tmp_path
) -> None:
    orch = await orchestrator_factory(builtin=False)  # no docs agent: AgentUnavailable
    failed = await orch.run("parallel_docs", {"package": str(fixture_package),
                                              "output": str(tmp_path / "out")}, "docs-none")
    assert failed.status == "failed" and failed.error["code"] == "agent_unavailable", failed
    [entry] = entries((await orch.get("docs-none")).values, "agent_unavailable")
    assert entry["node"].startswith("discover") and "docs" in entry["message"]
