"""The ``cicd`` agent: tests in isolated git worktrees, and merges under the repository lock.

Request types:

* ``run_tests`` ``{"repo", "ref", "command"="python -m pytest -q", "timeout"=600}`` →
  ``{"passed", "exit_code", "timed_out", "counts": {"passed", "failed", ...}, "seconds",
  "commit", "failures", "output_tail"}``. The command runs without a shell in a fresh
  detached worktree at ``ref``, which is removed afterwards; a leading ``python`` means the
  agent's own interpreter. Counts are read from pytest's (or unittest's) summary; failures
  are test ids (``tests/test_x.py::test_y`` for pytest, ``tests.test_x.Case.test_y`` for
  unittest) with the first line of their error. The command's environment is the worker's
  without ``ORCHESTRATOR_*`` (see ``orchestrator.childenv``), and a pytest it starts never
  loads this project's own pytest plugin (``PYTEST_ADDOPTS=-p no:orchestrator``).
* ``run_command`` ``{"repo", "command", "timeout"=600}`` → like ``run_tests``, but in the
  repository's working tree as it is (integration tests after a plan's changes).
* ``merge`` ``{"repo", "source", "target"="main", "message"}`` → ``{"merged": true, "commit",
  "already_merged"}``, or ``{"merged": false, "conflicts": [files], "reason"}``. Guarded by
  the ``repo:<repository path>`` lock, whose fencing token the request must carry. A
  no-fast-forward merge of ``source`` into ``target``: in place when ``target`` is checked
  out (the working tree must be clean), else in a temporary worktree, after which the branch
  is moved by compare-and-swap. A conflict is aborted: the repository is left as it was.

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
from typing import Any

from orchestrator.agents.lib.proc import Completed, commit_of, git, ref_arg, resolve_repo, run
from orchestrator.agents.lib.testrun import parse_test_counts, test_failures

from orchestrator.agent import Agent, HandlerError, RequestContext
from orchestrator.errors import AgentErrorCode

__all__ = ["agent", "repo_resource"]

agent = Agent(
    "cicd",
    capabilities=["git", "worktree", "pytest", "merge"],
    version="1",
    description="test runs in git worktrees; merges under the repository lock",
)

_OUTPUT_TAIL = 4000


def repo_resource(repo: str | Path) -> str:
    """The lock name guarding a repository's branches."""
    return f"repo:{Path(repo).resolve()}"


def _argv(command: object) -> list[str]:
    if isinstance(command, str):
        argv = shlex.split(command)
    elif isinstance(command, list) and all(isinstance(a, str) for a in command):
        argv = list(command)
    else:
        raise HandlerError(AgentErrorCode.INVALID_INPUT, "'command' must be a string or a list of strings")
    if not argv:
        raise HandlerError(AgentErrorCode.INVALID_INPUT, "'command' is empty")
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


@agent.handler("run_tests")
async def run_tests(payload: dict[str, Any], ctx: RequestContext) -> dict[str, Any]:
    repo = await resolve_repo(payload.get("repo"))
    ref = ref_arg(payload, "ref")
    argv = _argv(payload.get("command", "python -m pytest -q"))
    timeout = _timeout(payload)
    commit = await commit_of(repo, ref)
    async with _worktree(repo, commit) as tree:
        ctx.log.info("running %s at %s (%s)", shlex.join(argv), ref, commit[:12])
        done = await run(argv, cwd=tree, timeout=timeout, test_command=True)
    return {**_outcome(done, argv, timeout), "commit": commit}


def _outcome(done: Completed, argv: list[str], timeout: float) -> dict[str, Any]:
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
    return {
        "passed": passed,
        "reason": reason,
        "failures": failures,
        "exit_code": done.returncode,
        "timed_out": done.timed_out,
        "counts": counts,
        "seconds": round(done.seconds, 3),
        "command": argv,
        "output_tail": output[-_OUTPUT_TAIL:],
    }


@agent.handler("run_command")
async def run_command(payload: dict[str, Any], ctx: RequestContext) -> dict[str, Any]:
    repo = await resolve_repo(payload.get("repo"))
    argv = _argv(payload.get("command", "python -m pytest -q"))
    timeout = _timeout(payload)
    ctx.log.info("running %s in %s", shlex.join(argv), repo)
    done = await run(argv, cwd=repo, timeout=timeout, test_command=True)
    return _outcome(done, argv, timeout)


def _timeout(payload: dict[str, Any]) -> float:
    timeout = payload.get("timeout", 600)
    if not isinstance(timeout, int | float) or timeout <= 0:
        raise HandlerError(AgentErrorCode.INVALID_INPUT, "'timeout' must be a positive number of seconds")
    return float(timeout)


@agent.handler("merge")
async def merge(payload: dict[str, Any], ctx: RequestContext) -> dict[str, Any]:
    repo = await resolve_repo(payload.get("repo"))
    await ctx.check_fencing(repo_resource(repo))
    source, target = ref_arg(payload, "source"), ref_arg(payload, "target", "main")
    message = payload.get("message") or f"Merge {source} into {target}"
    source_commit = await commit_of(repo, source)
    target_commit = await commit_of(repo, f"refs/heads/{target}")
    already = await git(repo, "merge-base", "--is-ancestor", source_commit, target_commit,
                        check=False)
    if already.returncode == 0:  # a redelivered request after the merge, or nothing to merge
        return {"merged": True, "already_merged": True, "commit": target_commit}
    head = await git(repo, "symbolic-ref", "--quiet", "HEAD", check=False)
    try:
        if head.stdout.removesuffix("\n") == f"refs/heads/{target}":
            commit = await _merge_in_place(repo, source_commit, message)
        else:
            commit = await _merge_in_worktree(repo, target, target_commit, source_commit, message)
    except _Conflict as conflict:
        ctx.log.info("merging %s into %s conflicts in %s", source, target, conflict.files)
        return {"merged": False, "conflicts": conflict.files, "reason": (
            f"merging {source} into {target} conflicts in {', '.join(conflict.files)}; "
            "resolve it on the source branch and run again")}
    ctx.log.info("merged %s into %s: %s", source, target, commit[:12])
    return {"merged": True, "already_merged": False, "commit": commit}


class _Conflict(Exception):
    def __init__(self, files: list[str]) -> None:
        super().__init__(", ".join(files))
        self.files = files


async def _merge_in_place(repo: Path, source_commit: str, message: str) -> str:
    dirty = await git(repo, "status", "--porcelain", "--untracked-files=no")
    if dirty.stdout.strip():
        raise HandlerError(
            AgentErrorCode.DIRTY_WORKTREE,
            f"{repo} has uncommitted changes on the target branch; commit or stash them first",
            blames_input=True)
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
