"""The event-bus protocol: ``AgentRequest`` and ``AgentResponse`` (pydantic, validated at the
trust boundary) and the broadcast ``Event``."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

__all__ = [
    "AgentRequest",
    "AgentResponse",
    "ErrorInfo",
    "Event",
    "Priority",
    "PRIORITIES",
    "ResponseStatus",
]

Priority = Literal["high", "normal", "low"]
#: Served in this order: a queued high request goes before queued normal ones.
PRIORITIES: tuple[Priority, ...] = ("high", "normal", "low")
ResponseStatus = Literal["success", "error", "timeout", "rejected", "dead_lettered"]


def _utcnow() -> datetime:
    return datetime.now(UTC)


class AgentRequest(BaseModel):
    """A request from a graph node (or any client) to an agent type."""

    model_config = ConfigDict(extra="forbid")

    request_id: str = Field(default_factory=lambda: str(uuid.uuid4()), min_length=1)
    source: str = Field(min_length=1, description="who asks: the orchestrator process id")
    target: str = Field(pattern=r"^[A-Za-z0-9_.-]+$", description="agent type")
    request_type: str = Field(min_length=1)
    payload: dict[str, Any] = Field(default_factory=dict)
    priority: Priority = "normal"
    #: timezone-aware (a naive time is refused at decode: it has no single meaning)
    deadline: AwareDatetime | None = None
    correlation_id: str | None = Field(None, description="the workflow's thread id")
    attempt: int = Field(1, ge=1)
    reply_to: str = Field(min_length=1, description="stream the response goes to")
    fencing: dict[str, int] = Field(
        default_factory=dict, description="resource -> fencing token of each lock held"
    )
    created_at: AwareDatetime = Field(default_factory=_utcnow)

    def expired(self, now: datetime | None = None) -> bool:
        return self.deadline is not None and (now or _utcnow()) >= self.deadline


class ErrorInfo(BaseModel):
    model_config = ConfigDict(extra="forbid")

    code: str
    message: str
    retryable: bool = False
    #: the agent says the request itself is at fault (a patch that does not apply, a failing
    #: command of the user's): the agent is healthy, so its circuit breaker does not count it
    blames_input: bool = False
    #: what the requester needs to act on the error (a budget's scope, limit and spent...)
    details: dict[str, Any] | None = None


class AgentResponse(BaseModel):
    model_config = ConfigDict(extra="forbid")

    request_id: str
    source: str = Field(description="the agent instance that answered")
    status: ResponseStatus
    result: Any = None
    error: ErrorInfo | None = None
    processing_ms: float = 0.0


class Event(BaseModel):
    """An event of the capped events stream (``workflow.*``, ``step.*``, ``agent.*``,
    ``lock.*``...: the catalogue is in :mod:`orchestrator.bus.events`)."""

    model_config = ConfigDict(extra="forbid")

    type: str
    source: str
    data: dict[str, Any] = Field(default_factory=dict)
    at: datetime = Field(default_factory=_utcnow)
