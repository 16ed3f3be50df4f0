"""The ``developer`` agent's contract: it carries out one file task of a plan in a repository.

Request types:

* ``develop`` (:data:`DEVELOP`) ``{"repo", "task": {"id", "file", "kind", "description",
  "content" | "patch" | "command"}, "attempt", "evidence"?, "timeout"?, "context"?, "tier"?,
  "tier_reason"?, "budget"?, "model"?, "similar"?}`` → ``{"file", "action", "changed", "sha256",
  "detail", "attempt", "model", "tier", "prompt", "diff"}``. Guarded by :func:`file_lock` (``file:<repository>/<file>``):
  the request must carry that lock's fencing token.

  The first attempt applies the task: ``content`` is written to the file, ``patch`` (a unified
  diff) is applied with ``git apply`` (a patch already applied is left alone), ``command`` is
  run in the repository without a shell. A task with only a ``description`` is written by the
  chat model (prompt ``developer_write``) from the description, the files of ``context`` (the
  files it depends on) and the tests that import it; with no model configured it is refused
  (``invalid_input``, saying a model is needed). A later attempt is a fix of what QA found
  (``evidence``): with a chat model configured the model rewrites the file from the task, the
  file, its context and the evidence (prompt ``developer_fix``); without one, Python files get
  ruff's safe automatic fixes (``ruff check --fix``), and other files cannot be fixed
  automatically (``changed`` is false, and QA will fail again). ``tier`` picks the model
  (``orchestrator.llm``; default ``medium``) unless ``model`` names one, ``budget`` bounds
  what the calls may spend. A fix request may carry ``similar``: the repository's past failures
  most like this one (:class:`PastFix`: what QA found, how the file was changed, which prompt
  version and tier fixed it, and whether first time), which the fix prompt shows the model;
  ``plan_execution`` finds them (``orchestrator.learning.fixes``). A fix answers ``prompt``
  (the template and version the model was asked with, when one was) and ``diff`` (how the
  file changed, bounded), which are recorded as the fix's outcome.

:class:`Task` is a plan's task as it travels: ``plan_execution``'s plan task
(``orchestrator.workflows.plans.PlanTask``) is this model with the plan's own rules on top.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import Field, field_validator

from orchestrator.contracts.base import Contract, Operation
from orchestrator.contracts.repos import RepoPath
from orchestrator.llm import BudgetSpec, Tier

__all__ = ["AGENT_TYPE", "DEVELOP", "Develop", "Developed", "PastFix", "Task", "file_lock"]

AGENT_TYPE = "developer"


def file_lock(repo: str | Path, file: str) -> str:
    """The lock name guarding one file of a repository: ``file:<resolved repository>/<file>``."""
    return f"file:{Path(repo).resolve() / file}"


class Task(Contract):
    """One file task: ``content``, ``patch`` or ``command`` is carried out; with none of
    them, the chat model writes the file from ``description`` (the agent answers
    ``invalid_input`` when there is neither, or no model)."""

    id: str | None = None
    file: str = Field(min_length=1, description="repository-relative path of the file")
    kind: str | None = None
    description: str = ""
    content: str | None = None
    patch: str | None = Field(None, description="a unified diff, applied with git apply")
    command: str | list[str] | None = Field(None, description="run in the repository")
    depends_on: list[str] = Field(default_factory=list)
    estimate: float | None = Field(None, gt=0)


class PastFix(Contract):
    """A past failure of the repository like the one being fixed, and how it was fixed."""

    file: str
    kind: str | None = None
    failure: str = Field(description="what QA found then (bounded)")
    fix: str = Field(description="how the file was changed: a unified diff, or what was done")
    prompt: str | None = Field(None, description="the prompt version that fixed it "
                               "(NAME@VERSION), none when no model did")
    tier: str | None = None
    first_time: bool = Field(description="fixed by the first fix attempt after the failure")
    score: float = Field(ge=0, le=1, description="trigram similarity to the failure at hand")


class Develop(Contract):
    repo: RepoPath
    task: Task
    attempt: int = Field(1, ge=1, description="1 applies the task; later ones fix it")
    evidence: dict[str, Any] | None = Field(None, description="what QA found (a fix works from it)")
    timeout: float = Field(600.0, gt=0, description="seconds a task's command may run")
    context: list[str] = Field(default_factory=list,
                               description="files the task depends on: the model reads them")
    tier: Tier | None = Field(None, description="the model tier (default medium)")
    tier_reason: str | None = None
    budget: BudgetSpec | None = Field(None, description="what the model calls may spend")
    model: str | None = Field(None, description="a model spec used instead of the tier's "
                              "(a budget question answered 'switch')")
    similar: list[PastFix] = Field(default_factory=list, description="for a fix: similar past "
                                   "failures of the repository and how they were fixed")

    @field_validator("attempt", "timeout", mode="before")
    @classmethod
    def _default_when_empty(cls, value: Any, info: Any) -> Any:
        """``null`` or ``0`` means the default, as senders have always been allowed."""
        return value or cls.model_fields[info.field_name].default


class Developed(Contract):
    file: str
    action: str = Field(description="wrote, patched, ran, generated, model, ruff-fix or none")
    changed: bool
    sha256: str
    detail: str
    attempt: int
    model: str | None = Field(None, description="the chat model that wrote the file, if one did")
    tier: str | None = None
    prompt: str | None = Field(None, description="the prompt template and version the model "
                               "was asked with (NAME@VERSION), if one was")
    diff: str | None = Field(None, description="a fix's change to the file, a unified diff "
                             "(bounded); none for a first attempt")


DEVELOP = Operation(AGENT_TYPE, "develop", Develop, Developed)
