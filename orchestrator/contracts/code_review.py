"""The ``code_review`` agent's contract: static analysis (ruff) of the Python files a branch
changes.

Request types:

* ``review`` (:data:`REVIEW`) ``{"repo", "source", "target"="main", "max_findings"=0}`` →
  ``{"base", "source", "target", "files", "findings": [{"file", "line", "column", "code",
  "message"}], "counts": {code: n}, "verdict": "approved" | "changes_requested", "passed",
  "max_findings"}``

The changed files are those added, copied, modified or renamed between the merge base of
``target`` and ``source``, and ``source``. They are linted as they are at ``source`` (taken
with ``git archive``, together with the repository's ruff configuration files), so neither
the working tree nor the checked-out branch matters. The verdict approves when there are at
most ``max_findings`` findings. ``repo`` and the refs follow :mod:`orchestrator.contracts.repos`.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from orchestrator.contracts.base import Contract, Operation
from orchestrator.contracts.repos import GitRef, RepoPath

__all__ = ["AGENT_TYPE", "REVIEW", "Finding", "Review", "ReviewResult"]

AGENT_TYPE = "code_review"


class Review(Contract):
    repo: RepoPath
    source: GitRef = Field(description="the branch or commit under review")
    target: GitRef = Field("main", description="the branch it would merge into")
    max_findings: int = Field(0, ge=0, strict=True,
                              description="findings tolerated before the verdict asks for changes")


class Finding(Contract):
    file: str = Field(description="relative to the repository's top, POSIX style")
    line: int
    column: int
    code: str = Field(description="ruff's rule code, or 'syntax-error'")
    message: str


class ReviewResult(Contract):
    base: str = Field(description="the merge base of target and source")
    source: str
    target: str
    files: list[str] = Field(description="the changed Python files, sorted")
    findings: list[Finding]
    counts: dict[str, int] = Field(description="findings per rule code")
    verdict: Literal["approved", "changes_requested"]
    passed: bool
    max_findings: int


REVIEW = Operation(AGENT_TYPE, "review", Review, ReviewResult)
