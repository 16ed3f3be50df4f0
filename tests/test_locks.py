"""Resource locks: exclusion, fencing tokens, waiting woken by release, expiry, sorted order."""

from __future__ import annotations

import asyncio
import time

import pytest

from orchestrator.errors import LockLost, ResourceLocked
from orchestrator.runtime import Runtime


@pytest.fixture
async def rt(orchestrator_settings):
    async with Runtime.open(orchestrator_settings, agents=[]) as runtime:
        yield runtime


async def test_second_holder_is_refused_naming_the_holder(rt) -> None:
    locks = rt.locks
    async with locks.acquire("repo:/x", "alice", ttl=10) as lease:
        assert await locks.is_locked("repo:/x")
        with pytest.raises(ResourceLocked, match="locked by alice"):
            async with locks.acquire("repo:/x", "bob", wait_timeout=0):
                pass
        assert [(info.resource, info.holder) for info in await locks.list_locks()] == [
            ("repo:/x", "alice")]
        first_token = lease.token
    assert not await locks.is_locked("repo:/x")
    async with locks.acquire("repo:/x", "bob") as second:
        assert second.token == first_token + 1  # fencing tokens strictly increase


async def test_a_waiter_is_woken_by_the_release(rt) -> None:
    locks = rt.locks
    got_it = asyncio.Event()

    async def waiter() -> float:
        started = time.monotonic()
        async with locks.acquire("docs:/out", "waiter", wait_timeout=10):
            got_it.set()
            return time.monotonic() - started

    async with locks.acquire("docs:/out", "holder", ttl=30):
        task = asyncio.create_task(waiter())
        await asyncio.sleep(0.3)
        assert not got_it.is_set()
    waited = await asyncio.wait_for(task, 10)
    # woken by NOTIFY on release, long before the 30 s TTL would have run out
    assert 0.25 < waited < 2.0


async def test_a_holder_that_stops_renewing_loses_the_lock_at_expiry(rt) -> None:
    lease = await rt.locks.try_acquire("service:api", "dead-holder", ttl=0.5)
    assert lease is not None  # acquired without a renewer, as if its process had died
    started = time.monotonic()
    async with rt.locks.acquire("service:api", "next", wait_timeout=5) as taken:
        assert taken.token == lease.token + 1
    assert time.monotonic() - started < 2.0


async def test_losing_the_lock_midway_raises_lock_lost(rt) -> None:
    with pytest.raises(LockLost):
        async with rt.locks.acquire("repo:/y", "slow", ttl=0.3) as lease:
            # someone steals it (as if our renewals had stalled past the expiry)
            await rt.db.execute(
                "UPDATE resource_locks SET holder = 'thief', token = token + 1 "
                "WHERE namespace = %s AND resource = %s", (rt.settings.namespace, "repo:/y"))
            await asyncio.sleep(0.3)
            assert lease.lost


async def test_many_resources_in_opposite_orders_do_not_deadlock(rt) -> None:
    async def take(order: list[str], who: str) -> None:
        for _ in range(5):
            async with rt.locks.acquire_many(order, who, wait_timeout=10):
                await asyncio.sleep(0.01)

    await asyncio.wait_for(asyncio.gather(take(["a", "b", "c"], "x"), take(["c", "b", "a"], "y")),
                           30)


async def test_a_held_lock_is_reentrant_for_its_holder_and_refused_to_others(rt) -> None:
    locks = rt.locks
    first = await locks.hold("deploy:web", "workflow:a", ttl=30)
    again = await locks.hold("deploy:web", "workflow:a", ttl=60)  # a resumed workflow
    assert again.token == first.token and again.expires_at > first.expires_at
    with pytest.raises(ResourceLocked, match="locked by workflow:a"):
        await locks.hold("deploy:web", "workflow:b", ttl=30)
    with pytest.raises(ResourceLocked):  # ordinary acquirers are refused too
        async with locks.acquire("deploy:web", "someone", wait_timeout=0):
            pass
    assert not await locks.release_held("deploy:web", "workflow:b")
    assert await locks.release_held("deploy:web", "workflow:a")
    taken = await locks.hold("deploy:web", "workflow:b", ttl=30)
    assert taken.token == first.token + 1


async def test_an_expired_held_lock_goes_to_the_next_holder_with_a_new_token(rt) -> None:
    locks = rt.locks
    first = await locks.hold("deploy:api", "workflow:a", ttl=0.2)
    await asyncio.sleep(0.3)
    second = await locks.hold("deploy:api", "workflow:b", ttl=30)
    assert second.token == first.token + 1
    with pytest.raises(ResourceLocked, match="workflow:b"):  # a late comeback is refused
        await locks.hold("deploy:api", "workflow:a", ttl=30)


async def test_a_lock_whose_holder_process_died_is_taken_over_at_once(rt) -> None:
    import subprocess

    from orchestrator.processes import new_process_id, process_id_of

    gone = subprocess.Popen(["true"])
    dead_holder = f"{process_id_of(gone.pid)}:thread:task"  # read before it is reaped
    gone.wait()  # a process of this host that no longer runs
    live_holder = f"{new_process_id()}:thread:task"  # this very process
    locks = rt.locks
    async with locks.acquire("repo:/live", live_holder, ttl=60):
        with pytest.raises(ResourceLocked):  # a live holder is waited for, not robbed
            async with locks.acquire("repo:/live", "other", wait_timeout=0.2):
                pass
    first = await locks.try_acquire("repo:/dead", dead_holder, ttl=60)
    assert first is not None
    started = time.monotonic()
    async with locks.acquire("repo:/dead", "successor", wait_timeout=5) as lease:
        assert time.monotonic() - started < 2  # not the 60 s TTL
        assert lease.token == first.token + 1  # the dead holder's late writes are fenced off


async def test_a_long_holding_is_renewed_past_its_ttl(rt) -> None:
    # renewal starts from a timer a third of the TTL in; a holding outliving its TTL keeps it
    async with rt.locks.acquire("repo:/long", "patient", ttl=0.3) as lease:
        first_expiry = lease.expires_at
        await asyncio.sleep(1.0)  # over three TTLs
        assert not lease.lost and lease.expires_at > first_expiry
        with pytest.raises(ResourceLocked, match="locked by patient"):
            async with rt.locks.acquire("repo:/long", "other", wait_timeout=0):
                pass
    assert not await rt.locks.is_locked("repo:/long")


async def test_waiters_get_the_lock_one_after_another_in_arrival_order(rt) -> None:
    order: list[str] = []

    async def waiter(name: str) -> None:
        async with rt.locks.acquire("docs:/queue", name, ttl=30, wait_timeout=10):
            order.append(name)
            await asyncio.sleep(0.01)

    started = time.monotonic()
    async with rt.locks.acquire("docs:/queue", "first", ttl=30):
        tasks = []
        for i in range(5):
            tasks.append(asyncio.create_task(waiter(f"w{i}")))
            await asyncio.sleep(0.05)  # each queued before the next arrives
    await asyncio.wait_for(asyncio.gather(*tasks), 10)
    assert order == [f"w{i}" for i in range(5)]
    assert time.monotonic() - started < 5  # each woken by a release, none by the 30 s TTL


async def test_a_woken_waiter_cancelled_before_it_runs_passes_its_turn_on(rt) -> None:
    got: list[str] = []

    async def waiter(name: str) -> None:
        async with rt.locks.acquire("repo:/turn", name, ttl=30, wait_timeout=20):
            got.append(name)

    async with rt.locks.acquire("repo:/turn", "holder", ttl=30):
        a = asyncio.create_task(waiter("a"))
        await asyncio.sleep(0.1)
        b = asyncio.create_task(waiter("b"))
        await asyncio.sleep(0.1)
    # the release has just woken "a" (first in line), which has not run yet: cancel it there
    a.cancel()
    started = time.monotonic()
    await asyncio.wait_for(b, 10)
    assert got == ["b"]
    assert time.monotonic() - started < 2  # "b" was handed the turn, not left to the TTL
    with pytest.raises(asyncio.CancelledError):
        await a


async def test_a_release_in_another_process_wakes_a_waiter_here(rt, orchestrator_settings) -> None:
    # a second manager on its own pool and LISTEN connection stands for another process
    from orchestrator.state.db import Database

    from orchestrator.locks import ResourceLockManager

    async with Database.connect(orchestrator_settings.database_url, max_size=2) as db:
        other = ResourceLockManager(db, orchestrator_settings.namespace,
                                    listen_url=orchestrator_settings.database_url)
        await other.start()
        try:
            lease = await other.try_acquire("repo:/remote", "remote", ttl=30)
            assert lease is not None
            waiting = asyncio.create_task(_timed_acquire(rt, "repo:/remote"))
            await asyncio.sleep(0.3)
            assert not waiting.done()
            assert await other.release(lease)
            waited = await asyncio.wait_for(waiting, 10)
            assert 0.25 < waited < 2.0  # woken by NOTIFY, not by the 30 s TTL
        finally:
            await other.close()


async def _timed_acquire(rt, resource: str) -> float:
    started = time.monotonic()
    async with rt.locks.acquire(resource, "here", wait_timeout=10):
        return time.monotonic() - started


async def test_a_release_notifies_other_processes_only_while_someone_waits(
    rt, orchestrator_settings,
) -> None:
    """A lock nobody waits for (or only a try that does not wait) is released without a NOTIFY;
    once a waiter was refused, releases NOTIFY until its deadline: a held lock's too."""
    from psycopg import AsyncConnection

    from orchestrator.locks.waiting import CHANNEL

    async with await AsyncConnection.connect(orchestrator_settings.database_url,
                                             autocommit=True) as listener:
        await listener.execute(f"LISTEN {CHANNEL}")

        async def notified(resource: str) -> bool:
            async for note in listener.notifies(timeout=0.3):
                if note.payload.endswith(resource):
                    return True
            return False

        async with rt.locks.acquire("repo:/quiet", "a"):
            assert await rt.locks.try_acquire("repo:/quiet", "b", ttl=5) is None
        assert not await notified("repo:/quiet")

        lease = await rt.locks.try_acquire("repo:/wanted", "a", ttl=30)
        assert lease is not None
        waiter = asyncio.create_task(_timed_acquire(rt, "repo:/wanted"))
        await asyncio.sleep(0.2)
        assert await rt.locks.release(lease)
        assert await notified("repo:/wanted")
        assert await asyncio.wait_for(waiter, 10) < 2.0
        # within the waiter's deadline (10 s) a workflow's held lock notifies too
        await rt.locks.hold("repo:/wanted", "workflow:w", 30)
        assert await rt.locks.release_held("repo:/wanted", "workflow:w")
        assert await notified("repo:/wanted")
