"""Dead letters: requests that could not be delivered or decoded, kept with their reason per
agent type, to be listed, replayed or purged (``deadletter.added`` and ``deadletter.replayed``
events say when)."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from redis.asyncio import Redis

from ..errors import AgentErrorCode, DeadLetterNotFound
from ..messages import AgentRequest, AgentResponse, ErrorInfo
from .consumer import Delivery
from .keys import REPLY_MAXLEN, REPLY_TTL_S, BusKeys
from .wire import FIELD, SIG, decode_request, encode, to_text

__all__ = ["DeadLetters"]


class DeadLetters:
    """The dead letters of :class:`~orchestrator.bus.EventBus` (a part of it, not used alone)."""

    redis: Redis
    keys: BusKeys
    secret: bytes | None
    emit: Callable[[str, dict[str, Any] | None], None]

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
            entry[FIELD] = delivery.raw
        if delivery.signature is not None:
            entry[SIG] = delivery.signature
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
                pipe.xadd(reply_to, encode(response, self.secret), maxlen=REPLY_MAXLEN,
                          approximate=True)
                pipe.expire(reply_to, REPLY_TTL_S)
            if request is not None and tell_requester:
                pipe.delete(self.keys.inflight(request.request_id))
            entry_id = (await pipe.execute())[0]
        self.emit("deadletter.added", {
            "agent": agent_type, "id": to_text(entry_id), "reason": reason,
            "deliveries": delivery.delivery_count,
            "request_id": request.request_id if request is not None else None,
            "thread_id": request.correlation_id if request is not None else None})

    async def dead_letter_types(self) -> list[str]:
        prefix = self.keys.dead_letters("")
        found = set()
        async for key in self.redis.scan_iter(match=prefix + "*", count=500):
            found.add(to_text(key)[len(prefix):])
        return sorted(found)

    async def dead_letters(self, agent_type: str, count: int = 100) -> list[dict[str, Any]]:
        """The newest ``count`` dead letters of ``agent_type``, oldest first."""
        entries = await self.redis.xrevrange(self.keys.dead_letters(agent_type), count=count)
        out = []
        for entry_id, fields in reversed(entries):
            raw = fields.get(FIELD)
            out.append({
                "id": to_text(entry_id),
                "agent_type": agent_type,
                "reason": to_text(fields.get(b"reason", b"")),
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
        self.emit("deadletter.replayed", {"agent": agent_type, "id": entry_id,
                                          "request_id": request.request_id,
                                          "thread_id": request.correlation_id})
        return request

    async def purge_dead_letters(self, agent_type: str, ids: list[str] | None = None) -> int:
        """Delete these dead letters (all of the type's when ``ids`` is None); returns how many."""
        key = self.keys.dead_letters(agent_type)
        if ids is None:
            n = int(await self.redis.xlen(key))
            await self.redis.delete(key)
            return n
        return int(await self.redis.xdel(key, *ids)) if ids else 0
