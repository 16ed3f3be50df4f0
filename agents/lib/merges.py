"""Merges without a work tree: what a conflict looks like, and a resolution made into a commit.

``git merge-tree --write-tree`` (git 2.38+) merges two commits in the object store alone, so
preparing a resolution never touches the repository's work tree, index or branches; the
resolved commit is built with a throw-away index file (``GIT_INDEX_FILE``) and
``commit-tree``. Only the last step, moving the ``<source>-resolved`` branch, writes a ref.

The resolution commit has the parents ``(source, target)``: it is ``source`` with ``target``
merged in, so merging it into ``target`` afterwards cannot conflict again (unless ``target``
moved meanwhile).
"""

from __future__ import annotations

import asyncio
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from orchestrator.agents.lib.proc import Completed, git, run

from orchestrator.agent import HandlerError
from orchestrator.contracts.repos import GIT_ENV
from orchestrator.errors import AgentErrorCode

__all__ = ["ConflictedFile", "MergeAttempt", "attempt_merge", "commit_resolution",
           "identity_options", "tree_diff"]

_TEXT_LIMIT = 200_000  # characters of one side of a file given to a model


@dataclass(frozen=True)
class ConflictedFile:
    """One file in conflict: with git's markers, and each side (None: absent on that side)."""

    path: str
    merged: str | None
    base: str | None
    source: str | None
    target: str | None


@dataclass(frozen=True)
class MergeAttempt:
    """``source`` merged with ``target`` in the object store: the tree (with conflict markers in
    the conflicted files) and the files in conflict (empty: it merges cleanly)."""

    source_commit: str
    target_commit: str
    tree: str
    conflicts: list[ConflictedFile]


async def identity_options(tree: str | Path) -> list[str]:
    """The repository's own committer identity, else the orchestrator's (never overriding)."""
    email = await git(tree, "config", "user.email", check=False)
    if email.stdout.strip():
        return []
    return ["-c", "user.name=orchestrator", "-c", "user.email=orchestrator@localhost"]


async def _blob(repo: Path, spec: str) -> str | None:
    done = await git(repo, "cat-file", "blob", spec, check=False)
    return done.stdout[:_TEXT_LIMIT] if done.returncode == 0 else None


async def attempt_merge(repo: Path, source: str, target: str) -> MergeAttempt:
    """Merge ``source`` with ``target`` in the object store; conflict markers name both refs.

    Raises:
        HandlerError: ``git_failed`` when git cannot merge them at all (unrelated histories,
            a git older than 2.38).
    """
    source_commit = (await git(repo, "rev-parse", "--verify", f"{source}^{{commit}}")).stdout.strip()
    target_commit = (await git(repo, "rev-parse", "--verify", f"{target}^{{commit}}")).stdout.strip()
    done = await git(repo, "merge-tree", "--write-tree", "--name-only", "-z", source, target,
                     check=False, timeout=300)
    if done.returncode not in (0, 1):
        raise HandlerError(AgentErrorCode.GIT_FAILED, f"git merge-tree {source} {target} failed "
                           f"in {repo}: {(done.stderr or done.stdout).strip()}", blames_input=True)
    fields = done.stdout.split("\0")
    tree, names = fields[0], []
    for name in fields[1:] if done.returncode == 1 else ():
        if not name:
            break
        names.append(name)
    base = (await git(repo, "merge-base", source_commit, target_commit, check=False)).stdout.strip()
    conflicts = [ConflictedFile(
        path=name, merged=await _blob(repo, f"{tree}:{name}"),
        base=await _blob(repo, f"{base}:{name}") if base else None,
        source=await _blob(repo, f"{source_commit}:{name}"),
        target=await _blob(repo, f"{target_commit}:{name}"),
    ) for name in dict.fromkeys(names)]
    return MergeAttempt(source_commit, target_commit, tree, conflicts)


async def _indexed(repo: Path, index: str, *args: str, stdin: bytes | None = None) -> Completed:
    done = await run(["git", "-C", str(repo), *args], timeout=120, stdin=stdin,
                     env={**GIT_ENV, "GIT_INDEX_FILE": index})
    if done.returncode != 0:
        raise HandlerError(AgentErrorCode.GIT_FAILED, f"git {args[0]} failed in {repo}: "
                           f"{(done.stderr or done.stdout).strip()}")
    return done


async def _mode(repo: Path, commit: str, path: str) -> str:
    listed = (await git(repo, "ls-tree", "-z", commit, "--", path, check=False)).stdout
    mode = listed.split(" ", 1)[0] if listed else ""
    return mode if mode in ("100644", "100755") else "100644"


def _fresh_index_path() -> str:
    """A path of our own for a throw-away index: git creates the file (an empty file is not
    an index), so the name is reserved and the file removed."""
    fd, index = tempfile.mkstemp(prefix="orch-index-")
    os.close(fd)
    os.unlink(index)
    return index


async def commit_resolution(repo: Path, attempt: MergeAttempt, files: dict[str, str | None],
                            *, branch: str, message: str) -> str:
    """Commit ``attempt``'s tree with ``files`` replaced (None deletes one) on ``branch``.

    The branch is created, or moved when it holds an earlier resolution of the same two
    commits (a retried request); any other branch of that name is left alone.

    Raises:
        HandlerError: ``invalid_input`` when ``branch`` exists and is not such a resolution.
    """
    existing = await git(repo, "rev-parse", "--verify", "-q", f"refs/heads/{branch}", check=False)
    if existing.returncode == 0:
        parents = (await git(repo, "rev-list", "--parents", "-n", "1",
                             existing.stdout.strip())).stdout.split()[1:]
        if parents != [attempt.source_commit, attempt.target_commit]:
            raise HandlerError(AgentErrorCode.INVALID_INPUT, (
                f"the branch {branch} exists and is not a resolution of these commits; delete "
                "or rename it and run again"), blames_input=True)
    index = await asyncio.to_thread(_fresh_index_path)
    try:
        await _indexed(repo, index, "read-tree", attempt.tree)
        for path, text in files.items():
            if text is None:
                await _indexed(repo, index, "update-index", "--force-remove", "--", path)
                continue
            blob = (await _indexed(repo, index, "hash-object", "-w", "--stdin",
                                   stdin=text.encode())).stdout.strip()
            mode = await _mode(repo, attempt.source_commit, path)
            await _indexed(repo, index, "update-index", "--add", "--cacheinfo",
                           f"{mode},{blob},{path}")
        tree = (await _indexed(repo, index, "write-tree")).stdout.strip()
    finally:
        await asyncio.to_thread(Path(index).unlink, missing_ok=True)
    commit = (await git(repo, *await identity_options(repo), "commit-tree", tree,
                        "-p", attempt.source_commit, "-p", attempt.target_commit,
                        "-m", message)).stdout.strip()
    await git(repo, "update-ref", "-m", message, f"refs/heads/{branch}", commit)
    return commit


async def tree_diff(repo: Path, before: str, after: str, paths: list[str]) -> str:
    """The unified diff from ``before`` to ``after`` (trees or commits), limited to ``paths``."""
    return (await git(repo, "diff", "--no-color", "--no-ext-diff", before, after, "--",
                      *paths)).stdout
