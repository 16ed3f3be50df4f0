"""The ``qa`` agent's contract: it checks one file of a repository — lint, then the tests that
import it.

Request types:

* ``check`` (:data:`CHECK`) ``{"repo", "file", "test_command"="python -m pytest -q",
  "timeout"=600, "not_ready"=[]}`` → ``{"passed", "reason", "findings": [{"file", "line",
  "column", "code", "message"}], "tests": {"files", "ran", "skipped", "deferred", "passed",
  "counts", "failures", "output_tail"}}``. Tests that also import a file of ``not_ready``
  (work not done yet) are deferred, not run. A finding is ruff's, or tree-sitter's
  ``syntax-error``, in the shape of :class:`orchestrator.contracts.code_review.Finding`.
"""

from __future__ import annotations

from typing import Any

from pydantic import Field, field_validator

from orchestrator.contracts.base import Contract, Operation
from orchestrator.contracts.code_review import Finding
from orchestrator.contracts.repos import RepoPath

__all__ = ["AGENT_TYPE", "CHECK", "Check", "Checked", "TestRun"]

AGENT_TYPE = "qa"


class Check(Contract):
    repo: RepoPath
    file: str = Field(min_length=1, description="a path in the repository")
    test_command: str | list[str] = "python -m pytest -q"
    timeout: float = Field(600.0, gt=0, description="seconds the tests may run")
    not_ready: list[str] = Field(default_factory=list,
                                 description="files of work not done yet: their tests wait")

    @field_validator("timeout", "not_ready", mode="before")
    @classmethod
    def _default_when_empty(cls, value: Any, info: Any) -> Any:
        """``null`` (or ``0``, an empty list) means the default."""
        return value or cls.model_fields[info.field_name].get_default(call_default_factory=True)


class TestRun(Contract):
    """The tests importing the file: which ran, which were skipped (no runner) or deferred
    (they need work not done yet), and how they went."""

    __test__ = False  # not a pytest test class, whatever its name

    files: list[str]
    ran: list[str]
    skipped: list[str]
    deferred: list[str] = Field(default_factory=list)
    passed: bool
    counts: dict[str, int]
    failures: list[str] = Field(default_factory=list)
    output_tail: str = ""


class Checked(Contract):
    passed: bool
    reason: str | None
    findings: list[Finding]
    tests: TestRun


CHECK = Operation(AGENT_TYPE, "check", Check, Checked)
