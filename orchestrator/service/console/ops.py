"""The operations pages of the console: canary rollouts, agents, locks and dead letters, with
their actions (answer a canary gate, replay or purge a dead letter).

Each page renders one fragment template (the same the page includes), re-fetched by htmx when
an event of the events stream touches it (``sse:<type>`` triggers under the page's
``sse-connect``); the canary page's chart is drawn by ``static/canary.js`` from the samples in
the page and grows with each ``canary.observed`` event's samples.

Where the data comes from:

* rollouts: workflows whose input carries a ``deploy`` spec, or that are in their ``canary``
  node, read with their subgraph state (while the canary runs, its stages live in the
  subgraph's checkpoint, not yet in the parent's values);
* agents: the registry (instances), the request streams' consumer group (backlog, and what
  each instance holds unacknowledged: its concurrency in use), the shared circuit breaker,
  and the latency of the ``agent.answered`` events of the last :data:`WINDOW` seconds. The
  events, not this process's Prometheus histograms: those count only the calls this process
  made, cumulatively since it started, while the events carry every process's calls with
  their time, so the window is real and cluster-wide (bounded by what the capped stream keeps);
* locks: the locks table (holder, fencing token, expiry) and, for waiters, the
  ``lock.contended`` events of the window: waiters queue in their own process's memory only,
  so the stream is the one place that knows them across processes;
* dead letters: both kinds, the agent requests of ``ns:dlq:<type>`` (as ``orchestrator dlq``)
  and the dead runs of the service's queue (``RunService.dead_letters``).
"""

from __future__ import annotations

import contextlib
import json
import math
import time
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError
from redis.exceptions import ResponseError
from starlette.responses import RedirectResponse, Response
from starlette.routing import BaseRoute, Route

from orchestrator.bus import DecodeFailure
from orchestrator.bus.wire import FIELD, to_text
from orchestrator.errors import DeadLetterNotFound, InvalidInput
from orchestrator.messages import PRIORITIES, Event
from orchestrator.service.console.web import View, page

if TYPE_CHECKING:
    from orchestrator.service.app import ServerContext

__all__ = ["routes", "WINDOW"]

#: seconds of events the agents' latency and the locks' waiters are computed over
WINDOW = 300.0
#: at most this many events are read for one window
_EVENTS_CAP = 20_000
#: rollouts shown, most recently updated first
_ROLLOUTS = 20
#: dead letters shown per agent type, and dead runs
_LETTERS = 200

# events that re-fetch a page's fragment (the page's sse-connect filter)
CANARY_EVENTS = ("canary.stage", "canary.observed", "canary.hold", "canary.rollback",
                 "question.raised", "question.answered", "workflow.completed",
                 "workflow.failed", "workflow.resumed", "workflow.interrupted")
AGENT_EVENTS = ("agent.answered", "agent.online", "agent.offline", "breaker.opened",
                "breaker.closed")
LOCK_EVENTS = ("lock.acquired", "lock.released", "lock.contended")
LETTER_EVENTS = ("deadletter.added", "deadletter.replayed", "workflow.failed")


def routes(ctx: ServerContext) -> list[BaseRoute]:
    """The four pages, the canary fragments and the actions (none in the OpenAPI document:
    they are pages, not the API)."""
    get, post = ["GET"], ["POST"]
    table = [
        ("/console/canary", _canary, "viewer", get),
        ("/console/canary/{thread_id}", _rollout, "viewer", get),
        ("/console/canary/{thread_id}/answer", _answer_gate, "operator", post),
        ("/console/agents", _agents, "viewer", get),
        ("/console/locks", _locks, "viewer", get),
        ("/console/dead-letters", _dead_letters, "viewer", get),
        ("/console/dead-letters/runs/{run_id:int}/replay", _replay_run, "operator", post),
        ("/console/dead-letters/runs/{run_id:int}/purge", _purge_run, "admin", post),
        ("/console/dead-letters/requests/{agent}/{entry_id}/replay", _replay_request,
         "operator", post),
        ("/console/dead-letters/requests/{agent}/{entry_id}/purge", _purge_request, "admin",
         post),
    ]
    return [Route(path, page(ctx, handler, role=role), methods=methods, include_in_schema=False)
            for path, handler, role, methods in table]


def _sse(types: tuple[str, ...]) -> str:
    return "/events?types=" + ",".join(types)


# -- canary --------------------------------------------------------------------------------------


@dataclass
class Rollout:
    """One canary rollout as the page shows it."""

    thread_id: str
    workflow_type: str
    status: str  # the workflow's
    deployment: str
    canary: dict[str, Any]  # the canary's state: status, stage, percent, holds, stages...
    planned: list[int]  # the spec's stages (percent)
    question: dict[str, Any] | None  # the pending canary_gate question
    answered: str | None = None  # who answered it, while the resume is queued or running

    @property
    def stage_rows(self) -> list[dict[str, Any]]:
        """Each planned stage with its last verdict and holds: ``state`` is ``passed``,
        ``current``, ``failed`` (rolled back there) or ``pending``."""
        observed = self.canary.get("stages") or []
        failed_at = self.canary.get("failed_at")
        rows = []
        for percent in self.planned:
            seen = [s for s in observed if s.get("percent") == percent]
            last = seen[-1] if seen else None
            if failed_at == percent:
                state = "failed"
            elif last and (last["verdict"] == "healthy"
                           and (percent != self.canary.get("percent")
                                or self.canary.get("status") == "completed")):
                state = "passed"
            elif percent == self.canary.get("percent"):
                state = "current"
            else:
                state = "pending"
            rows.append({"percent": percent, "state": state,
                         "verdict": last["verdict"] if last else None,
                         "reason": last.get("reason") if last else None,
                         "holds": max(0, len(seen) - 1)})
        return rows

    @property
    def samples(self) -> list[dict[str, Any]]:
        """Every health sample of every observation, oldest first, for the chart."""
        return [_point(s, stage["percent"]) for stage in self.canary.get("stages") or []
                for s in stage.get("samples") or []]


def _point(sample: dict[str, Any], percent: int) -> dict[str, Any]:
    """A sample as a chart point: its time (epoch s), error rate, and p95 latency (the
    probe's own response time when the source reports no p95: an HTTP probe)."""
    at = sample.get("at")
    with contextlib.suppress(TypeError, ValueError):
        at = datetime.fromisoformat(at).timestamp()  # type: ignore[arg-type]
    latency = sample.get("p95_ms")
    return {"at": at, "percent": percent, "error_rate": sample.get("error_rate"),
            "latency_ms": latency if latency is not None else sample.get("response_ms"),
            "status": sample.get("status")}


async def _rollouts(ctx: ServerContext, thread_id: str | None = None) -> list[Rollout]:
    """The newest rollouts (or the one of ``thread_id``), read with their subgraph state."""
    db, namespace = ctx.orch.runtime.db, ctx.orch.settings.namespace
    rows = await db.fetch(
        """
        SELECT thread_id FROM workflows
        WHERE namespace = %s AND (%s::text IS NULL OR thread_id = %s)
          AND (jsonb_typeof(input -> 'deploy') = 'object'
               OR jsonb_typeof(input -> 'plan' -> 'deploy') = 'object'
               OR current_step = 'canary')
        ORDER BY updated_at DESC, thread_id LIMIT %s""",
        (namespace, thread_id, thread_id, _ROLLOUTS),
    )
    found = [await _rollout_of(ctx, r["thread_id"]) for r in rows]
    return [r for r in found if r is not None]


async def _rollout_of(ctx: ServerContext, thread_id: str) -> Rollout | None:
    """The rollout of a workflow; None before its canary began."""
    orch = ctx.orch
    record = await orch.runtime.workflows.get(thread_id)
    snapshot = await orch.graph(record.workflow_type).aget_state(
        {"configurable": {"thread_id": thread_id}}, subgraphs=True)
    values = dict(snapshot.values or {})
    for task in snapshot.tasks:  # a canary under way: its state is the subgraph's
        sub = getattr(task.state, "values", None)
        if task.name == "canary" and sub:
            values.update({k: sub[k] for k in ("canary", "deploy") if sub.get(k)})
    canary = values.get("canary")
    if not canary:
        return None
    deploy = values.get("deploy") or {}
    question = next((i.value for i in snapshot.interrupts
                     if isinstance(i.value, dict) and i.value.get("kind") == "canary_gate"),
                    None)
    answered = None
    if question is not None:  # answered here already: the resume waits for a runner
        answered = next((r.requested_by or "?" for r in await ctx.runs.runs(thread_id=thread_id)
                         if r.kind == "resume" and r.status in ("queued", "running")), None)
    return Rollout(thread_id, record.workflow_type, record.status,
                   canary.get("deployment") or deploy.get("name") or "?", canary,
                   list(deploy.get("stages") or []), question, answered)


async def _canary(view: View) -> Response:
    """Canary rollouts: stages, traffic, health samples, and the gate's buttons"""
    rollouts = await _rollouts(view.ctx)
    return view.render("canary.html", rollouts=rollouts, events=_sse(CANARY_EVENTS))


async def _rollout(view: View) -> Response:
    """One rollout's fragment (the page re-fetches it when an event touches it)"""
    found = await _rollouts(view.ctx, view.param("thread_id"))
    if not found:
        raise InvalidInput(f"workflow {view.param('thread_id')!r} has no canary rollout; "
                           "/console/canary lists them")
    return view.render("fragments/rollout.html", rollout=found[0])


async def _answer_gate(view: View) -> Response:
    """Answer a canary gate: continue to the next stage, or roll back"""
    thread_id, action = view.param("thread_id"), view.form.get("action", "")
    if action not in ("continue", "rollback"):
        raise InvalidInput(f"action {action!r} is not continue or rollback")
    me = view.session.identity.name
    value = {"action": action, "by": me, "reason": view.form.get("reason") or None}
    run = await view.ctx.runs.resume(thread_id, value, by=me)
    await view.audit("run.resume", thread_id, {"value": value, "run_id": run.run_id,
                                                "via": "console/canary"})
    if view.is_htmx:
        return await _rollout(view)
    return RedirectResponse("/console/canary", 303)


# -- agents --------------------------------------------------------------------------------------


@dataclass
class AgentType:
    """One agent type's row: its instances, load, circuit and latency."""

    name: str
    instances: list[dict[str, Any]] = field(default_factory=list)
    backlog: int = 0  # requests waiting or unacknowledged
    in_flight: int = 0  # delivered, not yet acknowledged
    breaker: dict[str, Any] = field(default_factory=lambda: {"state": "closed"})
    latencies: list[float] = field(default_factory=list)  # ms, answered in the window
    failed: int = 0  # answers in the window whose status was not success

    @property
    def live(self) -> int:
        return sum(1 for i in self.instances if i["live"])

    @property
    def p50(self) -> float | None:
        return _percentile(self.latencies, 50)

    @property
    def p95(self) -> float | None:
        return _percentile(self.latencies, 95)


def _percentile(values: list[float], q: float) -> float | None:
    """The nearest-rank percentile (None without values)."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)]


async def _agent_types(ctx: ServerContext) -> list[AgentType]:
    rt = ctx.orch.runtime
    types: dict[str, AgentType] = {}

    def of(name: str) -> AgentType:
        return types.setdefault(name, AgentType(name))

    for info in await rt.registry.discover(include_offline=True):
        of(info.agent_type).instances.append({**info.to_dict(), "heartbeat_at": info.heartbeat_at,
                                             "in_flight": 0})
    for target, breaker in (await rt.breaker.snapshot()).items():
        of(target).breaker = breaker
    for _, event in await _recent_events(ctx, {"agent.answered"}):
        row, data = of(str(event.data.get("target"))), event.data
        if isinstance(data.get("ms"), int | float):
            row.latencies.append(float(data["ms"]))
        if data.get("status") not in (None, "success"):
            row.failed += 1
    for row in types.values():
        row.backlog = await rt.bus.backlog(row.name)
        held = await _held_by_consumer(ctx, row.name)
        row.in_flight = sum(held.values())
        for instance in row.instances:
            instance["in_flight"] = held.get(str(instance["metadata"].get("worker")), 0)
    return sorted(types.values(), key=lambda t: t.name)


async def _held_by_consumer(ctx: ServerContext, agent_type: str) -> dict[str, int]:
    """Unacknowledged requests per consumer (a worker, by name) of the type's group, over its
    priority streams: what each instance is working on now."""
    rt = ctx.orch.runtime
    held: dict[str, int] = {}
    for priority in PRIORITIES:
        try:
            consumers = await rt.redis.xinfo_consumers(rt.bus.keys.requests(agent_type, priority),
                                                       agent_type)
        except ResponseError:  # no such stream or group yet
            continue
        for c in consumers:
            name = to_text(c.get("name") or c.get(b"name") or "")
            held[name] = held.get(name, 0) + int(c.get("pending") or c.get(b"pending") or 0)
    return held


async def _agents(view: View) -> Response:
    """Agents: instances, concurrency in use, backlog, breaker, p50/p95 latency"""
    rows = await _agent_types(view.ctx)
    template = "fragments/agents.html" if view.is_htmx else "agents.html"
    return view.render(template, agents=rows, window=int(WINDOW), events=_sse(AGENT_EVENTS))


# -- locks ---------------------------------------------------------------------------------------


async def _lock_rows(ctx: ServerContext) -> list[dict[str, Any]]:
    """Held locks with their waiters: those the window's ``lock.contended`` events name that
    have not acquired the lock since (a waiter that gave up stays listed until the window
    passes it)."""
    waiting: dict[str, dict[str, float]] = {}  # resource -> waiter -> last contended (epoch s)
    contended: dict[str, int] = {}
    for _, event in await _recent_events(ctx, {"lock.contended", "lock.acquired"}):
        resource = str(event.data.get("resource"))
        if event.type == "lock.contended":
            contended[resource] = contended.get(resource, 0) + 1
            if event.data.get("waits", True):  # a refused hold() does not wait
                waiter = str(event.data.get("waiter"))
                waiting.setdefault(resource, {})[waiter] = event.at.timestamp()
        else:
            waiting.get(resource, {}).pop(str(event.data.get("holder")), None)
    rows = []
    for lock in await ctx.orch.runtime.locks.list_locks():
        waiters = waiting.get(lock.resource, {})
        rows.append({**lock.to_dict(), "contended": contended.get(lock.resource, 0),
                     "waiters": [{"name": w, "since": datetime.fromtimestamp(at).astimezone()}
                                 for w, at in sorted(waiters.items(), key=lambda x: x[1])]})
    return rows


async def _locks(view: View) -> Response:
    """Locks: holder, fencing token, expiry, waiters"""
    rows = await _lock_rows(view.ctx)
    template = "fragments/locks.html" if view.is_htmx else "locks.html"
    return view.render(template, locks=rows, window=int(WINDOW), events=_sse(LOCK_EVENTS))


# -- dead letters --------------------------------------------------------------------------------


async def _letters(ctx: ServerContext) -> dict[str, Any]:
    bus = ctx.orch.runtime.bus
    requests = []
    for agent_type in await bus.dead_letter_types():
        for letter in await bus.dead_letters(agent_type, _LETTERS):
            requests.append({**letter, "request": _request_of(letter.get("message")),
                             "at": datetime.fromtimestamp(letter["at"]).astimezone()})
    runs = [r.to_dict() for r in await ctx.runs.dead_letters(_LETTERS)]
    return {"requests": requests, "runs": runs}


def _request_of(message: str | None) -> dict[str, Any] | None:
    """The dead letter's request, when it is readable JSON (shown: target, type, thread)."""
    if not message:
        return None
    with contextlib.suppress(ValueError):
        found = json.loads(message)
        return found if isinstance(found, dict) else None
    return None


async def _dead_letters(view: View) -> Response:
    """Dead letters: dead agent requests and dead runs, to inspect, replay or purge"""
    letters = await _letters(view.ctx)
    template = "fragments/dead_letters.html" if view.is_htmx else "dead_letters.html"
    return view.render(template, **letters, events=_sse(LETTER_EVENTS))


async def _replay_run(view: View) -> Response:
    """Queue a dead run again (a new run, same kind and payload)"""
    run_id = int(view.param("run_id"))
    me = view.session.identity.name
    run = await view.ctx.runs.replay(run_id, by=me)
    await view.audit("dead_letter.replay", str(run_id), {"run_id": run.run_id,
                                                          "thread_id": run.thread_id})
    return await _letters_after(view)


async def _purge_run(view: View) -> Response:
    """Delete a dead run"""
    run_id = int(view.param("run_id"))
    purged = await view.ctx.runs.purge(run_id, by=view.session.identity.name)
    await view.audit("dead_letter.purge", str(run_id), {"purged": purged})
    return await _letters_after(view)


async def _replay_request(view: View) -> Response:
    """Queue a dead agent request again (the same request id, a fresh deadline)"""
    agent, entry_id = view.param("agent"), view.param("entry_id")
    try:
        request = await view.ctx.orch.runtime.bus.replay_dead_letter(agent, entry_id)
    except DecodeFailure as exc:
        raise InvalidInput(f"dead letter {entry_id} of {agent!r} is not a readable request "
                           f"({exc}); purge it instead") from None
    await view.audit("dead_request.replay", f"{agent}/{entry_id}",
                     {"request_id": request.request_id, "target": request.target,
                      "request_type": request.request_type})
    return await _letters_after(view)


async def _purge_request(view: View) -> Response:
    """Delete a dead agent request"""
    agent, entry_id = view.param("agent"), view.param("entry_id")
    if not await view.ctx.orch.runtime.bus.purge_dead_letters(agent, [entry_id]):
        raise DeadLetterNotFound(f"no dead letter {entry_id} for agent type {agent!r}")
    await view.audit("dead_request.purge", f"{agent}/{entry_id}", {"purged": 1})
    return await _letters_after(view)


async def _letters_after(view: View) -> Response:
    """After a dead-letter action: the table again (htmx), or back to the page."""
    if view.is_htmx:
        return view.render("fragments/dead_letters.html", **await _letters(view.ctx))
    return RedirectResponse("/console/dead-letters", 303)


# -- the events stream ---------------------------------------------------------------------------


async def _recent_events(ctx: ServerContext, types: set[str],
                         window: float = WINDOW) -> list[tuple[str, Event]]:
    """The events of ``types`` of the last ``window`` seconds, oldest first (entry id, event).

    Stream entry ids begin with their time in ms, so the window is one XREVRANGE from
    ``now - window``; what the capped stream no longer keeps is not counted.
    """
    rt = ctx.orch.runtime
    since = int((time.time() - window) * 1000)
    entries = await rt.redis.xrevrange(rt.bus.keys.events, min=f"{since}-0", count=_EVENTS_CAP)
    found = []
    for entry_id, fields in reversed(entries):
        raw = fields.get(FIELD)
        if raw is None:
            continue
        with contextlib.suppress(ValidationError):
            event = Event.model_validate_json(raw)
            if event.type in types:
                found.append((to_text(entry_id), event))
    return found

