"""``orchestrator costs``: what model calls cost, from the ledger (``model_calls``).

Totals grouped by model, agent type or node, for one workflow (``--thread``), one workflow
type (``--type``) and a period (``--since 7d``); ``--json`` prints the ledger's rows. The text
output ends with recommendations read from the same rows (for example a kind of call that
always succeeds first time on the large tier, where the small tier would do).
"""

from __future__ import annotations

import argparse
import re
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any, TextIO

from ..errors import InvalidInput
from .exits import EXIT_OK
from .output import print_json
from .parser import settings_for

__all__ = ["cmd_costs", "ledger_rows", "recommendations", "parse_since"]

_ROWS = """
SELECT m.id, m.thread_id, coalesce(m.workflow_type, w.workflow_type) AS workflow_type, m.node,
       m.agent_type, m.request_id, m.execution, m.sequence, m.model, m.provider,
       m.input_tokens, m.cached_tokens, m.output_tokens, m.reasoning_tokens, m.cost_usd,
       m.price_source, m.latency_ms, m.prompt, m.tier, m.purpose, m.reason, m.created_at
FROM model_calls m LEFT JOIN workflows w ON w.thread_id = m.thread_id
WHERE m.namespace = %(ns)s AND m.created_at >= %(since)s
  AND (%(thread)s::text IS NULL OR m.thread_id = %(thread)s)
  AND (%(type)s::text IS NULL OR coalesce(m.workflow_type, w.workflow_type) = %(type)s)
ORDER BY m.id
"""


def parse_since(text: str | None) -> datetime:
    """``7d``, ``12h``, ``30m`` ago, or an ISO date or time (UTC when it names no zone)."""
    if not text:
        return datetime(1970, 1, 1, tzinfo=UTC)
    match = re.fullmatch(r"(\d+(?:\.\d+)?)([dhm])", text.strip())
    if match:
        unit = {"d": "days", "h": "hours", "m": "minutes"}[match.group(2)]
        return datetime.now(UTC) - timedelta(**{unit: float(match.group(1))})
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise InvalidInput(f"--since {text!r}: give a period such as 7d, 12h or 30m, or an ISO "
                           "date such as 2025-01-31") from None
    return when if when.tzinfo else when.replace(tzinfo=UTC)


async def ledger_rows(db: Any, namespace: str, *, thread: str | None = None,
                      workflow_type: str | None = None,
                      since: datetime | None = None) -> list[dict[str, Any]]:
    """The ledger's rows, oldest first, as JSON-ready dicts (cost a float, or None)."""
    found = await db.fetch(_ROWS, {"ns": namespace, "thread": thread, "type": workflow_type,
                                   "since": since or parse_since(None)})
    return [{**row, "cost_usd": float(row["cost_usd"]) if row["cost_usd"] is not None else None,
             "created_at": row["created_at"].isoformat()} for row in found]


def recommendations(rows: list[dict[str, Any]]) -> list[str]:
    """Savings and blind spots the ledger shows."""
    advice = []
    # kinds of call (agent type, purpose) that only ever ran on the large tier and always
    # succeeded first time: each request called the model once, in one execution
    per_request: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        per_request[row["request_id"]].append(row)
    kinds: dict[tuple[str, str], list[list[dict[str, Any]]]] = defaultdict(list)
    for calls in per_request.values():
        kinds[(calls[0]["agent_type"], calls[0]["purpose"])].append(calls)
    for (agent, purpose), requests in sorted(kinds.items()):
        calls = [c for r in requests for c in r]
        if (len(requests) >= 3 and all(c["tier"] == "large" for c in calls)
                and all(len(r) == 1 for r in requests)):
            cost = sum((c["cost_usd"] or 0.0) for c in calls)
            advice.append(f"{agent} {purpose}: {len(requests)} requests on the large tier, each "
                          f"right first time (${cost:.4f}); try the small tier for it")
    unpriced = sorted({r["model"] for r in rows if r["cost_usd"] is None
                       and r["input_tokens"] is not None})
    if unpriced:
        advice.append(f"no price known for {', '.join(unpriced)}: their calls have no cost; "
                      "add them to ORCHESTRATOR_PRICES_FILE")
    silent = sorted({r["model"] for r in rows if r["input_tokens"] is None})
    if silent:
        advice.append(f"{', '.join(silent)} reported no usage: their tokens and cost are "
                      "unknown (for streaming with OpenAI, stream_usage=True)")
    return advice


async def cmd_costs(args: argparse.Namespace, out: TextIO, err: TextIO, stdin: TextIO) -> int:
    from ..runtime import Runtime

    since = parse_since(args.since)
    settings = settings_for(args)
    async with Runtime.open(settings, agents=[]) as rt:
        rows = await ledger_rows(rt.db, settings.namespace, thread=args.thread,
                                 workflow_type=args.type, since=since)
    if args.json:
        print_json(rows, out)
        return EXIT_OK
    _print_totals(rows, args.by, out)
    advice = recommendations(rows)
    if advice:
        out.write("\nrecommendations:\n" + "".join(f"  - {line}\n" for line in advice))
    return EXIT_OK


def _print_totals(rows: list[dict[str, Any]], by: str, out: TextIO) -> None:
    if not rows:
        out.write("no model calls recorded\n")
        return
    key = {"model": "model", "agent": "agent_type", "node": "node"}[by]
    groups: dict[str, dict[str, Any]] = defaultdict(
        lambda: {"calls": 0, "input": 0, "output": 0, "cost": Decimal(0), "unknown": 0})
    for row in rows:
        group = groups[str(row[key] or "-")]
        group["calls"] += 1
        group["input"] += row["input_tokens"] or 0
        group["output"] += row["output_tokens"] or 0
        if row["cost_usd"] is None:
            group["unknown"] += 1
        else:
            group["cost"] += Decimal(str(row["cost_usd"]))
    out.write(f"{by.upper():<40} {'CALLS':>6} {'INPUT':>10} {'OUTPUT':>10} {'COST USD':>12}"
              f" {'NO COST':>8}\n")
    for name, g in sorted(groups.items(), key=lambda item: -item[1]["cost"]):
        out.write(f"{name:<40} {g['calls']:>6} {g['input']:>10} {g['output']:>10} "
                  f"{g['cost']:>12.6f} {g['unknown']:>8}\n")
    total = sum((g["cost"] for g in groups.values()), Decimal(0))
    unknown = sum(g["unknown"] for g in groups.values())
    out.write(f"{'TOTAL':<40} {len(rows):>6} {'':>10} {'':>10} {total:>12.6f} {unknown:>8}\n")
    if unknown:
        out.write(f"({unknown} calls have no cost: no price or no usage known; the total "
                  "leaves them out)\n")
