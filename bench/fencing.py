"""Fenced checkpoint writes against the unfenced saver: the cost of ``orchestrator serve``'s
lease check on every checkpoint write.

* ``fenced_checkpoint_writes``: 8 concurrent writers, each its own thread, write what a graph
  step writes (``aput`` of a checkpoint with a ~1 KB state channel, then ``aput_writes`` of two
  writes), in rounds that alternate between LangGraph's own ``AsyncPostgresSaver`` (the
  baseline) and :class:`~orchestrator.state.checkpointer.FencedSaver` under a held run's fence
  (each write one statement, the check a ``FROM`` item of it), so both see the same machine.
  Throughput = steps per second over all rounds of a kind. Target: fenced ≥ 0.9x unfenced.

    python -m bench.fencing [--quick]

Uses ORCHESTRATOR_DATABASE_URL / ORCHESTRATOR_REDIS_URL (embedded services when unset).
"""

from __future__ import annotations

import asyncio
import contextlib
import time

from langgraph.checkpoint.base import empty_checkpoint
from langgraph.checkpoint.postgres.aio import AsyncPostgresSaver
from orchestrator.state.checkpointer import make_checkpointer
from psycopg import sql

from orchestrator.runtime import Runtime
from orchestrator.service.fencing import Fence, fenced
from orchestrator.service.queue import RunQueue

from .common import Result, run_standalone, settings

__all__ = ["run"]

_TARGET = "fenced checkpoint write throughput ≥ 0.9x the unfenced saver's"
_WRITERS = 8
_STATE = {"items": [{"name": f"item-{i}", "status": "done", "detail": "x" * 40}
                    for i in range(16)]}


async def _step(saver: AsyncPostgresSaver, thread_id: str, step: int) -> None:
    checkpoint = empty_checkpoint()
    checkpoint["channel_values"] = {"state": _STATE, "step": step}
    config = await saver.aput(
        {"configurable": {"thread_id": thread_id, "checkpoint_ns": ""}}, checkpoint,
        {"source": "loop", "step": step}, {"state": f"{step:08d}", "step": f"{step:08d}"})
    await saver.aput_writes(config, [("state", _STATE), ("step", step + 1)], f"task-{step}")


async def _writer(saver: AsyncPostgresSaver, thread_id: str, fence: Fence | None,
                  first: int, steps: int) -> None:
    with fenced(fence) if fence is not None else contextlib.nullcontext():
        for step in range(first, first + steps):
            await _step(saver, thread_id, step)


async def _round(saver: AsyncPostgresSaver, threads: list[str], fences: list[Fence] | None,
                 first: int, steps: int) -> float:
    started = time.perf_counter()
    await asyncio.gather(*(
        _writer(saver, thread, fences[i] if fences else None, first, steps)
        for i, thread in enumerate(threads)))
    return time.perf_counter() - started


async def _fenced_writes(rt: Runtime, rounds: int, steps: int) -> Result:
    queue = RunQueue(rt.db, rt.settings)
    fences, plain_threads = [], []
    for i in range(_WRITERS):  # a claimed run per fenced thread; plain threads beside them
        thread_id = f"bench-fence-{rt.settings.namespace}-{i}"
        await queue.submit(thread_id, "bench", {})
        plain_threads.append(f"bench-plain-{rt.settings.namespace}-{i}")
    for _ in range(_WRITERS):
        run = await queue.claim("bench-runner")
        assert run is not None
        fences.append(Fence.of(run, "bench-runner"))
    fenced_threads = [f.thread_id for f in fences]
    plain = AsyncPostgresSaver(rt.db.pool)  # type: ignore[arg-type]
    plain.lock = contextlib.nullcontext()  # type: ignore[assignment]  # as make_checkpointer
    fenced_saver = make_checkpointer(rt.db)
    await _round(plain, plain_threads, None, 0, 5)  # warm the pool and statement caches
    await _round(fenced_saver, fenced_threads, fences, 0, 5)
    plain_s = fenced_s = 0.0
    for r in range(rounds):  # alternate, so both kinds see the same machine
        first = 10 + r * steps
        plain_s += await _round(plain, plain_threads, None, first, steps)
        fenced_s += await _round(fenced_saver, fenced_threads, fences, first, steps)
    total = rounds * steps * _WRITERS
    baseline = {"steps_per_s": round(total / plain_s, 1), "writers": _WRITERS, "steps": total}
    figures = {"steps_per_s": round(total / fenced_s, 1), "writers": _WRITERS, "steps": total}
    ratio = plain_s / fenced_s
    return Result("fenced_checkpoint_writes", _TARGET, ratio >= 0.9, figures, baseline,
                  round(ratio, 3),
                  notes="a step = aput (one ~1 KB blob channel) + aput_writes (2 writes); "
                        "fenced = FencedSaver, each write one statement with orchestrator_fence() "
                        "a FROM item of it; unfenced = LangGraph's AsyncPostgresSaver")


async def run(quick: bool = False) -> list[Result]:
    base = settings("fencing", local_agents=False, run_lease=3600)
    async with Runtime.open(base, agents=[]) as rt:
        try:
            return [await _fenced_writes(rt, 4 if quick else 10, 10 if quick else 40)]
        finally:
            await _clean(rt)


async def _clean(rt: Runtime) -> None:
    prefix = f"bench-%-{rt.settings.namespace}-%"
    for table in ("checkpoint_writes", "checkpoint_blobs", "checkpoints"):
        await rt.db.execute(sql.SQL("DELETE FROM {} WHERE thread_id LIKE %s").format(
            sql.Identifier(table)), (prefix,))
    await rt.db.execute("DELETE FROM workflows WHERE namespace = %s", (rt.settings.namespace,))


def main() -> int:
    return run_standalone("fencing", __doc__, run)


if __name__ == "__main__":
    main()

