"""Named resource locks in PostgreSQL, with fencing tokens.

A lock row holds the holder, a fencing token that strictly increases per resource, and the
acquisition and expiry times. A holder renews in the background while it holds the lock; a
holder that stops renewing (its process died, it hung) loses the lock at expiry. Waiters are
woken when a lock is released — by the release itself in the releasing process, and by
``LISTEN``/``NOTIFY`` in the others — one waiter per release and process, in arrival order, and
otherwise re-check when the current holding would expire, so they never busy-poll.

Work guarded by a lock passes the fencing token along; whoever changes the resource refuses a
token older than the newest it has seen, so a stale holder's late write is refused (see
:mod:`orchestrator.locks.fencing`, where tokens are issued and checked).

What each step costs (the uncontended path is one statement to acquire, one to release):

* acquiring is one ``UPDATE``, committed durably: the fencing token it hands out must never
  be handed out again, even after a PostgreSQL crash. If it takes nothing (the lock is held,
  or its row does not exist yet), one more statement creates the row or returns the current
  holder and how long its holding lasts; attempts after a wait go straight to that one. A
  refused attempt locks nothing.
* releasing is one ``UPDATE`` + ``NOTIFY`` committed with ``synchronous_commit = off`` (for
  that one transaction): a release lost in a PostgreSQL crash only leaves the lock held until
  its expiry, as if the holder had died, and any later acquisition, being durable, makes the
  release durable too (WAL is flushed in order). Locks taken with :meth:`hold` (held for up
  to hours) are released durably.
* renewing starts only if a holding lasts a third of its TTL: until then a timer is all there
  is (no task per acquisition).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable, Iterable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from orchestrator.state.db import Database

from ..errors import ResourceLocked
from ..metrics import LOCK_ACQUISITIONS, LOCK_CONTENTION, LOCK_WAIT_SECONDS
from . import fencing
from .holding import Holding
from .waiting import CHANNEL, SEP, WOKEN, Waking, nap_over

__all__ = ["Lease", "LockInfo", "ResourceLockManager"]

log = logging.getLogger(__name__)

# Bound once: .labels() looks the child up under a mutex on every call.
_ACQUIRED = LOCK_ACQUISITIONS.labels("acquired")
_TAKEN_OVER = LOCK_ACQUISITIONS.labels("taken_over")
_TIMEOUT = LOCK_ACQUISITIONS.labels("timeout")
_REFUSED = LOCK_ACQUISITIONS.labels("refused")

# Release (see the module docstring for why its commit does not wait for the disk).
# A release wakes the waiters of other processes (NOTIFY) only while one may be waiting
# (``wanted_until``, sql/016): a lock nobody waits for wakes no listener.
_NOTIFY_IF_WANTED = ("CASE WHEN wanted_until > now() THEN (SELECT true FROM pg_notify(%s, %s)) "
                     "ELSE false END AS notified")

_RELEASE = f"""
UPDATE resource_locks SET holder = NULL, expires_at = NULL
WHERE namespace = %s AND resource = %s AND holder = %s AND token = %s
RETURNING {_NOTIFY_IF_WANTED}, set_config('synchronous_commit', 'off', true) AS sc"""

_RENEW = """
UPDATE resource_locks SET expires_at = now() + make_interval(secs => %s)
WHERE namespace = %s AND resource = %s AND holder = %s AND token = %s
RETURNING expires_at"""

_RELEASE_HELD = f"""
UPDATE resource_locks SET holder = NULL, expires_at = NULL
WHERE namespace = %s AND resource = %s AND holder = %s
RETURNING {_NOTIFY_IF_WANTED}, token"""


@dataclass
class Lease:
    """A held lock. ``lost`` turns true if a renewal finds the lock taken over."""

    resource: str
    holder: str
    token: int
    expires_at: datetime
    lost: bool = False
    #: the workflow the lock is taken for, when known (for the events it publishes)
    thread_id: str | None = None
    _renewer: asyncio.Task[None] | None = field(default=None, repr=False)
    _timer: asyncio.TimerHandle | None = field(default=None, repr=False)


@dataclass(frozen=True)
class LockInfo:
    resource: str
    holder: str | None
    token: int
    acquired_at: datetime | None
    expires_at: datetime | None

    def to_dict(self) -> dict[str, Any]:
        return {
            "resource": self.resource,
            "holder": self.holder,
            "token": self.token,
            "acquired_at": self.acquired_at.isoformat() if self.acquired_at else None,
            "expires_at": self.expires_at.isoformat() if self.expires_at else None,
        }



class ResourceLockManager(Waking):
    """Acquire, renew and release named locks for one namespace.

    ``listen_url`` is a connection string for the dedicated ``LISTEN`` connection; without it
    waiters fall back to re-checking every ``fallback_poll`` seconds. ``holder_dead`` tells
    whether a holder is known to be dead (its process on this host is gone): such a lock is
    taken over at once, with a new fencing token, instead of waiting out its TTL. ``emit``
    publishes ``lock.acquired``, ``lock.released`` and ``lock.contended`` events (see
    :mod:`orchestrator.bus.events`).
    """

    def __init__(
        self,
        db: Database,
        namespace: str,
        *,
        listen_url: str | None = None,
        fallback_poll: float = 0.5,
        holder_dead: Callable[[str], bool] | None = None,
        emit: Callable[[str, dict[str, Any]], None] | None = None,
    ) -> None:
        self.db = db
        self._emit = emit
        self.holder_dead = holder_dead
        self.namespace = namespace
        self.listen_url = listen_url
        self.fallback_poll = fallback_poll
        # Waiters of this process by resource, in arrival order: a release wakes the first.
        self._waiters: dict[str, deque[asyncio.Future[bool]]] = {}
        # NOTIFYs this process sent, by (backend pid, resource), not yet seen by the listener:
        # the release already woke a local waiter, so the echo must not wake a second one.
        self._own_notifies: dict[tuple[int, str], int] = {}
        self._background: set[asyncio.Task[Any]] = set()
        self._listener: asyncio.Task[None] | None = None
        self._listening = asyncio.Event()
        self._closing = False

    async def start(self) -> None:
        if self.listen_url and self._listener is None:
            self._listener = asyncio.create_task(self._listen(), name="lock-listener")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._listening.wait(), 10)

    async def close(self) -> None:
        if self._background:  # releases finishing after their caller was cancelled
            await asyncio.wait(set(self._background), timeout=5)
        if self._listener is not None:
            # Cancel, but never wait on it unbounded: if the cancellation is lost inside
            # psycopg, the listener still ends by itself within its 1 s notifies() timeout.
            self._closing = True
            self._listener.cancel()
            await asyncio.wait({self._listener}, timeout=2)
            self._listener = None

    # -- acquiring -----------------------------------------------------------------------------

    async def _attempt(
        self, resource: str, holder: str, ttl: float, *, first: bool = False, wait: float = 0.0
    ) -> tuple[Lease | None, str | None, float]:
        """One attempt: (the lease, None, 0) if taken, else (None, holder, seconds it has left).

        The holder is None when the row changed under the attempt: look again at once.
        ``first``: try the plain UPDATE first (the uncontended case: a fifth cheaper than
        ``fencing.ACQUIRE``), and ``fencing.ACQUIRE`` only if it took nothing. ``wait``: how
        long the caller will wait for the lock if refused (its releases before then NOTIFY).
        """
        params = {"ns": self.namespace, "resource": resource, "holder": holder, "ttl": ttl,
                  "wait": wait}
        async with self.db.pool.connection() as conn:
            if first:
                cur = await conn.execute(fencing.TAKE, params, prepare=True)
                row = await cur.fetchone()
                if row is not None:
                    return Lease(resource, holder, row["token"], row["expires_at"]), None, 0.0
            cur = await conn.execute(fencing.ACQUIRE, params, prepare=True)
            row = await cur.fetchone()
        if row is None:
            return None, None, 0.0
        if row["token"] is not None:
            return Lease(resource, holder, row["token"], row["expires_at"]), None, 0.0
        return None, row["holder"], row["left_s"] or 0.0

    async def try_acquire(self, resource: str, holder: str, ttl: float) -> Lease | None:
        """One attempt: the lease if the lock was free or expired, else None."""
        lease, _, _ = await self._attempt(resource, holder, ttl, first=True)
        return lease

    async def _take_over(self, resource: str, dead: str, holder: str, ttl: float) -> Lease | None:
        """Take ``resource`` from ``dead`` (a holder whose process is gone), if it still has it."""
        row = await self.db.fetchone(
            fencing.TAKE_OVER, (holder, ttl, self.namespace, resource, dead)
        )
        if row is None:
            return None
        log.warning("took lock %s over from %s, whose process is gone", resource, dead)
        return Lease(resource, holder, row["token"], row["expires_at"])

    async def _holder(self, resource: str) -> tuple[str | None, float]:
        """Current holder and seconds until its holding expires."""
        row = await self.db.fetchone(
            "SELECT holder, GREATEST(EXTRACT(EPOCH FROM expires_at - now()), 0) AS left_s "
            "FROM resource_locks WHERE namespace = %s AND resource = %s",
            (self.namespace, resource),
        )
        if row is None or row["holder"] is None:
            return None, 0.0
        return row["holder"], float(row["left_s"] or 0.0)

    def _event(self, event_type: str, lease: Lease) -> None:
        if self._emit is not None:
            self._emit(event_type, {"resource": lease.resource, "holder": lease.holder,
                                    "token": lease.token, "thread_id": lease.thread_id})

    def _contended(self, resource: str, current: str | None, waiter: str,
                   thread_id: str | None, *, waits: bool) -> None:
        if self._emit is not None:
            self._emit("lock.contended", {"resource": resource, "holder": current,
                                          "waiter": waiter, "thread_id": thread_id,
                                          "waits": waits})

    async def _acquire(self, resource: str, holder: str, ttl: float, wait_timeout: float,
                       thread_id: str | None = None) -> Lease:
        lease = await self._acquire_lease(resource, holder, ttl, wait_timeout, thread_id)
        lease.thread_id = thread_id
        self._event("lock.acquired", lease)
        return lease

    async def _acquire_lease(self, resource: str, holder: str, ttl: float, wait_timeout: float,
                             thread_id: str | None) -> Lease:
        started = time.monotonic()
        deadline = started + wait_timeout
        loop = asyncio.get_running_loop()
        contended = False
        while True:
            # In the queue before looking, so a release during the attempt is not missed.
            fut = self._enqueue(resource, first=contended)
            try:
                lease, current, left = await self._attempt(
                    resource, holder, ttl, first=not contended,
                    wait=max(deadline - time.monotonic(), 0.0))
                if lease is not None:
                    _ACQUIRED.inc()
                    LOCK_WAIT_SECONDS.observe(time.monotonic() - started)
                    return lease
                if not contended:
                    contended = True
                    LOCK_CONTENTION.inc()
                    self._contended(resource, current, holder, thread_id, waits=True)
                if current is not None and self.holder_dead is not None and await asyncio.to_thread(
                    self.holder_dead, current  # reads /proc: off the event loop
                ):
                    lease = await self._take_over(resource, current, holder, ttl)
                    if lease is not None:
                        _TAKEN_OVER.inc()
                        LOCK_WAIT_SECONDS.observe(time.monotonic() - started)
                        return lease
                    continue  # someone else was quicker: look again
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    _TIMEOUT.inc()
                    LOCK_WAIT_SECONDS.observe(time.monotonic() - started)
                    raise ResourceLocked(resource, current, time.monotonic() - started)
                nap = min(remaining, left + 0.01 if current else 0.0)
                if not self._listening.is_set():
                    nap = min(nap, self.fallback_poll)
                if nap > 0 and not fut.done():
                    timer = loop.call_later(nap, nap_over, fut)
                    try:
                        await fut
                    finally:
                        timer.cancel()
            except BaseException:
                # Woken, but leaving without the lock (timeout, error, cancelled): the
                # release that woke this waiter is the next one's.
                if fut.done() and not fut.cancelled() and fut.result() is WOKEN:
                    self._dequeue(resource, fut)
                    self._wake_one(resource)
                raise
            finally:
                self._dequeue(resource, fut)

    def _start_renewal(self, lease: Lease, ttl: float) -> None:
        interval = max(ttl / 3, 0.05)
        lease._timer = asyncio.get_running_loop().call_later(
            interval, self._spawn_renewer, lease, ttl, interval
        )

    def _spawn_renewer(self, lease: Lease, ttl: float, interval: float) -> None:
        lease._timer = None
        lease._renewer = asyncio.create_task(self._renew(lease, ttl, interval),
                                             name=f"lock-renew:{lease.resource}")

    async def _stop_renewal(self, lease: Lease) -> None:
        if lease._timer is not None:
            lease._timer.cancel()
            lease._timer = None
        task = lease._renewer
        if task is not None:
            lease._renewer = None
            task.cancel()
            await asyncio.wait({task})

    async def _renew(self, lease: Lease, ttl: float, interval: float) -> None:
        while True:
            try:
                row = await self.db.fetchone(
                    _RENEW, (ttl, self.namespace, lease.resource, lease.holder, lease.token)
                )
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("renewing lock %s failed: %s", lease.resource, exc)
                row = {"expires_at": lease.expires_at}  # try again at the next interval
            if row is None:
                lease.lost = True
                log.error("lock %s (token %s) was lost", lease.resource, lease.token)
                return
            lease.expires_at = row["expires_at"]
            await asyncio.sleep(interval)

    async def release(self, lease: Lease) -> bool:
        """Release if still held by this lease; returns whether it was."""
        await self._stop_renewal(lease)
        own = None
        async with self.db.pool.connection() as conn:
            own = self._expect_own_notify(conn, lease.resource)
            try:
                cur = await conn.execute(
                    _RELEASE,
                    (self.namespace, lease.resource, lease.holder, lease.token, CHANNEL,
                     f"{self.namespace}{SEP}{lease.resource}"),
                    prepare=True,
                )
                row = await cur.fetchone()
            except BaseException:
                self._forget_own_notify(own)  # if it was sent, let its echo wake a waiter
                raise
        if row is None or not row["notified"]:
            self._forget_own_notify(own)
        if row is None:
            return False
        self._wake_one(lease.resource)  # committed: the next waiter here need not wait for NOTIFY
        self._event("lock.released", lease)
        return True

    async def _release_quietly(self, lease: Lease) -> None:
        try:
            await self.release(lease)
        except asyncio.CancelledError:
            # The caller was cancelled mid-release: finish it in the background (a release is
            # idempotent), as the shielded release used to.
            self._release_later(lease)
            raise
        except Exception as exc:  # it expires on its own; say so and move on
            log.warning("releasing %s failed (%s); it expires at its TTL", lease.resource, exc)

    def _release_later(self, lease: Lease) -> None:
        task = asyncio.get_running_loop().create_task(self._release_in_background(lease))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _release_in_background(self, lease: Lease) -> None:
        try:
            await self.release(lease)
        except Exception as exc:
            log.warning("releasing %s failed (%s); it expires at its TTL", lease.resource, exc)

    def acquire(
        self, resource: str, holder: str, *, ttl: float = 30.0, wait_timeout: float = 30.0,
        thread_id: str | None = None,
    ) -> AbstractAsyncContextManager[Lease]:
        """Hold ``resource`` for the block, renewing it in the background (``thread_id``: the
        workflow it is held for, named in its events).

        Raises:
            ResourceLocked: still held by someone else after ``wait_timeout`` seconds.
            LockLost: the lock expired and was taken over while the block ran.
        """
        return Holding(self, (resource,), holder, ttl, wait_timeout, single=True,
                       thread_id=thread_id)

    def acquire_many(
        self,
        resources: Iterable[str],
        holder: str,
        *,
        ttl: float = 30.0,
        wait_timeout: float = 30.0,
        thread_id: str | None = None,
    ) -> AbstractAsyncContextManager[tuple[Lease, ...]]:
        """Hold several resources, acquired in sorted order so two holders cannot deadlock.

        Yields the leases in the order the resources were given.
        """
        return Holding(self, tuple(dict.fromkeys(resources)), holder, ttl, wait_timeout,
                       single=False, thread_id=thread_id)

    async def hold(self, resource: str, holder: str, ttl: float, *,
                   thread_id: str | None = None) -> Lease:
        """Take ``resource`` for ``holder`` beyond one block of code, or extend its holding.

        For locks a workflow keeps across steps, pauses and crashes (``holder`` names the
        workflow, not a process): taking it again as the same holder extends the expiry and
        keeps the fencing token; nothing renews it in the background, so a holder that never
        comes back loses it at expiry. Release it with :meth:`release_held`.

        Raises:
            ResourceLocked: someone else holds it; the error names them.
        """
        row = await self.db.fetchone(fencing.HOLD, (self.namespace, resource, holder, ttl))
        if row is None:
            _REFUSED.inc()
            LOCK_CONTENTION.inc()
            current, _ = await self._holder(resource)
            self._contended(resource, current, holder, thread_id, waits=False)
            raise ResourceLocked(resource, current, 0.0)
        _ACQUIRED.inc()
        lease = Lease(resource, holder, row["token"], row["expires_at"], thread_id=thread_id)
        if row["fresh"]:  # taken now, not extended
            self._event("lock.acquired", lease)
        return lease

    async def release_held(self, resource: str, holder: str, *,
                           thread_id: str | None = None) -> bool:
        """Release a lock taken with :meth:`hold`; returns whether ``holder`` still held it."""
        async with self.db.pool.connection() as conn:
            own = self._expect_own_notify(conn, resource)
            try:
                cur = await conn.execute(
                    _RELEASE_HELD,
                    (self.namespace, resource, holder, CHANNEL,
                     f"{self.namespace}{SEP}{resource}"),
                )
                row = await cur.fetchone()
            except BaseException:
                self._forget_own_notify(own)
                raise
        if row is None or not row["notified"]:
            self._forget_own_notify(own)
        if row is None:
            return False
        self._wake_one(resource)
        if self._emit is not None:
            self._emit("lock.released", {"resource": resource, "holder": holder,
                                         "token": row["token"], "thread_id": thread_id})
        return True

    async def is_locked(self, resource: str) -> bool:
        holder, _ = await self._holder(resource)
        return holder is not None

    async def list_locks(self, *, include_free: bool = False) -> list[LockInfo]:
        rows = await self.db.fetch(
            """
            SELECT resource, holder, token, acquired_at, expires_at FROM resource_locks
            WHERE namespace = %s
              AND (%s OR (holder IS NOT NULL AND expires_at >= now()))
            ORDER BY resource""",
            (self.namespace, include_free),
        )
        return [LockInfo(**r) for r in rows]
