"""``parallel_docs``: Markdown API docs for a Python package, one agent task per module.

    prepare → discover ──Send per module──▶ document_module ──▶ write_docs → END

* ``prepare`` validates the input (so the graph also checks it when started from Studio).
* ``discover`` asks the docs agent for the package's modules.
* ``document_module`` runs once per module, in parallel (LangGraph ``Send``); each asks the
  docs agent to render that module's source.
* ``write_docs`` fans in and asks the docs agent to write one page per module plus an index,
  holding the output folder's lock (:func:`~orchestrator.contracts.docs.output_lock`), whose
  fencing token the agent checks.

The requests and answers are the docs agent's contract, :mod:`orchestrator.contracts.docs`.

Input: ``{"package": <folder of a Python package, or an importable package name>,
"output": <folder>}``. Same input, byte-identical output. A module that cannot be read (a
symlink out of the package, no permission, undecodable text) is skipped: the index lists it
with the reason, and ``final_result["skipped"]`` maps it to the reason.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import Any

from langgraph.graph import END, START, StateGraph
from langgraph.types import Send
from orchestrator.state.schema import MultiAgentState, merge_updates, now_iso
from pydantic import BaseModel, ConfigDict, Field, field_validator

from orchestrator.calls import AGENT_RETRY
from orchestrator.contracts.docs import (
    AGENT_TYPE,
    LIST_MODULES,
    RENDER_MODULE,
    WRITE_DOCS,
    ListModules,
    RenderModule,
    SkippedModule,
    WriteDocs,
    output_lock,
)
from orchestrator.graphs import WorkflowSpec, validated_fields

__all__ = ["ParallelDocsInput", "ParallelDocsState", "builder", "workflow"]

_PATH_MAX = 4096  # bytes in a path on Linux; longer input is not a path (nor a package name)


class ParallelDocsInput(BaseModel):
    """What ``parallel_docs`` needs. Validation resolves both to absolute folders."""

    model_config = ConfigDict(extra="forbid")

    package: str = Field(
        min_length=1, max_length=_PATH_MAX,
        description="folder of a Python package, or an importable package name",
    )
    output: str = Field(min_length=1, max_length=_PATH_MAX,
                        description="folder to write the Markdown into")

    @field_validator("package")
    @classmethod
    def _resolve_package(cls, value: str) -> str:
        return str(resolve_package(value))

    @field_validator("output")
    @classmethod
    def _resolve_output(cls, value: str) -> str:
        try:
            path = Path(value).expanduser().resolve()
            if path.exists() and not path.is_dir():
                raise ValueError(f"{value} exists and is not a folder; choose a folder for the docs")
        except OSError as exc:  # a name too long, a loop of symlinks, no permission
            raise ValueError(f"cannot use {value} as a folder: {exc.strerror or exc}") from None
        return str(path)


def resolve_package(value: str) -> Path:
    """The folder of ``value``: a folder path, or the name of an importable package.

    Raises:
        ValueError: neither; the message says what was looked for.
    """
    path = Path(value).expanduser()
    try:
        if path.is_dir():
            return path.resolve()
    except OSError as exc:  # a name too long, a loop of symlinks, no permission
        raise ValueError(f"cannot use {value} as a package folder: {exc.strerror or exc}") from None
    looks_like_path = os.sep in value or value.startswith(".") or path.suffix == ".py"
    if looks_like_path:
        raise ValueError(f"package folder {value} does not exist; give a folder or a package name")
    try:
        spec = importlib.util.find_spec(value)
    except (ImportError, ValueError):
        spec = None
    if spec is None:
        raise ValueError(
            f"no folder named {value} and no importable package {value!r}; "
            "give the path of a package folder or install the package"
        )
    locations = list(spec.submodule_search_locations or [])
    if not locations:
        raise ValueError(f"{value} is a single module, not a package; give a package")
    return Path(locations[0]).resolve()


class ParallelDocsState(MultiAgentState, total=False):
    package: str
    output: str
    package_name: str


async def prepare(state: ParallelDocsState) -> dict[str, Any]:
    # once per run, off the event loop (resolving the package touches the file system)
    values = await validated_fields(
        workflow, {"package": state.get("package"), "output": state.get("output")})
    return {"package": values["package"], "output": values["output"],
            "workflow_type": "parallel_docs", "updated_at": now_iso()}


async def discover(state: ParallelDocsState) -> dict[str, Any]:
    call = await LIST_MODULES.call(ListModules(package_dir=state["package"]), subtask="discover")
    listing = call.result
    subtasks = [
        {"id": m.name, "kind": "document_module", "agent_type": AGENT_TYPE,
         "payload": {"path": m.path}}
        for m in listing.modules
    ]
    return merge_updates(call.updates, {"package_name": listing.package, "subtasks": subtasks})


def fan_out(state: ParallelDocsState) -> list[Send] | str:
    subtasks = state.get("subtasks") or []
    if not subtasks:
        return "write_docs"
    return [
        Send("document_module", {"package": state["package"], "module": t["id"],
                                 "path": t["payload"]["path"]})
        for t in subtasks
    ]


async def document_module(task: dict[str, Any]) -> dict[str, Any]:
    module = task["module"]
    call = await RENDER_MODULE.call(
        RenderModule(package_dir=task["package"], module=module, path=task["path"]),
        subtask=module,
    )
    rendered = call.result.root
    if isinstance(rendered, SkippedModule):  # unreadable: reported in the index, not a failed run
        skip = {"skipped": rendered.skipped}
        return merge_updates(call.updates, {"partial_results": {module: skip},
                                            "subtask_status": {module: "skipped"}})
    page = {"markdown": rendered.markdown, "summary": rendered.summary}
    return merge_updates(call.updates, {"partial_results": {module: page},
                                        "subtask_status": {module: "done"}})


async def write_docs(state: ParallelDocsState) -> dict[str, Any]:
    output = state["output"]
    pages = state.get("partial_results") or {}
    modules = sorted(t["id"] for t in state.get("subtasks") or [])
    missing = [m for m in modules if m not in pages]
    if missing:  # cannot happen through the fan-in; guard the invariant all the same
        raise RuntimeError(f"modules without a page: {', '.join(missing)}")
    skipped = {m: pages[m]["skipped"] for m in modules if "skipped" in pages[m]}
    written = [m for m in modules if m not in skipped]
    call = await WRITE_DOCS.call(
        WriteDocs(
            output=output,
            package=state.get("package_name") or Path(state["package"]).name,
            pages={m: pages[m]["markdown"] for m in written},
            summaries={m: pages[m]["summary"] for m in written},
            skipped=skipped,
        ),
        locks=[output_lock(output)],
        subtask="write_docs",
    )
    docs = call.result
    final = {
        "status": "completed",
        "package": state.get("package_name"),
        "output": docs.output,
        "index": str(Path(docs.output) / docs.index),
        "modules": len(written),
        "files": list(docs.files),
    }
    if skipped:
        final["skipped"] = skipped
    return merge_updates(call.updates, {"final_result": final})


builder: StateGraph = StateGraph(ParallelDocsState)
builder.add_node("prepare", prepare)
builder.add_node("discover", discover, retry_policy=AGENT_RETRY)
builder.add_node("document_module", document_module, retry_policy=AGENT_RETRY)
builder.add_node("write_docs", write_docs, retry_policy=AGENT_RETRY)
builder.add_edge(START, "prepare")
builder.add_edge("prepare", "discover")
builder.add_conditional_edges("discover", fan_out, ["document_module", "write_docs"])
builder.add_edge("document_module", "write_docs")
builder.add_edge("write_docs", END)

workflow = WorkflowSpec(
    name="parallel_docs",
    builder=builder,
    input_model=ParallelDocsInput,
    description="Markdown API docs for a Python package, one parallel agent task per module",
)
