"""A circuit breaker per target agent type, shared by every process through Redis.

Closed, it lets calls through and counts their outcomes over a sliding window; when more than
``failure_ratio`` of at least ``min_calls`` calls in the window failed it opens, and calls fail
fast with :class:`CircuitOpen` for ``cooldown`` seconds. Then it is half-open: ``probes`` calls
are let through; one failure re-opens it, ``probes`` successes close it with a fresh window.

State lives in Redis and each transition is one Lua script timed by the Redis server clock, so
all processes stop calling a failing agent together, whatever their clocks say. Per target:
``{namespace}:breaker:{target}:state``, a hash (state, opened_at, retry_at, issued and
successful probes), and ``...:window``, per-bucket call and failure counts; both expire.

What counts as a failure is the caller's business: timeouts, transient and agent errors do;
``InvalidInput``-style permanent errors say nothing about the agent's health: record them as
``ok=True`` or not at all.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import redis.asyncio as aioredis
from prometheus_client import Gauge

from .errors import CircuitOpen, InvalidConfiguration

__all__ = ["BreakerPolicy", "CircuitBreaker", "BREAKER_STATE"]

log = logging.getLogger(__name__)

BREAKER_STATE = Gauge(
    "orchestrator_circuit_state",
    "Circuit breaker state per target agent type as seen by this process: "
    "0 closed, 1 half-open, 2 open",
    ["agent_type"],
)
_LEVEL = {"closed": 0, "half_open": 1, "open": 2}
# The window is cut into this many buckets: memory stays at most ~2 x 31 hash fields per
# target whatever the call rate, and the window's edge is exact to 1/30 of its length.
_BUCKETS = 30

_NOW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
"""
# Sum the buckets still in the window; with ``trim``, delete those that fell out of it.
_SUM = """
local function window_counts(key, bucket, nbuckets, trim)
  local newest = math.floor(now / bucket)
  local calls, failures = 0, 0
  local fields = redis.call('HGETALL', key)
  for i = 1, #fields, 2 do
    local idx = tonumber(string.sub(fields[i], 2))
    if idx <= newest - nbuckets then
      if trim then redis.call('HDEL', key, fields[i]) end
    elseif string.sub(fields[i], 1, 1) == 'c' then calls = calls + tonumber(fields[i + 1])
    else failures = failures + tonumber(fields[i + 1]) end
  end
  return calls, failures
end
"""
# KEYS: state, window. ARGV: probes, probe round timeout ms, key ttl ms.
# Returns {allowed, state, retry_at ms, now ms, calls, failures, began a probe round}.
_BEFORE_LUA = _NOW + """
local s = redis.call('HMGET', KEYS[1], 'state', 'retry_at', 'issued', 'calls', 'failures')
local state, retry_at = s[1] or 'closed', tonumber(s[2] or '0')
local calls, failures = tonumber(s[4] or '0'), tonumber(s[5] or '0')
if state == 'closed' then return {1, state, 0, now, 0, 0, 0} end
if now >= retry_at then
  -- cool-down over, or a probe round whose probes never reported: start a probe round
  retry_at = now + tonumber(ARGV[2])
  redis.call('HSET', KEYS[1], 'state', 'half_open', 'issued', 1, 'successes', 0,
             'retry_at', retry_at)
  redis.call('PEXPIRE', KEYS[1], ARGV[3])
  return {1, 'half_open', retry_at, now, calls, failures, 1}
end
if state == 'half_open' and tonumber(s[3] or '0') < tonumber(ARGV[1]) then
  redis.call('HINCRBY', KEYS[1], 'issued', 1)
  return {1, state, retry_at, now, calls, failures, 0}
end
return {0, state, retry_at, now, calls, failures, 0}
"""
# Outcomes of calls, many at once (in order). KEYS: state, window per item. ARGV: bucket ms,
# buckets, min calls, ratio, cooldown ms, probes, key ttl ms, then per item ok (1/0) and how
# many such outcomes (successes seen closed are counted together). Returns per item
# {state, retry_at ms, calls, failures, change}: change 1 opened, 2 re-opened by a failed
# probe, 3 closed by successful probes, 0 none.
_RECORD_LUA = _NOW + _SUM + """
local bucket, nbuckets, ttl = tonumber(ARGV[1]), tonumber(ARGV[2]), ARGV[7]
local function open(sk, calls, failures, change)
  local retry_at = now + tonumber(ARGV[5])
  redis.call('HSET', sk, 'state', 'open', 'opened_at', now, 'retry_at', retry_at,
             'calls', calls, 'failures', failures, 'issued', 0, 'successes', 0)
  redis.call('PEXPIRE', sk, ttl)
  return {'open', retry_at, calls, failures, change}
end
local function record(sk, wk, ok, n)
  local s = redis.call('HMGET', sk, 'state', 'retry_at', 'successes')
  local state, retry_at = s[1] or 'closed', tonumber(s[2] or '0')
  if state == 'open' then  -- a late outcome of a call let through before it opened
    return {state, retry_at, 0, 0, 0}
  elseif state == 'half_open' then
    local successes = tonumber(s[3] or '0')
    if not ok then return open(sk, successes + 1, 1, 2) end
    if successes + n < tonumber(ARGV[6]) then
      redis.call('HINCRBY', sk, 'successes', n)
      return {state, retry_at, successes + n, 0, 0}
    end
    redis.call('DEL', sk, wk)
    redis.call('HSET', sk, 'state', 'closed')
    redis.call('PEXPIRE', sk, ttl)
    return {'closed', 0, successes + n, 0, 3}
  end
  local idx = math.floor(now / bucket)
  local fresh = redis.call('HINCRBY', wk, 'c' .. idx, n) == n
  if not ok then redis.call('HINCRBY', wk, 'f' .. idx, n) end
  redis.call('PEXPIRE', wk, bucket * (nbuckets + 1))
  redis.call('HSETNX', sk, 'state', 'closed')
  redis.call('PEXPIRE', sk, ttl)
  if ok and not fresh then return {state, 0, 0, 0, 0} end
  local calls, failures = window_counts(wk, bucket, nbuckets, true)
  if not ok and calls >= tonumber(ARGV[3]) and failures > tonumber(ARGV[4]) * calls then
    return open(sk, calls, failures, 1)
  end
  return {state, 0, calls, failures, 0}
end
local out = {}
for i = 1, #KEYS / 2 do
  local a = 7 + i * 2 - 1
  local res = record(KEYS[i * 2 - 1], KEYS[i * 2], ARGV[a] == '1', tonumber(ARGV[a + 1]))
  for _, v in ipairs(res) do out[#out + 1] = v end
end
return out
"""
# KEYS: state, window. ARGV: bucket ms, buckets. Returns {state, opened_at, retry_at, calls,
# failures}: calls and failures of the live window, or those that opened it.
_READ_LUA = _NOW + _SUM + """
local s = redis.call('HMGET', KEYS[1], 'state', 'opened_at', 'retry_at', 'calls', 'failures')
local calls, failures = window_counts(KEYS[2], tonumber(ARGV[1]), tonumber(ARGV[2]), false)
if s[1] and s[1] ~= 'closed' then calls, failures = tonumber(s[4]), tonumber(s[5]) end
return {s[1] or 'closed', tonumber(s[2] or '0'), tonumber(s[3] or '0'), calls, failures}
"""


@dataclass(frozen=True)
class BreakerPolicy:
    """When a circuit opens and how it recovers; times in seconds.

    A half-open probe round whose probes have not all reported within ``max(cooldown,
    window)`` (a caller crashed between ``before_call`` and ``record``) is replaced by a new one.
    """

    window: float = 30.0
    min_calls: int = 10
    failure_ratio: float = 0.5
    cooldown: float = 15.0
    probes: int = 3
    #: How long this process trusts a closed state it saw, instead of asking Redis before each
    #: call: a circuit another process opens is honored here within this delay. (Measured:
    #: the check was one of the five Redis round trips of a ~1.8 ms agent call.)
    closed_cache: float = 0.1

    def __post_init__(self) -> None:
        if self.window <= 0 or self.cooldown <= 0 or self.min_calls < 1 or self.probes < 1:
            raise InvalidConfiguration("window and cooldown must be > 0, min_calls and probes >= 1")
        if self.closed_cache < 0:
            raise InvalidConfiguration("closed_cache must be >= 0")
        if not 0 <= self.failure_ratio < 1:
            raise InvalidConfiguration("failure_ratio must be in [0, 1)")


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _iso(ms: int) -> str | None:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat() if ms else None


class CircuitBreaker:
    """Circuit breakers for the target agent types of one namespace.

    Call :meth:`before_call` before sending a request to ``target`` and :meth:`record` with
    its outcome after; instances on any connection or process share the same circuits. The
    process whose record opens or closes a circuit publishes ``breaker.opened`` /
    ``breaker.closed`` through ``emit`` (see :mod:`orchestrator.bus.events`).

    :meth:`record_soon` takes a success off the caller's path when it cannot change the
    circuit; :meth:`close` writes what it queued.
    """

    #: How long queued successes wait, so that the calls of that time share one script call.
    record_linger = 0.02

    def __init__(
        self, redis: aioredis.Redis, namespace: str, policy: BreakerPolicy = BreakerPolicy(),
        *, emit: Callable[[str, dict[str, Any]], None] | None = None,
    ) -> None:
        self.redis = redis
        self._emit = emit
        self.namespace = namespace
        self.policy = policy
        window_ms = max(1, int(policy.window * 1000))
        self._bucket_ms = max(1, window_ms // _BUCKETS)
        self._buckets = math.ceil(window_ms / self._bucket_ms)
        self._probe_timeout_ms = int(max(policy.cooldown, policy.window) * 1000)
        # Outlives an open period and a probe round; an idle target's circuit is forgotten.
        longest = policy.cooldown + 2 * max(policy.cooldown, policy.window)
        self._ttl_ms = int(longest * 1000) + 60_000
        self._closed_seen: dict[str, float] = {}  # target -> when it was last seen closed
        # successes queued by record_soon (target -> how many), written by one flusher task
        self._pending: dict[str, int] = {}
        self._flusher: asyncio.Task[None] | None = None
        self._before = redis.register_script(_BEFORE_LUA)
        self._record = redis.register_script(_RECORD_LUA)
        self._read = redis.register_script(_READ_LUA)

    def _keys(self, target: str) -> list[str]:
        prefix = f"{self.namespace}:breaker:{target}"
        return [f"{prefix}:state", f"{prefix}:window"]

    def _observe(self, target: str, state: str) -> str:
        BREAKER_STATE.labels(target).set(_LEVEL[state])
        if state == "closed":
            self._closed_seen[target] = time.monotonic()
        else:
            self._closed_seen.pop(target, None)
        return state

    async def before_call(self, target: str) -> None:
        """Let a call to ``target`` through, or refuse it at once.

        Raises:
            CircuitOpen: the circuit is open, or half-open with all its probe calls taken;
                ``retry_at`` (aware datetime) says when a call may be let through again.
        """
        seen = self._closed_seen.get(target)
        if seen is not None and time.monotonic() - seen < self.policy.closed_cache:
            return  # closed a moment ago (by our own calls' records, or a check)
        allowed, raw_state, retry_at, now, calls, failures, began = await self._before(
            keys=self._keys(target),
            args=[self.policy.probes, self._probe_timeout_ms, self._ttl_ms],
        )
        state = self._observe(target, _text(raw_state))
        if began:
            log.info("circuit for %s is half-open: letting %d probe calls through",
                     target, self.policy.probes)
        if allowed:
            return
        wait = max(0, retry_at - now) / 1000
        why = (f"is open ({failures} of its last {calls} calls failed); it lets probe calls "
               f"through in {wait:.1f}s" if state == "open" else
               f"is half_open with its {self.policy.probes} probe calls in flight; it tries "
               f"again when they succeed, or in {wait:.1f}s at the latest")
        raise CircuitOpen(
            f"circuit breaker for agent type {target!r} {why} (at {_iso(retry_at)}); "
            "check its workers with `orchestrator agents`",
            target=target, state=state, retry_at=datetime.fromtimestamp(retry_at / 1000, UTC),
        )

    def record_soon(self, target: str, ok: bool) -> bool:
        """Queue the outcome of a call to ``target`` when it cannot change the circuit: a
        success while this process saw the circuit closed within ``closed_cache`` (in a closed
        circuit a success only adds to the window). Queued successes are written together,
        ``record_linger`` seconds later and before any outcome :meth:`record` writes, so the
        window counts them in order. Returns False, queuing nothing, for any other outcome:
        then await :meth:`record`."""
        if not ok or self.policy.closed_cache <= 0:
            return False
        seen = self._closed_seen.get(target)
        if seen is None or time.monotonic() - seen >= self.policy.closed_cache:
            return False
        self._pending[target] = self._pending.get(target, 0) + 1
        if self._flusher is None:
            self._flusher = asyncio.get_running_loop().create_task(
                self._flush_later(), name="breaker-records")
        return True

    async def _flush_later(self) -> None:
        try:
            await asyncio.sleep(self.record_linger)
            if self._pending:
                await self._write([])
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # Redis away: successes are only counts; the next write
            log.debug("writing queued breaker records failed: %s", exc)  # retries them
        finally:
            if self._flusher is asyncio.current_task():
                self._flusher = None

    async def flush(self) -> None:
        """Write the queued successes now (on closing, or before reading the state)."""
        task, self._flusher = self._flusher, None
        if task is not None and task is not asyncio.current_task():
            task.cancel()
            await asyncio.wait({task})  # a write it had begun gives its items back
        if self._pending:
            await self._write([])

    async def close(self) -> None:
        """Write what is queued, bounded: Redis may be gone."""
        try:
            async with asyncio.timeout(2):
                await self.flush()
        except Exception as exc:
            log.debug("breaker records queued at close not written: %s", exc)

    async def record(self, target: str, ok: bool) -> None:
        """Record the outcome of a call to ``target`` that :meth:`before_call` let through
        (after the successes :meth:`record_soon` queued, in the same round trip).

        Args:
            ok: False for failures that say the agent is unhealthy (timeouts, transient or
                agent errors); permanent errors of the input itself should be recorded as True
                or not recorded. Outcomes arriving while the circuit is open are ignored.
        """
        await self._write([(target, ok)])

    async def _write(self, outcomes: list[tuple[str, bool]]) -> None:
        """Write the queued successes, then ``outcomes``, in one script call."""
        pending, self._pending = self._pending, {}
        items = [(target, True, n) for target, n in pending.items()]
        items += [(target, ok, 1) for target, ok in outcomes]
        p = self.policy
        keys: list[str] = []
        args: list[Any] = [self._bucket_ms, self._buckets, p.min_calls, repr(p.failure_ratio),
                           int(p.cooldown * 1000), p.probes, self._ttl_ms]
        for target, ok, n in items:
            keys += self._keys(target)
            args += [1 if ok else 0, n]
        try:
            flat = await self._record(keys=keys, args=args)
        except BaseException:
            for target, n in pending.items():  # tried again with the next write
                self._pending[target] = self._pending.get(target, 0) + n
            raise
        for i, (target, _ok, _n) in enumerate(items):
            raw_state, _retry_at, calls, failures, change = flat[i * 5:i * 5 + 5]
            self._observe(target, _text(raw_state))
            self._changed(target, change, calls, failures)

    def _changed(self, target: str, change: int, calls: int, failures: int) -> None:
        p = self.policy
        if change == 1:
            log.warning("circuit for %s opened: %d of %d calls failed in %gs; refusing calls "
                        "for %gs", target, failures, calls, p.window, p.cooldown)
            self._event("breaker.opened", agent=target, calls=calls, failures=failures,
                        reopened=False, cooldown=p.cooldown)
        elif change == 2:
            log.warning("circuit for %s re-opened: a probe call failed; refusing calls for %gs",
                        target, p.cooldown)
            self._event("breaker.opened", agent=target, calls=calls, failures=failures,
                        reopened=True, cooldown=p.cooldown)
        elif change == 3:
            log.info("circuit for %s closed: %d probe calls succeeded", target, calls)
            self._event("breaker.closed", agent=target, reason="probes succeeded")

    def _event(self, event_type: str, **data: Any) -> None:
        if self._emit is not None:
            self._emit(event_type, data)

    async def state(self, target: str) -> str:
        """``"closed"``, ``"open"`` or ``"half_open"``, as stored.

        An open circuit whose cool-down has passed stays ``"open"`` until the next
        :meth:`before_call` lets a probe through.
        """
        if self._pending:
            await self.flush()
        raw = await self.redis.hget(self._keys(target)[0], "state")
        return self._observe(target, _text(raw) if raw is not None else "closed")

    async def reset(self, target: str) -> None:
        """Close the circuit of ``target`` and forget its window."""
        self._pending.pop(target, None)
        await self.redis.delete(*self._keys(target))
        self._observe(target, "closed")
        log.info("circuit for %s reset", target)
        self._event("breaker.closed", agent=target, reason="reset")

    async def snapshot(self) -> dict[str, dict[str, Any]]:
        """Every target with a circuit in this namespace: its state, window counts (or those
        that opened it), and ``opened_at``/``retry_at`` (ISO 8601, UTC) when not closed."""
        if self._pending:
            await self.flush()
        prefix = f"{self.namespace}:breaker:"
        escaped = "".join("\\" + c if c in "*?[]\\" else c for c in prefix)
        result: dict[str, dict[str, Any]] = {}
        async for key in self.redis.scan_iter(match=f"{escaped}*:state", count=500):
            target = _text(key)[len(prefix):-len(":state")]
            state, opened_at, retry_at, calls, failures = await self._read(
                keys=self._keys(target), args=[self._bucket_ms, self._buckets])
            result[target] = {"state": self._observe(target, _text(state)), "calls": calls,
                              "failures": failures, "opened_at": _iso(opened_at),
                              "retry_at": _iso(retry_at)}
        return result
