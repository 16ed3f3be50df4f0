"""The worker's settings and the state its parts share: handler slots, claims held, tasks."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import uuid
from collections.abc import Sequence

from ..agent import Agent
from ..bus import BlockingReader, EventBus
from ..errors import InvalidConfiguration
from ..executions import ExecutionLedger
from ..llm.services import ModelServices
from ..processes import new_process_id
from ..registry import AgentRegistry
from .capacity import _Capacity


class _WorkerState:
    """The settings of a :class:`~orchestrator.worker.Worker` and the state that its parts
    (reading, claiming, answering, autoscaling, heartbeats, stopping) share."""

    def __init__(
        self,
        bus: EventBus,
        registry: AgentRegistry,
        agents: Sequence[Agent],
        *,
        min_concurrency: int = 2,
        max_concurrency: int = 10,
        heartbeat_interval: float = 2.0,
        visibility_timeout: float = 30.0,
        max_deliveries: int = 3,
        claim_ttl: float = 30.0,
        block_ms: int = 1000,
        scale_interval: float = 0.25,
        scale_down_after: float = 2.0,
        name: str | None = None,
        chat_model: str | None = None,
        models: ModelServices | None = None,
        child_env_withhold: Sequence[str] = (),
    ) -> None:
        if not agents:
            raise InvalidConfiguration("a worker needs at least one agent; pass agents=[...]")
        if not 1 <= min_concurrency <= max_concurrency:
            raise InvalidConfiguration("need 1 <= min_concurrency <= max_concurrency")
        self.bus = bus
        self.chat_model = chat_model
        self.models = models  # what handlers' model calls use (orchestrator.llm.services)
        self.child_env_withhold = tuple(child_env_withhold)  # see orchestrator.childenv
        self.registry = registry
        self.agents = list(agents)
        self.min_concurrency = min_concurrency
        self.max_concurrency = max_concurrency
        self.heartbeat_interval = heartbeat_interval
        self.visibility_ms = int(visibility_timeout * 1000)
        self.max_deliveries = max_deliveries
        self.claim_ttl_ms = int(claim_ttl * 1000)
        self.block_ms = block_ms
        self.scale_interval = scale_interval
        self.scale_down_after = scale_down_after
        self.name = name or f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self.agent_ids = {a.agent_type: f"{a.agent_type}@{self.name}" for a in self.agents}
        # claims name the process, so a dead owner on this host is recognised at once
        self._claim_prefix = f"{new_process_id()}:{self.name}:"
        self.capacity = {a.agent_type: _Capacity(min_concurrency) for a in self.agents}
        self._stopping = asyncio.Event()
        self._loops: list[asyncio.Task[None]] = []
        # agent type -> the connection its reader blocks on, which stop() wakes
        self._readers: dict[str, BlockingReader] = {}
        self._inflight: set[asyncio.Task[None]] = set()
        self._executing: set[str] = set()  # request ids this process is executing now
        self._claims: dict[str, str] = {}  # request id -> claim, of handlers running now
        # request id -> (its queued claim "q:<message id>", the owner it becomes) of handlers
        # running on the claim their entry was sent with, until it is converted (see
        # _Claims._hold_queued), and the timers that convert them
        self._queued: dict[str, tuple[str, str]] = {}
        self._convert_timers: dict[str, asyncio.TimerHandle] = {}
        self._converter: asyncio.Task[None] | None = None
        self._due: set[str] = set()
        # message id -> (stream, agent type) of the deliveries being handled here: their idle
        # time is kept fresh (see _renew_claims), so no reclaimer takes them over
        self._running: dict[str, tuple[str, str]] = {}
        # handler task -> its agent type's capacity (the slot it holds; see _await_other)
        self._slots: dict[asyncio.Task[None], _Capacity] = {}
        self._loggers: dict[str, logging.Logger] = {}
        # with a bus secret, signed messages started are recorded where a Redis writer cannot
        # erase them, so a captured one copied back into a stream never runs twice
        self._ledger = (ExecutionLedger(registry.db, registry.namespace,
                                        retention=bus.response_retention)
                        if bus.secret else None)
        self.handled = 0

    async def _stopped_within(self, seconds: float) -> bool:
        """Sleep up to ``seconds``, waking early on stop; returns whether stopping."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), seconds)
        return self._stopping.is_set()
