"""The ``developer`` agent: carries out one file task of a plan in a repository.

Its request type (``develop``), payload and result are its contract,
:mod:`orchestrator.contracts.developer`, with the lock it checks (:func:`file_lock`).
"""

from __future__ import annotations

import asyncio
import difflib
import hashlib
import json
import shlex
import sys
from pathlib import Path
from typing import Any

from orchestrator.agents.lib.depgraph import analyze
from orchestrator.agents.lib.files import write_atomic
from orchestrator.agents.lib.proc import resolve_repo, run
from orchestrator.agents.lib.prompts import fenced_file, render_prompt
from orchestrator.agents.lib.ruff import ruff_binary
from orchestrator.agents.qa import tests_importing

from orchestrator.agent import Agent, HandlerError, RequestContext
from orchestrator.contracts.conflicts import (
    RESOLVE_CONFLICT,
    Resolution,
    ResolveConflict,
    Unresolved,
)
from orchestrator.contracts.developer import (
    AGENT_TYPE,
    DEVELOP,
    Develop,
    Developed,
    PastFix,
    file_lock,
)
from orchestrator.errors import AgentErrorCode
from orchestrator.llm import ModelAnswer, PromptRef, model_call

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
    model = prompt = diff = None  # the chat model that wrote the file and its prompt, if one did
    if attempt > 1 and payload.evidence and before is not None:  # fix the file QA checked
        old = await asyncio.to_thread(_existing, path)
        action, detail, model, prompt = await _fix(repo, path, payload, ctx)
        diff = await asyncio.to_thread(_diff, task.file, old, path)
    elif task.content is not None:
        await asyncio.to_thread(_write, path, task.content)
        action, detail = "wrote", f"wrote {task.file}"
    elif task.patch is not None:
        action, detail = await _apply_patch(repo, task.patch)
    elif task.command is not None:
        action, detail = await _run_command(repo, task.command, payload.timeout)
    elif task.description.strip():
        action, detail, model = await _generate(repo, path, payload, ctx)
    else:
        raise HandlerError(AgentErrorCode.INVALID_INPUT,
                           f"task {task.id!r} has no content, patch, command or description")
    after = await asyncio.to_thread(_sha256, path)
    if after is None:
        raise HandlerError(AgentErrorCode.FILE_MISSING, f"{task.file} does not exist after {action}: {detail}",
                           blames_input=True)
    return Developed(file=task.file, action=action, changed=before != after, sha256=after,
                     detail=detail, attempt=attempt, model=model,
                     tier=(payload.tier or "medium") if model else None, prompt=prompt, diff=diff)


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


async def _generate(repo: Path, path: Path, payload: Develop,
                    ctx: RequestContext) -> tuple[str, str, str]:
    """Write a description-only task's file with the chat model."""
    task = payload.task
    # a fix task's file exists: the model must see what it changes
    current = await asyncio.to_thread(_existing, path)
    fields = await asyncio.to_thread(_context, repo, payload, current or "")
    answer, _ = await _ask(ctx, payload, "developer_write", "write", kind=task.kind or "new",
                        description=task.description,
                        current=fenced_file(task.file, current and current[:_FILE_CHARS]),
                        **fields)
    if answer is None:
        raise HandlerError(AgentErrorCode.INVALID_INPUT,
                           f"task {task.id!r} gives only a description: a chat model must "
                           "write it, and none is configured; set ORCHESTRATOR_CHAT_MODEL "
                           "(provider:model) or ORCHESTRATOR_MODELS, or give the task "
                           "content, a patch or a command", blames_input=True)
    await asyncio.to_thread(_write, path, _file_text(answer.content))
    return "generated", f"{answer.model} wrote {task.file} from its description", answer.model


async def _fix(repo: Path, path: Path, payload: Develop,
               ctx: RequestContext) -> tuple[str, str, str | None, str | None]:
    """Fix the file from what QA found: the chat model rewrites it (shown the repository's
    similar past fixes the request carries), else ruff's safe fixes. Returns the action, its
    detail, the model and the prompt version (None, None without a model)."""
    task = payload.task
    current = await asyncio.to_thread(path.read_text, encoding="utf-8", errors="replace")
    fields = await asyncio.to_thread(_context, repo, payload, current)
    answer, prompt = await _ask(ctx, payload, "developer_fix", "fix", attempt=payload.attempt,
                                description=task.description or "(none)", current=current,
                                evidence=json.dumps(payload.evidence, indent=1)[:_EVIDENCE_CHARS],
                                similar=_past_fixes(payload.similar), **fields)
    if answer is not None:
        await asyncio.to_thread(_write, path, _file_text(answer.content))
        return ("model", f"{answer.model} rewrote the file from the QA evidence", answer.model,
                str(prompt))
    if path.suffix in (".py", ".pyi"):
        done = await run([ruff_binary(), "check", "--fix", "--no-cache", "--exit-zero",
                          "--output-format", "concise", "--", str(path)], cwd=repo, timeout=120)
        summary = (done.stdout + done.stderr).strip().splitlines()
        return "ruff-fix", summary[-1] if summary else "ruff found nothing to fix", None, None
    return "none", f"no automatic fix for {path.suffix} files without a chat model", None, None


def _past_fixes(similar: list[PastFix]) -> str:
    """The similar past fixes as the fix prompt shows them, bounded in size."""
    parts, total = [], 0
    for n, past in enumerate(similar, 1):
        how = (f"fixed {'at the first try' if past.first_time else 'after more tries'} by "
               f"{past.prompt or 'no model (an automatic fix)'}"
               f"{f' on tier {past.tier}' if past.tier else ''}")
        part = (f"{n}. `{past.file}`{f' ({past.kind} task)' if past.kind else ''}, similarity "
                f"{past.score:.2f}, {how}.\nWhat QA found:\n{past.failure[:_PAST_CHARS]}\n"
                f"The fix:\n```diff\n{past.fix[:_PAST_CHARS]}\n```")
        if total + len(part) > _PAST_TOTAL:
            break
        total += len(part)
        parts.append(part)
    return "\n\n".join(parts) or "(none)"


def _diff(rel: str, old: str | None, path: Path) -> str:
    """How a fix changed the file: a unified diff (3,000 characters at most)."""
    new = _existing(path)
    lines = difflib.unified_diff((old or "").splitlines(keepends=True),
                                 (new or "").splitlines(keepends=True),
                                 fromfile=f"a/{rel}", tofile=f"b/{rel}", n=1)
    text = "".join(lines)
    return text if len(text) <= _DIFF_CHARS else text[:_DIFF_CHARS] + "\n… (cut)"


async def _ask(ctx: RequestContext, payload: Develop, prompt_name: str, purpose: str,
               **fields: Any) -> tuple[ModelAnswer | None, PromptRef]:
    """One model call of the task's tier and budget (None when no model is configured), and
    the prompt's reference."""
    prompt, messages = render_prompt(prompt_name, file=payload.task.file,
                                     task_id=payload.task.id or payload.task.file, **fields)
    return await model_call(ctx, purpose=purpose, tier=payload.tier or "medium",
                            messages=messages, prompt=prompt, budget=payload.budget,
                            model=payload.model), prompt


#: what a prompt carries at most: per context file, all context files, the QA evidence
_FILE_CHARS, _CONTEXT_CHARS, _EVIDENCE_CHARS = 20_000, 60_000, 8_000
#: a similar past fix: its failure and its diff each, all of them; a fix's recorded diff
_PAST_CHARS, _PAST_TOTAL, _DIFF_CHARS = 1_500, 8_000, 3_000


def _context(repo: Path, payload: Develop, current: str) -> dict[str, str]:
    """The prompt's context: the files the task depends on, and the tests importing its file
    (found by the import graph, with the file as it is now: it may not exist yet)."""
    rel = payload.task.file
    tests = tests_importing(analyze(repo, overrides={rel: current}), rel)
    return {"dependencies": _show(repo, [f for f in payload.context if f != rel]),
            "tests": _show(repo, tests)}


def _existing(path: Path) -> str | None:
    """The file's text, or None when it does not exist yet."""
    try:
        return path.read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return None


def _show(repo: Path, files: list[str]) -> str:
    """``files`` as fenced blocks under their names, bounded in size."""
    parts, total = [], 0
    for rel in files:
        try:
            text = (repo / rel).read_text(encoding="utf-8", errors="replace")[:_FILE_CHARS]
        except OSError:
            continue  # not written (yet): nothing to show
        if total + len(text) > _CONTEXT_CHARS:
            parts.append(f"(and {len(files) - len(parts)} more files, left out for length)")
            break
        total += len(text)
        parts.append(fenced_file(rel, text))
    return "\n\n".join(parts) or "(none)"


def _file_text(reply: str) -> str:
    text = _strip_fence(reply)
    return text if text.endswith("\n") else text + "\n"
def _strip_fence(text: str) -> str:
    lines = text.strip().splitlines()
    if len(lines) >= 2 and lines[0].startswith("```") and lines[-1].startswith("```"):
        return "\n".join(lines[1:-1]) + "\n"
    return text


@agent.handler(RESOLVE_CONFLICT)
async def resolve_conflict(payload: ResolveConflict, ctx: RequestContext) -> Resolution | Unresolved:
    """pr_deployment's merge conflicts: the chat model proposes a resolution."""
    # imported when a merge conflicts: the model machinery is not needed before
    from orchestrator.agents.lib.conflict_resolution import propose_resolution

    return await propose_resolution(payload, ctx)
