"""The input of ``multi_repo_change`` and the checks made on it before any work is done.

Every repository and ref is checked up front with the rules the agents obey
(:mod:`orchestrator.contracts.repos`): a git repository, an existing ``source``, a ``target``
branch (never the same as ``source``), and when ``target`` is checked out in a work tree, no
uncommitted changes to tracked files there (its move will update that work tree). Names are
unique; ``depends_on`` names changes of the input. The repository graph is ``depends_on`` plus
what the manifests say (:func:`orchestrator.workflows.repo_graph.manifest_dependencies`); a
cycle is refused naming it unless ``allow_cycles``. A refusal is an ``InvalidInput`` (CLI
exit 2) saying what to fix.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from orchestrator.workflows.canary import CanarySpec
from orchestrator.workflows.followup import IssueSink
from orchestrator.workflows.repo_graph import (
    RepoOrder,
    manifest_dependencies,
    order_repositories,
)
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from orchestrator.contracts.cicd import UPSTREAM_NAME, Command
from orchestrator.contracts.repos import (
    GitRef,
    RepoPath,
    merge_refs_problem,
    repository_top,
)
from orchestrator.llm import BudgetPolicy

__all__ = ["Change", "MultiRepoInput", "repository_order", "upstreams_of"]


class Change(BaseModel):
    """One repository's part of the change: merge ``source`` into ``target``."""

    model_config = ConfigDict(extra="forbid")

    name: str | None = Field(None, pattern=UPSTREAM_NAME,
                             description="how depends_on and {upstream:NAME} call it "
                             "(default: the repository folder's name)")
    repo: RepoPath
    source: GitRef = Field(description="branch or ref to deliver")
    target: GitRef = Field("main", description="branch to merge into")
    depends_on: list[str] = Field(default_factory=list,
                                  description="names of the changes this one needs first")
    test_command: Command = Field(
        "python -m pytest -q", description="run without a shell in a worktree at source (gated: "
        "at the future state); {upstream:NAME} is replaced by NAME's path")
    deploy: CanarySpec | None = Field(None, description="canary rollout after the merge")

    @field_validator("repo")
    @classmethod
    def _repository(cls, value: str) -> str:
        return str(repository_top(value))

    @model_validator(mode="after")
    def _refs(self) -> Change:
        if self.name is None:
            self.name = Path(self.repo).name
        where = f"change {self.name!r}"
        problem = merge_refs_problem(self.repo, self.source, self.target)
        if problem:
            raise ValueError(f"{where}: {problem}")
        return self


class MultiRepoInput(BaseModel):
    """What ``multi_repo_change`` needs (see the module docstring for the checks)."""

    model_config = ConfigDict(extra="forbid")

    changes: list[Change] = Field(min_length=1, description="one entry per repository")
    mode: Literal["sequential", "parallel", "gated"] = Field(
        "gated", description="sequential: one repository at a time; parallel: by topological "
        "batch; gated: tests run on the merged future state of every repository")
    atomic: bool = Field(True, description="merge every repository or none; false: each "
                         "merges when its own checks pass")
    approval: Literal["required", "auto"] = "required"
    allow_cycles: bool = Field(False, description="a dependency cycle is tested and merged as "
                               "one bundle instead of refused")
    issues: IssueSink | None = Field(None, description="where an issue is written for each "
                                     "repository that blocks the change")
    test_timeout: float = Field(600.0, gt=0, description="seconds before a test run is killed")
    max_findings: int = Field(0, ge=0, description="review findings tolerated per repository")
    budget_usd: float | None = Field(None, ge=0, allow_inf_nan=False,
                                     description="what the run's model calls may cost, USD")
    budget_policy: BudgetPolicy = Field("ask", description="when a budget is exhausted: ask "
                                        "a person, fallback to a cheaper model, or fail")

    @model_validator(mode="after")
    def _graph(self) -> MultiRepoInput:
        names = [c.name for c in self.changes]
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise ValueError(f"names must be unique, and {', '.join(map(repr, repeated))} is "
                             "given twice: set a distinct name for each change")
        targets = [(c.repo, c.target) for c in self.changes]
        twice = sorted({f"{r} {t}" for r, t in targets if targets.count((r, t)) > 1})
        if twice:
            raise ValueError(f"two changes merge into the same branch ({', '.join(twice)}): "
                             "put them on one source branch")
        repository_order([c.model_dump(mode="json") for c in self.changes],
                         allow_cycles=self.allow_cycles)
        return self


def repository_order(changes: list[dict[str, Any]], *, allow_cycles: bool) -> RepoOrder:
    """The order of the changes' repositories: ``depends_on`` plus the manifests' edges.

    Raises:
        ValueError: an unknown name in ``depends_on``, an unreadable manifest, or a cycle
            (``RepoCycleError``, naming it) when ``allow_cycles`` is false.
    """
    depends = {c["name"]: set(c.get("depends_on") or []) for c in changes}
    for name, ups in depends.items():
        unknown = sorted(ups - set(depends))
        if unknown:
            raise ValueError(f"change {name!r}: depends_on names {', '.join(map(repr, unknown))}"
                             f", which is no change of this input (names: "
                             f"{', '.join(sorted(depends))})")
    found = manifest_dependencies({c["name"]: Path(c["repo"]) for c in changes})
    for name, ups in found.items():
        depends[name] |= ups
    return order_repositories(depends, allow_cycles=allow_cycles)


def upstreams_of(order: RepoOrder) -> dict[str, list[str]]:
    """Each name's upstreams in the change, direct or not (a bundle's other members too), in
    ``order``'s order."""
    closure: dict[str, list[str]] = {}
    for name in order.order:
        seen: set[str] = set()
        stack = list(order.depends[name])
        while stack:
            up = stack.pop()
            if up not in seen and up != name:
                seen.add(up)
                stack.extend(order.depends[up])
        seen |= set(order.bundle_of(name)) - {name}
        closure[name] = [n for n in order.order if n in seen]
    return closure
