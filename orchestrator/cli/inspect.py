"""Looking at workflows: ``orchestrator ls``, ``show`` (with ``--history``: its checkpoints)
and ``graphs``."""

from __future__ import annotations

import argparse
import json
from textwrap import indent
from typing import Any, TextIO

from ..questions import describe_question
from .exits import EXIT_OK
from .output import format_repo_table, print_json, repo_rows, summarize
from .parser import settings_for


async def cmd_ls(args: argparse.Namespace, out: TextIO, err: TextIO, stdin: TextIO) -> int:
    from ..runtime import Runtime

    async with Runtime.open(settings_for(args), agents=[]) as rt:
        records = await rt.workflows.list(args.status, args.workflow_type, limit=args.limit)
    return print_workflows(records, args, out)


def print_workflows(records: list[Any], args: argparse.Namespace, out: TextIO) -> int:
    """``ls``'s output (also of ``ls --server``)."""
    if args.json:
        print_json([r.to_dict() for r in records], out)
        return EXIT_OK
    if not records:
        out.write("no workflows\n")
        return EXIT_OK
    out.write(f"{'THREAD ID':<38} {'WORKFLOW':<16} {'STATUS':<12} {'STEP':<18} UPDATED\n")
    for r in records:
        out.write(f"{r.thread_id:<38} {r.workflow_type:<16} {r.status:<12} "
                  f"{(r.current_step or '-'):<18} {r.updated_at:%Y-%m-%d %H:%M:%S}\n")
    return EXIT_OK


async def cmd_show(args: argparse.Namespace, out: TextIO, err: TextIO, stdin: TextIO) -> int:
    from ..facade import Orchestrator

    async with Orchestrator(settings_for(args), agents=[]) as orch:
        details = await orch.get(args.thread_id)
        history = await orch.history(args.thread_id) if args.history else None
    return print_details(details, history, args, out)


def print_details(details: Any, history: list[Any] | None, args: argparse.Namespace,
                  out: TextIO) -> int:
    """``show``'s output (also of ``show --server``)."""
    if args.json:
        data = details.to_dict()
        if history is not None:
            data["history"] = [h.to_dict() for h in history]
        print_json(data, out)
        return EXIT_OK
    r = details.record
    out.write(f"thread:    {r.thread_id}\nworkflow:  {r.workflow_type}\nstatus:    {r.status}\n"
              f"step:      {r.current_step or '-'}\nversion:   {r.version}\n"
              f"agents:    {', '.join(r.participating_agents) or '-'}\n"
              f"created:   {r.created_at:%Y-%m-%d %H:%M:%S}\nupdated:   {r.updated_at:%Y-%m-%d %H:%M:%S}\n"
              f"input:     {json.dumps(r.input, sort_keys=True)}\n")
    if r.result is not None:
        out.write(f"result:    {summarize(r.result)}\n")
    if r.error:
        out.write(f"error:     {r.error.get('code')}: {r.error.get('message')}\n")
    if details.next:
        out.write(f"next:      {', '.join(details.next)}\n")
    for item in details.interrupts:
        for n, line in enumerate(describe_question(item["value"], r.thread_id)):
            out.write(f"{'waiting:' if n == 0 else '':<11}{line}\n")
    rows = repo_rows(details.values.get("final_result"), r.result, details.values)
    if rows:
        out.write("\nrepositories:\n" + indent(format_repo_table(rows), "  "))
    if history is not None:
        out.write("\nhistory (oldest first):\n")
        for h in history:
            names = f"  [{', '.join(h.names)}]" if h.names else ""
            out.write(f"  step {h.step:>3}  {h.checkpoint_id}  {h.source:<6} "
                      f"next={','.join(h.next) or '-'}{names}\n")
    return EXIT_OK


async def cmd_graphs(args: argparse.Namespace, out: TextIO, err: TextIO, stdin: TextIO) -> int:
    from ..graphs import available_workflows

    specs = available_workflows()
    if args.json:
        print_json([{"name": s.name, "description": s.description,
                      "input": s.input_model.model_json_schema()} for s in specs.values()], out)
        return EXIT_OK
    for spec in sorted(specs.values(), key=lambda s: s.name):
        fields = ", ".join(spec.input_model.model_fields)
        out.write(f"{spec.name:<18} {spec.description}\n{'':<18} input: {fields}\n")
    return EXIT_OK
