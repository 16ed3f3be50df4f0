"""Execution claims: claiming requests (one round trip for a read's worth), waiting on
another consumer's claim, and renewing the claims held (and the stream entries being handled)."""

from __future__ import annotations

import asyncio
import logging

from ..agent import Agent
from ..bus import Delivery
from ..messages import AgentResponse
from ..metrics import CLAIM_RENEWAL_FAILURES, CLAIMS_LOST
from ..outage import Outage
from ..processes import process_alive
from .state import _WorkerState

log = logging.getLogger(__name__)


class _Claims(_WorkerState):
    async def _claim_batch(
        self, agent: Agent, deliveries: list[Delivery]
    ) -> dict[str, tuple[str, AgentResponse | None]]:
        """Claim the readable first deliveries among ``deliveries`` together; by message id.
        The others (and all of them when Redis fails here) are claimed by their own tasks."""
        claim = self._claim_prefix + self.agent_ids[agent.agent_type]
        batch = [d for d in deliveries if d.request is not None
                 and d.delivery_count <= self.max_deliveries]
        if not batch:
            return {}
        try:
            outcomes = await self.bus.claim_many(
                [(d.request.request_id, claim, d.request.attempt)
                 for d in batch if d.request is not None],
                self.claim_ttl_ms)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.warning("claiming %d %s requests failed: %s", len(batch), agent.agent_type, exc)
            return {}
        out = {}
        for delivery, outcome in zip(batch, outcomes, strict=True):
            if outcome[0] == "claimed" and delivery.request is not None:
                # running here from now on (see _claim_live), renewed until answered
                self._executing.add(delivery.request.request_id)
                self._claims[delivery.request.request_id] = claim
            out[delivery.message_id] = outcome
        return out

    async def _claim_live(self, request_id: str) -> bool:
        """Whether a live consumer holds the execution claim on ``request_id``."""
        owner = await self.bus.claim_owner(request_id)
        if owner is None:
            return False
        ours = owner.startswith(self._claim_prefix) and request_id not in self._executing
        if ours or _owner_dead(owner):  # ours but not running here: left by a failed attempt
            await self.bus.break_claim(request_id, owner)
            return False
        return True

    async def _await_other(self, request_id: str, attempt: int = 1) -> AgentResponse | None:
        """Wait while another live consumer executes ``request_id``; the stored response a
        delivery of ``attempt`` gets (see :meth:`EventBus.stored_response`), or None when the
        claim went away without one (then the caller claims it).

        Waiting is not handling: the caller's handler slot is given back while it waits, so a
        duplicate of a slow request never keeps the type's other requests from running. It is
        taken back before returning: at once for a stored response (answering it is one
        write), in turn with the others when the caller is to execute the request itself.
        """
        capacity = self._slots.get(asyncio.current_task())  # type: ignore[arg-type]
        if capacity is not None:
            capacity.release()
        stored: AgentResponse | None = None
        retaken = False
        try:
            pause = 0.02
            while await self._claim_live(request_id):
                stored = await self.bus.stored_response(request_id, attempt)
                if stored is not None:
                    break
                await asyncio.sleep(pause)
                pause = min(pause * 2, 0.5)
            else:
                stored = await self.bus.stored_response(request_id, attempt)
            if capacity is not None and stored is None:
                await capacity.acquire()
                retaken = True
            return stored
        finally:
            if capacity is not None and not retaken:
                capacity.in_use += 1  # the task's done callback gives it back

    async def _renew_claims(self) -> None:
        """Extend the claims this worker holds (its requests from claim to answer), all in one
        round trip, every third of the claim's ttl: a claim is renewed within ttl/3 of being
        taken, and then every ttl/3, until answered (one task for all, not one per request).

        The stream entries being handled here have their idle time reset just as often (a
        third of the visibility timeout when that is shorter): a handler running longer than
        the visibility timeout keeps its entry, and no reclaimer (this worker's included)
        delivers it again while it runs.

        A round that fails is counted (``orchestrator_claim_renewal_failures_total``) and
        logged once per outage. A claim found expired or taken over is not held any more: it
        is dropped from the renewals, counted (``orchestrator_claims_lost_total``) and logged,
        since another consumer may now run that request too."""
        interval = min(self.claim_ttl_ms, self.visibility_ms) / 3000
        claims_outage = Outage("renewing execution claims", log)
        pending_outage = Outage("keeping handled stream entries pending", log)
        while True:
            await asyncio.sleep(interval)
            if self._claims:
                claims = dict(self._claims)
                try:
                    async with asyncio.timeout(interval * 2):
                        lost = await self.bus.renew_executions(claims, self.claim_ttl_ms)
                except Exception as exc:
                    CLAIM_RENEWAL_FAILURES.labels("claims").inc()
                    claims_outage.failed(exc if str(exc) else TimeoutError("no answer in time"))
                else:
                    claims_outage.over()
                    for request_id in lost:
                        self._claim_lost(request_id, claims[request_id])
            if self._running:
                entries: dict[tuple[str, str], list[str]] = {}
                for message_id, key in list(self._running.items()):
                    entries.setdefault(key, []).append(message_id)
                try:
                    async with asyncio.timeout(interval * 2):
                        await self.bus.keep_pending(self.name, entries)
                except Exception as exc:
                    CLAIM_RENEWAL_FAILURES.labels("pending").inc()
                    pending_outage.failed(exc if str(exc) else TimeoutError("no answer in time"))
                else:
                    pending_outage.over()

    def _claim_lost(self, request_id: str, claim: str) -> None:
        if self._claims.get(request_id) != claim:
            return  # answered meanwhile: its claim ended with it
        del self._claims[request_id]
        CLAIMS_LOST.inc()
        log.warning("the execution claim on request %s expired or was taken over while its "
                    "handler runs: another consumer may run it too (its answer is still sent; "
                    "a worker stalled longer than the claim ttl, or Redis lost the key)",
                    request_id)


def _owner_dead(owner: str) -> bool:
    """A claim owner (``<process id>:<worker>:<agent id>``) whose process provably is gone
    (:func:`processes.process_alive`). Any other owner (another host or pid namespace, an
    older version's ``host:pid:...``) is trusted until its claim's TTL runs out."""
    return process_alive(owner.partition(":")[0]) is False
