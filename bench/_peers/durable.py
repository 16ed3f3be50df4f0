"""The durable workflow of ``bench.peers``: 10 no-op steps, each checkpointed, run through our
service's path, DBOS Transact and bare LangGraph + ``AsyncPostgresSaver``.

* ours: the graph of ``bench.workflows.steps_spec`` (10 nodes, each bumping a counter) as
  ``orchestrator serve`` runs a submitted workflow: :meth:`RunService.submit` (the workflow row
  and its run, one statement), :meth:`RunQueue.claim` (the run and its workflow set running,
  one statement) and :meth:`RunService.execute` (every checkpoint and workflow write fenced by
  the run's lease; the last one ends the run): the runner's own calls, in this process,
  without the wait for its wake-up (NOTIFY) and with a lease long enough that no renewal is
  due.
* DBOS: :func:`bench._peers.dbos_flow.ten_steps` awaited in this process, its system database
  a scratch database of its own on the same server (created by DBOS, dropped afterwards).
* bare: the same graph compiled with LangGraph's ``AsyncPostgresSaver`` on a pool of its own
  (the size of ours), invoked with the same durability.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from importlib import metadata
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import psycopg
from langgraph.checkpoint.postgres.aio import AsyncPostgresSaver
from orchestrator.state.db import Database
from orchestrator.state.schema import now_iso

from orchestrator.facade import Orchestrator
from orchestrator.service.runs import RunService
from orchestrator.settings import Settings

from ..workflows import NODES, STEPS, steps_spec

__all__ = ["Durable", "durable_systems"]

#: settings of ours for the run: the pool the size of DBOS's default, a lease no run outlives
OVERRIDES: dict[str, Any] = {"pool_max_size": 20, "run_lease": 600.0, "local_agents": False}


class Durable:
    """One system's workflow run: ``one()`` runs a workflow to its end; ``version`` and
    ``config`` are printed with the figures."""

    def __init__(self, name: str, version: str, config: str,
                 one: Callable[[], Awaitable[None]]) -> None:
        self.name, self.version, self.config, self.one = name, version, config, one


@contextlib.asynccontextmanager
async def durable_systems(base: Settings, notes: list[str]) -> AsyncIterator[list[Durable]]:
    """Ours, DBOS (when installed) and bare LangGraph, open for the block; every row they wrote
    and DBOS's database are gone afterwards."""
    settings = base.model_copy(update=OVERRIDES)
    assert settings.database_url is not None
    spec = steps_spec()
    runner = f"bench-peers-{settings.namespace}"
    bare_prefix = f"bench-peers-bare-{settings.namespace}-"
    systems: list[Durable] = []
    dbos_db: str | None = None
    async with contextlib.AsyncExitStack() as stack:
        orch = await stack.enter_async_context(
            Orchestrator(settings, agents=[], workflows={STEPS: spec}))
        stack.push_async_callback(_cleanup, settings, bare_prefix)
        runs = RunService(orch)

        async def ours() -> None:
            await runs.submit(STEPS, {"label": "o"})
            run = await runs.queue.claim(runner)
            assert run is not None, "nothing to claim"
            result = await runs.execute(run, runner)
            if result.status != "completed":
                raise RuntimeError(f"workflow {run.thread_id} ended {result.status}: "
                                   f"{result.error}")

        systems.append(Durable(
            "ours", metadata.version("langgraph-orchestrator"),
            f"RunService.submit -> RunQueue.claim -> RunService.execute (fenced; its last "
            f"write ends the run); durability={settings.durability}, "
            f"pool_max_size={settings.pool_max_size}", ours))

        try:
            from . import dbos_flow
        except ImportError as exc:
            notes.append(f"DBOS not measured ({exc}): pip install -e '.[bench]'")
        else:
            dbos_db = f"bench_peers_dbos_{uuid.uuid4().hex[:10]}"
            stack.push_async_callback(_drop_database, settings.database_url, dbos_db)
            dbos_flow.launch(_with_database(settings.database_url, dbos_db),
                             f"bench-peers-{settings.namespace}")
            stack.callback(dbos_flow.destroy)

            async def dbos() -> None:
                if await dbos_flow.ten_steps("d") != dbos_flow.STEPS:
                    raise RuntimeError("the DBOS workflow counted wrong")

            systems.append(Durable("dbos", metadata.version("dbos"),
                                   f"{dbos_flow.CONFIG}, system database {dbos_db} "
                                   "(same server)", dbos))

        bare_db = await stack.enter_async_context(
            Database.connect(settings.database_url, max_size=settings.pool_max_size))
        saver = AsyncPostgresSaver(bare_db.pool)  # type: ignore[arg-type]
        graph = spec.builder.compile(checkpointer=saver)

        async def bare() -> None:
            thread_id = f"{bare_prefix}{uuid.uuid4().hex}"
            stamp = now_iso()
            state = await graph.ainvoke(
                {"label": "b", "task_id": thread_id, "workflow_type": STEPS,
                 "started_at": stamp, "updated_at": stamp},
                {"configurable": {"thread_id": thread_id}}, durability=settings.durability)
            if state["counter"] != NODES:
                raise RuntimeError("the bare graph counted wrong")

        systems.append(Durable("bare_langgraph", metadata.version("langgraph"),
                               f"AsyncPostgresSaver {metadata.version('langgraph-checkpoint-postgres')}, "
                               f"durability={settings.durability}, pool {settings.pool_max_size}",
                               bare))
        yield systems


async def one_at_a_time(system: Durable, count: int) -> float:
    """Median seconds per workflow over ``count`` workflows run one after another."""
    samples = []
    for _ in range(count):
        started = time.perf_counter()
        await system.one()
        samples.append(time.perf_counter() - started)
    samples.sort()
    return samples[len(samples) // 2]


async def at_once(system: Durable, count: int) -> float:
    """Workflows per second with ``count`` started at once (all must complete)."""
    started = time.perf_counter()
    await asyncio.gather(*(system.one() for _ in range(count)))
    return count / (time.perf_counter() - started)


def _with_database(url: str, name: str) -> str:
    """``url`` (a libpq URL) naming database ``name``, for SQLAlchemy's psycopg 3 driver."""
    parts = urlsplit(url)
    return urlunsplit(("postgresql+psycopg", parts.netloc, f"/{name}", parts.query, ""))


async def _drop_database(url: str, name: str) -> None:
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


async def _cleanup(settings: Settings, bare_prefix: str) -> None:
    """Our runs, workflows and checkpoints of the run's namespace, and the bare threads."""
    assert settings.database_url is not None
    async with Database.connect(settings.database_url, max_size=2) as db:
        await db.execute("DELETE FROM runs WHERE namespace = %s", (settings.namespace,))
        for table in ("checkpoint_writes", "checkpoint_blobs", "checkpoints"):
            await db.execute(f"DELETE FROM {table} WHERE thread_id IN (SELECT thread_id FROM "
                             "workflows WHERE namespace = %s) OR thread_id LIKE %s",
                             (settings.namespace, bare_prefix + "%"))
        for table in ("workflows", "agents"):
            await db.execute(f"DELETE FROM {table} WHERE namespace = %s", (settings.namespace,))
