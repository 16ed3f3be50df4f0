"""``orchestrator run``, ``resume`` (with the answer to a pending question) and ``recover``."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import uuid
from collections.abc import AsyncIterator
from typing import Any, TextIO

from .exits import EXIT_FAILED, EXIT_OK, UsageError
from .output import print_json, print_result
from .parser import settings_for
from .progress import ProgressPrinter
from .run_input import parse_input


async def cmd_run(args: argparse.Namespace, out: TextIO, err: TextIO, stdin: TextIO) -> int:
    from ..facade import Orchestrator
    from ..graphs import get_workflow, validate_input

    data = parse_input(args, stdin)
    # bad input fails before any start-up; the run takes it validated (not checked again)
    validated = validate_input(get_workflow(args.workflow), data)
    thread_id = args.thread_id or str(uuid.uuid4())  # known here, to say how to resume it
    progress = ProgressPrinter(err)
    async with Orchestrator(settings_for(args)) as orch:
        try:
            async with _stop_promptly_on_ctrl_c(orch, thread_id, args, err):
                result = await orch.run(args.workflow, validated, thread_id,
                                        on_progress=progress)
        finally:
            progress.finish()
    return print_result(result, args, out)


@contextlib.asynccontextmanager
async def _stop_promptly_on_ctrl_c(
    orch: Any, thread_id: str, args: argparse.Namespace, err: TextIO
) -> AsyncIterator[None]:
    """On Ctrl-C (asyncio.run cancels the command), stop at once and say how to go on.

    The workflow's record stays ``running`` with this (soon dead) process as its owner, so
    ``orchestrator resume`` carries it on from its last checkpoint. The agent requests this
    process was handling are cancelled instead of drained (the worker's grace period is for
    SIGTERM): unanswered, they run again when the workflow is resumed.
    """
    try:
        yield
    except asyncio.CancelledError:
        worker = orch.runtime.worker
        if worker is not None:
            worker_log = logging.getLogger("orchestrator.worker")
            level = worker_log.level
            worker_log.setLevel(logging.ERROR)  # its "still running" warnings: we say it here
            try:
                await worker.stop(grace=0)
            finally:
                worker_log.setLevel(level)
        err.write(f"\ninterrupted: workflow {thread_id} stopped (agent work in progress in "
                  f"this process was cancelled and runs again); continue it with "
                  f"`orchestrator resume {thread_id}`\n")
        args.interrupt_reported = True
        raise


async def cmd_resume(args: argparse.Namespace, out: TextIO, err: TextIO, stdin: TextIO) -> int:
    from ..facade import Orchestrator

    value = None
    if args.value is not None:
        try:
            value = json.loads(args.value)
        except json.JSONDecodeError as exc:
            raise UsageError(f"--value must be JSON: {exc}") from None
    progress = ProgressPrinter(err)
    async with Orchestrator(settings_for(args)) as orch:
        try:
            async with _stop_promptly_on_ctrl_c(orch, args.thread_id, args, err):
                result = await orch.resume(args.thread_id, value, on_progress=progress)
        finally:
            progress.finish()
    return print_result(result, args, out)


async def cmd_recover(args: argparse.Namespace, out: TextIO, err: TextIO, stdin: TextIO) -> int:
    from ..facade import Orchestrator

    async with Orchestrator(settings_for(args)) as orch:
        results = await orch.recover()
    if args.json:
        print_json([r.to_dict() for r in results], out)
    else:
        if not results:
            out.write("no orphaned workflows\n")
        for r in results:
            out.write(f"{r.status}: {r.workflow_type} (thread {r.thread_id})\n")
    return EXIT_FAILED if any(r.status == "failed" for r in results) else EXIT_OK
