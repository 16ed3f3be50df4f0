"""``orchestrator estimate PLAN [--json]``: tokens and cost of a plan's model calls, before
it runs, per task and in total.

A task given only a ``description`` is written by the developer's chat model (one call on
its first attempt, prompt ``developer_write``); a task with ``content``, ``patch`` or
``command`` calls no model then. For each model call the estimate takes what
``plan_execution`` and the developer will do:

* the tier ``plan_execution`` gives the task (:func:`choose_tier`: the lines the plan gives,
  its dependents and dependencies in the plan's task graph, new or fix, first attempt), and the
  model configured for the developer at that tier;
* input tokens from the prompt the developer will send: the template filled with the
  description, the files of the tasks it depends on (as the plan gives them, as they are now,
  or, for one a model will write first, that task's estimated output) and the tests that
  import the file, at :data:`CHARS_PER_TOKEN` characters a token;
* output tokens: for a fix of an existing file, the file as it is now (the model answers the
  whole file); otherwise the median output of the ledger's earlier ``write`` calls of the
  developer at that tier when there are some, else :data:`NEW_FILE_TOKENS`;
* the model's price (``ORCHESTRATOR_PRICES_FILE``, then genai-prices); a model with no known
  price has no cost (null), never $0, and the total says how many calls it leaves out.

The ledger is read when ``ORCHESTRATOR_DATABASE_URL`` is set (an estimate starts no embedded
database); when it cannot be read, the estimate says so and goes on without history. Fix
attempts after a failed QA are not counted: they happen only when a first attempt fails.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
from collections.abc import Callable, Mapping, Sequence
from decimal import Decimal
from pathlib import Path
from typing import Any, TextIO

from .exits import EXIT_OK

__all__ = ["CHARS_PER_TOKEN", "NEW_FILE_TOKENS", "cmd_estimate", "estimate_plan"]

#: characters per token for text and code in English (OpenAI's rule of thumb; tokenizers differ)
CHARS_PER_TOKEN = 4
#: output tokens of a new file when the ledger has no history (a file of about 150 lines)
NEW_FILE_TOKENS = 1500
#: the ledger's most recent developer writes an estimate learns from
_HISTORY_ROWS = 500

_HISTORY = """
SELECT tier, output_tokens FROM model_calls
WHERE namespace = %(ns)s AND agent_type = 'developer' AND purpose = 'write'
  AND output_tokens IS NOT NULL AND tier IS NOT NULL
ORDER BY id DESC LIMIT %(limit)s
"""


def _tokens(chars: int) -> int:
    return -(-chars // CHARS_PER_TOKEN)  # ceiling: a started token is a token


def _read(repo: Path, rel: str) -> str | None:
    try:
        return (repo / rel).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None


def _shown(texts: Mapping[str, str]) -> str:
    """Files as the developer's prompt shows them (fenced under their names)."""
    from orchestrator.agents.lib.prompts import fenced_file

    return "\n\n".join(fenced_file(rel, text) for rel, text in texts.items()) or "(none)"


def estimate_plan(plan: Any, deps: Mapping[str, Sequence[str]],
                  tests: Mapping[str, Sequence[str]], *,
                  spec_for: Callable[[str], str | None], price_for: Callable[[str], Any],
                  history: Mapping[str, Sequence[int]] | None = None) -> dict[str, Any]:
    """The estimate of ``plan`` (a :class:`~orchestrator.workflows.plans.Plan`).

    Args:
        deps: ``task id -> ids of the tasks it depends on`` (the plan's task graph).
        tests: ``task id -> the test files importing its file``.
        spec_for: ``tier -> the developer's model spec, or None``.
        price_for: ``spec -> Price or None``.
        history: ``tier -> output tokens of earlier developer writes`` from the ledger.
    """
    from orchestrator.agents.lib.prompts import fenced_file, render_prompt

    from ..llm.tiers import choose_tier

    repo = Path(plan.repo)
    history = history or {}
    by_id = {t.id: t for t in plan.tasks}
    current = {t.id: _read(repo, t.file) for t in plan.tasks}
    writes = {t.id for t in plan.tasks
              if all(v is None for v in (t.content, t.patch, t.command))}
    rows: dict[str, dict[str, Any]] = {}
    for task in plan.tasks:  # first the tier and output of each task...
        given = task.content if task.content is not None else task.patch
        tier, reason = choose_tier(
            len(given.splitlines()) if given else 0,
            fan_in=sum(1 for d in deps.values() if task.id in d),
            fan_out=len(deps.get(task.id, ())), is_new=task.kind == "new")
        row = rows[task.id] = {"id": task.id, "file": task.file, "tier": tier,
                               "tier_reason": reason, "model": None, "calls": 0,
                               "input_tokens": 0, "output_tokens": 0, "cost_usd": None,
                               "basis": None}
        seen = history.get(tier) or []
        if task.id not in writes:
            row.update(cost_usd=0.0, basis="no model call: the task gives its change")
        elif (spec := spec_for(tier)) is None:
            row["basis"] = "no model configured for this tier"
        elif task.kind == "fix" and current[task.id]:
            row.update(model=spec, calls=1, output_tokens=_tokens(len(current[task.id])),
                       basis="output: the file as it is now")
        elif seen:
            row.update(model=spec, calls=1, output_tokens=int(statistics.median(seen)),
                       basis=f"output: median of {len(seen)} earlier {tier} writes in the ledger")
        else:
            row.update(model=spec, calls=1, output_tokens=NEW_FILE_TOKENS,
                       basis=f"output: {NEW_FILE_TOKENS} tokens (no history)")
    unpriced, total_cost = 0, Decimal(0)
    for task in plan.tasks:  # ...then its prompt, which holds what its dependencies wrote
        row = rows[task.id]
        if not row["calls"]:
            continue
        shown, later = {}, 0  # dependency files as they will be when the task runs
        for dep in (by_id[d] for d in deps.get(task.id, ())):
            text = dep.content if dep.content is not None else current[dep.id]
            if dep.id in writes and rows[dep.id]["calls"]:
                later += rows[dep.id]["output_tokens"] * CHARS_PER_TOKEN
            elif text is not None:
                shown[dep.file] = text
        _, messages = render_prompt(
            "developer_write", file=task.file, task_id=task.id, kind=task.kind,
            description=task.description,
            current=fenced_file(task.file, current[task.id]), dependencies=_shown(shown),
            tests=_shown({f: t for f in tests.get(task.id, ()) if (t := _read(repo, f))}))
        row["input_tokens"] = _tokens(sum(len(m.content) for m in messages) + later)
        price = price_for(row["model"])
        if price is None:
            unpriced += 1
            continue
        cost = price.cost(row["input_tokens"], row["output_tokens"])
        row["cost_usd"] = float(round(cost, 6))
        total_cost += cost
    listed = list(rows.values())
    return {"tasks": listed, "total": {
        "tasks": len(listed), "calls": sum(r["calls"] for r in listed),
        "input_tokens": sum(r["input_tokens"] for r in listed),
        "output_tokens": sum(r["output_tokens"] for r in listed),
        "cost_usd": float(round(total_cost, 6)), "unpriced_calls": unpriced}}


async def _history(settings: Any, err: TextIO) -> dict[str, list[int]]:
    """``tier -> output tokens`` of the developer's recent writes in the ledger."""
    from ..state.db import Database

    if settings.database_url is None:
        return {}
    try:
        async with Database.connect(settings.database_url, max_size=1, timeout=10) as db:
            found = await db.fetch(_HISTORY, {"ns": settings.namespace, "limit": _HISTORY_ROWS})
    except Exception as exc:  # an estimate without history beats none
        err.write(f"the ledger could not be read ({exc}); estimating without its history\n")
        return {}
    history: dict[str, list[int]] = {}
    for row in found:
        history.setdefault(row["tier"], []).append(row["output_tokens"])
    return history


async def cmd_estimate(args: argparse.Namespace, out: TextIO, err: TextIO,
                       stdin: TextIO) -> int:
    import json

    from orchestrator.agents.lib.depgraph import analyze
    from orchestrator.agents.qa import tests_importing

    from ..agent import load_agents
    from ..llm.config import ModelChoice, chat_model_for, provider_and_name
    from ..llm.prices import PriceTable
    from ..workflows.plans import load_plan
    from .parser import settings_for

    plan = await asyncio.to_thread(load_plan, args.plan)
    settings = settings_for(args)
    (planner,) = load_agents(["planner"])
    analysis = await planner.call_locally("analyze_plan", {  # as plan_execution's analyze
        "repo": plan.repo, "files": {t.file: t.content for t in plan.tasks},
        "patches": {t.file: t.patch for t in plan.tasks if t.patch is not None},
        "tasks": [{"id": t.id, "file": t.file, "kind": t.kind, "depends_on": t.depends_on}
                  for t in plan.tasks],
        "allowed_cycles": plan.allowed_cycles})
    deps = {t: place["deps"] for t, place in analysis["task_graph"]["tasks"].items()}
    repo = Path(plan.repo)
    # every task's file in the graph, as the developer sees it: given, as it is, or empty
    graph = await asyncio.to_thread(lambda: analyze(repo, overrides={
        t.file: t.content if t.content is not None else _read(repo, t.file) or ""
        for t in plan.tasks}))
    tests = {t.id: tests_importing(graph, t.file) for t in plan.tasks}
    choice = ModelChoice(settings.chat_model, settings.models)
    prices = PriceTable.load(settings.prices_file)

    def price_for(spec: str) -> Any:
        return prices.price(spec, *provider_and_name(spec, chat_model_for(spec)))

    result = await asyncio.to_thread(
        estimate_plan, plan, deps, tests, spec_for=lambda tier: choice.spec_for("developer", tier),
        price_for=price_for, history=await _history(settings, err))
    if args.json:
        out.write(json.dumps(result, indent=2) + "\n")
        return EXIT_OK
    out.write(f"{'task':<24} {'tier':<6} {'model':<28} {'input':>8} {'output':>8} {'cost $':>10}\n")
    for row in result["tasks"]:
        cost = "unknown" if row["cost_usd"] is None else f"{row['cost_usd']:.6f}"
        out.write(f"{row['id']:<24} {row['tier']:<6} {str(row['model'] or '-'):<28} "
                  f"{row['input_tokens']:>8} {row['output_tokens']:>8} {cost:>10}\n")
    total = result["total"]
    out.write(f"{'total':<24} {'':<6} {str(total['calls']) + ' calls':<28} "
              f"{total['input_tokens']:>8} {total['output_tokens']:>8} "
              f"{total['cost_usd']:>10.6f}\n")
    if total["unpriced_calls"]:
        err.write(f"{total['unpriced_calls']} calls use a model with no known price: their "
                  "cost is unknown and not in the total (set ORCHESTRATOR_PRICES_FILE)\n")
    return EXIT_OK
