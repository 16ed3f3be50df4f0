"""What the commands print: JSON, and the result of a run with how to go on from it."""

from __future__ import annotations

import argparse
import json
from textwrap import indent
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
    rows = repo_rows(result.final_result)
    if rows:
        out.write(indent(format_repo_table(rows), "    "))
    if result.error:
        out.write(f"  error ({result.error.get('code')}): {result.error.get('message')}\n")
        out.write(f"  to retry from the last checkpoint: orchestrator resume {result.thread_id}\n")
    for item in result.interrupts:  # the question, the answer it expects, how to give it
        for line in describe_question(item["value"], result.thread_id):
            out.write(f"  {line}\n")
    if result.status == "running":
        out.write(f"  stopped before the end; continue with: orchestrator resume {result.thread_id}\n")
    return exit_code(result)


REPO_COLUMNS = (("name", "NAME"), ("repo", "REPO"), ("review", "REVIEW"), ("tests", "TESTS"),
                ("merge_commit", "MERGE"), ("rollback_commit", "ROLLBACK"),
                ("canary", "CANARY"), ("status", "STATUS"))
"""The per-repository rows of a multi-repository result (``repositories``): key, header."""

_CELL_WIDTH = 48


def _repo_cell(key: str, value: Any) -> str:
    if value is None or value == "":
        return "-"
    text = " ".join(str(value).split())
    if key.endswith("_commit") and len(text) == 40 and all(c in "0123456789abcdef" for c in text):
        return text[:12]
    if len(text) > _CELL_WIDTH:  # keep the end: a path's last folders, a message's verdict
        text = "..." + text[-(_CELL_WIDTH - 3):]
    return text


def repo_rows(*candidates: Any) -> list[dict[str, Any]] | None:
    """The first ``repositories`` list of row dicts found in ``candidates`` (a final result,
    a state), or None."""
    for candidate in candidates:
        rows = candidate.get("repositories") if isinstance(candidate, dict) else None
        if isinstance(rows, list) and rows and all(isinstance(r, dict) for r in rows):
            return rows
    return None


def format_repo_table(rows: list[dict[str, Any]]) -> str:
    """``rows`` (``{"name", "repo", "review", "tests", "merge_commit", "rollback_commit",
    "canary", "status"}``) as an aligned text table, a header line first; a missing or empty
    value shows as ``-``, a full commit id as its first 12 digits, a long value by its end."""
    table = [[header for _, header in REPO_COLUMNS]]
    table += [[_repo_cell(key, row.get(key)) for key, _ in REPO_COLUMNS] for row in rows]
    widths = [max(len(line[i]) for line in table) for i in range(len(REPO_COLUMNS))]
    return "".join("  ".join(cell.ljust(width) for cell, width in zip(line, widths,
                                                                      strict=True)).rstrip()
                   + "\n" for line in table)
