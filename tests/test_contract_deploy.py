"""The deployer and infrastructure agents and their graphs (the canary subgraph,
``self_healing``) keep one contract each (``orchestrator.contracts.deployer``,
``orchestrator.contracts.infrastructure``, with the health models of
``orchestrator.contracts.health``): a malformed payload is refused naming the field, answers keep
their wire shape, and each graph holds the very lock its agent checks."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from orchestrator.agents import deployer as deployer_agent
from orchestrator.agents import infrastructure as infrastructure_agent
from orchestrator.workflows import canary, self_healing

from orchestrator.calls import call_agent
from orchestrator.contracts import deployer, infrastructure
from orchestrator.errors import AgentError, AgentErrorCode

from .support.commands import heal_input, traffic_log_command
from .support.graphs_for_tests import rollout

TRAFFIC = {"command": [sys.executable, "-c", "pass"]}
HEALTH = {"kind": "http", "url": "http://127.0.0.1:9/health"}


@pytest.mark.parametrize(
    ("target", "request_type", "payload", "field"),
    [
        ("deployer", "validate", {"spec": {"health": HEALTH}},
         "payload.spec.traffic: Field required"),
        ("deployer", "validate",
         {"spec": {"health": HEALTH, "traffic": {"command": ["x"], "callable": "m:f"}}},
         "payload.spec.traffic: Value error, give exactly one of 'command'"),
        ("deployer", "validate", {"spec": {"health": HEALTH, "traffic": TRAFFIC,
                                           "thresholds": {"latency": 5}}},
         "payload.spec.thresholds.latency: Extra inputs are not permitted"),
        ("deployer", "set_traffic", {"percent": 10, "traffic": TRAFFIC},
         "payload.deployment: Field required"),
        ("deployer", "set_traffic", {"deployment": "web", "percent": 101, "traffic": TRAFFIC},
         "payload.percent: Input should be less than or equal to 100"),
        ("deployer", "observe", {"health": {"url": "ftp://x"}},
         "payload.health.url: Value error, url must start with http:// or https://"),
        ("deployer", "observe", {"health": HEALTH, "wait": -1},
         "payload.wait: Input should be greater than or equal to 0"),
        ("deployer", "rollback", {"deployment": "web", "traffic": TRAFFIC, "mode": "sideways"},
         "payload.mode: Input should be 'automatic' or 'manual'"),
        ("infrastructure", "probe", {}, "payload.health_url: Field required"),
        ("infrastructure", "probe",
         {"health_url": HEALTH["url"],
          "thresholds": {"error_rate_degraded": 0.5, "error_rate_unhealthy": 0.2}},
         "payload.thresholds: Value error, error_rate_degraded (0.5) must not exceed"),
        ("infrastructure", "diagnose", {"samples": "down"},
         "payload.samples: Input should be a valid list"),
        ("infrastructure", "fix", {"service": "", "action": {"type": "wait"}},
         "payload.service: String should have at least 1 character"),
        ("infrastructure", "fix", {"service": "calc", "action": {"type": "command"}},
         "payload.action: Value error, a 'command' action needs 'argv'"),
        ("infrastructure", "fix", {"service": "calc", "action": {"type": "restart"},
                                   "restart": {"command": ["true"], "start": ["true"]}},
         "payload.restart: Value error, give exactly one of 'command' or 'start'"),
    ],
)
async def test_a_malformed_payload_is_answered_invalid_input_naming_the_field(
    orchestrator, target, request_type, payload, field
) -> None:
    with pytest.raises(AgentError) as caught:
        await call_agent(target, request_type, payload, runtime=orchestrator.runtime)
    assert caught.value.error_code == AgentErrorCode.INVALID_INPUT
    assert field in str(caught.value), caught.value


async def test_a_restart_without_a_restart_spec_is_the_handlers_check(orchestrator) -> None:
    """Checked by the agent (after the fencing token), not by the model: the workflow sends
    a human's restart action as it is, and records the agent's refusal."""
    with pytest.raises(AgentError) as caught:
        await call_agent("infrastructure", "fix", {"service": "calc",
                                                   "action": {"type": "restart"}},
                         locks=[infrastructure.service_lock("calc")],
                         runtime=orchestrator.runtime)
    assert caught.value.error_code == AgentErrorCode.INVALID_INPUT
    assert "payload.restart: a 'restart' action needs 'restart'" in str(caught.value)


async def test_answers_keep_their_wire_shape() -> None:
    wait = {"action": "wait", "ok": True, "detail": "waited 0s"}
    assert infrastructure.FIX.dump_result(wait) == wait  # no nulls for a command's fields
    failed = {"action": "command", "ok": False, "exit_code": None, "output": "",
              "detail": "nope could not run: not found"}
    assert infrastructure.FIX.dump_result(failed) == failed  # a null given stays
    assert infrastructure.FIX.parse_result(failed).model_dump(mode="json") == failed

    samples = [{"status": "unhealthy", "issue": "http_5xx", "detail": "GET / answered 500."}]
    rules = await infrastructure_agent.agent.call_locally(
        "diagnose", {"samples": samples, "kinds": ["down", "http_5xx"]})
    assert rules == {"kind": "http_5xx", "reason": "http_5xx: GET / answered 500.",
                     "by": "rules"}

    checked = await deployer_agent.agent.call_locally(
        "validate", {"spec": {"name": "web", "stages": [50, 100], "traffic": TRAFFIC,
                              "health": HEALTH}})
    assert set(checked) == {"traffic", "health", "thresholds", "rollback_command", "samples",
                            "sample_interval", "failure_limit"}
    assert checked["thresholds"] == {"error_rate_degraded": 0.05, "error_rate_unhealthy": 0.1,
                                     "latency_ms": 200.0}


def test_graph_and_agent_name_the_locks_with_the_contracts_functions() -> None:
    assert canary.deployment_lock is deployer.deployment_lock
    assert deployer_agent.deployment_lock is deployer.deployment_lock
    assert self_healing.service_lock is infrastructure.service_lock
    assert infrastructure_agent.service_lock is infrastructure.service_lock
    assert deployer.deployment_lock("web") == "deploy:web"
    assert infrastructure.service_lock("calc") == "service:calc"


async def test_the_canary_holds_the_lock_the_deployer_checks(
    orchestrator_factory, start_service, tmp_path: Path, fencing_checks
) -> None:
    orch = await orchestrator_factory(workflows={"rollout": rollout})
    service = await start_service()
    service.set_mode("error")  # one stage, then a rollback: both are fenced
    result = await orch.run("rollout", {"deploy": {
        "name": "web", "stages": [50, 100], "stage_seconds": 0, "samples": 1,
        "sample_interval": 0, "failure_limit": 1,
        "traffic": {"command": traffic_log_command(tmp_path / "traffic")},
        "health": {"kind": "http", "url": service.url + "/health"}}})
    assert result.final_result["canary"]["status"] == "rolled_back", result
    lock = deployer.deployment_lock("web")
    assert fencing_checks == [(lock, [lock]), (lock, [lock])]  # set_traffic, then rollback


async def test_self_healing_holds_the_lock_the_infrastructure_agent_checks(
    orchestrator, start_service, reap, fencing_checks
) -> None:
    service = await start_service()
    reap(service.pid_file)
    service.kill()
    result = await orchestrator.run("self_healing", heal_input(service))
    assert result.final_result["outcome"] == "healed", result
    lock = infrastructure.service_lock("calc")
    assert fencing_checks == [(lock, [lock])]
