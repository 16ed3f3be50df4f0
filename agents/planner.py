"""The ``planner`` agent: import-dependency analysis of a plan's files or a whole repository,
the task-level analysis ``plan_execution`` schedules by, and plans drafted by a chat model
(``draft_plan``, behind ``orchestrator plan``).

Its request types, payloads and results are its contract, :mod:`orchestrator.contracts.planner`.
The file analysis is ``agents/lib/depgraph``: Python through ``ast``, JavaScript and TypeScript
through tree-sitter. The task analysis (:func:`task_graph`) runs the same graph algorithms
(:class:`DependencyGraph`: components, batches on the condensation, the weighted critical path
and priorities) on the plan's tasks.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Literal

from orchestrator.agents.lib.depgraph import DependencyGraph, analyze, patch_additions
from orchestrator.agents.lib.proc import resolve_folder
from pydantic import BaseModel, Field

from orchestrator.agent import Agent, HandlerError, RequestContext
from orchestrator.contracts.planner import (
    AGENT_TYPE,
    ANALYZE_PLAN,
    ANALYZE_REPOSITORY,
    DRAFT_PLAN,
    FILE_HASHES,
    AnalyzePlan,
    AnalyzeRepository,
    DependencyReport,
    DraftedPlan,
    DraftPlan,
    FileHashes,
    Hashes,
    PlanAnalysis,
    PlanTaskNode,
    TaskGraph,
)
from orchestrator.errors import AgentErrorCode

__all__ = ["NO_MODEL", "agent", "task_graph"]

agent = Agent(
    AGENT_TYPE,
    capabilities=["python-imports", "javascript-imports", "typescript-imports", "critical-path"],
    version="1",
    description="import-dependency analysis, batches and the critical path",
)


@agent.handler(ANALYZE_PLAN)
async def analyze_plan(payload: AnalyzePlan, ctx: RequestContext) -> PlanAnalysis:
    repo = await resolve_folder(payload.repo)
    overrides = {path: text for path, text in payload.files.items() if text is not None}
    additions = {path: patch_additions(diff, path) for path, diff in payload.patches.items()}
    try:
        graph = await asyncio.to_thread(analyze, repo, paths=list(payload.files),
                                        overrides=overrides, additions=additions)
        files = await asyncio.to_thread(graph.to_dict, weights=payload.weights or None)
    except ValueError as exc:  # a path outside the repository, a bad weight
        raise HandlerError(AgentErrorCode.INVALID_INPUT, str(exc)) from None
    tasks = (None if payload.tasks is None else await asyncio.to_thread(
        task_graph, payload.tasks, graph.edges, payload.allowed_cycles))
    return PlanAnalysis(**files, task_graph=tasks)


def task_graph(tasks: Sequence[PlanTaskNode], file_edges: Iterable[tuple[str, str]],
               allowed: Iterable[tuple[str, str]]) -> TaskGraph:
    """The plan's tasks as a graph: a task depends on the tasks whose files its file imports
    and on its ``depends_on``, except over an ``allowed`` edge; cycles left are refused.

    Ranked: the critical path (the longest chain, weighted) first, fixes before new work,
    then the longest way to the end (the weight of the heaviest chain a task starts), the
    earlier batch, the id.
    """
    by_file = {t.file: t.id for t in tasks}
    edges = {(by_file[a], by_file[b]) for a, b in file_edges
             if a in by_file and b in by_file and a != b}
    edges |= {(t.id, d) for t in tasks for d in t.depends_on}
    accepted = {(a, b) for a, b in allowed}
    edges -= accepted
    graph = DependencyGraph(root="", files=[t.id for t in tasks], edges=sorted(edges))
    cycles = graph.components()
    error = None
    if cycles:
        files = {t.id: t.file for t in tasks}
        shown = "; ".join(" → ".join(f"{t} ({files[t]})" for t in c) for c in cycles)
        error = (f"the plan's tasks form import cycles: {shown}; break them, or accept an "
                 "edge with allowed_cycles: [[importer_task, imported_task]]")
    weights = {t.id: t.weight for t in tasks}
    batches = graph.batches()
    batch = {t: n for n, members in enumerate(batches) for t in members}
    path, weight = graph.critical_path(weights)
    tail = graph.priorities(weights)
    on_path, kinds = set(path), {t.id: t.kind for t in tasks}
    ranked = sorted(batch, key=lambda t: (t not in on_path, kinds[t] != "fix", -tail[t],
                                          batch[t], t))
    deps = {t.id: sorted(b for a, b in edges if a == t.id) for t in tasks}
    return TaskGraph(
        edges=sorted(edges), allowed=sorted(accepted), cycles=cycles, error=error,
        batches=batches, critical_path={"tasks": path, "weight": weight},
        tasks={t: {"deps": deps[t], "batch": batch[t], "priority": rank}
               for rank, t in enumerate(ranked)})


def _sha256(repo: Path, rel: str) -> str | None:
    path = (repo / rel).resolve()
    if not path.is_relative_to(repo):
        raise HandlerError(AgentErrorCode.UNSAFE_PATH, f"{rel} is outside the repository {repo}")
    try:
        digest = hashlib.sha256()
        with path.open("rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                digest.update(chunk)
        return digest.hexdigest()
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
        return None


@agent.handler(FILE_HASHES)
async def file_hashes(payload: FileHashes, ctx: RequestContext) -> Hashes:
    repo = await resolve_folder(payload.repo)
    files = payload.files
    return Hashes(sha256=await asyncio.to_thread(lambda: {f: _sha256(repo, f) for f in files}))


@agent.handler(ANALYZE_REPOSITORY)
async def analyze_repository(payload: AnalyzeRepository, ctx: RequestContext) -> DependencyReport:
    repo = await resolve_folder(payload.repo)
    graph = await asyncio.to_thread(analyze, repo)
    return DependencyReport(**await asyncio.to_thread(graph.to_dict))


class DraftTask(BaseModel):
    """One task of a drafted plan: a file and what to do with it, in words."""

    id: str = Field(description="short unique name: letters, digits, _ . - /")
    file: str = Field(description="path of the file from the repository's top")
    kind: Literal["new", "fix"] = Field(description="new: create the file; fix: change it")
    description: str = Field(description="what the file must contain, or what must change")
    depends_on: list[str] = Field(default_factory=list, description="ids of tasks needed first")


class DraftTasks(BaseModel):
    """What the model answers when drafting a plan."""

    tasks: list[DraftTask]
    test_command: str | None = Field(None, description="how the repository runs its tests")


_DEFAULT_TEST_COMMAND = "python -m pytest -q"
NO_MODEL = ("drafting a plan needs a chat model, and none is configured: set "
            "ORCHESTRATOR_CHAT_MODEL=provider:model (openai:gpt-4o-mini, with the provider's own "
            "OPENAI_API_KEY...), or a large tier in ORCHESTRATOR_MODELS")


@agent.handler(DRAFT_PLAN)
async def draft_plan(payload: DraftPlan, ctx: RequestContext) -> DraftedPlan:
    # imported when drafting: the other request types need no model machinery
    from orchestrator.agents.lib.prompts import render_prompt

    from orchestrator.llm.calls import model_call

    repo = await resolve_folder(payload.repo)
    graph = await asyncio.to_thread(analyze, repo)
    files = graph.files[:payload.max_files]
    shown = set(files)
    edges = [(a, b) for a, b in graph.edges if a in shown and b in shown]
    prompt, messages = render_prompt(
        "planner_draft", goal=payload.goal, count=len(graph.files),
        shown=f" (the first {len(files)} shown)" if len(files) < len(graph.files) else "",
        files="\n".join(files) or "(none yet)",
        edges="\n".join(f"{a} -> {b}" for a, b in edges) or "(none)",
        test_command=_DEFAULT_TEST_COMMAND)
    answer = await model_call(ctx, purpose="draft", tier="large", messages=messages,
                              prompt=prompt, schema=DraftTasks)
    if answer is None:
        raise HandlerError(AgentErrorCode.INVALID_INPUT, NO_MODEL, blames_input=True)
    drafted = answer.parsed
    if not isinstance(drafted, DraftTasks):
        raise HandlerError(AgentErrorCode.INTERNAL_ERROR,
                           f"the model {answer.model} did not answer with a plan's tasks")
    plan = {"repo": str(repo), "test_command": drafted.test_command or _DEFAULT_TEST_COMMAND,
            "tasks": [t.model_dump(exclude=set() if t.depends_on else {"depends_on"})
                      for t in drafted.tasks]}
    return DraftedPlan(plan=plan, model=answer.model, files=len(graph.files),
                       edges=len(graph.edges))
