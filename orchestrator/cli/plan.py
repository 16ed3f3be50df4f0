"""``orchestrator plan "GOAL" --repo PATH [--output FILE]``: the planner agent drafts a plan
for ``plan_execution`` with the chat model, in this process.

The call goes through the process's model services like an agent's on a worker: the planner's
model for the large tier, the daily budgets, and one row in the ledger (``orchestrator costs``
shows it, with no thread). So the command connects to the database (or starts the embedded
services when no URL is set); with no model configured it says so before connecting anything.

The draft is checked with the plan model of ``plan_execution`` (:func:`parse_plan`) before
it is written, so what lands in the file is a plan ``orchestrator run plan_execution``
accepts; a person edits it first. An existing file is never overwritten.
"""

from __future__ import annotations

import argparse
import asyncio
import os
from pathlib import Path
from typing import Any, TextIO

from .exits import EXIT_OK, UsageError


def _yaml(plan: dict[str, Any], goal: str, model: str | None) -> str:
    import yaml

    header = "".join(f"# {line}\n" for line in [
        f"A plan drafted by {model or 'a chat model'} for the goal:",
        *(f"  {line}" for line in goal.strip().splitlines()),
        "Read and edit it (tasks, descriptions, depends_on, test_command) before running it.",
    ])
    return header + yaml.safe_dump(plan, sort_keys=False, allow_unicode=True, width=100)


def _write_new(path: Path, text: str) -> None:
    with path.open("x", encoding="utf-8") as handle:  # never overwrite
        handle.write(text)


async def cmd_plan(args: argparse.Namespace, out: TextIO, err: TextIO, stdin: TextIO) -> int:
    from ..agent import HandlerError, load_agents
    from ..agents.planner import NO_MODEL
    from ..errors import AgentErrorCode
    from ..llm.config import ModelChoice
    from ..llm.services import ModelServices
    from ..runtime import Runtime
    from ..workflows.plans import PlanError, parse_plan
    from .parser import settings_for

    repo = Path(args.repo)
    if not await asyncio.to_thread(repo.is_dir):
        raise UsageError(f"--repo {args.repo} is not a folder; give the repository's path")
    output = Path(args.output or "plan.yaml")
    if await asyncio.to_thread(output.exists):
        raise UsageError(f"{output} exists; give another --output (it is never overwritten)")
    settings = settings_for(args)
    if ModelChoice(settings.chat_model, settings.models).spec_for("planner", "large") is None:
        raise UsageError(NO_MODEL)
    (planner,) = load_agents(["planner"])
    async with Runtime.open(settings, agents=[]) as rt:
        models = ModelServices.from_settings(settings, rt.db)
        try:
            drafted = await planner.call_locally(
                "draft_plan", {"repo": str(repo), "goal": args.goal}, models=models)
        except HandlerError as exc:
            if exc.code in (AgentErrorCode.INVALID_INPUT, AgentErrorCode.BUDGET_EXCEEDED):
                raise UsageError(str(exc)) from None
            raise
    plan = drafted["plan"]
    folder = (await asyncio.to_thread(output.resolve)).parent
    # the plan travels with its file: repo relative to it (a path computation, no I/O)
    plan["repo"] = os.path.relpath(plan["repo"], folder)  # noqa: ASYNC240
    try:
        checked = await asyncio.to_thread(parse_plan, plan, base=folder)
    except PlanError as exc:
        raise UsageError(f"the model's draft is not a valid plan ({exc}); run it again or "
                         "say more in the goal") from None
    await asyncio.to_thread(_write_new, output, _yaml(plan, args.goal, drafted["model"]))
    out.write(f"wrote a plan of {len(checked.tasks)} tasks for {checked.repo} to {output} "
              f"(drafted by {drafted['model']}; {drafted['files']} files, {drafted['edges']} "
              "import edges seen)\n"
              f"edit it, then: orchestrator estimate {output}\n"
              f"           and: orchestrator run plan_execution --set plan={output}\n")
    return EXIT_OK
