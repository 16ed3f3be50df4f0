"""The ``developer`` agent: carries out one file task of a plan in a repository.

Its request type (``develop``), payload and result are its contract,
:mod:`orchestrator.contracts.developer`, with the lock it checks (:func:`file_lock`).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import shlex
import sys
from pathlib import Path
from typing import Any

from orchestrator.agents.lib.files import write_atomic
from orchestrator.agents.lib.proc import resolve_repo, run
from orchestrator.agents.lib.ruff import ruff_binary

from orchestrator.agent import Agent, HandlerError, RequestContext
from orchestrator.contracts.developer import (
    AGENT_TYPE,
    DEVELOP,
    Develop,
    Developed,
    Task,
    file_lock,
)
from orchestrator.errors import AgentErrorCode

__all__ = ["agent"]

agent = Agent(
    AGENT_TYPE,
    capabilities=["write-file", "git-apply", "run-command", "ruff-fix", "chat-model"],
    version="1",
    description="applies a plan task's content, patch or command; fixes what QA found",
)


def _target(repo: Path, file: str) -> Path:
    path = (repo / file).resolve()
    if not path.is_relative_to(repo):
        raise HandlerError(AgentErrorCode.UNSAFE_PATH, f"{file} is outside the repository {repo}")
    return path


def _sha256(path: Path) -> str | None:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except FileNotFoundError:
        return None


def _write(path: Path, text: str) -> None:
    """Write ``path`` atomically through a temporary file of an unpredictable name, created
    exclusively: a file or symbolic link committed beside the target can never redirect the
    write; the target is replaced by a regular file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, text)


@agent.handler(DEVELOP)
async def develop(payload: Develop, ctx: RequestContext) -> Developed:
    repo = await resolve_repo(payload.repo)
    task = payload.task
    path = await asyncio.to_thread(_target, repo, task.file)
    await ctx.check_fencing(file_lock(repo, task.file))
    attempt = payload.attempt
    before = await asyncio.to_thread(_sha256, path)
    evidence = payload.evidence
    if attempt > 1 and evidence and before is not None:  # fix the file QA checked
        action, detail = await _fix(repo, path, task, evidence, ctx)
    elif task.content is not None:
        await asyncio.to_thread(_write, path, task.content)
        action, detail = "wrote", f"wrote {task.file}"
    elif task.patch is not None:
        action, detail = await _apply_patch(repo, task.patch)
    elif task.command is not None:
        action, detail = await _run_command(repo, task.command, payload.timeout)
    else:
        raise HandlerError(AgentErrorCode.INVALID_INPUT, f"task {task.id!r} has no content, patch or command")
    after = await asyncio.to_thread(_sha256, path)
    if after is None:
        raise HandlerError(AgentErrorCode.FILE_MISSING, f"{task.file} does not exist after {action}: {detail}",
                           blames_input=True)
    return Developed(file=task.file, action=action, changed=before != after, sha256=after,
                     detail=detail, attempt=attempt)


async def _apply_patch(repo: Path, patch: str) -> tuple[str, str]:
    data = patch.encode() if patch.endswith("\n") else (patch + "\n").encode()
    check = await run(["git", "-C", str(repo), "apply", "--check", "-"], stdin=data, timeout=60)
    if check.returncode == 0:
        done = await run(["git", "-C", str(repo), "apply", "-"], stdin=data, timeout=60)
        if done.returncode != 0:
            raise HandlerError(AgentErrorCode.PATCH_FAILED, done.stderr.strip(), blames_input=True)
        return "patched", "applied the patch"
    reverse = await run(["git", "-C", str(repo), "apply", "--reverse", "--check", "-"],
                        stdin=data, timeout=60)
    if reverse.returncode == 0:  # a re-run after the patch went in
        return "patched", "the patch was already applied"
    raise HandlerError(AgentErrorCode.PATCH_FAILED, f"the patch does not apply: {check.stderr.strip()}",
                       blames_input=True)


async def _run_command(repo: Path, command: str | list[str], timeout: float) -> tuple[str, str]:
    argv = shlex.split(command) if isinstance(command, str) else list(command)
    if not argv:
        raise HandlerError(AgentErrorCode.INVALID_INPUT, "'command' must be a string or a list of strings")
    if argv[0] == "python":
        argv[0] = sys.executable
    done = await run(argv, cwd=repo, timeout=timeout)
    output = (done.stdout + done.stderr).strip()[-2000:]
    if done.timed_out or done.returncode != 0:
        raise HandlerError(AgentErrorCode.COMMAND_FAILED, f"{shlex.join(argv)} "
                           f"{'timed out' if done.timed_out else f'exited {done.returncode}'}: {output}",
                           blames_input=True)
    return "ran", f"ran {shlex.join(argv)}"


async def _fix(repo: Path, path: Path, task: Task, evidence: dict[str, Any],
               ctx: RequestContext) -> tuple[str, str]:
    model = ctx.chat_model()
    if model is not None:
        current = await asyncio.to_thread(path.read_text, encoding="utf-8")
        prompt = (
            f"You maintain the file {task.file} of a repository. Task: "
            f"{task.description or '(none)'}.\nQA found problems:\n"
            f"{json.dumps(evidence, indent=1)[:8000]}\n\nThe file now:\n{current}\n\n"
            "Answer with the complete corrected file and nothing else."
        )
        reply = await asyncio.wait_for(model.ainvoke(prompt), 300)
        text = str(getattr(reply, "content", reply))
        text = _strip_fence(text)
        await asyncio.to_thread(_write, path, text if text.endswith("\n") else text + "\n")
        return "model", "the chat model rewrote the file from the QA evidence"
    if path.suffix in (".py", ".pyi"):
        done = await run([ruff_binary(), "check", "--fix", "--no-cache", "--exit-zero",
                          "--output-format", "concise", "--", str(path)], cwd=repo, timeout=120)
        summary = (done.stdout + done.stderr).strip().splitlines()
        return "ruff-fix", summary[-1] if summary else "ruff found nothing to fix"
    return "none", f"no automatic fix for {path.suffix} files without a chat model"


def _strip_fence(text: str) -> str:
    lines = text.strip().splitlines()
    if len(lines) >= 2 and lines[0].startswith("```") and lines[-1].startswith("```"):
        return "\n".join(lines[1:-1]) + "\n"
    return text
