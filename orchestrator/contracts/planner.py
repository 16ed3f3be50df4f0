"""The ``planner`` agent's contract: import-dependency analysis of a plan's files or a whole
repository, and the task-level analysis of a plan (what ``plan_execution`` schedules by).

Request types:

* ``analyze_plan`` (:data:`ANALYZE_PLAN`) ``{"repo", "files": {path: content or null},
  "patches"?: {path: unified diff}, "weights"?: {path: weight}, "tasks"?: [{"id", "file",
  "kind", "depends_on", "weight"}], "allowed_cycles"?: [[task, task]]}`` → the dependency graph
  of those files (content from the plan when given, else the file in the repository; a patch's
  added ``+`` lines count on top, so an import a patch adds is an edge), resolved against the
  whole repository: ``{"root", "files", "edges", "cycles", "cycles_truncated", "components",
  "batches", "critical_path", "priorities", "unresolved", "errors", "task_graph"}``. With
  ``tasks``, ``task_graph`` is the analysis of the tasks (:class:`TaskGraph`): each task's
  dependencies (its file's imports of other tasks' files, plus ``depends_on``, less the
  ``allowed_cycles`` edges), the import cycles the plan refuses (with the error to show), the
  batches, the critical path (weighted) and each task's rank; without, it is null.
* ``analyze_repository`` (:data:`ANALYZE_REPOSITORY`) ``{"repo"}`` → the same file graph for
  every Python, JavaScript and TypeScript file of the repository.
* ``draft_plan`` (:data:`DRAFT_PLAN`) ``{"repo", "goal", "max_files"=400}`` → ``{"plan",
  "model", "files", "edges"}``: a plan for ``plan_execution`` drafted by the chat model from
  the goal, the repository's files and its import graph (the first ``max_files`` files and
  the edges between them go into the prompt), for a person to edit and run. Its tasks carry
  only a ``description`` (the developer's model writes each file); ``plan`` is the plan as
  data, ``repo`` the repository's absolute path. With no chat model configured the answer is
  ``invalid_input`` saying a model is needed.
* ``file_hashes`` (:data:`FILE_HASHES`) ``{"repo", "files": [path...]}`` → ``{"sha256": {path:
  hex digest, or null when the file does not exist}}``: what the working tree holds now
  (plan_execution checks a cached task's result against it).
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import Field, field_validator, model_validator

from orchestrator.contracts.base import Contract, Operation

__all__ = [
    "AGENT_TYPE", "ANALYZE_PLAN", "ANALYZE_REPOSITORY", "DRAFT_PLAN", "FILE_HASHES",
    "AnalyzePlan", "AnalyzeRepository", "CriticalPath", "DependencyReport", "DraftPlan",
    "DraftedPlan", "FileHashes", "Hashes", "PlanAnalysis", "PlanTaskNode", "TaskGraph",
    "TaskPath", "TaskPlace",
]

AGENT_TYPE = "planner"

Name = Annotated[str, Field(min_length=1)]
Folder = Annotated[str, Field(min_length=1, description="the path of a folder")]


class AnalyzeRepository(Contract):
    repo: Folder


class PlanTaskNode(Contract):
    """A plan task as the task-level analysis sees it."""

    id: Name
    file: Name
    kind: str = "new"  # fixes rank before new work
    depends_on: list[str] = Field(default_factory=list)
    weight: float = Field(1.0, gt=0, allow_inf_nan=False, description="weighs the critical path")


class AnalyzePlan(Contract):
    repo: Folder
    files: dict[str, str | None] = Field(min_length=1, description="{path: content or null}")
    patches: dict[str, str] = Field(default_factory=dict, description="{path: unified diff}")
    weights: dict[str, float] | None = Field(None, description="{path: weight} of the files")
    tasks: list[PlanTaskNode] | None = None
    allowed_cycles: list[tuple[str, str]] = Field(
        default_factory=list, description="[importer task, imported task] edges a plan accepts")

    @field_validator("patches", mode="before")
    @classmethod
    def _none_is_empty(cls, value: Any) -> Any:
        return {} if value is None else value

    @model_validator(mode="after")
    def _tasks_consistent(self) -> AnalyzePlan:
        ids = [t.id for t in self.tasks or ()]
        known = set(ids)
        if len(known) != len(ids):
            raise ValueError("tasks: task ids must be unique")
        for task in self.tasks or ():
            if task.file not in self.files:
                raise ValueError(f"task {task.id!r}: its file {task.file} is not in 'files'")
            for dep in task.depends_on:
                if dep not in known:
                    raise ValueError(f"task {task.id!r}: depends_on names no task {dep!r}")
        for edge in self.allowed_cycles:
            for name in edge:
                if name not in known:
                    raise ValueError(f"allowed_cycles: no task {name!r}")
        return self


class CriticalPath(Contract):
    files: list[str]
    weight: float


class DependencyReport(Contract):
    """A file graph (``DependencyGraph.to_dict``). ``unresolved`` is ``{importer: {specifier:
    reason}}``, the reason one of ``not_found``, ``outside_repository``, ``package``,
    ``computed`` (:data:`orchestrator.agents.lib.depgraph.UNRESOLVED_REASONS`)."""

    root: str
    files: list[str]
    edges: list[tuple[str, str]]
    cycles: list[list[str]]
    cycles_truncated: bool
    components: list[list[str]]
    batches: list[list[str]]
    critical_path: CriticalPath
    priorities: dict[str, float]
    unresolved: dict[str, dict[str, str]]  # importer -> {specifier: reason}
    errors: dict[str, str]


class TaskPlace(Contract):
    """Where one task stands: what it waits for, its batch and its rank (0 starts first)."""

    deps: list[str]
    batch: int
    priority: int


class TaskPath(Contract):
    tasks: list[str]
    weight: float


class TaskGraph(Contract):
    """The task-level analysis of a plan.

    ``edges`` are ``(task, task it depends on)``, the ``allowed`` ones (``allowed_cycles``)
    taken out; ``cycles`` are the import cycles left, which the plan refuses: when there are
    any, ``error`` says so, naming each task and file. The rank (``tasks[id].priority``): the
    critical path first, fixes before new work, then the longest way to the end, the earlier
    batch, the id.
    """

    edges: list[tuple[str, str]]
    allowed: list[tuple[str, str]]
    cycles: list[list[str]]
    error: str | None
    batches: list[list[str]]
    critical_path: TaskPath
    tasks: dict[str, TaskPlace]


class PlanAnalysis(DependencyReport):
    task_graph: TaskGraph | None = None


class FileHashes(Contract):
    repo: Folder
    files: list[Name]


class Hashes(Contract):
    sha256: dict[str, str | None]


class DraftPlan(Contract):
    repo: Folder
    goal: str = Field(min_length=1, max_length=20_000, description="what the plan should achieve")
    max_files: int = Field(400, ge=1, le=5000, description="files of the repository shown to the model")


class DraftedPlan(Contract):
    plan: dict[str, Any] = Field(description="the plan as data: repo, test_command, tasks")
    model: str | None = Field(description="the model that drafted it")
    files: int = Field(description="files the repository has (the model saw up to max_files)")
    edges: int = Field(description="import edges between them")


ANALYZE_PLAN = Operation(AGENT_TYPE, "analyze_plan", AnalyzePlan, PlanAnalysis)
ANALYZE_REPOSITORY = Operation(AGENT_TYPE, "analyze_repository", AnalyzeRepository,
                               DependencyReport)
FILE_HASHES = Operation(AGENT_TYPE, "file_hashes", FileHashes, Hashes)
DRAFT_PLAN = Operation(AGENT_TYPE, "draft_plan", DraftPlan, DraftedPlan)
