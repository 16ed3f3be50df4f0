"""Plans for ``plan_execution``: a repository and the file tasks to carry out in it.

A plan is YAML or JSON::

    repo: path/to/repo
    test_command: python -m pytest -q          # QA runs the tests that import each file
    integration_command: python -m pytest -q   # once every task is done (default: test_command)
    max_parallel: 4
    tasks:
      - id: models
        file: app/models.py
        kind: new                  # new | fix
        description: the data model
        content: |                 # exactly one of content, patch, command; or none of
          ...                      # them: the developer's chat model writes the file from
                                   # the description (a model must be configured)
        depends_on: [settings]     # besides what the import analysis finds
        estimate: 3                # seconds: weighs the critical path (default: learned)
    allowed_cycles:                # import cycles the plan accepts, as [task, task] edges
      - [models, services]
    deploy: {...}                  # a canary rollout once integration passed

Errors name the task and the field: ``task 'models' (tasks[2]) field 'kind': ...``.

A plan task is the developer's :class:`~orchestrator.contracts.developer.Task` (what travels
to the agent) with the plan's rules on top. :class:`PlanState` is the state of a run of a plan.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path, PurePosixPath
from typing import Annotated, Any, Literal

import yaml
from orchestrator.state.schema import MultiAgentState, append_list, merge_dicts
from orchestrator.workflows.canary import CanarySpec
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from orchestrator.contracts.cicd import Command
from orchestrator.contracts.developer import Task
from orchestrator.contracts.repos import RepositoryError, repository_top
from orchestrator.errors import ErrorCode, InvalidInput

__all__ = ["Plan", "PlanError", "PlanState", "PlanTask", "load_plan", "parse_plan", "plan_of"]


class PlanError(InvalidInput, ValueError):
    """A plan that cannot be used; the message names the task and field."""

    code = ErrorCode.INVALID_PLAN


class PlanTask(Task):
    id: str = Field(min_length=1, max_length=200, pattern=r"^[\w.\-/]+$")
    kind: Literal["new", "fix"]

    @field_validator("file")
    @classmethod
    def _relative(cls, value: str) -> str:
        path = PurePosixPath(value.replace("\\", "/"))
        if path.is_absolute() or ".." in path.parts or value.startswith("~"):
            raise ValueError("must be a path inside the repository (relative, no '..')")
        return path.as_posix()

    @model_validator(mode="after")
    def _one_change(self) -> PlanTask:
        given = [k for k in ("content", "patch", "command") if getattr(self, k) is not None]
        if len(given) > 1 or not (given or self.description.strip()):
            raise ValueError("give exactly one of 'content', 'patch' or 'command'"
                             + (f" (got {', '.join(given)})" if given else "")
                             + ", or only a 'description' (a chat model writes the file)")
        return self


class Plan(BaseModel):
    model_config = ConfigDict(extra="forbid")

    repo: str = Field(min_length=1)
    tasks: list[PlanTask] = Field(min_length=1)
    test_command: Command = "python -m pytest -q"
    integration_command: Command | None = None
    max_parallel: int = Field(4, ge=1, le=64)
    max_attempts: int = Field(3, ge=1, le=10, description="QA attempts before dead-lettering")
    retry_delay: float = Field(1.0, ge=0, description="first retry delay; doubles each time")
    allowed_cycles: list[tuple[str, str]] = Field(default_factory=list)
    deploy: CanarySpec | None = None

    @model_validator(mode="after")
    def _consistent(self) -> Plan:
        ids: dict[str, int] = {}
        files: dict[str, str] = {}
        for index, task in enumerate(self.tasks):
            if task.id in ids:
                raise ValueError(f"task {task.id!r} (tasks[{index}]) field 'id': duplicate of "
                                 f"tasks[{ids[task.id]}]")
            if task.file in files:
                raise ValueError(f"task {task.id!r} (tasks[{index}]) field 'file': "
                                 f"{task.file} is also the file of task {files[task.file]!r}")
            ids[task.id] = index
            files[task.file] = task.id
        for index, task in enumerate(self.tasks):
            for dep in task.depends_on:
                if dep not in ids:
                    raise ValueError(f"task {task.id!r} (tasks[{index}]) field 'depends_on': "
                                     f"no task {dep!r}")
                if dep == task.id:
                    raise ValueError(f"task {task.id!r} (tasks[{index}]) field 'depends_on': "
                                     "a task cannot depend on itself")
        for a, b in self.allowed_cycles:
            for name in (a, b):
                if name not in ids:
                    raise ValueError(f"field 'allowed_cycles': no task {name!r}")
        return self

    def task(self, task_id: str) -> PlanTask:
        return next(t for t in self.tasks if t.id == task_id)


def _later(left: float | None, right: float | None) -> float:
    """The later of two pause deadlines: parallel ``work`` tasks may pause in one step."""
    return max(left or 0.0, right or 0.0)


def _latest(left: Any, right: Any) -> Any:
    """The last value given: parallel ``work`` tasks answered by one budget question (switch
    to a model) set the same value in one step."""
    return left if right is None else right


class PlanState(MultiAgentState, total=False):
    """The state of a run of ``plan_execution``: the plan (as data), the planner's analysis,
    a record per task (status, attempts, dependencies, priority, batch, cache key, model tier
    and why), and what happened after (dead letters, pauses, integration, canary). ``budget``
    is the run's :class:`~orchestrator.llm.BudgetSpec` (``budget_usd``, ``budget_policy``),
    ``budget_model`` the model a budget question switched to, ``budget_decisions`` the
    answers to those questions. ``eta`` is the run's forecast, revised at each dispatch
    (:func:`orchestrator.learning.eta.forecast`)."""

    plan: dict[str, Any]
    analysis: dict[str, Any]
    tasks: Annotated[dict[str, dict[str, Any]], merge_dicts]
    dead_letters: Annotated[list[dict[str, Any]], append_list]
    pause_until: Annotated[float, _later]
    pauses: Annotated[list[dict[str, Any]], append_list]
    integration: dict[str, Any]
    deploy: dict[str, Any] | None
    canary: dict[str, Any]
    route: dict[str, Any]
    budget_usd: float | None
    budget_policy: str
    budget: Annotated[dict[str, Any], merge_dicts]
    budget_model: Annotated[str | None, _latest]
    budget_decisions: Annotated[list[dict[str, Any]], append_list]
    eta: dict[str, Any]


def plan_of(state: Mapping[str, Any]) -> Plan:
    """The plan of a run, from its state."""
    return Plan.model_validate(state["plan"])


def _describe(error: dict[str, Any], raw: Any) -> str:
    loc = list(error["loc"])
    message = (str(error["ctx"]["error"]) if error["type"] == "value_error"
               and "error" in error.get("ctx", {}) else error["msg"])
    if error["type"] == "missing":
        message = "is required"
    if len(loc) >= 2 and loc[0] == "tasks" and isinstance(loc[1], int):
        index = loc[1]
        tasks = raw.get("tasks") if isinstance(raw, dict) else None
        task_id = None
        if isinstance(tasks, list) and index < len(tasks) and isinstance(tasks[index], dict):
            task_id = tasks[index].get("id")
        who = f"task {task_id!r} (tasks[{index}])" if task_id else f"tasks[{index}]"
        field = ".".join(str(p) for p in loc[2:])
        return f"{who} field {field!r}: {message}" if field else f"{who}: {message}"
    if loc:
        return f"field {'.'.join(str(p) for p in loc)!r}: {message}"
    return message


def parse_plan(raw: Any, *, base: Path | None = None) -> Plan:
    """Validate a plan given as data; ``repo`` is resolved against ``base`` (default: cwd).

    Raises:
        PlanError: naming each bad task and field.
    """
    if not isinstance(raw, dict):
        raise PlanError(f"a plan is a mapping with 'repo' and 'tasks', not {type(raw).__name__}")
    try:
        plan = Plan.model_validate(raw)
    except ValidationError as exc:
        raise PlanError("bad plan: " + "; ".join(_describe(e, raw) for e in exc.errors())) from None
    repo = (base or Path.cwd()) / Path(plan.repo).expanduser()
    if not repo.is_dir():
        raise PlanError(f"bad plan: field 'repo': {plan.repo} is not a folder")
    repo = repo.resolve()
    try:
        top = repository_top(str(repo))
    except RepositoryError:
        top = None  # not a repository (yet): the developer says so when it starts
    if top is not None and top.resolve() != repo:
        # the planner reads task files from the plan's folder, the developer and QA work from
        # the repository's top: they must be one folder
        raise PlanError(f"bad plan: field 'repo': {plan.repo} is a folder inside the git "
                        f"repository {top}; give the repository's top folder (task files are "
                        "paths from it)")
    return plan.model_copy(update={"repo": str(repo)})


# A plan of a thousand tasks is a few tens of thousands of YAML nodes; far more, counting each
# alias as the copy it becomes, is an alias bomb (a 687-byte plan of nested anchors expands to
# gigabytes once validated), refused before anything is built from it.
MAX_PLAN_NODES = 200_000


class _PlanLoader(yaml.SafeLoader):
    """SafeLoader that measures a document before constructing it: aliases are counted as
    the copies validation makes of them, and a document too big or recursive is refused."""

    def construct_document(self, node: yaml.Node) -> Any:
        _check_expansion(node, MAX_PLAN_NODES)
        return super().construct_document(node)


def _check_expansion(root: yaml.Node, limit: int) -> None:
    """Raise PlanError when ``root`` expands to more than ``limit`` nodes or contains itself.

    Each distinct node's expanded size is computed once (iteratively, post-order), so the
    check costs time in the size of the text, not of its expansion.
    """
    sizes: dict[int, int] = {}
    on_path: set[int] = set()
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, children_done = stack.pop()
        key = id(node)
        if children_done:
            on_path.discard(key)
            children = _children(node)
            sizes[key] = 1 + sum(sizes[id(c)] for c in children)
            if sizes[key] > limit:
                raise PlanError(
                    f"the plan expands to more than {limit:,} YAML nodes (line "
                    f"{node.start_mark.line + 1}): anchors and aliases (&name, *name) "
                    "repeat what they name; a plan that big is refused")
            continue
        if key in sizes:
            continue
        if key in on_path:
            raise PlanError(f"the plan contains itself through an alias (line "
                            f"{node.start_mark.line + 1}); a plan must be a tree")
        on_path.add(key)
        stack.append((node, True))
        stack.extend((c, False) for c in _children(node) if id(c) not in sizes)


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    if isinstance(node, yaml.MappingNode):
        return [part for pair in node.value for part in pair]
    return []


def load_plan(path: str | Path) -> Plan:
    """Read a plan from a YAML or JSON file; a relative ``repo`` is relative to the file.

    Raises:
        PlanError: unreadable file, bad syntax (with the line), or a bad plan.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise PlanError(f"cannot read plan {path}: {exc.strerror or exc}") from None
    try:
        raw = json.loads(text) if path.suffix == ".json" else yaml.load(text, _PlanLoader)  # noqa: S506
    except json.JSONDecodeError as exc:
        raise PlanError(f"plan {path} is not valid JSON: {exc}") from None
    except yaml.YAMLError as exc:
        raise PlanError(f"plan {path} is not valid YAML: {exc}") from None
    except RecursionError:
        raise PlanError(f"plan {path} nests lists or mappings too deeply") from None
    except PlanError as exc:
        raise PlanError(f"plan {path}: {exc}") from None
    return parse_plan(raw, base=path.resolve().parent)
