"""The remote no-op call of ``bench.peers``, in each system's terms: a round trip (send, wait
for the answer) and a batch of requests in flight at once, each counted when answered.

A system is a :class:`Calls`: ``round_trip(n)`` returns ``n`` round trips in seconds;
``batch(size)`` sends ``size`` requests at once and returns ``{"elapsed", "ok", "distinct",
"executions", "unique"}`` (answers that came back right, distinct answers, and what the worker
counted: executions and distinct tokens executed since the batch began). The sync clients
(Celery, Dramatiq) run in a thread of their own, timed there; arq runs in processes of its own
(:mod:`bench._peers.arq_app`).
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

__all__ = ["Calls", "celery_calls", "dramatiq_calls", "arq_calls"]


class Calls:
    """One system's no-op call: its name, version, configuration and the two measurements."""

    def __init__(self, name: str, version: str, config: str,
                 round_trip: Callable[[int], Awaitable[list[float]]],
                 batch: Callable[[int], Awaitable[dict[str, Any]]],
                 close: Callable[[], None] = lambda: None) -> None:
        self.name, self.version, self.config = name, version, config
        self.round_trip, self.batch, self.close = round_trip, batch, close


def _in_thread(fn: Callable[..., Any]) -> tuple[Callable[..., Awaitable[Any]], Callable[[], None]]:
    """``fn`` run in one dedicated thread (the sync clients are used from one thread only)."""
    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="bench-peer")

    async def call(*args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(pool, fn, *args)

    return call, lambda: pool.shutdown(wait=False)


def _sync_round_trips(call: Callable[[str], Any], n: int) -> list[float]:
    samples = []
    for _ in range(n):
        token = uuid.uuid4().hex
        started = time.perf_counter()
        answer = call(token)
        samples.append(time.perf_counter() - started)
        if answer != token:
            raise RuntimeError(f"answered {answer!r} instead of its token")
    return samples


def _sync_batch(send: Callable[[str], Any], wait: Callable[[Any], Any],
                stats: Callable[[], dict[str, Any]], size: int) -> dict[str, Any]:
    stats()  # reset the worker's counter
    tokens = [uuid.uuid4().hex for _ in range(size)]
    started = time.perf_counter()
    pending = [send(t) for t in tokens]
    answers = []
    for handle in pending:
        try:
            answers.append(wait(handle))
        except Exception as exc:  # counted as lost
            answers.append(exc)
    elapsed = time.perf_counter() - started
    ok = [a for a, t in zip(answers, tokens, strict=True) if a == t]
    return {"elapsed": elapsed, "ok": len(ok), "distinct": len(set(ok)), **stats()}


def celery_calls(timeout: float) -> Calls:
    import celery

    from . import celery_app

    def call(token: str) -> Any:
        return celery_app.noop.apply_async((token,)).get(timeout=timeout)

    def stats() -> dict[str, Any]:
        return celery_app.stats.apply_async((True,)).get(timeout=timeout)

    round_trip, stop_rt = _in_thread(lambda n: _sync_round_trips(call, n))
    batch, stop_batch = _in_thread(lambda size: _sync_batch(
        lambda t: celery_app.noop.apply_async((t,)), lambda r: r.get(timeout=timeout),
        stats, size))

    def close() -> None:
        stop_rt()
        stop_batch()
        celery_app.app.close()

    return Calls("celery", celery.__version__,
                 f"Redis broker and result backend, worker --pool=solo, {celery_app.CONFIG}",
                 round_trip, batch, close)


def dramatiq_calls(variant: str, timeout: float) -> Calls:
    import dramatiq

    from . import dramatiq_app

    noop, stats_actor = dramatiq_app.ACTORS[variant]
    backend, wait_ms = dramatiq_app.backend, int(timeout * 1000)

    def call(token: str) -> Any:
        return noop.send(token).get_result(backend=backend, block=True, timeout=wait_ms)

    def stats() -> dict[str, Any]:
        return stats_actor.send(True).get_result(backend=backend, block=True, timeout=wait_ms)

    round_trip, stop_rt = _in_thread(lambda n: _sync_round_trips(call, n))
    batch, stop_batch = _in_thread(lambda size: _sync_batch(
        noop.send, lambda m: m.get_result(backend=backend, block=True, timeout=wait_ms),
        stats, size))
    idle = {"fast": "~1 ms (dramatiq_worker_timeout=2)",
            "default": "5 ms doubling up to 1,000 ms (default)"}[variant]

    def close() -> None:
        stop_rt()
        stop_batch()

    return Calls(f"dramatiq_{variant}", dramatiq.__version__,
                 f"Redis broker + Results (Redis backend), 1 worker process x 8 threads, "
                 f"idle re-poll {idle}", round_trip, batch, close)


def arq_calls(variant: str, env: dict[str, str], version: str, timeout: float) -> Calls:
    """arq's client in a process of its own per measurement (arq needs its own redis client)."""

    async def client(what: str, count: int) -> dict[str, Any]:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "bench._peers.arq_app", what, variant, str(count), env=env,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        try:
            out, err = await asyncio.wait_for(proc.communicate(), timeout + 60)
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
        if proc.returncode != 0:
            raise RuntimeError(f"the arq client failed ({proc.returncode}): {err.decode()[-2000:]}")
        return json.loads(out.decode().strip().splitlines()[-1])

    async def round_trip(n: int) -> list[float]:
        return (await client("round_trip", n))["samples"]

    async def batch(size: int) -> dict[str, Any]:
        return await client("throughput", size)

    poll = {"fast": "1 ms", "default": "0.5 s (arq's default)"}[variant]
    return Calls(f"arq_{variant}", version,
                 f"worker poll_delay and client Job.result poll_delay {poll}, max_jobs 10 "
                 "(default), redis[hiredis]<6 as arq requires", round_trip, batch)
