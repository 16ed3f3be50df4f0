"""Lock benchmarks: uncontended acquire + release beside ``SELECT 1``, and hand-over latency.

* ``lock_acquire_release``: ``async with rt.locks.acquire(...)`` with nothing in the block and
  nobody else wanting the resource, interleaved with ``SELECT 1`` on the same pool (the
  runtime's), so both see the same machine. Target: median ≤ 3 x the ``SELECT 1`` median.
  Also reported, interleaved the same way: ``try_acquire`` and ``release`` timed apart, and a
  bare one-row ``UPDATE`` committed durably on the same pool (``durable_write``): the least an
  acquisition whose fencing token survives a crash can cost, so ``floor_ratio`` (that write
  plus one round trip to release, over ``SELECT 1``) is the lowest ratio any correct lock can
  reach on this machine.
* ``lock_handover``: 11 tasks contend for one resource: one holds it, 10 wait. The holder
  keeps it ~1 ms, releases, and queues again only once someone else has it (so every
  hand-over goes to one of 10 waiters, never back to the releaser). Hand-over = from the
  holder's ``release`` returning (committed) to the next waiter's ``acquire`` returning.
  Target: median ≤ 5 ms. The waiters live in this process (woken directly by the release);
  ``cross_process`` repeats it with the holder's releases in another process (woken by
  ``LISTEN``/``NOTIFY``), reported beside it.

    python -m bench.locks [--quick]

Uses ORCHESTRATOR_DATABASE_URL / ORCHESTRATOR_REDIS_URL (embedded services when unset).
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import time

from orchestrator.runtime import Runtime

from .common import Result, run_standalone, settings, subprocess_env, summary

__all__ = ["run"]

_ACQUIRE_TARGET = "uncontended acquire + release median ≤ 3x the SELECT 1 median"
_FLOOR_TARGET = ("uncontended acquire + release median ≤ 1.1x the floor (a durable one-row "
                 "write + SELECT 1)")
_HANDOVER_TARGET = "median hand-over to one of 10 waiters ≤ 5 ms"

# A one-row UPDATE committed durably: what any acquisition handing out a crash-safe fencing
# token must pay at least (the write, its WAL record, the flush), run bare on the same pool.
_DURABLE_WRITE = """
UPDATE resource_locks SET token = token
WHERE namespace = %s AND resource = %s
RETURNING token"""
# The least a release can cost: a one-row UPDATE committed without waiting for the disk (a
# release hands out no token, so its commit need not be durable), run bare on the same pool.
_ASYNC_WRITE = """
UPDATE resource_locks SET token = token
WHERE namespace = %s AND resource = %s
RETURNING set_config('synchronous_commit', 'off', true)"""


async def _acquire_release(rt: Runtime, n: int) -> list[Result]:
    locks, db, ns = rt.locks, rt.db, rt.settings.namespace
    holder = f"{rt.process_id}:bench:uncontended"
    for i in range(100):  # warm the pool, the statement caches and the prepared statements
        await db.fetchone("SELECT 1")
        async with locks.acquire(f"bench:{i % 10}", holder, ttl=30):
            pass
        await db.fetchone(_DURABLE_WRITE, (ns, "bench:0"))
    select, lock, acquire, release, durable, quick = [], [], [], [], [], []
    for i in range(n):  # interleaved, so all of them see the same machine conditions
        resource = f"bench:{i % 10}"
        t = time.perf_counter()
        await db.fetchone("SELECT 1")
        select.append(time.perf_counter() - t)
        t = time.perf_counter()
        async with locks.acquire(resource, holder, ttl=30):
            pass
        lock.append(time.perf_counter() - t)
        t = time.perf_counter()
        lease = await locks.try_acquire(resource, holder, ttl=30)
        acquire.append(time.perf_counter() - t)
        assert lease is not None
        t = time.perf_counter()
        await locks.release(lease)
        release.append(time.perf_counter() - t)
        t = time.perf_counter()
        await db.fetchone(_DURABLE_WRITE, (ns, resource))
        durable.append(time.perf_counter() - t)
        t = time.perf_counter()
        await db.fetchone(_ASYNC_WRITE, (ns, resource))
        quick.append(time.perf_counter() - t)
    base, figures = summary(select), summary(lock)
    ratio = figures["median_ms"] / base["median_ms"]
    sel = base["median_ms"]
    parts = {"acquire": summary(acquire), "release": summary(release),
             "durable_write": summary(durable), "async_write": summary(quick)}
    figures["parts"] = parts
    figures["parts_ratio"] = {k: round(v["median_ms"] / sel, 3) for k, v in parts.items()}
    # The least any lock with crash-safe fencing tokens can cost here: one durable write to
    # acquire, and at least one round trip (a SELECT 1) to release.
    floor = parts["durable_write"]["median_ms"] + sel
    figures["floor_ratio"] = round(floor / sel, 3)
    write_floor = parts["durable_write"]["median_ms"] + parts["async_write"]["median_ms"]
    to_floor = figures["median_ms"] / floor
    return [Result(
        "lock_acquire_release", _ACQUIRE_TARGET, ratio <= 3.0, figures,
        baseline={"select_1": base}, ratio=round(ratio, 3),
        notes="parts: try_acquire and release timed apart; durable_write: a bare one-row UPDATE "
              "committed durably on the same pool; async_write: the same UPDATE committed "
              "without waiting for the disk; floor_ratio = (durable_write + SELECT 1) / "
              "SELECT 1, the least an acquisition whose fencing token survives a crash plus a "
              "one-round-trip release can cost",
    ), Result(
        "lock_vs_floor", _FLOOR_TARGET, to_floor <= 1.1,
        {"median_ms": figures["median_ms"],
         "ratio_to_write_floor": round(figures["median_ms"] / write_floor, 3)},
        baseline={"durable_write_plus_select_1_ms": round(floor, 4),
                  "durable_plus_async_write_ms": round(write_floor, 4)},
        ratio=round(to_floor, 3),
        notes="ratio = acquire + release over durable_write + SELECT 1 (the floor of the "
              "issue's target); ratio_to_write_floor: over durable_write + async_write, the "
              "floor when a release must write its row (it does: the holder is cleared)",
    )]


async def _handover_rounds(rt: Runtime, resource: str, rounds: int, waiters: int,
                           hold_s: float = 0.001) -> list[float]:
    """Hand-over latencies (seconds) between ``waiters + 1`` tasks of this process."""
    samples: list[float] = []
    last_release: list[float | None] = [None]
    # resolved when the next holding starts, so the previous holder may queue again (a future
    # made before the release: an Event set and cleared at once could be missed by a waiter
    # not yet waiting, which then slept 1 s: every round with a single waiter)
    taken: list[asyncio.Future[None]] = [asyncio.get_running_loop().create_future()]
    done = asyncio.Event()
    holdings = 0

    async def contender(i: int) -> None:
        nonlocal holdings
        holder = f"{rt.process_id}:bench:w{i}"
        while not done.is_set():
            try:
                async with rt.locks.acquire(resource, holder, ttl=30, wait_timeout=30):
                    now = time.perf_counter()
                    if last_release[0] is not None:
                        samples.append(now - last_release[0])
                        last_release[0] = None
                    holdings += 1
                    if holdings > rounds:
                        done.set()
                    previous, taken[0] = taken[0], asyncio.get_running_loop().create_future()
                    if not previous.done():
                        previous.set_result(None)
                    mine = taken[0]
                    await asyncio.sleep(hold_s)
                last_release[0] = time.perf_counter()  # release returned: it is committed
            except Exception:
                if not done.is_set():
                    raise
                return
            # queue again only once one of the others has it: every hand-over goes to a waiter
            while not done.is_set():
                finished, _ = await asyncio.wait({mine}, timeout=1.0)
                if finished or last_release[0] is None:
                    break

    tasks = [asyncio.create_task(contender(i)) for i in range(waiters + 1)]
    await asyncio.wait_for(asyncio.gather(*tasks), 120)
    return samples


async def _handover(rt: Runtime, rounds: int, waiters: int = 10) -> Result:
    await _handover_rounds(rt, "bench:handover-warm", 20, waiters)  # warm the pool
    local = await _handover_rounds(rt, "bench:handover", rounds, waiters)
    figures = summary(local)
    figures["waiters"] = waiters
    figures["mean_ms"] = round(statistics.fmean(local) * 1000, 4)
    cross = await _cross_process_handover(rt, max(rounds // 2, 20), waiters)
    figures["cross_process"] = summary(cross)
    median = figures["median_ms"]
    return Result(
        "lock_handover", _HANDOVER_TARGET, median <= 5.0, figures, baseline=None,
        notes="hand-over = the holder's release returning (committed) to the next waiter's "
              "acquire returning; cross_process: the releasing holder is another process, "
              "the waiters are woken by LISTEN/NOTIFY (clock: CLOCK_MONOTONIC, shared)",
    )


_REMOTE_HOLDER = """
import asyncio, sys, time
from orchestrator.runtime import Runtime
from orchestrator.settings import Settings

async def main(resource, rounds):
    async with Runtime.open(Settings.from_env(), agents=[]) as rt:
        print("ready", flush=True)
        for _ in range(rounds):
            line = await asyncio.to_thread(sys.stdin.readline)
            if not line.strip():
                return
            async with rt.locks.acquire(resource, "remote", ttl=30, wait_timeout=30):
                print("held", flush=True)
                await asyncio.to_thread(sys.stdin.readline)
            print(f"released {time.monotonic()}", flush=True)

asyncio.run(main(sys.argv[1], int(sys.argv[2])))
"""


async def _cross_process_handover(rt: Runtime, rounds: int, waiters: int) -> list[float]:
    """The holder is another process; ``waiters`` tasks of this process wait for each of its
    releases (woken by NOTIFY); hand-over measured on the shared monotonic clock."""
    s = rt.settings
    env = subprocess_env(s, database_url=rt.database_url)  # the embedded one, if started
    resource = "bench:handover-remote"
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", _REMOTE_HOLDER, resource, str(rounds), env=env,
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE)
    assert proc.stdin is not None and proc.stdout is not None
    samples: list[float] = []
    try:
        said = await asyncio.wait_for(proc.stdout.readline(), 60)
        if said.strip() != b"ready":
            raise RuntimeError(f"the lock-holder process did not start (said {said!r})")
        for _ in range(rounds):
            proc.stdin.write(b"go\n")
            await proc.stdin.drain()
            assert (await asyncio.wait_for(proc.stdout.readline(), 30)).strip() == b"held"
            got: list[float] = []
            first = asyncio.Event()

            async def wait_for_it(i: int, got: list[float] = got,
                                  first: asyncio.Event = first) -> None:
                async with rt.locks.acquire(resource, f"{rt.process_id}:bench:x{i}",
                                            ttl=30, wait_timeout=30):
                    got.append(time.monotonic())
                    first.set()

            tasks = [asyncio.create_task(wait_for_it(i)) for i in range(waiters)]
            await asyncio.sleep(0.01)  # all waiting
            proc.stdin.write(b"release\n")
            await proc.stdin.drain()
            line = await asyncio.wait_for(proc.stdout.readline(), 30)
            released = float(line.split()[1])
            await asyncio.wait_for(first.wait(), 30)
            samples.append(got[0] - released)
            await asyncio.wait_for(asyncio.gather(*tasks), 60)  # let the rest pass through
        proc.stdin.write(b"\n")
        await proc.stdin.drain()
    finally:
        if proc.returncode is None:
            proc.terminate()
        await proc.wait()
    return samples


async def run(quick: bool = False) -> list[Result]:
    base = settings("locks", local_agents=False)
    async with Runtime.open(base, agents=[]) as rt:
        try:
            first = await _acquire_release(rt, 200 if quick else 1000)
            second = await _handover(rt, 60 if quick else 400)
        finally:
            await rt.db.execute("DELETE FROM resource_locks WHERE namespace = %s",
                                (base.namespace,))
    return [*first, second]


def main() -> int:
    return run_standalone("locks", __doc__, run)


if __name__ == "__main__":
    main()

