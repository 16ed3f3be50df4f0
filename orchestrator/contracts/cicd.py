"""The ``cicd`` agent's contract: tests in isolated git worktrees, and merges under the
repository lock.

Request types:

* ``run_tests`` (:data:`RUN_TESTS`) ``{"repo", "ref", "command"="python -m pytest -q",
  "timeout"=600}`` → ``{"passed", "reason", "exit_code", "timed_out", "counts": {"passed",
  "failed", ...}, "seconds", "commit", "failures", "command", "output_tail"}``. The command
  runs without a shell in a fresh detached worktree at ``ref``, which is removed afterwards; a
  leading ``python`` means the agent's own interpreter. Counts are read from pytest's (or
  unittest's) summary; failures are test ids (``tests/test_x.py::test_y`` for pytest,
  ``tests.test_x.Case.test_y`` for unittest) with the first line of their error. The
  command's environment is the worker's without ``ORCHESTRATOR_*`` (see
  ``orchestrator.childenv``), and a pytest it starts never loads this project's own pytest
  plugin (``PYTEST_ADDOPTS=-p no:orchestrator``).
* ``run_command`` (:data:`RUN_COMMAND`) ``{"repo", "command", "timeout"=600}`` → like
  ``run_tests`` (without ``commit``), but in the repository's working tree as it is
  (integration tests after a plan's changes).
* ``merge`` (:data:`MERGE`) ``{"repo", "source", "target"="main", "message"}`` →
  ``{"merged": true, "commit", "already_merged"}``, or ``{"merged": false, "conflicts":
  [files], "reason"}``. Guarded by the :func:`~orchestrator.contracts.repos.repo_lock` lock
  (``repo:<repository path>``), whose fencing token the request must carry. A no-fast-forward
  merge of ``source`` into ``target``: in place when ``target`` is checked out (the working
  tree must be clean), else in a temporary worktree, after which the branch is moved by
  compare-and-swap. A conflict is aborted: the repository is left as it was.
* ``prepare_merge`` (:data:`PREPARE_MERGE`) ``{"repo", "source", "target"="main", "message"}``
  → ``{"prepared": true, "commit", "target_commit", "source_commit", "already_merged"}``, or
  ``{"prepared": false, "conflicts": [files], "reason"}``. The merge commit of ``source`` into
  ``target`` (parents: target, source) made in the object store alone (``git merge-tree
  --write-tree`` + ``git commit-tree``): no work tree, no index, no ref touched. When
  ``source`` is already in ``target``, ``commit`` is ``target_commit``.
* ``move_ref`` (:data:`MOVE_REF`) ``{"repo", "ref", "new", "old"}`` → ``{"moved", "already",
  "current", "reason"}``: the branch ``ref`` moved from ``old`` to ``new`` by compare-and-swap
  (``git update-ref refs/heads/<ref> <new> <old>``), guarded by the ``repo:`` lock's fencing
  token. ``already`` (and ``moved``) when it is at ``new`` already (a request run again after
  its move); ``moved: false`` with ``current`` when it is at neither (someone pushed). When
  ``ref`` is checked out in the repository's clean work tree, the work tree follows (``git
  read-tree -m -u``); a dirty one is refused (``dirty_worktree``) before anything moves.
* ``run_tests`` takes ``upstreams`` ``{NAME: {"repo", "ref"}}`` too: a detached worktree of
  each upstream at its ``ref`` (no ``ref``: the repository's folder as it is);
  ``{upstream:NAME}`` in the command's words becomes that path, and the upstreams' paths
  (their ``src/`` when there is one) come first on ``PYTHONPATH``. Worktrees are removed
  afterwards.

``repo`` and the refs follow :mod:`orchestrator.contracts.repos`.
"""

from __future__ import annotations

import shlex
from typing import Annotated, Literal

from pydantic import AfterValidator, Field, RootModel

from orchestrator.contracts.base import Contract, Operation
from orchestrator.contracts.repos import GitRef, RepoPath

__all__ = ["AGENT_TYPE", "MERGE", "MOVE_REF", "PREPARE_MERGE", "RUN_COMMAND", "RUN_TESTS",
           "Command", "CommandOutcome", "Conflicted", "Merge", "MergeOutcome", "Merged", "MoveRef",
           "MoveRefOutcome", "PrepareConflicted", "PrepareMerge", "PrepareMergeOutcome",
           "Prepared", "RunCommand", "RunTests", "RunTestsOutcome", "Upstream", "command_words",
           "UPSTREAM_NAME"]

AGENT_TYPE = "cicd"


def command_words(command: str | list[str]) -> list[str]:
    """The program and its arguments: a string is split as a shell would (no shell runs).

    Raises:
        ValueError: nothing to run, or a quote left open.
    """
    try:
        words = shlex.split(command) if isinstance(command, str) else list(command)
    except ValueError as exc:  # shlex: "No closing quotation"...
        raise ValueError(f"the command {command!r} cannot be split into words: {exc}") from None
    if not words:
        raise ValueError("the command is empty")
    return words


def _runnable(command: str | list[str]) -> str | list[str]:
    command_words(command)
    return command  # as given: the wire carries what the caller wrote


Command = Annotated[str | list[str], AfterValidator(_runnable), Field(
    description="run without a shell: a string split as a shell would, or the words")]

Seconds = Annotated[float, Field(gt=0, strict=True, description="seconds before it is killed")]


UPSTREAM_NAME = r"^[A-Za-z0-9][A-Za-z0-9._-]*$"
"""What an upstream's name (a ``{upstream:NAME}`` placeholder's NAME) may be."""


class Upstream(Contract):
    repo: RepoPath
    ref: GitRef | None = Field(None, description="the branch or commit its worktree is made "
                               "at; none: the repository's folder as it is")


class RunTests(Contract):
    repo: RepoPath
    ref: GitRef = Field(description="the branch or commit to test")
    command: Command = "python -m pytest -q"
    timeout: Seconds = 600.0
    upstreams: dict[Annotated[str, Field(pattern=UPSTREAM_NAME)], Upstream] | None = Field(
        None, description="repositories the tests use: {upstream:NAME} in the command is the "
        "path of a worktree of NAME at its ref, which also goes first on PYTHONPATH")


class RunCommand(Contract):
    repo: RepoPath
    command: Command = "python -m pytest -q"
    timeout: Seconds = 600.0


class CommandOutcome(Contract):
    passed: bool = Field(description="exit 0 within the timeout")
    reason: str | None = Field(description="why it did not pass, naming the first failures")
    failures: list[str] = Field(description="failing test ids with the first line of the error")
    exit_code: int
    timed_out: bool
    counts: dict[str, int] = Field(description="from the test runner's summary")
    seconds: float
    command: list[str] = Field(description="the words run")
    output_tail: str = Field(description="the end of stdout then stderr")


class RunTestsOutcome(CommandOutcome):
    commit: str = Field(description="the commit tested")


class Merge(Contract):
    repo: RepoPath
    source: GitRef = Field(description="the branch or commit to merge")
    target: GitRef = Field("main", description="the branch merged into")
    message: str | None = Field(None, description="the merge commit's message; a default "
                                "naming both when empty")


class Merged(Contract):
    merged: Literal[True]
    already_merged: bool = Field(description="source was already in target: nothing done")
    commit: str = Field(description="target's commit after the merge")


class Conflicted(Contract):
    merged: Literal[False]
    conflicts: list[str] = Field(description="the files in conflict; the merge was aborted")
    reason: str


class MergeOutcome(RootModel[Annotated[Merged | Conflicted, Field(discriminator="merged")]]):
    """Merged or not, as it goes on the wire (no field of the other)."""


class PrepareMerge(Contract):
    repo: RepoPath
    source: GitRef = Field(description="the branch or commit to merge")
    target: GitRef = Field("main", description="the branch it is to be merged into")
    message: str | None = Field(None, description="the merge commit's message")


class Prepared(Contract):
    prepared: Literal[True]
    commit: str = Field(description="the merge commit made (target_commit when already merged)")
    target_commit: str = Field(description="target's commit it was made on")
    source_commit: str
    already_merged: bool = Field(description="source was already in target: no commit made")


class PrepareConflicted(Contract):
    prepared: Literal[False]
    conflicts: list[str] = Field(description="the files in conflict; nothing was written")
    reason: str


class PrepareMergeOutcome(RootModel[Annotated[Prepared | PrepareConflicted,
                                              Field(discriminator="prepared")]]):
    """Prepared or not, as it goes on the wire."""


Commit = Annotated[str, Field(pattern=r"^[0-9a-f]{40}([0-9a-f]{24})?$",
                              description="a full commit id")]


class MoveRef(Contract):
    repo: RepoPath
    ref: GitRef = Field(description="the branch to move")
    new: Commit = Field(description="where it moves to")
    old: Commit = Field(description="where it must be now for the move to happen")


class MoveRefOutcome(Contract):
    moved: bool = Field(description="the branch is at new (moved now, or already)")
    already: bool = Field(description="it was at new before this request: nothing done")
    current: str | None = Field(description="the branch's commit after the request")
    reason: str | None = Field(description="why it did not move")


RUN_TESTS = Operation(AGENT_TYPE, "run_tests", RunTests, RunTestsOutcome)
RUN_COMMAND = Operation(AGENT_TYPE, "run_command", RunCommand, CommandOutcome)
MERGE = Operation(AGENT_TYPE, "merge", Merge, MergeOutcome)
PREPARE_MERGE = Operation(AGENT_TYPE, "prepare_merge", PrepareMerge, PrepareMergeOutcome)
MOVE_REF = Operation(AGENT_TYPE, "move_ref", MoveRef, MoveRefOutcome)
