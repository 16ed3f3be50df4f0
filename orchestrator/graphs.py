"""Finding workflows by name.

A workflow is a :class:`WorkflowSpec`: an uncompiled LangGraph ``StateGraph`` plus a pydantic
model for its input. Workflows are registered under the ``orchestrator.workflows`` entry-point
group, so the runtime never imports a particular graph.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import TYPE_CHECKING, Any

from langgraph.graph import StateGraph
from pydantic import BaseModel, ValidationError

from .errors import InvalidInput

if TYPE_CHECKING:
    from .runtime import Runtime

__all__ = ["WorkflowSpec", "available_workflows", "compile_workflow", "get_workflow",
           "validate_input", "validated_fields", "VALIDATED_KEY"]

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "orchestrator.workflows"


@dataclass(frozen=True)
class WorkflowSpec:
    """A named graph and the model its input must satisfy.

    ``initial_state`` turns the validated input into the graph's input state (default: the
    model's fields).
    """

    name: str
    builder: StateGraph
    input_model: type[BaseModel]
    description: str = ""
    initial_state: Callable[[BaseModel], dict[str, Any]] | None = None

    def make_input(self, validated: BaseModel) -> dict[str, Any]:
        if self.initial_state is not None:
            return self.initial_state(validated)
        return validated.model_dump(mode="json")


def compile_workflow(spec: WorkflowSpec, runtime: Runtime, checkpointer: Any = None) -> Any:
    """``spec``'s graph compiled as every run gets it: with the task cache in the runtime's
    database (so a node's ``CachePolicy`` works) and ``checkpointer`` (the facade's saver;
    none under ``langgraph dev``, whose server brings its own). The facade and Studio
    (``workflows/studio.py``) both compile through here."""
    from orchestrator.state.cache import PostgresCache

    return spec.builder.compile(checkpointer=checkpointer,
                                cache=PostgresCache(runtime.db, runtime.settings.namespace))


#: Set in a run's config by the facade, which validated the run's input before starting it:
#: a graph's own input check (for runs started elsewhere, e.g. ``langgraph dev``) then trusts
#: the state instead of validating (and running ``git``...) a second time.
VALIDATED_KEY = "orchestrator_input_validated"


async def validated_fields(spec: WorkflowSpec, data: dict[str, Any]) -> dict[str, Any]:
    """Inside a graph's first node: the run's input fields, validated once per run.

    As given when the facade already validated them (see :data:`VALIDATED_KEY`); otherwise
    validated here, in a worker thread (validators may touch the file system or run ``git``,
    which must never block the event loop), and returned as JSON values.

    Raises:
        InvalidInput: as :func:`validate_input`.
    """
    from langgraph.config import get_config

    try:
        trusted = bool(get_config().get("configurable", {}).get(VALIDATED_KEY))
    except RuntimeError:  # not inside a graph run
        trusted = False
    if trusted:
        return dict(data)
    checked = await asyncio.to_thread(validate_input, spec, data)
    return checked.model_dump(mode="json")


def available_workflows() -> dict[str, WorkflowSpec]:
    found: dict[str, WorkflowSpec] = {}
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        try:
            spec = ep.load()
        except Exception as exc:  # one broken plug-in must not hide the others
            log.error("could not load workflow %s from %s: %s", ep.name, ep.value, exc)
            continue
        if isinstance(spec, WorkflowSpec):
            found[spec.name] = spec
        else:
            log.error("entry point %s does not point at a WorkflowSpec", ep.value)
    return found


def get_workflow(name: str, extra: dict[str, WorkflowSpec] | None = None) -> WorkflowSpec:
    """The workflow called ``name`` (``extra`` first, then the entry points).

    Raises:
        InvalidInput: no such workflow; the message lists the known ones.
    """
    if extra and name in extra:
        return extra[name]
    known = available_workflows()
    if name not in known:
        names = sorted({*known, *(extra or {})})
        raise InvalidInput(
            f"unknown workflow {name!r}; known workflows: {', '.join(names) or '(none)'} "
            "(`orchestrator graphs` lists them)"
        )
    return known[name]


def validate_input(spec: WorkflowSpec, data: Any) -> BaseModel:
    """Validate ``data`` against the workflow's input model.

    Raises:
        InvalidInput: naming each bad or missing field and what it should be.
    """
    if not isinstance(data, dict):
        raise InvalidInput(f"{spec.name} input must be a JSON object, not {type(data).__name__}")
    try:
        return spec.input_model.model_validate(data)
    except OSError as exc:  # a validator touched the file system with a path it refuses
        raise InvalidInput(
            f"{spec.name}: the input names a path the system refuses ({exc.strerror or exc}); "
            "give existing paths of ordinary length"
        ) from None
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            where = ".".join(str(p) for p in err["loc"])
            message = (str(err["ctx"]["error"]) if err["type"] == "value_error"
                       and "error" in err.get("ctx", {}) else err["msg"])
            if err["type"] == "missing":
                problems.append(f"missing input field {where!r}")
            elif where:
                problems.append(f"input field {where!r}: {message}")
            else:  # a check across fields
                problems.append(message)
        fields = ", ".join(spec.input_model.model_fields)
        raise InvalidInput(
            f"{spec.name}: {'; '.join(problems)} (fields: {fields}; pass them with "
            "--input FILE or --set key=value)"
        ) from None
