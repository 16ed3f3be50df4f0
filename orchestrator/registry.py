"""The agent registry: live agent instances in PostgreSQL.

Instances register, heartbeat and deregister. An instance whose heartbeat is older than
``offline_after`` is offline: discovery ignores it at once, and :meth:`AgentRegistry.sweep`
marks it so in the table.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from psycopg.types.json import Jsonb

from orchestrator.state.db import Database

__all__ = ["AgentInfo", "AgentRegistry"]

log = logging.getLogger(__name__)

_COLUMNS = (
    "agent_id, agent_type, capabilities, version, host, pid, status, metadata, started_at, "
    "heartbeat_at"
)


@dataclass(frozen=True)
class AgentInfo:
    agent_id: str
    agent_type: str
    capabilities: list[str]
    version: str
    host: str
    pid: int
    status: str
    metadata: dict[str, Any]
    started_at: datetime
    heartbeat_at: datetime
    live: bool

    def to_dict(self) -> dict[str, Any]:
        data = dict(self.__dict__)
        data["started_at"] = self.started_at.isoformat()
        data["heartbeat_at"] = self.heartbeat_at.isoformat()
        return data


class AgentRegistry:
    def __init__(self, db: Database, namespace: str, *, offline_after: float) -> None:
        self.db = db
        self.namespace = namespace
        self.offline_after = offline_after
        # agent type -> (monotonic time, live?) so hot call paths do not query every time
        self._live_cache: dict[str, tuple[float, bool]] = {}
        # the one query in flight per agent type, shared by every caller that misses the cache
        # meanwhile (thousands of calls waiting when it expires asked one each: 9% of a 1,000-
        # workflow run's CPU, measured with py-spy in bench.growth)
        self._live_pending: dict[str, asyncio.Future[bool]] = {}

    async def register(
        self,
        agent_id: str,
        agent_type: str,
        *,
        capabilities: list[str] | tuple[str, ...] = (),
        version: str = "",
        metadata: dict[str, Any] | None = None,
    ) -> None:
        await self.db.execute(
            """
            INSERT INTO agents (agent_id, namespace, agent_type, capabilities, version, host, pid,
                                status, metadata, started_at, heartbeat_at)
            VALUES (%s, %s, %s, %s, %s, %s, %s, 'online', %s, now(), now())
            ON CONFLICT (agent_id) DO UPDATE SET status = 'online', heartbeat_at = now()""",
            (
                agent_id,
                self.namespace,
                agent_type,
                list(capabilities),
                version,
                socket.gethostname(),
                os.getpid(),
                Jsonb(metadata or {}),
            ),
        )
        self._forget_live(agent_type)
        log.info("registered agent %s (%s)", agent_id, agent_type)

    async def heartbeat(self, agent_ids: list[str]) -> int:
        """Refresh the heartbeat of these instances; returns how many still exist."""
        if not agent_ids:
            return 0
        return await self.db.execute(
            "UPDATE agents SET heartbeat_at = now(), status = "
            "CASE WHEN status = 'offline' THEN 'online' ELSE status END "
            "WHERE agent_id = ANY(%s)",
            (agent_ids,),
        )

    async def set_status(self, agent_id: str | list[str], status: str) -> None:
        """Set the status of one instance, or of several in one statement."""
        ids = [agent_id] if isinstance(agent_id, str) else agent_id
        await self.db.execute("UPDATE agents SET status = %s WHERE agent_id = ANY(%s)",
                              (status, ids))

    async def deregister(self, agent_id: str | list[str]) -> None:
        """Remove one instance, or several in one statement."""
        ids = [agent_id] if isinstance(agent_id, str) else agent_id
        await self.db.execute("DELETE FROM agents WHERE agent_id = ANY(%s)", (ids,))
        self._forget_live()

    async def sweep(self) -> dict[str, str]:
        """Mark instances with missed heartbeats offline; returns their ids, each with its
        agent type."""
        rows = await self.db.fetch(
            """
            UPDATE agents SET status = 'offline'
            WHERE namespace = %s AND status <> 'offline'
              AND heartbeat_at < now() - make_interval(secs => %s)
            RETURNING agent_id, agent_type""",
            (self.namespace, self.offline_after),
        )
        return {r["agent_id"]: r["agent_type"] for r in rows}

    async def discover(
        self,
        agent_type: str | None = None,
        capability: str | None = None,
        *,
        include_offline: bool = False,
    ) -> list[AgentInfo]:
        """Instances of ``agent_type`` (any when None) having ``capability`` (any when None)."""
        rows = await self.db.fetch(
            f"""
            SELECT {_COLUMNS},
                   (status <> 'offline'
                    AND heartbeat_at >= now() - make_interval(secs => %s)) AS live
            FROM agents
            WHERE namespace = %s
              AND (%s::text IS NULL OR agent_type = %s)
              AND (%s::text IS NULL OR %s = ANY(capabilities))
            ORDER BY agent_type, started_at, agent_id""",
            (self.offline_after, self.namespace, agent_type, agent_type, capability, capability),
        )
        agents = [AgentInfo(**r) for r in rows]
        return agents if include_offline else [a for a in agents if a.live]

    async def has_live(self, agent_type: str, *, max_age: float = 1.0) -> bool:
        """Whether a live instance of ``agent_type`` exists (cached for ``max_age`` seconds;
        callers that miss the cache together share one query)."""
        now = time.monotonic()
        cached = self._live_cache.get(agent_type)
        if cached is not None and now - cached[0] < max_age:
            return cached[1]
        pending = self._live_pending.get(agent_type)
        if pending is None:
            pending = asyncio.ensure_future(self._query_live(agent_type))
            self._live_pending[agent_type] = pending
            pending.add_done_callback(lambda done: self._query_done(agent_type, done))
        # shielded: one caller's cancellation does not cancel the others' answer
        return await asyncio.shield(pending)

    async def _query_live(self, agent_type: str) -> bool:
        asked = time.monotonic()
        live = bool(await self.discover(agent_type))
        if self._live_pending.get(agent_type) is asyncio.current_task():
            self._live_cache[agent_type] = (asked, live)  # not forgotten meanwhile
        return live

    def _query_done(self, agent_type: str, done: asyncio.Future[bool]) -> None:
        if self._live_pending.get(agent_type) is done:
            del self._live_pending[agent_type]
        if not done.cancelled():
            done.exception()  # retrieved: every caller may have given up waiting

    def _forget_live(self, agent_type: str | None = None) -> None:
        """Drop what is cached (and the query in flight, whose answer may predate a change)."""
        if agent_type is None:
            self._live_cache.clear()
            self._live_pending.clear()
        else:
            self._live_cache.pop(agent_type, None)
            self._live_pending.pop(agent_type, None)
