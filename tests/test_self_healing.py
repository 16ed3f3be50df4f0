"""self_healing against a real HTTP service: detect, diagnose, fix under a lock, verify,
escalate."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shlex
import signal
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest

from orchestrator.errors import InvalidInput
from orchestrator.metrics import HEALING_OUTCOMES
from orchestrator.testing import resume, run_until_interrupt


def restart_spec(service) -> dict[str, Any]:
    return {"start": service.argv, "pid_file": str(service.pid_file),
            "log_file": str(service.log_file)}


def read_pid(path: Path) -> int:
    return int(path.read_text().strip())


def alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


@pytest.fixture
def reap(tmp_path):
    """Kill, after the test, service processes the agent started (named by pid files)."""
    pid_files: list[Path] = []
    yield pid_files.append
    for path in pid_files:
        with contextlib.suppress(FileNotFoundError, ValueError, ProcessLookupError):
            os.kill(read_pid(path), signal.SIGKILL)


def heal_input(service, **overrides: Any) -> dict[str, Any]:
    return {"service": "calc", "health_url": service.url + "/health",
            "restart": restart_spec(service), "verify_timeout": 10, **overrides}


async def test_a_healthy_service_needs_nothing(orchestrator, start_service) -> None:
    service = await start_service()
    result = await orchestrator.run("self_healing", heal_input(service))
    assert result.status == "completed"
    assert result.final_result["outcome"] == "healthy"
    assert result.final_result["attempts"] == 0
    assert service.alive()


async def test_a_dead_service_is_restarted_and_verified(orchestrator, start_service,
                                                        reap) -> None:
    service = await start_service()
    reap(service.pid_file)
    old_pid = service.pid
    service.kill()
    before = HEALING_OUTCOMES.labels("calc", "healed")._value.get()
    result = await orchestrator.run("self_healing", heal_input(service))
    assert result.status == "completed", result
    final = result.final_result
    assert final["outcome"] == "healed" and final["attempts"] == 1
    attempt = final["history"][0]
    assert attempt["issue"] == "down" and attempt["action"] == {"type": "restart"}
    assert attempt["verified"] is True
    new_pid = read_pid(service.pid_file)
    assert new_pid != old_pid and alive(new_pid)
    assert attempt["result"]["pid"] == new_pid
    assert HEALING_OUTCOMES.labels("calc", "healed")._value.get() == before + 1


async def test_an_erroring_service_is_healed_by_a_restart(orchestrator, start_service,
                                                          reap) -> None:
    service = await start_service()
    reap(service.pid_file)
    service.set_mode("error")  # a restart comes back in the mode of its command line: ok
    result = await orchestrator.run("self_healing", heal_input(service))
    assert result.final_result["outcome"] == "healed"
    assert result.final_result["history"][0]["issue"] == "http_5xx"
    assert result.final_result["history"][0]["result"]["stopped_pid"] == service.pid
    assert not service.alive()


async def test_the_runbook_escalates_through_its_actions_then_a_human(
    orchestrator, start_service, reap, tmp_path
) -> None:
    service = await start_service()
    reap(service.pid_file)
    service.kill()
    noted = tmp_path / "noted"
    runbook = {"down": [
        {"type": "command", "argv": ["sh", "-c", f"echo tried >> {shlex.quote(str(noted))}"]},
        {"type": "wait", "seconds": 0.1},
    ]}
    paused, question = await run_until_interrupt(orchestrator, "self_healing", heal_input(
        service, runbook=runbook, max_attempts=3, verify_timeout=2, restart=None))
    assert question["kind"] == "escalation"
    assert [a["action"]["type"] for a in question["attempts"]] == ["command", "wait", "wait"]
    assert {s["issue"] for s in question["evidence"]} == {"down"}
    assert noted.read_text() == "tried\n"  # the first action, once
    # the human starts the service by hand-written command, and it is verified
    start = f"{shlex.join(service.argv)} >/dev/null 2>&1 &"
    result = await resume(orchestrator, paused.thread_id,
                          {"action": {"type": "command", "argv": ["sh", "-c", start]},
                           "by": "carol"})
    assert result.status == "completed", result
    assert result.final_result["outcome"] == "healed"
    assert result.final_result["history"][-1]["manual"] is True


async def test_giving_up_ends_the_run_failed(orchestrator, start_service, reap) -> None:
    service = await start_service()
    service.kill()
    paused, _ = await run_until_interrupt(orchestrator, "self_healing", heal_input(
        service, runbook={"down": [{"type": "wait", "seconds": 0}]}, max_attempts=1,
        verify_timeout=0, restart=None))
    result = await resume(orchestrator, paused.thread_id,
                          {"give_up": True, "by": "dave", "comment": "hardware"})
    assert result.status == "failed"
    assert result.final_result["outcome"] == "gave_up"
    assert result.final_result["reason"] == "given up by dave: hardware"


async def test_a_chat_model_diagnosis_is_used_when_it_names_a_known_issue(
    orchestrator_factory, start_service, reap
) -> None:
    orch = await orchestrator_factory(chat_model="tests.fake_chat:latency_first")
    service = await start_service()
    reap(service.pid_file)
    service.set_mode("slow", delay_ms=400)
    result = await orch.run("self_healing", heal_input(service))
    state = (await orch.get(result.thread_id)).values
    assert state["healing"]["diagnosis"]["by"] == "model"
    assert state["healing"]["diagnosis"]["kind"] == "latency"
    assert result.final_result["outcome"] == "healed"


async def test_a_chat_model_answer_outside_the_runbook_falls_back_to_rules(
    orchestrator_factory, start_service, reap
) -> None:
    orch = await orchestrator_factory(chat_model="tests.fake_chat:nonsense")
    service = await start_service()
    reap(service.pid_file)
    service.set_mode("error")
    result = await orch.run("self_healing", heal_input(service))
    state = (await orch.get(result.thread_id)).values
    assert state["healing"]["diagnosis"] == {
        "kind": "http_5xx", "by": "rules",
        "reason": state["healing"]["diagnosis"]["reason"]}
    assert result.final_result["outcome"] == "healed"


@pytest.mark.parametrize("bad, message", [
    ({"runbook": {"disk_full": ["restart"]}}, "unknown issue kind"),
    ({"restart": None}, "give 'restart'"),
    ({"health_url": "localhost:80"}, "health_url"),
    ({"runbook": {"down": [{"type": "command"}]}}, "needs 'argv'"),
])
async def test_bad_input_is_refused_before_anything_runs(orchestrator, start_service, bad,
                                                         message) -> None:
    service = await start_service()
    with pytest.raises(InvalidInput, match=message):
        await orchestrator.run("self_healing", {**heal_input(service), **bad})
    assert await orchestrator.list_workflows() == []


async def test_a_high_error_rate_in_the_metrics_is_detected_and_healed(
    orchestrator, start_service, reap
) -> None:
    service = await start_service()
    reap(service.pid_file)
    service.set_mode("error", error_rate=0.5)
    stop = asyncio.Event()

    async def traffic() -> None:  # users: half of their requests fail
        async with httpx.AsyncClient(base_url=service.url, trust_env=False, timeout=2) as client:
            while not stop.is_set():
                with contextlib.suppress(httpx.HTTPError):
                    await client.get("/health")
                await asyncio.sleep(0.02)

    load = asyncio.create_task(traffic())
    try:
        result = await orchestrator.run("self_healing", heal_input(
            service, metrics_url=service.url + "/metrics"))
    finally:
        stop.set()
        await load
    assert result.final_result["outcome"] == "healed", result
    state = (await orchestrator.get(result.thread_id)).values
    assert {"error_rate", "http_5xx"} & set(state["healing"]["detected"]["issues"])
    assert any(s["error_rate"] for s in state["healing"]["detected"]["samples"])
