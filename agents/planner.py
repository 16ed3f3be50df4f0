"""The ``planner`` agent: import-dependency analysis of a plan's files or a whole repository.

Request types:

* ``analyze_plan`` ``{"repo", "files": {path: content or null}, "patches"?: {path: unified
  diff}}`` → the dependency graph of those files (content from the plan when given, else the
  file in the repository; a patch's added ``+`` lines count on top, so an import a patch adds
  is an edge), resolved against the whole repository: ``{"files", "edges", "cycles",
  "batches", "critical_path", "unresolved", "errors"}``.
* ``analyze_repository`` ``{"repo"}`` → the same for every Python, JavaScript and TypeScript
  file of the repository.

The analysis is ``agents/depgraph.py``: Python through ``ast``, JavaScript and TypeScript
through tree-sitter.
"""

from __future__ import annotations

import asyncio
from typing import Any

from orchestrator.agent import Agent, HandlerError, RequestContext

from ._proc import resolve_folder
from .depgraph import analyze, patch_additions

__all__ = ["agent"]

agent = Agent(
    "planner",
    capabilities=["python-imports", "javascript-imports", "typescript-imports", "critical-path"],
    version="1",
    description="import-dependency analysis, batches and the critical path",
)


@agent.handler("analyze_plan")
async def analyze_plan(payload: dict[str, Any], ctx: RequestContext) -> dict[str, Any]:
    repo = await resolve_folder(payload.get("repo"))
    files = payload.get("files")
    if not isinstance(files, dict) or not files:
        raise HandlerError("invalid_input", "payload needs 'files': {path: content or null}")
    overrides = {path: text for path, text in files.items() if isinstance(text, str)}
    patches = payload.get("patches") or {}
    if not isinstance(patches, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in patches.items()):
        raise HandlerError("invalid_input", "'patches' must be {path: unified diff}")
    additions = {path: patch_additions(diff, path) for path, diff in patches.items()}
    weights = payload.get("weights") or None
    try:
        graph = await asyncio.to_thread(analyze, repo, paths=list(files), overrides=overrides,
                                        additions=additions)
        return await asyncio.to_thread(graph.to_dict, weights=weights)
    except ValueError as exc:  # a path outside the repository, a bad weight
        raise HandlerError("invalid_input", str(exc)) from None


@agent.handler("analyze_repository")
async def analyze_repository(payload: dict[str, Any], ctx: RequestContext) -> dict[str, Any]:
    repo = await resolve_folder(payload.get("repo"))
    graph = await asyncio.to_thread(analyze, repo)
    return await asyncio.to_thread(graph.to_dict)
