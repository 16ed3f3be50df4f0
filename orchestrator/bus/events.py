"""Broadcast events: one capped stream for observers (``workflow.*``, ``task.delegated``,
``resource.locked``...)."""

from __future__ import annotations

import contextlib
import logging
from typing import Any

from pydantic import ValidationError
from redis.asyncio import Redis

from ..messages import Event
from .keys import BusKeys
from .wire import FIELD, encode

__all__ = ["Events"]

log = logging.getLogger(__name__)


class Events:
    """The events stream of :class:`~orchestrator.bus.EventBus` (a part of it, not used alone)."""

    redis: Redis
    keys: BusKeys
    secret: bytes | None
    process_id: str
    events_maxlen: int

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
                events.append(Event.model_validate_json(fields.get(FIELD, b"")))
        return events
