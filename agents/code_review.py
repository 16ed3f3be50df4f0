"""The ``code_review`` agent: static analysis (ruff) of the Python files a branch changes.

Request types:

* ``review`` ``{"repo", "source", "target", "max_findings"=0}`` → ``{"base", "files",
  "findings": [{"file", "line", "column", "code", "message"}], "counts": {code: n},
  "verdict": "approved" | "changes_requested", "passed", "max_findings"}``

The changed files are those added, copied, modified or renamed between the merge base of
``target`` and ``source``, and ``source``. They are linted as they are at ``source`` (taken
with ``git archive``, together with the repository's ruff configuration files), so neither
the working tree nor the checked-out branch matters. The verdict approves when there are at
most ``max_findings`` findings.
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

from orchestrator.agents.lib.proc import (
    _kill_group,
    child_env,
    commit_of,
    git,
    ref_arg,
    resolve_repo,
    run,
)
from orchestrator.agents.lib.ruff import ruff_binary, ruff_findings

from orchestrator.agent import Agent, HandlerError, RequestContext
from orchestrator.errors import AgentErrorCode

__all__ = ["agent"]

agent = Agent(
    "code_review",
    capabilities=["python", "ruff", "git-diff"],
    version="1",
    description="ruff findings on the Python files a branch changes",
)

_PY_SUFFIXES = (".py", ".pyi")
_CONFIG_NAMES = {"pyproject.toml", "ruff.toml", ".ruff.toml"}


@agent.handler("review")
async def review(payload: dict[str, Any], ctx: RequestContext) -> dict[str, Any]:
    repo = await resolve_repo(payload.get("repo"))
    source, target = ref_arg(payload, "source"), ref_arg(payload, "target", "main")
    max_findings = payload.get("max_findings", 0)
    if not isinstance(max_findings, int) or max_findings < 0:
        raise HandlerError(AgentErrorCode.INVALID_INPUT, "'max_findings' must be a whole number >= 0")
    for ref in (source, target):
        await commit_of(repo, ref)
    base = (await git(repo, "merge-base", target, source)).stdout.removesuffix("\n")
    diff = await git(repo, "diff", "--name-only", "-z", "--diff-filter=ACMR", base, source,
                     "--")
    files = sorted(f for f in diff.stdout.split("\0") if f.endswith(_PY_SUFFIXES))
    findings = await _lint_at(repo, source, files) if files else []
    counts = Counter(f["code"] for f in findings)
    passed = len(findings) <= max_findings
    ctx.log.info("reviewed %d changed files of %s: %d findings", len(files), source, len(findings))
    return {
        "base": base,
        "source": source,
        "target": target,
        "files": files,
        "findings": findings,
        "counts": dict(sorted(counts.items())),
        "verdict": "approved" if passed else "changes_requested",
        "passed": passed,
        "max_findings": max_findings,
    }


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
        stderr=asyncio.subprocess.PIPE, env=child_env({"GIT_TERMINAL_PROMPT": "0"}),
        start_new_session=True,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), 120)
    except BaseException:  # timed out or cancelled: never leave git running
        _kill_group(proc.pid)
        await proc.wait()
        raise
    if proc.returncode != 0:
        raise HandlerError(AgentErrorCode.GIT_FAILED, f"git archive {ref} failed: {err.decode().strip()}",
                           blames_input=True)
    return out


def _extract(archive: bytes, dest: str) -> None:
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(dest, filter="data")
