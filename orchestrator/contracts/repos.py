"""Git repositories and refs: the rules a graph and the agents that work on a repository
(``code_review``, ``cicd``, ...) must both obey, written once.

* :data:`RepoPath` and :data:`GitRef`: the syntax of a repository path and of a branch or
  commit in a payload or a graph's input (pydantic types: checked without touching disk).
* :func:`repository_top`, :func:`commit_of`, :func:`branch_commit`, :func:`dirty_target`:
  the checks that need git. They block (``git`` runs as a child process), so a graph calls
  them from its input validation, which already runs off the event loop, and an agent with
  :func:`asyncio.to_thread`. Each refuses with a :class:`RepositoryError` saying what to fix.
* :func:`repo_lock`: the name of the lock guarding a repository's branches.

Git runs without a shell, with stdin closed, a timeout, no terminal prompt, the C locale and
the environment of :func:`orchestrator.childenv.child_environment` (never ``ORCHESTRATOR_*``).
"""

from __future__ import annotations

import shlex
import subprocess
from pathlib import Path
from typing import Annotated

from pydantic import AfterValidator, Field

from orchestrator.childenv import child_environment

__all__ = ["GIT_ENV", "GitRef", "RepoPath", "RepositoryError", "branch_commit", "checked_out",
           "commit_of", "dirty_target", "merge_refs_problem", "repo_lock", "repository_top",
           "run_git", "uncommitted"]

GIT_ENV: dict[str, str] = {"GIT_TERMINAL_PROMPT": "0", "LC_ALL": "C"}
"""Added to every git child's environment: never ask for credentials, messages in English."""

_GIT_TIMEOUT = 30.0  # seconds; the checks here are lookups (rev-parse, status)


class RepositoryError(ValueError):
    """A repository or ref refused by a rule here; the message says what to fix."""


def _ref_syntax(value: str) -> str:
    if not value:
        raise ValueError("a branch or commit is needed, not an empty string")
    if value.startswith("-"):  # git would read it as an option
        raise ValueError(f"{value!r} is not a branch or commit: it starts with '-'")
    if "\0" in value:
        raise ValueError(f"{value!r} is not a branch or commit: it holds a NUL character")
    return value


GitRef = Annotated[str, AfterValidator(_ref_syntax),
                   Field(description="a branch or commit (never starting with '-')")]
"""A branch or commit as a payload or an input names it. Whether it exists in a repository is
:func:`commit_of`'s (or :func:`branch_commit`'s) business."""

RepoPath = Annotated[str, Field(min_length=1, description="path of a git repository")]
"""A repository's path as given; :func:`repository_top` turns it into the top folder."""


def run_git(repo: str | Path, *args: str,
            timeout: float = _GIT_TIMEOUT) -> subprocess.CompletedProcess[str]:
    """``git -C repo args...``, blocking; the caller reads ``returncode``.

    Raises:
        subprocess.TimeoutExpired: git took longer than ``timeout`` (it is killed).
    """
    return subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True,
                          timeout=timeout, check=False, stdin=subprocess.DEVNULL,
                          env=child_environment(GIT_ENV))


def repository_top(path: str) -> Path:
    """The top folder of the git repository ``path`` names (``~`` expanded), absolute, with
    symbolic links resolved by git; never stripped (a name may end in ``" "``).

    Raises:
        RepositoryError: ``path`` does not exist or is not in a git repository.
        OSError: the system refuses the path itself (a name too long...).
    """
    folder = Path(path).expanduser()
    if not folder.is_dir():
        raise RepositoryError(f"{path} does not exist; give the path of a git repository")
    done = run_git(folder, "rev-parse", "--show-toplevel")
    if done.returncode != 0:
        raise RepositoryError(f"{path} is not a git repository")
    return Path(done.stdout.removesuffix("\n"))  # only git's newline goes


def commit_of(repo: str | Path, ref: str) -> str:
    """The commit ``ref`` names in ``repo``.

    Raises:
        RepositoryError: ``ref`` names no commit there.
    """
    done = run_git(repo, "rev-parse", "--verify", "--quiet", f"{_ref_syntax(ref)}^{{commit}}")
    if done.returncode != 0:
        raise RepositoryError(f"{ref!r} is not a branch or commit of {repo}")
    return done.stdout.removesuffix("\n")


def branch_commit(repo: str | Path, branch: str) -> str:
    """The commit the local branch ``branch`` of ``repo`` points at.

    Raises:
        RepositoryError: ``repo`` has no such branch (a tag or a commit is not one).
    """
    # show-ref takes the name as it is: rev-parse would read "main~1" as a commit of main
    done = run_git(repo, "show-ref", "--verify", "--hash",
                   f"refs/heads/{_ref_syntax(branch)}")
    if done.returncode != 0:
        raise RepositoryError(f"{branch!r} is not a branch of {repo}")
    return done.stdout.removesuffix("\n")


def checked_out(repo: str | Path) -> str | None:
    """The branch checked out in ``repo``'s work tree; ``None`` when HEAD is detached."""
    head = run_git(repo, "symbolic-ref", "--quiet", "HEAD").stdout.removesuffix("\n")
    return head.removeprefix("refs/heads/") if head.startswith("refs/heads/") else None


def uncommitted(repo: str | Path) -> list[str]:
    """Tracked files of ``repo``'s work tree with uncommitted changes (staged or not)."""
    done = run_git(repo, "status", "--porcelain=v1", "-z", "--untracked-files=no")
    entries, files = done.stdout.split("\0"), []
    index = 0
    while index < len(entries):
        entry = entries[index]
        index += 1
        if len(entry) > 3:
            files.append(entry[3:])
            if entry[0] in "RC":  # a rename or copy: the original path follows
                index += 1
    return files


def dirty_target(repo: str | Path, target: str) -> str | None:
    """Why merging into ``target`` must not happen now: it is checked out in ``repo``'s work
    tree (the merge would happen there) with uncommitted changes to tracked files; ``None``
    when the merge may go ahead (untracked files do not matter)."""
    if checked_out(repo) != target:
        return None
    dirty = uncommitted(repo)
    if not dirty:
        return None
    shown = ", ".join(dirty[:10]) + (f" and {len(dirty) - 10} more" if len(dirty) > 10 else "")
    return (f"target {target!r} is checked out in {repo} with uncommitted changes to {shown}; "
            f"commit or stash them (git -C {shlex.quote(str(repo))} stash), or check out "
            "another branch there, then run again")


def merge_refs_problem(repo: str | Path, source: str, target: str) -> str | None:
    """Why ``source`` cannot be merged into ``target`` of ``repo`` as a delivery, or None:
    ``source`` must name a commit, ``target`` an existing branch other than ``source``, and
    ``target``, when checked out in the work tree, must have no uncommitted changes there."""
    try:
        commit_of(repo, source)
    except RepositoryError as exc:
        return f"source {exc}"
    try:
        branch_commit(repo, target)
    except RepositoryError as exc:
        return f"target {exc}"
    if source == target:
        return "source and target are the same branch"
    return dirty_target(repo, target)


def repo_lock(repo: str | Path) -> str:
    """The lock name guarding a repository's branches: ``repo:<absolute path>``. A graph takes
    it around a merge; the ``cicd`` agent checks its fencing token."""
    return f"repo:{Path(repo).resolve()}"
