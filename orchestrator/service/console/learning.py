"""What the console shows of learning: the reason behind each learned runbook choice of a
``self_healing`` run, and the ETA of each running plan.

Both are read from the run's state, where the workflows put them
(``orchestrator.learning``): ``healing["choices"]`` (one entry per fix decision: the issue,
the action chosen, the order of the allowed actions, the reason, e.g. "`reload`: 9 of 10
verified recoveries from `latency` on `web`", what a person's rule excluded) and a plan's
``eta`` (``seconds_left``, ``finish_at``, ``revised_at``, ``done``, ``total``, ``basis``),
revised at each dispatch and completed task. The runs list reads the state of only the
running plans among the rows it shows.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from orchestrator.service.console.listing import RunRow
from orchestrator.service.console.web import waited

__all__ = ["PLAN_WORKFLOWS", "choices_of", "eta_of", "learned", "with_etas"]

log = logging.getLogger(__name__)

#: the workflows whose state carries a plan's ``eta``
PLAN_WORKFLOWS = ("plan_execution",)


def _when(text: Any) -> datetime | None:
    try:
        when = datetime.fromisoformat(str(text))
    except ValueError:
        return None
    return when if when.tzinfo else when.replace(tzinfo=UTC)


def eta_of(values: Mapping[str, Any], now: datetime | None = None) -> dict[str, Any] | None:
    """A plan's ETA as the console shows it, or None when its state has none: ``left`` (a
    short duration, ``0s`` once due), ``finish_at`` (ISO), ``done``/``total`` tasks, the
    ``basis`` (learned, estimates, unknown) and ``revised`` (how long ago)."""
    eta = values.get("eta")
    if not isinstance(eta, Mapping) or eta.get("seconds_left") is None:
        return None
    now = now or datetime.now(UTC)
    left = max(0.0, float(eta["seconds_left"]))
    revised = _when(eta.get("revised_at"))
    return {"left": waited(now - timedelta(seconds=left), now),
            "seconds_left": left,
            "finish_at": eta.get("finish_at"),
            "done": eta.get("done"), "total": eta.get("total"),
            "basis": eta.get("basis") or "unknown",
            "revised": waited(revised, now) if revised else None}


def choices_of(values: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The learned runbook choices of a ``self_healing`` run, oldest first: attempt, issue,
    the action chosen (its key; none: escalated), the order of the allowed actions, the
    reason, and what a person's rules excluded."""
    healing = values.get("healing")
    if not isinstance(healing, Mapping):
        return []
    return [{"attempt": c.get("attempt"), "issue": c.get("issue"),
             "action_key": c.get("action_key"), "order": list(c.get("order") or []),
             "reason": c.get("reason") or "", "excluded": list(c.get("excluded") or []),
             "at": c.get("at")}
            for c in healing.get("choices") or [] if isinstance(c, Mapping)]


def learned(workflow_type: str, status: str, values: Mapping[str, Any]) -> dict[str, Any]:
    """What a run's page shows of learning: ``choices`` (self_healing) and ``eta`` (a running
    plan; None otherwise)."""
    return {"choices": choices_of(values) if workflow_type == "self_healing" else [],
            "eta": eta_of(values) if workflow_type in PLAN_WORKFLOWS and status == "running"
            else None}


async def with_etas(orch: Any, rows: Sequence[RunRow]) -> list[RunRow]:
    """``rows`` with the ETA of each running plan among them (read from its state; the other
    rows are left as they are). A state that cannot be read leaves the row without one."""

    async def one(row: RunRow) -> RunRow:
        if row.status != "running" or row.workflow_type not in PLAN_WORKFLOWS:
            return row
        try:
            details = await orch.get(row.thread_id)
        except Exception:  # noqa: BLE001 - a list row without its ETA is still a row
            log.warning("the ETA of %s could not be read", row.thread_id, exc_info=True)
            return row
        return dataclasses.replace(row, eta=eta_of(details.values))

    return list(await asyncio.gather(*(one(r) for r in rows)))
