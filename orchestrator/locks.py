"""Named resource locks in PostgreSQL, with fencing tokens.

A lock row holds the holder, a fencing token that strictly increases per resource, and the
acquisition and expiry times. A holder renews in the background while it holds the lock; a
holder that stops renewing (its process died, it hung) loses the lock at expiry. Waiters are
woken by ``LISTEN``/``NOTIFY`` when a lock is released, and otherwise re-check when the current
holding would expire, so they never busy-poll.

Work guarded by a lock passes the fencing token along; whoever changes the resource refuses a
token older than the newest it has seen, so a stale holder's late write is refused.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from psycopg import AsyncConnection

from state.db import Database

from .errors import LockLost, ResourceLocked
from .metrics import LOCK_ACQUISITIONS, LOCK_CONTENTION, LOCK_WAIT_SECONDS, LOCKS_HELD

__all__ = ["Lease", "LockInfo", "ResourceLockManager"]

log = logging.getLogger(__name__)

CHANNEL = "orchestrator_locks"
_SEP = "\x1f"


@dataclass
class Lease:
    """A held lock. ``lost`` turns true if a renewal finds the lock taken over."""

    resource: str
    holder: str
    token: int
    expires_at: datetime
    lost: bool = False
    _renewer: asyncio.Task[None] | None = field(default=None, repr=False)


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


class ResourceLockManager:
    """Acquire, renew and release named locks for one namespace.

    ``listen_url`` is a connection string for the dedicated ``LISTEN`` connection; without it
    waiters fall back to re-checking every ``fallback_poll`` seconds. ``holder_dead`` tells
    whether a holder is known to be dead (its process on this host is gone): such a lock is
    taken over at once, with a new fencing token, instead of waiting out its TTL.
    """

    def __init__(
        self,
        db: Database,
        namespace: str,
        *,
        listen_url: str | None = None,
        fallback_poll: float = 0.5,
        holder_dead: Callable[[str], bool] | None = None,
    ) -> None:
        self.db = db
        self.holder_dead = holder_dead
        self.namespace = namespace
        self.listen_url = listen_url
        self.fallback_poll = fallback_poll
        self._released: dict[str, asyncio.Event] = {}
        self._listener: asyncio.Task[None] | None = None
        self._listening = asyncio.Event()
        self._closing = False

    async def start(self) -> None:
        if self.listen_url and self._listener is None:
            self._listener = asyncio.create_task(self._listen(), name="lock-listener")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._listening.wait(), 10)

    async def close(self) -> None:
        if self._listener is not None:
            # Cancel, but never wait on it unbounded: if the cancellation is lost inside
            # psycopg, the listener still ends by itself within its 1 s notifies() timeout.
            self._closing = True
            self._listener.cancel()
            await asyncio.wait({self._listener}, timeout=2)
            self._listener = None

    async def _listen(self) -> None:
        assert self.listen_url is not None
        backoff = 0.1
        while not self._closing:
            try:
                async with await AsyncConnection.connect(self.listen_url, autocommit=True) as conn:
                    await conn.execute(f"LISTEN {CHANNEL}")
                    self._listening.set()
                    backoff = 0.1
                    while not self._closing:
                        # a bounded wait, so closing never has to cancel inside psycopg
                        async for note in conn.notifies(timeout=1.0):
                            namespace, _, resource = note.payload.partition(_SEP)
                            if namespace == self.namespace:
                                event = self._released.get(resource)
                                if event is not None:
                                    event.set()
                return
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self._listening.clear()
                log.warning("lock listener lost its connection (%s); reconnecting", exc)
                # Wake every waiter: a release may have been missed while disconnected.
                for event in self._released.values():
                    event.set()
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)

    async def try_acquire(self, resource: str, holder: str, ttl: float) -> Lease | None:
        """One attempt: the lease if the lock was free or expired, else None."""
        row = await self.db.fetchone(
            """
            INSERT INTO resource_locks AS l (namespace, resource, holder, token, acquired_at,
                                             expires_at)
            VALUES (%s, %s, %s, 1, now(), now() + make_interval(secs => %s))
            ON CONFLICT (namespace, resource) DO UPDATE
            SET holder = EXCLUDED.holder, token = l.token + 1, acquired_at = now(),
                expires_at = EXCLUDED.expires_at
            WHERE l.holder IS NULL OR l.expires_at < now()
            RETURNING token, expires_at""",
            (self.namespace, resource, holder, ttl),
        )
        if row is None:
            return None
        return Lease(resource, holder, row["token"], row["expires_at"])

    async def _take_over(self, resource: str, dead: str, holder: str, ttl: float) -> Lease | None:
        """Take ``resource`` from ``dead`` (a holder whose process is gone), if it still has it."""
        row = await self.db.fetchone(
            """
            UPDATE resource_locks SET holder = %s, token = token + 1, acquired_at = now(),
                                      expires_at = now() + make_interval(secs => %s)
            WHERE namespace = %s AND resource = %s AND holder = %s
            RETURNING token, expires_at""",
            (holder, ttl, self.namespace, resource, dead),
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

    async def _acquire(self, resource: str, holder: str, ttl: float, wait_timeout: float) -> Lease:
        started = time.monotonic()
        deadline = started + wait_timeout
        event = self._released.setdefault(resource, asyncio.Event())
        contended = False
        while True:
            event.clear()
            lease = await self.try_acquire(resource, holder, ttl)
            if lease is not None:
                LOCK_ACQUISITIONS.labels("acquired").inc()
                LOCK_WAIT_SECONDS.observe(time.monotonic() - started)
                return lease
            if not contended:
                contended = True
                LOCK_CONTENTION.inc()
            current, left = await self._holder(resource)
            if current is not None and self.holder_dead is not None and await asyncio.to_thread(
                self.holder_dead, current  # reads /proc: off the event loop
            ):
                lease = await self._take_over(resource, current, holder, ttl)
                if lease is not None:
                    LOCK_ACQUISITIONS.labels("taken_over").inc()
                    LOCK_WAIT_SECONDS.observe(time.monotonic() - started)
                    return lease
                continue  # someone else was quicker: look again
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                LOCK_ACQUISITIONS.labels("timeout").inc()
                LOCK_WAIT_SECONDS.observe(time.monotonic() - started)
                raise ResourceLocked(resource, current, time.monotonic() - started)
            nap = min(remaining, left + 0.01 if current else 0.0)
            if not self._listening.is_set():
                nap = min(nap, self.fallback_poll)
            if nap > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(event.wait(), nap)

    async def _renew(self, lease: Lease, ttl: float) -> None:
        interval = max(ttl / 3, 0.05)
        while True:
            await asyncio.sleep(interval)
            try:
                row = await self.db.fetchone(
                    """
                    UPDATE resource_locks SET expires_at = now() + make_interval(secs => %s)
                    WHERE namespace = %s AND resource = %s AND holder = %s AND token = %s
                    RETURNING expires_at""",
                    (ttl, self.namespace, lease.resource, lease.holder, lease.token),
                )
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("renewing lock %s failed: %s", lease.resource, exc)
                continue
            if row is None:
                lease.lost = True
                log.error("lock %s (token %s) was lost", lease.resource, lease.token)
                return
            lease.expires_at = row["expires_at"]

    async def release(self, lease: Lease) -> bool:
        """Release if still held by this lease; returns whether it was."""
        if lease._renewer is not None:
            lease._renewer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await lease._renewer
            lease._renewer = None
        row = await self.db.fetchone(
            """
            WITH released AS (
                UPDATE resource_locks SET holder = NULL, expires_at = NULL
                WHERE namespace = %s AND resource = %s AND holder = %s AND token = %s
                RETURNING resource
            )
            SELECT pg_notify(%s, %s) AS notified FROM released""",
            (
                self.namespace,
                lease.resource,
                lease.holder,
                lease.token,
                CHANNEL,
                f"{self.namespace}{_SEP}{lease.resource}",
            ),
        )
        return row is not None

    @contextlib.asynccontextmanager
    async def acquire(
        self, resource: str, holder: str, *, ttl: float = 30.0, wait_timeout: float = 30.0
    ) -> AsyncIterator[Lease]:
        """Hold ``resource`` for the block, renewing it in the background.

        Raises:
            ResourceLocked: still held by someone else after ``wait_timeout`` seconds.
            LockLost: the lock expired and was taken over while the block ran.
        """
        async with self.acquire_many([resource], holder, ttl=ttl, wait_timeout=wait_timeout) as (
            lease,
        ):
            yield lease

    @contextlib.asynccontextmanager
    async def acquire_many(
        self,
        resources: Iterable[str],
        holder: str,
        *,
        ttl: float = 30.0,
        wait_timeout: float = 30.0,
    ) -> AsyncIterator[tuple[Lease, ...]]:
        """Hold several resources, acquired in sorted order so two holders cannot deadlock.

        Yields the leases in the order the resources were given.
        """
        wanted = list(dict.fromkeys(resources))
        leases: dict[str, Lease] = {}
        deadline = time.monotonic() + wait_timeout
        try:
            for resource in sorted(wanted):
                lease = await self._acquire(
                    resource, holder, ttl, max(deadline - time.monotonic(), 0.0)
                )
                lease._renewer = asyncio.create_task(self._renew(lease, ttl))
                leases[resource] = lease
                LOCKS_HELD.inc()
            yield tuple(leases[r] for r in wanted)
            lost = [lease.resource for lease in leases.values() if lease.lost]
            if lost:
                raise LockLost(
                    f"lost the lock on {', '.join(lost)} before the work finished; "
                    "its result must not be trusted: re-run the step"
                )
        finally:
            for lease in leases.values():
                LOCKS_HELD.dec()
                try:
                    await asyncio.shield(self.release(lease))
                except Exception as exc:  # it expires on its own; say so and move on
                    log.warning("releasing %s failed (%s); it expires at its TTL", lease.resource, exc)

    async def hold(self, resource: str, holder: str, ttl: float) -> Lease:
        """Take ``resource`` for ``holder`` beyond one block of code, or extend its holding.

        For locks a workflow keeps across steps, pauses and crashes (``holder`` names the
        workflow, not a process): taking it again as the same holder extends the expiry and
        keeps the fencing token; nothing renews it in the background, so a holder that never
        comes back loses it at expiry. Release it with :meth:`release_held`.

        Raises:
            ResourceLocked: someone else holds it; the error names them.
        """
        row = await self.db.fetchone(
            """
            INSERT INTO resource_locks AS l (namespace, resource, holder, token, acquired_at,
                                             expires_at)
            VALUES (%s, %s, %s, 1, now(), now() + make_interval(secs => %s))
            ON CONFLICT (namespace, resource) DO UPDATE
            SET holder = EXCLUDED.holder,
                token = CASE WHEN l.holder = EXCLUDED.holder AND l.expires_at >= now()
                             THEN l.token ELSE l.token + 1 END,
                acquired_at = CASE WHEN l.holder = EXCLUDED.holder AND l.expires_at >= now()
                                   THEN l.acquired_at ELSE now() END,
                expires_at = EXCLUDED.expires_at
            WHERE l.holder IS NULL OR l.expires_at < now() OR l.holder = EXCLUDED.holder
            RETURNING token, expires_at""",
            (self.namespace, resource, holder, ttl),
        )
        if row is None:
            LOCK_ACQUISITIONS.labels("refused").inc()
            LOCK_CONTENTION.inc()
            current, _ = await self._holder(resource)
            raise ResourceLocked(resource, current, 0.0)
        LOCK_ACQUISITIONS.labels("acquired").inc()
        return Lease(resource, holder, row["token"], row["expires_at"])

    async def release_held(self, resource: str, holder: str) -> bool:
        """Release a lock taken with :meth:`hold`; returns whether ``holder`` still held it."""
        row = await self.db.fetchone(
            """
            WITH released AS (
                UPDATE resource_locks SET holder = NULL, expires_at = NULL
                WHERE namespace = %s AND resource = %s AND holder = %s
                RETURNING resource
            )
            SELECT pg_notify(%s, %s) AS notified FROM released""",
            (self.namespace, resource, holder, CHANNEL, f"{self.namespace}{_SEP}{resource}"),
        )
        return row is not None

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
