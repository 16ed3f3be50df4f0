"""The requester side of the bus: sending requests, and the one reply reader that answers all
of this process's in-flight requests (not one blocked connection per request)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable
from datetime import UTC, datetime
from typing import Any

from pydantic import ValidationError
from redis.asyncio import Redis
from redis.commands.core import AsyncScript
from redis.exceptions import ResponseError

from ..messages import AgentRequest, AgentResponse
from ..outage import Outage
from ..tasks import cancel_requested
from .batching import Coalescer
from .keys import BusKeys
from .wire import FIELD, SIG, DecodeFailure, encode, to_text, verified

__all__ = ["Requester"]

log = logging.getLogger(__name__)

_REPLY_BATCH = 500
_TRIM_EVERY = 200
_TRIM_AFTER_S = 1.0
#: How long a claim queued with a request outlives the request's deadline: no consumer starts
#: a request after its deadline, so the claim lasts as long as its entry can be executed, with
#: this much room for the clocks of requester, Redis and worker to differ.
QUEUED_CLAIM_MARGIN_S = 60.0

# (request stream, encoded fields, request id, attempt, queued claim ttl ms)
_Send = tuple[str, dict[bytes, bytes], str, int, int]


def _claim_ttl_ms(request: AgentRequest) -> int:
    """The ttl of the execution claim queued with ``request`` (0: none, for a request
    without a deadline: its consumer claims it when it reads it)."""
    if request.deadline is None:
        return 0
    left = (request.deadline - datetime.now(UTC)).total_seconds()
    return int((max(left, 0.0) + QUEUED_CLAIM_MARGIN_S) * 1000)



class Requester:
    """The requester side of :class:`~orchestrator.bus.EventBus` (a part of it, not used alone)."""

    redis: Redis
    keys: BusKeys
    secret: bytes | None
    process_id: str
    reply_stream: str
    requests_maxlen: int
    _waiters: dict[str, asyncio.Future[AgentResponse]]
    _closing: bool
    _sends: Coalescer[_Send, Any]
    _send_many: AsyncScript
    _poll_replies: AsyncScript

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
                                  encode(request, self.secret), request.request_id,
                                  request.attempt, _claim_ttl_ms(request)))
        return fut

    async def _flush_sends(self, items: list[_Send]) -> list[Any]:
        keys: list[str] = []
        args: list[bytes | int] = [self.requests_maxlen]
        for stream, fields, request_id, attempt, ttl_ms in items:
            keys += [stream, self.keys.response(request_id),
                     self.keys.error_response(request_id, attempt),
                     self.keys.inflight(request_id)]
            args += [fields[FIELD], fields.get(SIG, b""), ttl_ms]
        failed = await self._send_many(keys=keys, args=args)
        outcomes: list[Any] = [None] * len(items)
        for index, problem in zip(failed[::2], failed[1::2], strict=True):
            outcomes[int(index)] = ResponseError(to_text(problem))
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
                            fields = {FIELD: flat[i]} if flat[i] is not None else {}
                            if flat[i + 1] is not None:
                                fields[SIG] = flat[i + 1]
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
            response = AgentResponse.model_validate_json(verified(fields, self.secret))
        except (DecodeFailure, ValidationError) as exc:
            log.warning("dropping a reply on %s: %s", self.reply_stream, exc)
            return
        fut = self._waiters.get(response.request_id)
        if fut is not None and not fut.done():
            fut.set_result(response)

