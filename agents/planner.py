"""The ``planner`` agent: import-dependency analysis of a plan's files or a whole repository.

Request types:

* ``analyze_plan`` ``{"repo", "files": {path: content or null}, "patches"?: {path: unified
  diff}}`` → the dependency graph of those files (content from the plan when given, else the
  file in the repository; a patch's added ``+`` lines count on top, so an import a patch adds
  is an edge), resolved against the whole repository: ``{"files", "edges", "cycles",
  "batches", "critical_path", "unresolved", "errors"}``.
* ``analyze_repository`` ``{"repo"}`` → the same for every Python, JavaScript and TypeScript
  file of the repository.
* ``file_hashes`` ``{"repo", "files": [path...]}`` → ``{"sha256": {path: hex digest, or null
  when the file does not exist}}``: what the working tree holds now (plan_execution checks a
  cached task's result against it).

The analysis is ``agents/depgraph.py``: Python through ``ast``, JavaScript and TypeScript
through tree-sitter.
"""

from __future__ import annotations

import asyncio
import hashlib
from pathlib import Path
from typing import Any

from orchestrator.agents.lib.depgraph import analyze, patch_additions
from orchestrator.agents.lib.proc import resolve_folder

from orchestrator.agent import Agent, HandlerError, RequestContext
from orchestrator.errors import AgentErrorCode

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
        raise HandlerError(AgentErrorCode.INVALID_INPUT, "payload needs 'files': {path: content or null}")
    overrides = {path: text for path, text in files.items() if isinstance(text, str)}
    patches = payload.get("patches") or {}
    if not isinstance(patches, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in patches.items()):
        raise HandlerError(AgentErrorCode.INVALID_INPUT, "'patches' must be {path: unified diff}")
    additions = {path: patch_additions(diff, path) for path, diff in patches.items()}
    weights = payload.get("weights") or None
    try:
        graph = await asyncio.to_thread(analyze, repo, paths=list(files), overrides=overrides,
                                        additions=additions)
        return await asyncio.to_thread(graph.to_dict, weights=weights)
    except ValueError as exc:  # a path outside the repository, a bad weight
        raise HandlerError(AgentErrorCode.INVALID_INPUT, str(exc)) from None


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


@agent.handler("file_hashes")
async def file_hashes(payload: dict[str, Any], ctx: RequestContext) -> dict[str, Any]:
    repo = await resolve_folder(payload.get("repo"))
    files = payload.get("files")
    if not isinstance(files, list) or not all(isinstance(f, str) and f for f in files):
        raise HandlerError(AgentErrorCode.INVALID_INPUT, "payload needs 'files': [path, ...]")
    return {"sha256": await asyncio.to_thread(lambda: {f: _sha256(repo, f) for f in files})}


@agent.handler("analyze_repository")
async def analyze_repository(payload: dict[str, Any], ctx: RequestContext) -> dict[str, Any]:
    repo = await resolve_folder(payload.get("repo"))
    graph = await asyncio.to_thread(analyze, repo)
    return await asyncio.to_thread(graph.to_dict)
