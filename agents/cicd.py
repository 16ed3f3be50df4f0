"""The ``cicd`` agent: tests in isolated git worktrees, and merges under the repository lock.

Its request types, their payloads and answers are in :mod:`orchestrator.contracts.cicd`; the
repository and ref rules, and the ``repo:<path>`` lock name, in
:mod:`orchestrator.contracts.repos`.

Worktrees are added and removed one at a time per repository (a lock in this process and a
``flock`` on ``<git dir>/orchestrator-worktrees.lock`` across processes), each under a name of
its own (``orch-wt-<random>``). Each run holds a lock file beside its worktree while it lives;
a worktree of this agent whose holder is gone (killed) or whose folder was deleted is removed
the next time the agent works on the repository.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import shlex
import shutil
import sys
import tempfile
import weakref
from collections.abc import AsyncIterator
from pathlib import Path

from orchestrator.agents.lib.proc import Completed, git, repo_rule, run
from orchestrator.agents.lib.testrun import parse_test_counts, test_failures

from orchestrator.agent import Agent, HandlerError, RequestContext
from orchestrator.contracts.cicd import (
    AGENT_TYPE,
    MERGE,
    RUN_COMMAND,
    RUN_TESTS,
    CommandOutcome,
    Conflicted,
    Merge,
    Merged,
    RunCommand,
    RunTests,
    RunTestsOutcome,
    command_words,
)
from orchestrator.contracts.repos import (
    branch_commit,
    checked_out,
    commit_of,
    dirty_target,
    repo_lock,
    repository_top,
)
from orchestrator.errors import AgentErrorCode

__all__ = ["agent"]

agent = Agent(
    AGENT_TYPE,
    capabilities=["git", "worktree", "pytest", "merge"],
    version="1",
    description="test runs in git worktrees; merges under the repository lock",
)

_OUTPUT_TAIL = 4000


def _argv(command: str | list[str]) -> list[str]:
    """The words to run; a leading ``python`` means this agent's own interpreter."""
    argv = command_words(command)  # the contract already refused an empty one
    if argv[0] == "python":
        argv[0] = sys.executable
    return argv


_WORKTREE_PREFIX = "orch-wt-"
_OWNER_LOCK = "owner.lock"  # in a worktree's temporary parent, held while its run lives
_ADMIN_LOCK = "orchestrator-worktrees.lock"  # in the repository's (common) git dir
_admin_locks: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[str, asyncio.Lock]] = (
    weakref.WeakKeyDictionary())


def _open_lock_file(path: Path) -> int:
    return os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)


async def _flock(fd: int) -> None:
    """Take an exclusive ``flock`` on ``fd``, waiting without blocking the event loop."""
    pause = 0.005
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            await asyncio.sleep(pause)
            pause = min(pause * 2, 0.1)


@contextlib.asynccontextmanager
async def _worktree_admin(repo: Path) -> AsyncIterator[None]:
    """Serialize ``git worktree`` add/remove on ``repo``: an asyncio lock in this process, and
    a ``flock`` (per open file, so it also orders this process's own opens) across processes."""
    common = Path((await git(repo, "rev-parse", "--path-format=absolute",
                             "--git-common-dir")).stdout.removesuffix("\n"))
    locks = _admin_locks.setdefault(asyncio.get_running_loop(), {})
    lock = locks.setdefault(str(common), asyncio.Lock())
    async with lock:
        fd = await asyncio.to_thread(_open_lock_file, common / _ADMIN_LOCK)
        try:
            await _flock(fd)
            yield
        finally:
            os.close(fd)  # releases the flock


def _owner_alive(parent: Path) -> bool:
    """Whether the run that made the worktree in ``parent`` still holds its lock file."""
    try:
        fd = os.open(parent / _OWNER_LOCK, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:  # gone (folder deleted), or a leftover of an older version
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


async def _remove_leftovers(repo: Path) -> list[str]:
    """Remove this agent's worktrees of ``repo`` whose run is gone; call under the admin lock.

    Only worktrees named like ours (``<tmp>/orch-wt-*/...``) are considered, so the
    repository's other worktrees (a folder on an unmounted disk...) are never pruned.
    """
    listing = await git(repo, "worktree", "list", "--porcelain", "-z", check=False)
    removed = []
    for record in listing.stdout.split("\0\0"):
        path_field = next((f for f in record.split("\0") if f.startswith("worktree ")), None)
        if path_field is None:
            continue
        path = Path(path_field.removeprefix("worktree "))
        if not path.parent.name.startswith(_WORKTREE_PREFIX):
            continue
        if await asyncio.to_thread(_owner_alive, path.parent):
            continue
        await git(repo, "worktree", "remove", "--force", "--force", "--", str(path), check=False)
        await asyncio.to_thread(shutil.rmtree, path.parent, True)
        removed.append(str(path))
    return removed


def _make_parent() -> tuple[Path, int]:
    parent = Path(tempfile.mkdtemp(prefix=_WORKTREE_PREFIX))
    fd = _open_lock_file(parent / _OWNER_LOCK)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # a new file: nobody else holds it
    return parent, fd


@contextlib.asynccontextmanager
async def _worktree(repo: Path, commit: str) -> AsyncIterator[Path]:
    # the file system work goes to a thread: never block the event loop
    parent, owner = await asyncio.to_thread(_make_parent)
    path = parent / parent.name  # a unique basename: a unique .git/worktrees/<name>
    try:
        async with _worktree_admin(repo):
            await _remove_leftovers(repo)
            await git(repo, "worktree", "add", "--detach", "--", str(path), commit, timeout=300)
        yield path
    finally:
        try:
            async with _worktree_admin(repo):
                await git(repo, "worktree", "remove", "--force", "--force", "--", str(path),
                          check=False)
        finally:
            await asyncio.to_thread(shutil.rmtree, parent, True)
            os.close(owner)


@agent.handler(RUN_TESTS)
async def run_tests(payload: RunTests, ctx: RequestContext) -> RunTestsOutcome:
    repo = await repo_rule(repository_top, payload.repo)
    argv = _argv(payload.command)
    commit = await repo_rule(commit_of, repo, payload.ref)
    async with _worktree(repo, commit) as tree:
        ctx.log.info("running %s at %s (%s)", shlex.join(argv), payload.ref, commit[:12])
        done = await run(argv, cwd=tree, timeout=payload.timeout, test_command=True)
    return RunTestsOutcome(**_outcome(done, argv, payload.timeout).model_dump(), commit=commit)


def _outcome(done: Completed, argv: list[str], timeout: float) -> CommandOutcome:
    """What a test command's run says: passed, counts, failing tests, the output's tail."""
    output = done.stdout + ("\n" + done.stderr if done.stderr else "")
    counts = parse_test_counts(done.stdout) or parse_test_counts(output)
    passed = done.returncode == 0 and not done.timed_out
    reason = None
    if done.timed_out:
        reason = f"the test command timed out after {timeout:g}s"
    elif not passed:
        reason = (f"{counts.get('failed', 0)} failed, {counts.get('errors', 0)} errors"
                  if counts else f"the test command exited {done.returncode}")
        if done.returncode == 5 and not counts.get("failed"):
            reason = "no tests were collected"
    failures = test_failures(output)[:50]
    if failures and reason:
        reason += ": " + "; ".join(failures[:5])
    return CommandOutcome(
        passed=passed, reason=reason, failures=failures, exit_code=done.returncode,
        timed_out=done.timed_out, counts=counts, seconds=round(done.seconds, 3), command=argv,
        output_tail=output[-_OUTPUT_TAIL:],
    )


@agent.handler(RUN_COMMAND)
async def run_command(payload: RunCommand, ctx: RequestContext) -> CommandOutcome:
    repo = await repo_rule(repository_top, payload.repo)
    argv = _argv(payload.command)
    ctx.log.info("running %s in %s", shlex.join(argv), repo)
    done = await run(argv, cwd=repo, timeout=payload.timeout, test_command=True)
    return _outcome(done, argv, payload.timeout)


@agent.handler(MERGE)
async def merge(payload: Merge, ctx: RequestContext) -> Merged | Conflicted:
    repo = await repo_rule(repository_top, payload.repo)
    await ctx.check_fencing(repo_lock(repo))
    source, target = payload.source, payload.target
    message = payload.message or f"Merge {source} into {target}"
    source_commit = await repo_rule(commit_of, repo, source)
    target_commit = await repo_rule(branch_commit, repo, target)
    already = await git(repo, "merge-base", "--is-ancestor", source_commit, target_commit,
                        check=False)
    if already.returncode == 0:  # a redelivered request after the merge, or nothing to merge
        return Merged(merged=True, already_merged=True, commit=target_commit)
    try:
        if await repo_rule(checked_out, repo) == target:
            commit = await _merge_in_place(repo, target, source_commit, message)
        else:
            commit = await _merge_in_worktree(repo, target, target_commit, source_commit, message)
    except _Conflict as conflict:
        ctx.log.info("merging %s into %s conflicts in %s", source, target, conflict.files)
        return Conflicted(merged=False, conflicts=conflict.files, reason=(
            f"merging {source} into {target} conflicts in {', '.join(conflict.files)}; "
            "resolve it on the source branch and run again"))
    ctx.log.info("merged %s into %s: %s", source, target, commit[:12])
    return Merged(merged=True, already_merged=False, commit=commit)


class _Conflict(Exception):
    def __init__(self, files: list[str]) -> None:
        super().__init__(", ".join(files))
        self.files = files


async def _merge_in_place(repo: Path, target: str, source_commit: str, message: str) -> str:
    problem = await repo_rule(dirty_target, repo, target)  # the rule the graph checked first
    if problem:
        raise HandlerError(AgentErrorCode.DIRTY_WORKTREE, problem, blames_input=True)
    await _merge_or_abort(repo, source_commit, message)
    return (await git(repo, "rev-parse", "HEAD")).stdout.strip()


async def _merge_in_worktree(
    repo: Path, target: str, target_commit: str, source_commit: str, message: str
) -> str:
    async with _worktree(repo, target_commit) as tree:
        await _merge_or_abort(tree, source_commit, message)
        commit = (await git(tree, "rev-parse", "HEAD")).stdout.strip()
    # compare-and-swap: refuse if the branch moved while we merged
    moved = await git(repo, "update-ref", "-m", message, f"refs/heads/{target}", commit,
                      target_commit, check=False)
    if moved.returncode != 0:
        raise HandlerError(AgentErrorCode.TARGET_MOVED, f"{target} moved during the merge; run it again",
                           retryable=True)
    return commit


async def _merge_or_abort(tree: Path, source_commit: str, message: str) -> None:
    done = await git(tree, *await _identity(tree), "merge", "--no-ff", "--no-edit",
                     "-m", message, source_commit, check=False, timeout=300)
    if done.returncode == 0:
        return
    conflicts = await git(tree, "diff", "--name-only", "--diff-filter=U", check=False)
    files = [f for f in conflicts.stdout.splitlines() if f]
    await git(tree, "merge", "--abort", check=False)
    if files:
        raise _Conflict(files)  # aborted: the tree is as it was
    raise HandlerError(AgentErrorCode.MERGE_FAILED, (done.stderr or done.stdout).strip(), blames_input=True)


async def _identity(tree: Path) -> list[str]:
    """The repository's own committer identity, else the orchestrator's (never overriding)."""
    email = await git(tree, "config", "user.email", check=False)
    if email.stdout.strip():
        return []
    return ["-c", "user.name=orchestrator", "-c", "user.email=orchestrator@localhost"]
