"""Effectively-once execution on the consumer side: the response store, the claim a consumer
holds while it executes a request, and answering a delivery (store, reply, acknowledge)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from pydantic import ValidationError
from redis.asyncio import Redis
from redis.commands.core import AsyncScript
from redis.exceptions import ResponseError

from ..messages import AgentRequest, AgentResponse
from .batching import Coalescer
from .consumer import Delivery
from .keys import REPLY_MAXLEN, REPLY_TTL_S, BusKeys
from .scripts import BREAK_LUA
from .wire import FIELD, SIG, DecodeFailure, encode, to_text, verified

__all__ = ["Claims"]


class Claims:
    """Stored responses and execution claims of :class:`~orchestrator.bus.EventBus` (a part of
    it, not used alone)."""

    redis: Redis
    keys: BusKeys
    secret: bytes | None
    response_retention: int
    _responses: Coalescer[tuple[Any, ...], None]
    _claim_many: AsyncScript
    _convert_many: AsyncScript
    _respond_many: AsyncScript
    _renew_many: AsyncScript

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
        fields = {FIELD: raw, SIG: sig} if sig else {FIELD: raw}
        try:
            stored = AgentResponse.model_validate_json(verified(fields, self.secret))
        except (DecodeFailure, ValidationError):
            return None
        return stored if stored.request_id == request_id else None

    async def claim_or_replay(
        self, request_id: str, owner: str, ttl_ms: int, attempt: int = 1, message_id: str = ""
    ) -> tuple[str, AgentResponse | None]:
        """Atomically: the stored response a delivery of ``attempt`` gets, if there is one
        (``"stored"``: a success, or an error stored for this same attempt), else a claim on
        executing the request (``"claimed"``: free, or queued with the delivered stream entry
        ``message_id``), else ``"busy"`` (another consumer holds it)."""
        return (await self.claim_many([(request_id, owner, attempt, message_id)], ttl_ms))[0]

    async def claim_many(
        self, claims: Sequence[tuple[str, str, int, str]], ttl_ms: int
    ) -> list[tuple[str, AgentResponse | None]]:
        """:meth:`claim_or_replay` for many (request id, owner, attempt, message id) in one
        round trip (the requests a consumer read together); one outcome per claim, in order."""
        if not claims:
            return []
        keys: list[str] = []
        args: list[str | int] = []
        for request_id, owner, attempt, message_id in claims:
            keys += [self.keys.response(request_id),
                     self.keys.error_response(request_id, attempt),
                     self.keys.inflight(request_id)]
            args += [owner, ttl_ms, message_id]
        codes, *stored_blobs = await self._claim_many(keys=keys, args=args)
        blobs = iter(stored_blobs)
        out: list[tuple[str, AgentResponse | None]] = []
        for (request_id, owner, attempt, message_id), kind in zip(claims, to_text(codes),
                                                                   strict=True):
            if kind == "1":
                stored = self._load_stored(next(blobs), request_id)
                if stored is None:  # unreadable or unsigned stored answer: execute again
                    await self.redis.delete(self.keys.response(request_id),
                                            self.keys.error_response(request_id, attempt))
                    out.append(await self.claim_or_replay(request_id, owner, ttl_ms, attempt,
                                                          message_id))
                else:
                    out.append(("stored", stored))
            else:
                out.append(("claimed" if kind == "2" else "busy", None))
        return out

    async def convert_claims(self, claims: dict[str, tuple[str, str]], ttl_ms: int) -> list[str]:
        """Make claims queued with their stream entries (request id -> (``q:<message id>``,
        owner)) their owners' own, with ``ttl_ms``, in one round trip (so that a dead owner is
        recognised, and renewals find them); returns the request ids whose queued claim was no
        longer there (answered meanwhile, or lost)."""
        if not claims:
            return []
        ids = list(claims)
        lost = await self._convert_many(
            keys=[self.keys.inflight(request_id) for request_id in ids],
            args=[*(owner for _, owner in claims.values()),
                  *(queued for queued, _ in claims.values()), ttl_ms])
        return [ids[int(i) - 1] for i in lost]

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
        return bool(await self.redis.eval(BREAK_LUA, 1, self.keys.inflight(request_id), owner))

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
            delivery.message_id, data[FIELD], data.get(SIG, b""),
        ))

    async def _flush_responses(self, items: list[tuple[Any, ...]]) -> list[None | Exception]:
        keys: list[str] = []
        args: list[Any] = [self.response_retention, REPLY_MAXLEN, REPLY_TTL_S]
        for store_key, request_id, reply_to, stream, group, message_id, raw, sig in items:
            keys += [store_key or self.keys.response(request_id),
                     self.keys.inflight(request_id), reply_to, stream]
            args += [1 if store_key else 0, raw, sig, group, message_id]
        failed = await self._respond_many(keys=keys, args=args)
        outcomes: list[None | Exception] = [None] * len(items)
        for index, problem in zip(failed[::2], failed[1::2], strict=True):
            outcomes[int(index)] = ResponseError(to_text(problem))
        return outcomes
