"""A workflow's timeline: its events from the events stream (steps with their durations, agent
calls with latency, status and attempt, questions and answers, lifecycle), oldest first.

The stream is one capped stream for the whole namespace, so this reads its newest entries
(at most :data:`SCAN`) and keeps those of the thread; each entry keeps its stream id, the
``data-event-id`` the live page and the SSE stream share.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from orchestrator.bus.wire import FIELD

__all__ = ["SCAN", "TimelineEntry", "thread_events"]

#: how many of the newest stream entries a run page looks through
SCAN = 5000


@dataclass(frozen=True)
class TimelineEntry:
    id: str
    type: str
    at: str
    summary: str
    duration: str
    retry: bool
    failed: bool
    data: dict[str, Any]


async def thread_events(redis: Any, stream: str, thread_id: str) -> list[TimelineEntry]:
    """The thread's events among the stream's newest :data:`SCAN`, oldest first."""
    entries = await redis.xrevrange(stream, count=SCAN)
    found = []
    for entry_id, fields in reversed(entries):
        try:
            event = json.loads(fields.get(FIELD, b"{}"))
        except (json.JSONDecodeError, UnicodeDecodeError):
            continue
        data = event.get("data") or {}
        if not isinstance(data, dict) or data.get("thread_id") != thread_id:
            continue
        sid = entry_id.decode() if isinstance(entry_id, bytes) else str(entry_id)
        found.append(_entry(sid, str(event.get("type", "")), str(event.get("at", "")), data))
    return found


def _entry(sid: str, kind: str, at: str, data: dict[str, Any]) -> TimelineEntry:
    duration, retry = "", False
    if "seconds" in data:
        duration = f"{float(data['seconds']):.2f} s"
    elif "ms" in data:
        duration = f"{float(data['ms']):.0f} ms"
    attempt = data.get("attempt")
    if isinstance(attempt, int) and attempt > 1:
        retry = True
    subject = (data.get("node") or data.get("target") or data.get("kind")
               or data.get("resource") or data.get("deployment") or "")
    detail = [str(data[k]) for k in ("request_type", "status", "question", "by", "stage",
                                     "percent", "verdict", "reason") if data.get(k) is not None]
    if retry:
        detail.append(f"attempt {attempt}")
    if data.get("error"):
        detail.append(str(data["error"])[:500])
    summary = " · ".join(str(p) for p in (subject, *detail) if p != "")
    failed = kind.endswith(".failed") or data.get("status") in ("error", "failed", "timeout")
    return TimelineEntry(sid, kind, at, summary, duration, retry, failed, data)
