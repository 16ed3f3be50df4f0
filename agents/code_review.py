"""The ``code_review`` agent: static analysis (ruff) of the Python files a branch changes,
and a chat model's review comments on them when one is configured.

Its request types, their payloads and answers are in :mod:`orchestrator.contracts.code_review`.
"""

from __future__ import annotations

import asyncio
import io
import json
import shutil
import tarfile
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

from orchestrator.agents.lib.proc import child_env, git, kill_group, repo_rule, run
from orchestrator.agents.lib.prompts import render_prompt
from orchestrator.agents.lib.ruff import ruff_binary, ruff_findings
from pydantic import BaseModel, Field

from orchestrator.agent import Agent, HandlerError, RequestContext
from orchestrator.contracts.code_review import (
    AGENT_TYPE,
    REVIEW,
    SEVERITIES,
    Review,
    ReviewComment,
    ReviewResult,
)
from orchestrator.contracts.repos import GIT_ENV, commit_of, repository_top
from orchestrator.errors import AgentErrorCode
from orchestrator.llm import ModelAnswer, model_call

__all__ = ["agent"]

agent = Agent(
    AGENT_TYPE,
    capabilities=["python", "ruff", "git-diff", "chat-model"],
    version="2",
    description="ruff findings and a chat model's comments on the Python files a branch changes",
)

_PY_SUFFIXES = (".py", ".pyi")
_CONFIG_NAMES = {"pyproject.toml", "ruff.toml", ".ruff.toml"}


@agent.handler(REVIEW)
async def review(payload: Review, ctx: RequestContext) -> ReviewResult:
    repo = await repo_rule(repository_top, payload.repo)
    source, target, max_findings = payload.source, payload.target, payload.max_findings
    for ref in (source, target):
        await repo_rule(commit_of, repo, ref)
    base = (await git(repo, "merge-base", target, source)).stdout.removesuffix("\n")
    diff = await git(repo, "diff", "--name-only", "-z", "--diff-filter=ACMR", base, source,
                     "--")
    files = sorted(f for f in diff.stdout.split("\0") if f.endswith(_PY_SUFFIXES))
    findings = await _lint_at(repo, source, files) if files else []
    counts = Counter(f["code"] for f in findings)
    answer = await _model_review(repo, base, payload, files, findings, ctx) if files else None
    parsed = answer.parsed if answer is not None else None
    if answer is not None and parsed is None:
        ctx.log.warning("%s answered no review fitting the schema; ruff's findings only",
                        answer.model)
    comments = [c for c in (parsed.comments if parsed else []) if c.file in files]
    floor = SEVERITIES.index(payload.comment_severity)
    counted = sum(1 for c in comments if SEVERITIES.index(c.severity) >= floor)
    passed = len(findings) <= max_findings and counted <= payload.max_comments
    ctx.log.info("reviewed %d changed files of %s: %d findings, %d comments (%d counted)",
                 len(files), source, len(findings), len(comments), counted)
    return ReviewResult(
        base=base, source=source, target=target, files=files, findings=findings,
        counts=dict(sorted(counts.items())), comments=comments, counted_comments=counted,
        reviewed_by="ruff+model" if parsed else "ruff", model=answer.model if parsed else None,
        verdict="approved" if passed else "changes_requested", passed=passed,
        max_findings=max_findings, max_comments=payload.max_comments,
    )


class _Comments(BaseModel):
    """What the model answers (structured output)."""

    comments: list[ReviewComment] = Field(default_factory=list)


#: the diff a review prompt carries at most, in characters
_DIFF_CHARS = 60_000


async def _model_review(repo: Path, base: str, payload: Review, files: list[str],
                        findings: list[dict[str, Any]], ctx: RequestContext) -> ModelAnswer | None:
    """The chat model's comments on the change, or None when no model is configured."""
    diff = (await git(repo, "diff", "--no-color", "--no-ext-diff", base, payload.source, "--",
                      *files)).stdout
    shown = diff[:_DIFF_CHARS] + ("\n(the diff goes on; cut for length)"
                                  if len(diff) > _DIFF_CHARS else "")
    lint = "\n".join(f"{f['file']}:{f['line']} {f['code']} {f['message']}"
                     for f in findings[:100]) or "(none)"
    prompt, messages = render_prompt("code_review", source=payload.source,
                                     target=payload.target, findings=lint, diff=shown)
    return await model_call(ctx, purpose="review", tier=payload.tier or "medium",
                            messages=messages, prompt=prompt, schema=_Comments,
                            budget=payload.budget, model=payload.model)


async def _lint_at(repo: Path, ref: str, files: list[str]) -> list[dict[str, Any]]:
    listing = await git(repo, "ls-tree", "-r", "--name-only", "-z", ref)
    configs = [p for p in listing.stdout.split("\0") if Path(p).name in _CONFIG_NAMES]
    archive = await _archive(repo, ref, [*files, *configs])
    tmp = await asyncio.to_thread(tempfile.mkdtemp, prefix="orch-review-")
    try:
        await asyncio.to_thread(_extract, archive, tmp)
        done = await run(
            [ruff_binary(), "check", "--output-format", "json", "--no-cache", "--exit-zero",
             "--force-exclude", "--", *files],  # "--": a file may be named like an option
            cwd=tmp, timeout=300,
        )
        if done.returncode != 0 or done.timed_out:
            raise HandlerError(AgentErrorCode.RUFF_FAILED, f"ruff could not lint the changes: {done.stderr.strip()}",
                               retryable=done.timed_out)
        try:
            raw = json.loads(done.stdout or "[]")
        except json.JSONDecodeError as exc:
            raise HandlerError(AgentErrorCode.RUFF_FAILED, f"unreadable ruff output: {exc}") from None
        return await asyncio.to_thread(ruff_findings, raw, tmp)
    finally:
        await asyncio.to_thread(shutil.rmtree, tmp, True)


async def _archive(repo: Path, ref: str, paths: list[str]) -> bytes:
    proc = await asyncio.create_subprocess_exec(
        "git", "-C", str(repo), "archive", "--format=tar", ref, "--", *paths,
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE, env=child_env(GIT_ENV),
        start_new_session=True,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), 120)
    except BaseException:  # timed out or cancelled: never leave git running
        kill_group(proc.pid)
        await proc.wait()
        raise
    if proc.returncode != 0:
        raise HandlerError(AgentErrorCode.GIT_FAILED, f"git archive {ref} failed: {err.decode().strip()}",
                           blames_input=True)
    return out


def _extract(archive: bytes, dest: str) -> None:
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(dest, filter="data")
