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
import re
import shlex
import shutil
import sys
import tempfile
import weakref
from collections.abc import AsyncIterator, Iterable
from pathlib import Path

from orchestrator.agents.lib.merges import attempt_merge, identity_options
from orchestrator.agents.lib.proc import Completed, child_env, git, repo_rule, run
from orchestrator.agents.lib.testrun import parse_test_counts, test_failures

from orchestrator.agent import Agent, HandlerError, RequestContext
from orchestrator.contracts.cicd import (
    AGENT_TYPE,
    MERGE,
    MOVE_REF,
    PREPARE_MERGE,
    RUN_COMMAND,
    RUN_TESTS,
    CommandOutcome,
    Conflicted,
    Merge,
    Merged,
    MoveRef,
    MoveRefOutcome,
    PrepareConflicted,
    Prepared,
    PrepareMerge,
    RunCommand,
    RunTests,
    RunTestsOutcome,
    Upstream,
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
    capabilities=["git", "worktree", "pytest", "merge", "prepare_merge", "move_ref"],
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
    upstreams = payload.upstreams or {}
    _check_placeholders(argv, upstreams)
    async with contextlib.AsyncExitStack() as stack:
        paths = {name: await _upstream_path(stack, name, up) for name, up in upstreams.items()}
        tree = await stack.enter_async_context(_worktree(repo, commit))
        argv = [_placeheld(word, paths) for word in argv]
        ctx.log.info("running %s at %s (%s)", shlex.join(argv), payload.ref, commit[:12])
        done = await run(argv, cwd=tree, timeout=payload.timeout, test_command=True,
                         env=_python_path(paths.values()) if paths else None)
    return RunTestsOutcome(**_outcome(done, argv, payload.timeout).model_dump(), commit=commit)


_PLACEHOLDER = re.compile(r"\{upstream:([^{}]*)\}")


def _check_placeholders(argv: list[str], upstreams: dict[str, Upstream]) -> None:
    unknown = sorted({m for word in argv for m in _PLACEHOLDER.findall(word)} - set(upstreams))
    if unknown:
        raise HandlerError(AgentErrorCode.INVALID_INPUT, (
            f"the command names {', '.join('{upstream:' + n + '}' for n in unknown)} but the "
            f"request's upstreams are {', '.join(sorted(upstreams)) or '(none)'}"),
            blames_input=True)


def _placeheld(word: str, paths: dict[str, Path]) -> str:
    """``word`` with each ``{upstream:NAME}`` replaced by NAME's path."""
    return _PLACEHOLDER.sub(lambda m: str(paths[m.group(1)]), word)


async def _upstream_path(stack: contextlib.AsyncExitStack, name: str, up: Upstream) -> Path:
    """The folder of upstream ``name``: a worktree at its ref (removed with ``stack``), or the
    repository's folder when the request gives no ref."""
    repo = await repo_rule(repository_top, up.repo)
    if up.ref is None:
        return repo
    commit = await repo_rule(commit_of, repo, up.ref)
    return await stack.enter_async_context(_worktree(repo, commit))


def _python_path(folders: Iterable[Path]) -> dict[str, str]:
    """``PYTHONPATH`` with each folder (its ``src/`` when it has one) first."""
    first = [str(f / "src") if (f / "src").is_dir() else str(f) for f in folders]
    rest = child_env().get("PYTHONPATH")
    return {"PYTHONPATH": os.pathsep.join([*first, *([rest] if rest else [])])}


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
    done = await git(tree, *await identity_options(tree), "merge", "--no-ff", "--no-edit",
                     "-m", message, source_commit, check=False, timeout=300)
    if done.returncode == 0:
        return
    conflicts = await git(tree, "diff", "--name-only", "--diff-filter=U", check=False)
    files = [f for f in conflicts.stdout.splitlines() if f]
    await git(tree, "merge", "--abort", check=False)
    if files:
        raise _Conflict(files)  # aborted: the tree is as it was
    raise HandlerError(AgentErrorCode.MERGE_FAILED, (done.stderr or done.stdout).strip(), blames_input=True)


@agent.handler(PREPARE_MERGE)
async def prepare_merge(payload: PrepareMerge, ctx: RequestContext) -> Prepared | PrepareConflicted:
    """The merge commit of ``source`` into ``target``, in the object store alone."""
    repo = await repo_rule(repository_top, payload.repo)
    source, target = payload.source, payload.target
    source_commit = await repo_rule(commit_of, repo, source)
    target_commit = await repo_rule(branch_commit, repo, target)
    already = await git(repo, "merge-base", "--is-ancestor", source_commit, target_commit,
                        check=False)
    if already.returncode == 0:
        return Prepared(prepared=True, commit=target_commit, target_commit=target_commit,
                        source_commit=source_commit, already_merged=True)
    attempt = await attempt_merge(repo, source_commit, target_commit)
    if attempt.conflicts:
        files = [c.path for c in attempt.conflicts]
        return PrepareConflicted(prepared=False, conflicts=files, reason=(
            f"merging {source} into {target} conflicts in {', '.join(files)}; resolve it on "
            "the source branch and run again"))
    message = payload.message or f"Merge {source} into {target}"
    commit = (await git(repo, *await identity_options(repo), "commit-tree", attempt.tree,
                        "-p", target_commit, "-p", source_commit, "-m", message)).stdout.strip()
    ctx.log.info("prepared %s into %s of %s: %s", source, target, repo, commit[:12])
    return Prepared(prepared=True, commit=commit, target_commit=target_commit,
                    source_commit=source_commit, already_merged=False)


@agent.handler(MOVE_REF)
async def move_ref(payload: MoveRef, ctx: RequestContext) -> MoveRefOutcome:
    """Move a branch from ``old`` to ``new`` by compare-and-swap, under the repo lock."""
    repo = await repo_rule(repository_top, payload.repo)
    await ctx.check_fencing(repo_lock(repo))
    ref, new, old = payload.ref, payload.new, payload.old
    current = await repo_rule(branch_commit, repo, ref)
    here = await repo_rule(checked_out, repo) == ref
    if current == new:  # moved by an earlier run of this request: only the work tree may lag
        if here:
            await _follow(repo, old, new, healing=True)
        return MoveRefOutcome(moved=True, already=True, current=current, reason=None)
    if current != old:
        return MoveRefOutcome(moved=False, already=False, current=current, reason=(
            f"{ref} of {repo} is at {current[:12]}, not {old[:12]} as recorded: it was "
            "pushed to meanwhile"))
    if here:
        problem = await repo_rule(dirty_target, repo, ref)
        if problem:
            raise HandlerError(AgentErrorCode.DIRTY_WORKTREE, problem, blames_input=True)
    done = await git(repo, "update-ref", "-m", f"orchestrator: move {ref}", f"refs/heads/{ref}",
                     new, old, check=False)
    if done.returncode != 0:  # lost the compare-and-swap to a push right now
        current = await repo_rule(branch_commit, repo, ref)
        return MoveRefOutcome(moved=False, already=False, current=current, reason=(
            f"{ref} of {repo} moved to {current[:12]} during the compare-and-swap"))
    if here:
        await _follow(repo, old, new, healing=False)
    ctx.log.info("moved %s of %s from %s to %s", ref, repo, old[:12], new[:12])
    return MoveRefOutcome(moved=True, already=False, current=new, reason=None)


async def _follow(repo: Path, old: str, new: str, *, healing: bool) -> None:
    """Bring the work tree of the checked-out branch from ``old``'s tree to ``new``'s (the
    branch has moved). ``healing``: only when index and work tree are still exactly ``old``
    (a crash between the move and this step), else they are someone's and left alone."""
    if healing:
        index = await git(repo, "diff-index", "--quiet", "--cached", old, "--", check=False)
        files = await git(repo, "diff-files", "--quiet", check=False)
        if index.returncode != 0 or files.returncode != 0 or old == new:
            return
    done = await git(repo, "read-tree", "-m", "-u", old, new, check=False)
    if done.returncode != 0:
        raise HandlerError(AgentErrorCode.GIT_FAILED, (
            f"the branch of {repo} moved to {new[:12]} but its work tree could not follow: "
            f"{(done.stderr or done.stdout).strip()}; run git -C {shlex.quote(str(repo))} "
            f"reset --keep {new[:12]}"))
