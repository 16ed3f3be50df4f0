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

``repo`` and the refs follow :mod:`orchestrator.contracts.repos`.
"""

from __future__ import annotations

import shlex
from typing import Annotated, Literal

from pydantic import AfterValidator, Field, RootModel

from orchestrator.contracts.base import Contract, Operation
from orchestrator.contracts.repos import GitRef, RepoPath

__all__ = ["AGENT_TYPE", "MERGE", "RUN_COMMAND", "RUN_TESTS", "Command", "CommandOutcome",
           "Conflicted", "Merge", "MergeOutcome", "Merged", "RunCommand", "RunTests",
           "RunTestsOutcome", "command_words"]

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


class RunTests(Contract):
    repo: RepoPath
    ref: GitRef = Field(description="the branch or commit to test")
    command: Command = "python -m pytest -q"
    timeout: Seconds = 600.0


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


RUN_TESTS = Operation(AGENT_TYPE, "run_tests", RunTests, RunTestsOutcome)
RUN_COMMAND = Operation(AGENT_TYPE, "run_command", RunCommand, CommandOutcome)
MERGE = Operation(AGENT_TYPE, "merge", Merge, MergeOutcome)
