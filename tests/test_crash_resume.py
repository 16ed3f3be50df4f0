"""kill -9 of the orchestrator in the middle of parallel_docs' fan-out, then resume.

The test process hosts the docs agent (built-in handlers, with rendering slowed down and
counted); the orchestrator runs in a CLI subprocess without local agents, and is killed
once some modules have been rendered. Resuming (CLI ``resume``, or ``recover()``) must finish
with every module documented, each rendered exactly once.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import time
import uuid
from collections import Counter

import pytest
from orchestrator.agents.docs import render as builtin_render

from orchestrator.testing import stand_in

from .support.docs import FIXTURE_MODULES as MODULES
from .support.processes import ORCHESTRATOR_CMD

pytestmark = pytest.mark.slow


def _slow_counting_docs(counts: Counter[str]):
    async def render(payload, ctx):
        counts[payload["module"]] += 1
        await asyncio.sleep(0.25)
        return await builtin_render(payload, ctx)

    return stand_in("docs", {"render_module": render}, keep_builtin=True)


async def _start_and_kill_midway(service_env, fixture_package, out, counts) -> str:
    thread_id = f"crash-{uuid.uuid4().hex[:8]}"
    proc = subprocess.Popen(
        [*ORCHESTRATOR_CMD, "run", "parallel_docs", "--set", f"package={fixture_package}",
         "--set", f"output={out}", "--thread-id", thread_id, "--no-local-agents"],
        env=service_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    deadline = time.monotonic() + 60
    while sum(counts.values()) < 3:
        if proc.poll() is not None:
            raise AssertionError(f"run ended before the kill: {proc.communicate()}")
        assert time.monotonic() < deadline, "rendering never started"
        await asyncio.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    await asyncio.to_thread(proc.wait)
    assert sum(counts.values()) < len(MODULES), "killed too late to test anything"
    return thread_id


def _assert_complete(out, counts) -> None:
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [f"{m}.md" for m in MODULES] + ["index.md"])
    index = (out / "index.md").read_text()
    assert all(index.count(f"[{m}]({m}.md)") == 1 for m in MODULES)
    assert counts == Counter(dict.fromkeys(MODULES, 1)), "a module was rendered twice or never"


async def test_kill_midway_then_cli_resume_completes_exactly_once(
    orchestrator_factory, service_env, fixture_package, tmp_path
) -> None:
    counts: Counter[str] = Counter()
    orch = await orchestrator_factory(builtin=False, stand_ins=[_slow_counting_docs(counts)],
                                      worker_min_concurrency=2, worker_max_concurrency=2)
    out = tmp_path / "docs"
    thread_id = await _start_and_kill_midway(service_env, fixture_package, out, counts)
    record = await orch.runtime.workflows.get(thread_id)
    assert record.status == "running"  # its owner died; nothing marked it otherwise

    resumed = await asyncio.to_thread(
        subprocess.run,
        [*ORCHESTRATOR_CMD, "resume", thread_id, "--json", "--no-local-agents"],
        env=service_env, capture_output=True, text=True, timeout=120,
    )
    assert resumed.returncode == 0, resumed.stderr
    result = json.loads(resumed.stdout)
    assert result["thread_id"] == thread_id and result["status"] == "completed"
    assert result["final_result"]["modules"] == len(MODULES)
    _assert_complete(out, counts)


async def test_kill_midway_then_recover_completes_exactly_once(
    orchestrator_factory, service_env, fixture_package, tmp_path
) -> None:
    counts: Counter[str] = Counter()
    orch = await orchestrator_factory(builtin=False, stand_ins=[_slow_counting_docs(counts)],
                                      worker_min_concurrency=2, worker_max_concurrency=2)
    out = tmp_path / "docs"
    thread_id = await _start_and_kill_midway(service_env, fixture_package, out, counts)
    results = await orch.recover()
    assert [(r.thread_id, r.status) for r in results] == [(thread_id, "completed")]
    _assert_complete(out, counts)
    assert await orch.recover() == []  # nothing left to recover


async def test_recover_starts_a_workflow_killed_before_its_first_checkpoint(
    orchestrator, fixture_package, tmp_path
) -> None:
    """A process killed after writing the workflow's row but before its first checkpoint:
    `recover` starts it from the input the row keeps (it passed no input to the graph and
    failed with EmptyInputError; `resume` already handled this)."""
    from orchestrator.processes import process_id_of

    victim = await asyncio.create_subprocess_exec("sleep", "30")
    owner = process_id_of(victim.pid)  # a process of this host that then dies
    victim.kill()
    await victim.wait()
    out = tmp_path / "docs"
    thread_id = f"early-{uuid.uuid4().hex[:8]}"
    await orchestrator.runtime.workflows.create(
        thread_id, "parallel_docs", {"package": str(fixture_package), "output": str(out)},
        owner=owner)

    results = await orchestrator.recover()

    assert [(r.thread_id, r.status) for r in results] == [(thread_id, "completed")], results
    assert (out / "index.md").exists()
    assert (await orchestrator.runtime.workflows.get(thread_id)).status == "completed"
