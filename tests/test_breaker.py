"""Circuit breaker: opening on the failure ratio, fail-fast, shared state across connections,
half-open probes under concurrency, the sliding window, snapshot, reset and the metric."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime

import pytest
from prometheus_client import REGISTRY
from redis.asyncio import Redis

from orchestrator.breaker import BreakerPolicy, CircuitBreaker
from orchestrator.errors import CircuitOpen

FAST = BreakerPolicy(window=5, min_calls=4, failure_ratio=0.5, cooldown=0.5, probes=2)

MakeBreaker = Callable[..., CircuitBreaker]


@pytest.fixture
async def make_breaker(orchestrator_settings) -> AsyncIterator[MakeBreaker]:
    """``make_breaker(policy)``: a breaker on a Redis connection of its own, closed after."""
    clients: list[Redis] = []

    def make(policy: BreakerPolicy = FAST) -> CircuitBreaker:
        client = Redis.from_url(orchestrator_settings.redis_url)
        clients.append(client)
        return CircuitBreaker(client, orchestrator_settings.namespace, policy)

    yield make
    for client in clients:
        await client.aclose()


async def record_all(breaker: CircuitBreaker, target: str, outcomes: str) -> None:
    """Record outcomes written as a string: ``+`` success, ``-`` failure."""
    for outcome in outcomes:
        await breaker.before_call(target)
        await breaker.record(target, outcome == "+")


async def test_stays_closed_below_min_calls_even_if_all_fail(make_breaker) -> None:
    breaker = make_breaker()
    await record_all(breaker, "docs", "---")
    assert await breaker.state("docs") == "closed"
    await breaker.before_call("docs")  # still let through
    await breaker.record("docs", False)  # the 4th call reaches min_calls: 4/4 failed
    assert await breaker.state("docs") == "open"


async def test_exactly_half_failing_does_not_open_but_more_does(make_breaker) -> None:
    breaker = make_breaker()
    await record_all(breaker, "docs", "++--")
    assert await breaker.state("docs") == "closed"  # 2/4 is not > 50%
    await record_all(breaker, "docs", "+-")
    assert await breaker.state("docs") == "closed"  # 3/6
    await record_all(breaker, "docs", "-")
    assert await breaker.state("docs") == "open"  # 4/7
    assert await breaker.state("code") == "closed"  # per target


async def test_open_circuit_fails_fast_naming_target_state_and_retry(make_breaker) -> None:
    breaker = make_breaker(BreakerPolicy(window=5, min_calls=4, cooldown=30, probes=2))
    await record_all(breaker, "docs", "+---")
    started = time.perf_counter()
    with pytest.raises(CircuitOpen) as caught:
        await breaker.before_call("docs")
    assert time.perf_counter() - started < 0.05
    err = caught.value
    assert err.code == "circuit_open"
    assert "'docs'" in str(err) and "is open" in str(err) and "3 of its last 4" in str(err)
    assert (err.target, err.state) == ("docs", "open")
    assert 25 < (err.retry_at - datetime.now(UTC)).total_seconds() <= 31
    # outcomes arriving while open (of calls let through earlier) neither close it nor
    # extend its cool-down
    before = (await breaker.snapshot())["docs"]
    await breaker.record("docs", True)
    await breaker.record("docs", False)
    assert await breaker.snapshot() == {"docs": before}


async def test_state_is_shared_by_breakers_on_other_connections(make_breaker) -> None:
    first, second = make_breaker(), make_breaker()
    await second.before_call("review")  # second saw it closed: it trusts that briefly
    await record_all(first, "review", "----")
    await second.before_call("review")  # within closed_cache: still let through
    await asyncio.sleep(FAST.closed_cache)
    started = time.perf_counter()
    with pytest.raises(CircuitOpen, match="'review'"):
        await second.before_call("review")
    assert time.perf_counter() - started < 0.05
    assert await second.state("review") == "open"


async def test_an_uncached_breaker_sees_another_process_open_it_at_once(make_breaker) -> None:
    eager = BreakerPolicy(window=5, min_calls=4, cooldown=0.5, probes=2, closed_cache=0)
    first, second = make_breaker(eager), make_breaker(eager)
    await second.before_call("review")
    await record_all(first, "review", "----")
    with pytest.raises(CircuitOpen, match="'review'"):
        await second.before_call("review")


async def test_half_open_lets_exactly_the_probes_through_across_processes(make_breaker) -> None:
    first, second = make_breaker(), make_breaker()
    await record_all(first, "docs", "----")
    with pytest.raises(CircuitOpen):
        await second.before_call("docs")
    await asyncio.sleep(0.6)  # cool-down over

    results = await asyncio.gather(
        *(b.before_call("docs") for _ in range(5) for b in (first, second)),
        return_exceptions=True,
    )
    passed = [r for r in results if r is None]
    refused = [r for r in results if isinstance(r, CircuitOpen)]
    assert (len(passed), len(refused)) == (2, 8)
    assert all(err.state == "half_open" and "half_open" in str(err) for err in refused)
    assert await second.state("docs") == "half_open"

    await first.record("docs", True)
    assert await second.state("docs") == "half_open"  # one success of two is not enough
    await second.record("docs", True)
    assert await first.state("docs") == "closed"
    for _ in range(5):
        await second.before_call("docs")
    # the window was reset on closing: three new failures (below min_calls) keep it closed
    await record_all(first, "docs", "---")
    assert await first.state("docs") == "closed"


async def test_a_failed_probe_reopens_for_a_new_cooldown(make_breaker) -> None:
    breaker, other = make_breaker(), make_breaker()
    await record_all(breaker, "tests", "----")
    await asyncio.sleep(0.6)
    await breaker.before_call("tests")  # the first probe
    await breaker.record("tests", True)
    await other.before_call("tests")  # the second probe
    await other.record("tests", False)
    assert await breaker.state("tests") == "open"
    with pytest.raises(CircuitOpen, match="is open") as caught:
        await breaker.before_call("tests")
    assert caught.value.retry_at > datetime.now(UTC)
    await asyncio.sleep(0.6)
    await other.before_call("tests")  # a new probe round after the new cool-down
    assert await breaker.state("tests") == "half_open"


async def test_a_probe_round_whose_probes_never_report_is_replaced(make_breaker) -> None:
    # probes time out after max(cooldown, window) = 1 s
    breaker = make_breaker(BreakerPolicy(window=1, min_calls=4, cooldown=0.5, probes=2))
    await record_all(breaker, "docs", "----")
    await asyncio.sleep(0.6)
    await breaker.before_call("docs")
    await breaker.before_call("docs")  # both probes taken, never recorded (callers died)
    with pytest.raises(CircuitOpen):
        await breaker.before_call("docs")
    await asyncio.sleep(1.1)
    await breaker.before_call("docs")
    assert await breaker.state("docs") == "half_open"


async def test_old_outcomes_fall_out_of_the_window(make_breaker) -> None:
    breaker = make_breaker(BreakerPolicy(window=1, min_calls=4, cooldown=0.5, probes=2))
    await record_all(breaker, "docs", "---")
    await asyncio.sleep(0.5)
    await record_all(breaker, "docs", "+")  # keeps the window's key alive
    await asyncio.sleep(0.7)
    # the three failures are 1.2 s old: counted, this would be 4 of 6 failed, and open
    await record_all(breaker, "docs", "+-")
    assert await breaker.state("docs") == "closed"
    docs = (await breaker.snapshot())["docs"]
    assert (docs["calls"], docs["failures"]) == (3, 1)
    await asyncio.sleep(1.2)  # all of it is old now; an idle window costs nothing
    await record_all(breaker, "docs", "---")
    assert await breaker.state("docs") == "closed"


async def test_snapshot_and_reset(make_breaker) -> None:
    breaker = make_breaker(BreakerPolicy(window=5, min_calls=4, cooldown=30, probes=2))
    await record_all(breaker, "docs", "++-")
    await record_all(breaker, "code", "+---")
    snap = await make_breaker().snapshot()
    assert snap["docs"] == {"state": "closed", "calls": 3, "failures": 1, "opened_at": None,
                            "retry_at": None}
    code = snap["code"]
    assert (code["state"], code["calls"], code["failures"]) == ("open", 4, 3)
    opened = datetime.fromisoformat(code["opened_at"])
    retry = datetime.fromisoformat(code["retry_at"])
    assert abs((opened - datetime.now(UTC)).total_seconds()) < 5
    assert (retry - opened).total_seconds() == pytest.approx(30, abs=0.01)

    await breaker.reset("code")
    assert await breaker.state("code") == "closed"
    await breaker.before_call("code")
    assert set(await breaker.snapshot()) == {"docs"}


async def test_state_metric_follows_what_this_process_sees(make_breaker) -> None:
    target = f"metric-{uuid.uuid4().hex[:8]}"
    breaker = make_breaker()

    def level() -> float | None:
        return REGISTRY.get_sample_value("orchestrator_circuit_state", {"agent_type": target})

    await record_all(breaker, target, "+")
    assert level() == 0
    await record_all(breaker, target, "---")
    assert level() == 2
    await asyncio.sleep(0.6)
    await breaker.before_call(target)
    assert level() == 1
    await breaker.reset(target)
    assert level() == 0


def test_policy_is_validated() -> None:
    with pytest.raises(ValueError):
        BreakerPolicy(probes=0)
    with pytest.raises(ValueError):
        BreakerPolicy(failure_ratio=1.0)


async def test_successes_seen_closed_leave_the_call_path_and_still_count_first(
    make_breaker,
) -> None:
    """record_soon queues a success of a circuit seen closed (nothing else); the queued
    successes are written within the linger on their own, and before a failure that record
    writes: a failure ratio is never judged without the successes that came before it."""
    policy = BreakerPolicy(window=5, min_calls=2, failure_ratio=0.5, cooldown=30, probes=2)
    breaker, other = make_breaker(policy), make_breaker(policy)
    assert not breaker.record_soon("docs", True)  # never seen: record it now
    await breaker.before_call("docs")  # closed, seen just now
    assert not breaker.record_soon("docs", False)  # a failure is always written at once
    for _ in range(3):
        assert breaker.record_soon("docs", True)
    await asyncio.sleep(breaker.record_linger * 10)
    assert (await other.snapshot())["docs"]["calls"] == 3  # written without a flush
    await breaker.before_call("code")
    for _ in range(2):
        assert breaker.record_soon("code", True)
    await breaker.record("code", False)
    await breaker.record("code", False)  # 2 of 4 failed: not above the ratio (2 of 2 would be)
    snap = (await other.snapshot())["code"]
    assert (snap["state"], snap["calls"], snap["failures"]) == ("closed", 4, 2)
    await breaker.record("code", False)  # 3 of 5
    assert await other.state("code") == "open"
    assert not breaker.record_soon("code", True)  # seen open
    uncached = make_breaker(BreakerPolicy(window=5, min_calls=2, closed_cache=0))
    await uncached.before_call("docs")
    assert not uncached.record_soon("docs", True)


async def test_queued_successes_are_written_on_close(make_breaker) -> None:
    breaker, other = make_breaker(), make_breaker()
    await breaker.before_call("docs")
    assert breaker.record_soon("docs", True) and breaker.record_soon("docs", True)
    await breaker.close()
    assert (await other.snapshot())["docs"]["calls"] == 2
