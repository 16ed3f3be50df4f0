"""Answering one delivery: dead-letter it, replay a stored answer, or claim and execute it,
then deliver the response (through a short Redis outage)."""

from __future__ import annotations

import asyncio
import logging
import time

from ..agent import Agent
from ..bus import Delivery
from ..errors import AgentErrorCode
from ..messages import AgentRequest, AgentResponse, ErrorInfo
from ..metrics import BUS_DEAD_LETTERS, BUS_HANDLED
from .claims import _Claims
from .execute import _Executing

log = logging.getLogger(__name__)


class _Answering(_Claims, _Executing):
    async def _handle(
        self, agent: Agent, agent_id: str, delivery: Delivery,
        claimed: tuple[str, AgentResponse | None] | None = None,
    ) -> None:
        try:
            await self._handle_one(agent, agent_id, delivery, claimed)
        except asyncio.CancelledError:
            raise
        except Exception:  # infrastructure failure: the message stays pending for redelivery
            log.exception("could not answer %s on %s", delivery.message_id, delivery.stream)

    async def _handle_one(
        self, agent: Agent, agent_id: str, delivery: Delivery,
        claimed: tuple[str, AgentResponse | None] | None = None,
    ) -> None:
        """Answer ``delivery``. ``claimed``: the outcome of its claim when the reader claimed
        it with the others it read (then a claim it got is already in ``_executing``)."""
        request = delivery.request
        if request is None:
            BUS_DEAD_LETTERS.labels(agent.agent_type, "undecodable").inc()
            log.warning("dead-lettering undecodable message %s: %s", delivery.message_id,
                        delivery.problem)
            await self.bus.dead_letter(delivery, agent_type=agent.agent_type,
                                       reason=delivery.problem or "undecodable")
            return
        if delivery.delivery_count > self.max_deliveries and not await self._claim_live(
            request.request_id, delivery.message_id
        ):
            BUS_DEAD_LETTERS.labels(agent.agent_type, "max_deliveries").inc()
            reason = (f"delivered {delivery.delivery_count} times (max_deliveries is "
                      f"{self.max_deliveries}): its consumers keep dying on it")
            log.warning("dead-lettering %s: %s", request.request_id, reason)
            await self.bus.dead_letter(delivery, agent_type=agent.agent_type, reason=reason)
            return
        claim = self._claim_prefix + agent_id
        while True:
            if claimed is not None:
                (state, stored), claimed = claimed, None
            else:
                state, stored = await self.bus.claim_or_replay(
                    request.request_id, claim, self.claim_ttl_ms, request.attempt,
                    delivery.message_id)
                if state == "claimed":
                    self._executing.add(request.request_id)
                    self._claims[request.request_id] = claim
            if state == "busy":
                # Another consumer is executing this very request: answer with its result.
                stored = await self._await_other(request.request_id, request.attempt)
            if stored is not None:
                BUS_HANDLED.labels(agent.agent_type, "replayed").inc()
                await self.bus.respond(delivery, request, stored, agent_type=agent.agent_type,
                                       store=False)
                return
            if state == "claimed":
                break
        # claimed: in _executing and _claims (renewed) until answered
        try:
            if request.expired():
                # Not executed, and not stored: a later re-send of this id still gets it done.
                BUS_HANDLED.labels(agent.agent_type, "expired").inc()
                response = self._response(request, agent_id, "timeout", 0.0,
                                          error=ErrorInfo(code=AgentErrorCode.DEADLINE_PASSED,
                                                          message="the request's deadline "
                                                          "passed before an agent could start "
                                                          "it"))
                await self.bus.respond(delivery, request, response,
                                       agent_type=agent.agent_type, store=False)
                return
            if self._ledger is not None and delivery.signature is not None:
                earlier = await self._ledger.start(delivery.signature, request, claim)
                if earlier is not None:  # this very signed message ran before: not again
                    BUS_HANDLED.labels(agent.agent_type, "already_executed").inc()
                    log.warning("refusing %s: its signed message was already started by %s",
                                request.request_id, earlier.owner or "another consumer")
                    await self.bus.respond(delivery, request, self._already_executed(
                        request, agent_id, earlier), agent_type=agent.agent_type, store=False)
                    return
            response = await self._execute(agent, agent_id, request)
            self._release_queued(request.request_id)  # the answer ends an unconverted claim
            await self._respond_through_outage(delivery, request, response, agent.agent_type)
        finally:
            self._executing.discard(request.request_id)
            self._claims.pop(request.request_id, None)
            self._release_queued(request.request_id)
        self.handled += 1

    async def _respond_through_outage(
        self, delivery: Delivery, request: AgentRequest, response: AgentResponse, agent_type: str
    ) -> None:
        """Deliver a computed response, retrying through a short Redis outage (a restart):
        losing it would mean executing the request again."""
        pause = 0.1
        deadline = time.monotonic() + 30
        while True:
            try:
                await self.bus.respond(delivery, request, response, agent_type=agent_type)
                return
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if time.monotonic() > deadline:
                    raise
                log.warning("answering %s failed (%s); retrying in %.1fs", request.request_id,
                            exc, pause)
                await asyncio.sleep(pause)
                pause = min(pause * 2, 2.0)
