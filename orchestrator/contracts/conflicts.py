"""The ``developer`` agent's conflict resolution (part of its contract, kept in a module of
its own): ``pr_deployment`` asks for it when merging ``source`` into ``target`` conflicts.

Request type:

* ``resolve_conflict`` (:data:`RESOLVE_CONFLICT`) ``{"repo", "source", "target", "tier"?,
  "budget"?, "model"?}`` →
  ``{"resolved": true, "branch", "commit", "files", "diff", "model", "detail"}`` or
  ``{"resolved": false, "conflicts": [files], "reason"}``.

  The agent merges the two commits in the object store (``git merge-tree``: the work tree,
  the index and every existing branch are left alone), gives the chat model each conflicting
  file with git's markers and both sides (and their common base), and commits the model's
  files on ``<source>-resolved`` (:func:`resolution_branch`) with the parents ``source`` and
  ``target``. ``diff`` goes from the files with markers to the resolution: what the model
  chose, for a person to approve. ``tier`` picks the model (default ``large``) unless
  ``model`` names one; ``budget`` bounds the call (``orchestrator.llm``). With no chat model
  configured for the developer, nothing is written and the answer is ``resolved: false``
  naming the files.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, RootModel

from orchestrator.contracts.base import Contract, Operation
from orchestrator.contracts.developer import AGENT_TYPE
from orchestrator.contracts.repos import GitRef, RepoPath
from orchestrator.llm import BudgetSpec, Tier

__all__ = ["RESOLVE_CONFLICT", "ResolveConflict", "Resolution", "ResolutionOutcome",
           "Unresolved", "resolution_branch"]


def resolution_branch(source: str) -> str:
    """The branch a resolution of ``source``'s conflicts goes to: ``<source>-resolved``."""
    return f"{source}-resolved"


class ResolveConflict(Contract):
    repo: RepoPath
    source: GitRef = Field(description="the branch whose merge conflicts")
    target: GitRef = Field(description="the branch it merges into")
    tier: Tier | None = Field(None, description="the model tier (default large)")
    budget: BudgetSpec | None = Field(None, description="what the model call may spend")
    model: str | None = Field(None, description="a model spec used instead of the tier's "
                              "(a budget question answered 'switch')")


class Resolution(Contract):
    resolved: Literal[True]
    branch: str = Field(description="<source>-resolved, holding the resolution")
    commit: str = Field(description="the branch's commit: parents source and target")
    files: list[str] = Field(description="the files that were in conflict")
    diff: str = Field(description="unified diff from the files with markers to the resolution")
    model: str | None = Field(None, description="the model that resolved them")
    detail: str = ""


class Unresolved(Contract):
    resolved: Literal[False]
    conflicts: list[str] = Field(description="the files in conflict")
    reason: str


class ResolutionOutcome(RootModel[Annotated[Resolution | Unresolved,
                                            Field(discriminator="resolved")]]):
    """Resolved or not, as it goes on the wire."""


RESOLVE_CONFLICT = Operation(AGENT_TYPE, "resolve_conflict", ResolveConflict, ResolutionOutcome)
