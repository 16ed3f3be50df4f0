"""The developer's proposal for a merge that conflicts: a chat model resolves the files.

The git side (merging in the object store, committing the resolution on
``<source>-resolved``) is :mod:`orchestrator.agents.lib.merges`; the contract is
:mod:`orchestrator.contracts.conflicts`. A model answer that leaves conflict markers, skips
a file or names one that was not in conflict is refused: the answer is ``resolved: false``
with the reason, and nothing is written.
"""

from __future__ import annotations

import re

from orchestrator.agents.lib.merges import (
    ConflictedFile,
    attempt_merge,
    commit_resolution,
    tree_diff,
)
from orchestrator.agents.lib.proc import repo_rule
from orchestrator.agents.lib.prompts import render_prompt
from pydantic import BaseModel, Field

from orchestrator.agent import RequestContext
from orchestrator.contracts.conflicts import (
    Resolution,
    ResolveConflict,
    Unresolved,
    resolution_branch,
)
from orchestrator.contracts.repos import repository_top
from orchestrator.llm.calls import model_call

__all__ = ["ResolvedFile", "ResolvedFiles", "propose_resolution"]

_MARKER = re.compile(r"^(<{7}|>{7})( |$)", re.MULTILINE)


class ResolvedFile(BaseModel):
    path: str = Field(description="the conflicting file's path, as given")
    content: str | None = Field(description="the whole resolved file; null deletes it")


class ResolvedFiles(BaseModel):
    """What the model answers: every conflicting file, resolved."""

    files: list[ResolvedFile]


def _side(label: str, text: str | None) -> str:
    return f"--- {label} ---\n" + ("(absent)" if text is None else text)


def _shown(conflict: ConflictedFile, source: str, target: str) -> str:
    return "\n\n".join([
        f"### {conflict.path}", _side("with conflict markers", conflict.merged),
        _side(f"source ({source})", conflict.source), _side(f"target ({target})", conflict.target),
        _side("common base", conflict.base)])


def _problem(answer: ResolvedFiles, expected: list[str]) -> str | None:
    """Why the model's files cannot be committed, or None."""
    given = [f.path for f in answer.files]
    missing = sorted(set(expected) - set(given))
    extra = sorted(set(given) - set(expected))
    if missing or extra:
        return (f"the model's answer {'omits ' + ', '.join(missing) if missing else ''}"
                f"{'; ' if missing and extra else ''}"
                f"{'names files not in conflict: ' + ', '.join(extra) if extra else ''}")
    marked = [f.path for f in answer.files if f.content and _MARKER.search(f.content)]
    if marked:
        return f"the model left conflict markers in {', '.join(marked)}"
    return None


async def propose_resolution(payload: ResolveConflict, ctx: RequestContext) -> Resolution | Unresolved:
    """Propose a resolution of ``source``'s conflicts with ``target`` on ``<source>-resolved``."""
    repo = await repo_rule(repository_top, payload.repo)
    source, target = payload.source, payload.target
    attempt = await attempt_merge(repo, source, target)
    names = [c.path for c in attempt.conflicts]
    if not names:
        return Unresolved(resolved=False, conflicts=[], reason=(
            f"{source} merges into {target} without conflicts; nothing to resolve"))
    prompt, messages = render_prompt(
        "conflict_resolve", source=source, target=target, count=len(names),
        names=", ".join(names),
        files="\n\n".join(_shown(c, source, target) for c in attempt.conflicts))
    answer = await model_call(ctx, purpose="resolve", tier=payload.tier or "large",
                              messages=messages, prompt=prompt, schema=ResolvedFiles,
                              budget=payload.budget, model=payload.model)
    if answer is None:
        return Unresolved(resolved=False, conflicts=names, reason=(
            f"no chat model is configured for the developer (ORCHESTRATOR_CHAT_MODEL): the "
            f"conflicts in {', '.join(names)} are left to a person"))
    resolved = answer.parsed
    problem = _problem(resolved, names) if isinstance(resolved, ResolvedFiles) else (
        "the model's answer is not the resolved files")
    if problem:
        ctx.log.warning("conflict resolution refused: %s", problem)
        return Unresolved(resolved=False, conflicts=names, reason=problem)
    files = {f.path: f.content for f in resolved.files}
    branch = resolution_branch(source)
    commit = await commit_resolution(
        repo, attempt, files, branch=branch,
        message=f"Resolve conflicts merging {target} into {source} ({', '.join(names)})\n\n"
                f"Proposed by the model {answer.model}; to be reviewed before it is merged.")
    diff = await tree_diff(repo, attempt.tree, commit, names)
    ctx.log.info("resolved %s on %s (%s)", names, branch, commit[:12])
    return Resolution(resolved=True, branch=branch, commit=commit, files=names, diff=diff,
                      model=answer.model, detail=f"{len(names)} file(s) resolved by {answer.model}")
