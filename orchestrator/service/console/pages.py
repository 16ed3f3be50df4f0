"""The runs list and a run's page, with the fragments the live updates re-fetch.

``/console/`` lists workflows (:mod:`.listing`); ``/console/runs/{thread_id}`` shows one: its
graph with each node's state (:mod:`.graph`), the timeline (:mod:`.timeline`), the state at
any checkpoint (``?checkpoint=ID``), the named checkpoints with restore, the error log and the
result, and what learning decided (:mod:`.learning`: the reason behind each runbook choice of a
self_healing run; a running plan's ETA, in the list too). ``…/rows/{thread_id}`` and ``…/runs/{thread_id}/live`` are the fragments an event
re-renders: the same templates the pages include.
"""

from __future__ import annotations

import dataclasses
import json
from typing import TYPE_CHECKING, Any

from starlette.responses import RedirectResponse, Response
from starlette.routing import BaseRoute, Route

from orchestrator.errors import InvalidInput
from orchestrator.service.console import graph as drawing
from orchestrator.service.console.inbox import question_of
from orchestrator.service.console.learning import learned, with_etas
from orchestrator.service.console.listing import ATTENTION, list_runs, run_row
from orchestrator.service.console.timeline import thread_events
from orchestrator.service.console.web import View, page

if TYPE_CHECKING:
    from orchestrator.service.app import ServerContext

__all__ = ["routes", "PAGE_SIZE", "STATUSES"]

PAGE_SIZE = 50
#: the status filter's choices: the workflow statuses, and "needs attention"
STATUSES = ("attention", "queued", "running", "interrupted", "completed", "failed", "cancelled")
#: the longest state or result a page shows (characters of its JSON)
_SHOW = 100_000


def _pretty(value: Any) -> str:
    text = json.dumps(value, indent=2, sort_keys=True, default=str)
    return text if len(text) <= _SHOW else text[:_SHOW] + "\n… (cut: GET /runs/{id} has it all)"


def routes(ctx: ServerContext) -> list[BaseRoute]:
    db, namespace = ctx.orch.runtime.db, ctx.orch.settings.namespace

    def filters(view: View) -> dict[str, Any]:
        q = view.request.query_params
        status = q.get("status") or None
        if status is not None and status not in STATUSES:
            raise InvalidInput(f"status {status!r} is not one of {', '.join(STATUSES)}")
        try:
            number = max(1, int(q.get("page") or 1))
        except ValueError:
            raise InvalidInput(f"page {q.get('page')!r} is not a whole number") from None
        return {"status": status, "workflow": q.get("workflow") or None,
                "search": (q.get("q") or "").strip() or None, "page": number}

    async def table_values(view: View) -> dict[str, Any]:
        chosen = filters(view)
        listed = await list_runs(db, namespace, size=PAGE_SIZE, **chosen)
        listed = dataclasses.replace(listed, rows=await with_etas(ctx.orch, listed.rows))
        types = [r["workflow_type"] for r in await db.fetch(
            "SELECT DISTINCT workflow_type FROM workflows WHERE namespace = %s ORDER BY 1",
            (namespace,))]
        return {"listed": listed, "chosen": chosen, "statuses": STATUSES, "types": types,
                "attention": ATTENTION}

    async def runs_list(view: View) -> Response:
        """The runs: needs attention first, filters, search, pages"""
        return view.render("runs.html", **await table_values(view))

    async def runs_table(view: View) -> Response:
        """The runs table alone (filters and live updates re-fetch it)"""
        return view.render("fragments/runs_table.html", **await table_values(view))

    async def runs_row(view: View) -> Response:
        """One row of the runs table (a live update of one workflow)"""
        row = await run_row(db, namespace, view.param("thread_id"))
        if row is None:
            return Response(status_code=204)
        [row] = await with_etas(ctx.orch, [row])
        return view.render("fragments/run_row.html", row=row)

    async def run_values(view: View) -> dict[str, Any]:
        thread_id = view.param("thread_id")
        details = await ctx.orch.get(thread_id)
        record = details.record
        history = await ctx.orch.history(thread_id)
        events = await thread_events(ctx.orch.runtime.redis, ctx.orch.runtime.bus.keys.events,
                                     thread_id)
        failed_nodes = [e.data.get("node") for e in events if e.type == "step.failed"]
        compiled = ctx.orch.graph(record.workflow_type)
        plain = compiled.get_graph()
        states = drawing.node_states(plain.nodes, [h.next for h in history], record.status,
                                     [n for n in failed_nodes if n])
        chosen = view.request.query_params.get("checkpoint") or None
        if chosen is not None and chosen not in {h.checkpoint_id for h in history}:
            raise InvalidInput(f"workflow {thread_id} has no checkpoint {chosen!r}; its "
                               "checkpoints are listed on its page")
        if chosen is None:
            values = details.values
        else:
            snapshot = await compiled.aget_state({"configurable": {
                "thread_id": thread_id, "checkpoint_ns": "", "checkpoint_id": chosen}})
            values = dict(snapshot.values or {})
        runs = await ctx.runs.runs(thread_id=thread_id, limit=50)
        errors = ([{"where": "workflow", "error": record.error}] if record.error else []) + [
            {"where": f"run {r.run_id} ({r.kind}, attempt {r.attempts})", "error": r.error}
            for r in runs if r.error] + [
            {"where": f"step {e.data.get('node')}", "error": e.data.get("error")}
            for e in events if e.type == "step.failed"]
        return {
            "record": record, "drawing": drawing.draw(plain, states), "events": events,
            "history": list(reversed(history)), "chosen": chosen, "state": _pretty(values),
            "runs": runs, "errors": errors, "pretty": _pretty,
            "question": await question_of(ctx, thread_id),
            "learned": learned(record.workflow_type, record.status, values),
        }

    async def run_page(view: View) -> Response:
        """A run: graph, timeline, state at any checkpoint, restore, errors, result"""
        return view.render("run.html", **await run_values(view))

    async def run_live(view: View) -> Response:
        """The live part of a run's page (an event about the run re-fetches it)"""
        return view.render("fragments/run_live.html", **await run_values(view))

    async def restore(view: View) -> Response:
        """Restore a named checkpoint (operator)"""
        thread_id, name = view.param("thread_id"), view.form.get("name", "")
        if not name:
            raise InvalidInput("restore needs the checkpoint's name (the form's `name` field)")
        checkpoint_id = await ctx.orch.restore_checkpoint(thread_id, name)
        await view.audit("checkpoint.restore", thread_id,
                         {"name": name, "checkpoint_id": checkpoint_id, "via": "console"})
        return RedirectResponse(f"/console/runs/{thread_id}", 303)

    return [
        Route("/console/", page(ctx, runs_list), methods=["GET"]),
        Route("/console/fragments/runs", page(ctx, runs_table), methods=["GET"]),
        Route("/console/fragments/rows/{thread_id}", page(ctx, runs_row), methods=["GET"]),
        Route("/console/runs/{thread_id}", page(ctx, run_page), methods=["GET"]),
        Route("/console/runs/{thread_id}/live", page(ctx, run_live), methods=["GET"]),
        Route("/console/runs/{thread_id}/restore", page(ctx, restore, role="operator"),
              methods=["POST"]),
    ]
