"""Lock benchmark: uncontended acquire + release, beside PostgreSQL ``SELECT 1`` measured in the
same run on the same pool, printed as a ratio (these machines are shared and noisy: only the
ratio means anything).

    python -m bench.locks [--n 500]

Uses ORCHESTRATOR_DATABASE_URL / ORCHESTRATOR_REDIS_URL (embedded services when unset).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
import uuid

from orchestrator.runtime import Runtime
from orchestrator.settings import Settings


def _summary(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    return {
        "median_ms": statistics.median(ordered) * 1000,
        "p99_ms": ordered[int(len(ordered) * 0.99) - 1] * 1000,
    }


async def main(n: int) -> dict[str, object]:
    settings = Settings.from_env(namespace=f"bench-{uuid.uuid4().hex[:8]}", local_agents=False)
    async with Runtime.open(settings, agents=[]) as rt:
        for _ in range(50):  # warm the pool and the prepared statements
            await rt.db.fetchone("SELECT 1")
            async with rt.locks.acquire("bench:warm", "bench"):
                pass
        select, lock = [], []
        for i in range(n):  # interleaved, so both see the same machine conditions
            t = time.perf_counter()
            await rt.db.fetchone("SELECT 1")
            select.append(time.perf_counter() - t)
            t = time.perf_counter()
            async with rt.locks.acquire(f"bench:{i % 10}", "bench", ttl=30):
                pass
            lock.append(time.perf_counter() - t)
    result = {
        "benchmark": "lock_uncontended_acquire_release",
        "n": n,
        "select_1": _summary(select),
        "acquire_release": _summary(lock),
    }
    ratio = result["acquire_release"]["median_ms"] / result["select_1"]["median_ms"]
    result["median_ratio"] = ratio
    print(f"SELECT 1 median        {result['select_1']['median_ms']:.3f} ms")
    print(f"acquire+release median {result['acquire_release']['median_ms']:.3f} ms")
    print(f"ratio                  {ratio:.2f}x SELECT 1")
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=500)
    asyncio.run(main(parser.parse_args().n))
