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

#: How long a handler runs on the claim queued with its request before that claim is made its
#: worker's own: as soon as it first waits. A handler that returns without waiting (a no-op,
#: a refusal) is answered first, which ends the claim: no round trip at all.
CONVERT_AFTER_S = 0.0
#: How long a conversion that failed (Redis away) waits before it is tried again; the queued
#: claim lasts until its request's deadline meanwhile.
CONVERT_RETRY_S = 0.2


class _Claims(_WorkerState):
    async def _claim_batch(
        self, agent: Agent, deliveries: list[Delivery]
    ) -> dict[str, tuple[str, AgentResponse | None]]:
        """Claim the readable first deliveries among ``deliveries`` together; by message id.
        The others (and all of them when Redis fails here) are claimed by their own tasks."""
        claim = self._claim_prefix + self.agent_ids[agent.agent_type]
        out: dict[str, tuple[str, AgentResponse | None]] = {}
        batch = []
        for d in deliveries:
            if d.request is None or d.delivery_count > self.max_deliveries:
                continue
            if d.holds_queued_claim and d.request.request_id not in self._executing:
                self._hold_queued(d.request.request_id, d.message_id, claim)
                out[d.message_id] = ("claimed", None)
            else:
                batch.append(d)
        if not batch:
            return out
        try:
            outcomes = await self.bus.claim_many(
                [(d.request.request_id, claim, d.request.attempt, d.message_id)
                 for d in batch if d.request is not None],
                self.claim_ttl_ms)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.warning("claiming %d %s requests failed: %s", len(batch), agent.agent_type, exc)
            return out
        for delivery, outcome in zip(batch, outcomes, strict=True):
            if outcome[0] == "claimed" and delivery.request is not None:
                # running here from now on (see _claim_live), renewed until answered
                self._executing.add(delivery.request.request_id)
                self._claims[delivery.request.request_id] = claim
            out[delivery.message_id] = outcome
        return out

    def _hold_queued(self, request_id: str, message_id: str, owner: str) -> None:
        """Run ``request_id`` on the claim its stream entry ``message_id`` was sent with
        (``q:<message id>``, taken atomically with the entry: SEND_LUA), delivered here first:
        no round trip before its handler. A handler still running once it first waits has the
        claim made ``owner``'s (then renewed like any claim, and a dead owner recognised at
        once, as before); one that returned already is answered, which ends the claim.

        Should this process die before the conversion lands (a handler's first steps), the
        claim stays queued: its entry, taken over by a reclaimer after the visibility timeout,
        carries it on (CLAIM_MANY_LUA); a re-sent copy of the request waits for that."""
        self._executing.add(request_id)
        self._queued[request_id] = (f"q:{message_id}", owner)
        self._convert_timers[request_id] = asyncio.get_running_loop().call_later(
            CONVERT_AFTER_S, self._convert_due, request_id)

    def _release_queued(self, request_id: str) -> None:
        """The handler ended: its queued claim (if unconverted) ended with its answer."""
        self._queued.pop(request_id, None)
        self._due.discard(request_id)
        timer = self._convert_timers.pop(request_id, None)
        if timer is not None:
            timer.cancel()

    def _convert_due(self, request_id: str) -> None:
        self._convert_timers.pop(request_id, None)
        if request_id not in self._queued:
            return
        self._due.add(request_id)
        if self._converter is None:
            self._converter = asyncio.create_task(self._convert(), name="claim-converter")

    async def _convert(self) -> None:
        """Convert the due queued claims, all in one round trip a time (until none is due)."""
        outage = Outage("converting queued execution claims", log)
        try:
            while self._due:
                due = {r: self._queued[r] for r in self._due if r in self._queued}
                self._due.clear()
                if not due:
                    continue
                try:
                    lost = set(await self.bus.convert_claims(due, self.claim_ttl_ms))
                except asyncio.CancelledError:
                    raise
                except Exception as exc:  # tried again in a moment: the queued claim lasts
                    outage.failed(exc)
                    await asyncio.sleep(CONVERT_RETRY_S)
                    self._due.update(r for r in due if r in self._queued)
                    continue
                outage.over()
                for request_id, (queued, owner) in due.items():
                    if self._queued.pop(request_id, None) is None:
                        continue  # answered meanwhile: its claim ended with it
                    if request_id in lost:
                        self._claims[request_id] = queued
                        self._claim_lost(request_id, queued)
                    else:
                        self._claims[request_id] = owner  # renewed from now on
        finally:
            self._converter = None

    async def _claim_live(self, request_id: str, message_id: str = "") -> bool:
        """Whether a live consumer holds the execution claim on ``request_id``. A claim queued
        with the stream entry ``message_id`` being handled here is not: the stream delivered
        that entry here, so whoever had it before let it go (it is dropped)."""
        owner = await self.bus.claim_owner(request_id)
        if owner is None:
            return False
        ours = owner.startswith(self._claim_prefix) and request_id not in self._executing
        left = bool(message_id) and owner == f"q:{message_id}"
        if ours or left or _owner_dead(owner):  # ours but not running here: a failed attempt
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
