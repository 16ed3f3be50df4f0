"""The ``docs`` agent: Python API reference in Markdown, rendered from source with ``ast``.

Request types:

* ``list_modules`` ``{"package_dir"}`` → ``{"package", "modules": [{"name", "path"}]}``
* ``render_module`` ``{"package_dir", "module", "path"}`` → ``{"module", "markdown", "summary"}``
* ``write_docs`` ``{"output", "package", "pages": {module: markdown}, "summaries": {...}}`` →
  ``{"output", "files", "index"}``. Guarded by the ``docs:<output>`` lock: the request must carry
  that lock's fencing token, and a token older than one already seen is refused.

The documented package is never imported.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from orchestrator.agent import Agent, HandlerError, RequestContext

from .docs_markdown import (
    INDEX_FILENAME,
    UnsafePath,
    discover_modules,
    module_filename,
    module_summary,
    render_index,
    render_module,
    write_docs,
)

__all__ = ["agent", "docs_resource"]

agent = Agent(
    "docs",
    capabilities=["python", "markdown", "api-reference"],
    version="1",
    description="Markdown API docs from Python source",
)


def docs_resource(output: str | Path) -> str:
    """The lock name guarding an output folder."""
    return f"docs:{Path(output).resolve()}"


def _package_dir(payload: dict[str, Any]) -> Path:
    raw = payload.get("package_dir")
    if not isinstance(raw, str) or not raw:
        raise HandlerError("invalid_input", "payload needs 'package_dir', a folder path")
    path = Path(raw)
    if not path.is_dir():
        raise HandlerError("invalid_input", f"package folder {raw} does not exist")
    return path


@agent.handler("list_modules")
async def list_modules(payload: dict[str, Any], ctx: RequestContext) -> dict[str, Any]:
    package_dir = _package_dir(payload)
    modules = await asyncio.to_thread(discover_modules, package_dir)
    return {
        "package": package_dir.name,
        "modules": [{"name": m.name, "path": m.path} for m in modules],
    }


def _render(package_dir: Path, module: str, rel_path: str) -> dict[str, Any]:
    path = (package_dir / rel_path).resolve()
    if not path.is_relative_to(package_dir.resolve()) or path.suffix != ".py":
        raise HandlerError("invalid_input", f"{rel_path} is not a module of {package_dir}")
    try:
        source = path.read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        raise HandlerError("invalid_input", f"module file {path} does not exist") from None
    return {
        "module": module,
        "markdown": render_module(source, module),
        "summary": module_summary(source),
    }


@agent.handler("render_module")
async def render(payload: dict[str, Any], ctx: RequestContext) -> dict[str, Any]:
    package_dir = _package_dir(payload)
    module, rel_path = payload.get("module"), payload.get("path")
    if not isinstance(module, str) or not isinstance(rel_path, str):
        raise HandlerError("invalid_input", "payload needs 'module' and 'path' strings")
    return await asyncio.to_thread(_render, package_dir, module, rel_path)


@agent.handler("write_docs")
async def write(payload: dict[str, Any], ctx: RequestContext) -> dict[str, Any]:
    output, package = payload.get("output"), payload.get("package")
    pages, summaries = payload.get("pages"), payload.get("summaries") or {}
    if not isinstance(output, str) or not isinstance(package, str) or not isinstance(pages, dict):
        raise HandlerError("invalid_input", "payload needs 'output', 'package' and 'pages'")
    await ctx.check_fencing(docs_resource(output))
    files = {module_filename(name): text for name, text in pages.items()}
    files[INDEX_FILENAME] = render_index(
        package, sorted((name, str(summaries.get(name, ""))) for name in pages)
    )
    try:
        written = await asyncio.to_thread(write_docs, output, files)
    except UnsafePath as exc:
        raise HandlerError("unsafe_path", str(exc)) from None
    resolved = await asyncio.to_thread(lambda: str(Path(output).resolve()))
    return {"output": resolved, "files": written, "index": INDEX_FILENAME}
