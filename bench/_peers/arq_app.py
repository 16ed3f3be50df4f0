"""arq's side of ``bench.peers``: the worker and the client, both run from arq's own folder
(``bench.peers`` installs arq 0.28 there with the ``redis[hiredis]<6`` it requires, apart from
this environment's Redis client) and so in processes of their own.

    python -m bench._peers.arq_app worker fast|default
    python -m bench._peers.arq_app round_trip fast|default N      (prints one JSON line)
    python -m bench._peers.arq_app throughput fast|default SIZE   (prints one JSON line)

Variants: ``fast`` polls every 1 ms (the worker for jobs, the client for results); ``default``
keeps arq's 0.5 s for both. Everything else is arq's default (``max_jobs`` 10). Keys: the queue
``bench-peers-<tag>:arq:<variant>``, and job ids ``bench-peers-<tag>-<token>`` (arq's own
``arq:job:`` / ``arq:result:`` prefixes before them).
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
import uuid
from typing import Any

from arq import create_pool, run_worker
from arq.connections import ArqRedis, RedisSettings

from . import Counter, redis_url, tag

REDIS_URL, TAG = redis_url(), tag()

POLL = {"fast": 0.001, "default": 0.5}
CONFIG = {"max_jobs": 10, "keep_result_s": 3600}

_counter = Counter()


async def noop(ctx: dict[str, Any], token: str) -> str:
    return _counter.add(token)


async def stats(ctx: dict[str, Any], reset: bool = False) -> dict[str, Any]:
    return _counter.report(reset)


def _queue(variant: str) -> str:
    return f"bench-peers-{TAG}:arq:{variant}"


def _settings(variant: str) -> type:
    class Settings:
        functions = [noop, stats]
        redis_settings = RedisSettings.from_dsn(REDIS_URL)
        queue_name = _queue(variant)
        poll_delay = POLL[variant]
        max_jobs = CONFIG["max_jobs"]

    return Settings


async def _call(redis: ArqRedis, variant: str, function: str, *args: Any) -> Any:
    job = await redis.enqueue_job(function, *args, _job_id=f"bench-peers-{TAG}-{uuid.uuid4().hex}",
                                  _queue_name=_queue(variant))
    assert job is not None
    return await job.result(timeout=120, poll_delay=POLL[variant])


async def _round_trip(redis: ArqRedis, variant: str, n: int) -> dict[str, Any]:
    samples = []
    for _ in range(n):
        started = time.perf_counter()
        token = uuid.uuid4().hex
        if await _call(redis, variant, "noop", token) != token:
            raise RuntimeError("arq answered another token")
        samples.append(time.perf_counter() - started)
    return {"samples": samples}


async def _throughput(redis: ArqRedis, variant: str, size: int) -> dict[str, Any]:
    await _call(redis, variant, "stats", True)
    tokens = [uuid.uuid4().hex for _ in range(size)]
    started = time.perf_counter()
    answers = await asyncio.gather(*(_call(redis, variant, "noop", t) for t in tokens),
                                   return_exceptions=True)
    elapsed = time.perf_counter() - started
    ok = [a for a, t in zip(answers, tokens, strict=True) if a == t]
    counted = await _call(redis, variant, "stats", True)
    return {"elapsed": elapsed, "ok": len(ok), "distinct": len(set(ok)), **counted}


async def _client(what: str, variant: str, count: int) -> None:
    redis = await create_pool(RedisSettings.from_dsn(REDIS_URL), default_queue_name=_queue(variant))
    try:
        for _ in range(3):  # warm: connections, the worker's first poll
            await _call(redis, variant, "stats", False)
        found = await (_round_trip if what == "round_trip" else _throughput)(redis, variant, count)
    finally:
        await redis.aclose()
    print(json.dumps(found), flush=True)


def main(argv: list[str]) -> None:
    if argv[0] == "worker":
        run_worker(_settings(argv[1]))  # type: ignore[arg-type]  # stops on SIGTERM
    else:
        asyncio.run(_client(argv[0], argv[1], int(argv[2])))


if __name__ == "__main__":
    main(sys.argv[1:])
