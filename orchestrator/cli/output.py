"""What the commands print: JSON, and the result of a run with how to go on from it."""

from __future__ import annotations

import argparse
import json
from typing import Any, TextIO

from ..questions import describe_question
from .exits import exit_code


def print_json(obj: Any, out: TextIO) -> None:
    out.write(json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def summarize(value: Any) -> str:
    if isinstance(value, list):
        return f"{len(value)} items" if len(value) > 5 else json.dumps(value, default=str)
    if isinstance(value, dict):
        return json.dumps(value, default=str, sort_keys=True)
    return str(value)


def print_result(result: Any, args: argparse.Namespace, out: TextIO) -> int:
    if args.json:
        print_json(result.to_dict(), out)
        return exit_code(result)
    out.write(f"{result.status}: {result.workflow_type} (thread {result.thread_id})\n")
    if isinstance(result.final_result, dict):
        for key, value in result.final_result.items():
            out.write(f"  {key}: {summarize(value)}\n")
    elif result.final_result is not None:
        out.write(f"  result: {summarize(result.final_result)}\n")
    if result.error:
        out.write(f"  error ({result.error.get('code')}): {result.error.get('message')}\n")
        out.write(f"  to retry from the last checkpoint: orchestrator resume {result.thread_id}\n")
    for item in result.interrupts:  # the question, the answer it expects, how to give it
        for line in describe_question(item["value"], result.thread_id):
            out.write(f"  {line}\n")
    if result.status == "running":
        out.write(f"  stopped before the end; continue with: orchestrator resume {result.thread_id}\n")
    return exit_code(result)
