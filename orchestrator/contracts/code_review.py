"""The ``code_review`` agent's contract: static analysis (ruff) of the Python files a branch
changes, and a chat model's review comments beside it when one is configured.

Request types:

* ``review`` (:data:`REVIEW`) ``{"repo", "source", "target"="main", "max_findings"=0,
  "comment_severity"="error", "max_comments"=0, "tier"?, "budget"?, "model"?}`` → ``{"base", "source",
  "target", "files", "findings": [{"file", "line", "column", "code", "message"}], "counts":
  {code: n}, "comments": [{"file", "line", "severity", "comment"}], "counted_comments",
  "reviewed_by", "model", "verdict": "approved" | "changes_requested", "passed",
  "max_findings", "max_comments"}``

The changed files are those added, copied, modified or renamed between the merge base of
``target`` and ``source``, and ``source``. They are linted as they are at ``source`` (taken
with ``git archive``, together with the repository's ruff configuration files), so neither
the working tree nor the checked-out branch matters. With a chat model configured
(``orchestrator.llm``; prompt ``code_review``), the model reads the diff of those files and
ruff's findings and answers structured comments; those on files outside the change are
dropped. The verdict approves when there are at most ``max_findings`` findings and at most
``max_comments`` comments of ``comment_severity`` or graver. With no model, ``comments`` is
empty and ``reviewed_by`` is ``ruff``. ``repo`` and the refs follow
:mod:`orchestrator.contracts.repos`.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from orchestrator.contracts.base import Contract, Operation
from orchestrator.contracts.repos import GitRef, RepoPath
from orchestrator.llm import BudgetSpec, Tier

__all__ = ["AGENT_TYPE", "REVIEW", "SEVERITIES", "Finding", "Review", "ReviewComment",
           "ReviewResult"]

AGENT_TYPE = "code_review"

Severity = Literal["info", "warning", "error"]
#: from the mildest to the gravest
SEVERITIES: tuple[Severity, ...] = ("info", "warning", "error")


class Review(Contract):
    repo: RepoPath
    source: GitRef = Field(description="the branch or commit under review")
    target: GitRef = Field("main", description="the branch it would merge into")
    max_findings: int = Field(0, ge=0, strict=True,
                              description="findings tolerated before the verdict asks for changes")
    comment_severity: Severity = Field(
        "error", description="the mildest severity of a model comment the verdict counts")
    max_comments: int = Field(0, ge=0, strict=True,
                              description="counted comments tolerated before changes are asked")
    tier: Tier | None = Field(None, description="the model tier (default medium)")
    budget: BudgetSpec | None = Field(None, description="what the model call may spend")
    model: str | None = Field(None, description="a model spec used instead of the tier's")


class Finding(Contract):
    file: str = Field(description="relative to the repository's top, POSIX style")
    line: int
    column: int
    code: str = Field(description="ruff's rule code, or 'syntax-error'")
    message: str


class ReviewComment(Contract):
    """One comment of the model's review, on a line of a changed file as it is at source."""

    file: str = Field(description="relative to the repository's top, POSIX style")
    line: int = Field(ge=0, description="the line at source (0: the file as a whole)")
    severity: Severity
    comment: str = Field(min_length=1)


class ReviewResult(Contract):
    base: str = Field(description="the merge base of target and source")
    source: str
    target: str
    files: list[str] = Field(description="the changed Python files, sorted")
    findings: list[Finding]
    counts: dict[str, int] = Field(description="findings per rule code")
    comments: list[ReviewComment] = Field(default_factory=list)
    counted_comments: int = Field(0, description="comments of comment_severity or graver")
    reviewed_by: Literal["ruff", "ruff+model"] = "ruff"
    model: str | None = None
    verdict: Literal["approved", "changes_requested"]
    passed: bool
    max_findings: int
    max_comments: int = 0


REVIEW = Operation(AGENT_TYPE, "review", Review, ReviewResult)
