"""The event bus as one object: its parts (one module per role) over one Redis client, and
its lifecycle."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from redis.asyncio import Redis

from ..messages import AgentResponse
from .batching import Coalescer
from .claims import Claims
from .consumer import Consumer
from .deadletters import DeadLetters
from .events import EventPublisher, Events
from .keys import BusKeys
from .requester import Requester
from .scripts import (
    CLAIM_MANY_LUA,
    CONVERT_LUA,
    POLL_REPLIES_LUA,
    READ_LUA,
    RENEW_LUA,
    RESPOND_LUA,
    SEND_LUA,
)

__all__ = ["EventBus"]

log = logging.getLogger(__name__)

#: Safety cap of each request stream (approximate, like MAXLEN ~): entries are deleted once
#: answered or dead-lettered, so only requests nobody answers (no worker for a long while)
#: ever reach it; beyond it the oldest are dropped and their requesters time out.
_REQUESTS_MAXLEN = 100_000


class EventBus(Requester, Consumer, Claims, DeadLetters, Events):
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
        self.publisher = EventPublisher(redis, self.keys.events, source=process_id,
                                        secret=self.secret, maxlen=events_maxlen)
        # Writes made by many tasks at once go out together (see Coalescer).
        self._claim_many = redis.register_script(CLAIM_MANY_LUA)
        self._convert_many = redis.register_script(CONVERT_LUA)
        self._respond_many = redis.register_script(RESPOND_LUA)
        self._read_new = redis.register_script(READ_LUA)
        self._renew_many = redis.register_script(RENEW_LUA)
        self._send_many = redis.register_script(SEND_LUA)
        self._poll_replies = redis.register_script(POLL_REPLIES_LUA)
        self._sends: Coalescer[Any, Any] = Coalescer(self._flush_sends, "bus-sends")
        self._responses: Coalescer[tuple[Any, ...], None] = Coalescer(
            self._flush_responses, "bus-responses")

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        if self._reader is None:
            self._reader = asyncio.create_task(self._read_replies(), name="bus-reply-reader")

    async def close(self) -> None:
        await self.publisher.close()  # first: the events still queued, while Redis is there
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
