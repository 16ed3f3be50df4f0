"""The ``docs`` agent: Python API reference in Markdown, rendered from source with ``ast``.

Request types:

* ``list_modules`` ``{"package_dir"}`` → ``{"package", "modules": [{"name", "path"}]}``
* ``render_module`` ``{"package_dir", "module", "path"}`` → ``{"module", "markdown", "summary"}``,
  or ``{"module", "skipped": reason}`` for a module that cannot be read: a symlink out of the
  package, a file it may not read, or text that does not decode (one such file never fails
  the whole package).
* ``write_docs`` ``{"output", "package", "pages": {module: markdown}, "summaries": {...},
  "skipped": {module: reason}}`` → ``{"output", "files", "index"}``; the index lists the
  skipped modules with their reason. Guarded by the ``docs:<output>`` lock: the request must carry
  that lock's fencing token, and a token older than one already seen is refused.

The documented package is never imported.
"""

from __future__ import annotations

import asyncio
import io
import tokenize
from pathlib import Path, PurePosixPath
from typing import Any

from orchestrator.agents.lib.docs_markdown import (
    INDEX_FILENAME,
    UnsafePath,
    discover_modules,
    module_filename,
    module_summary,
    render_index,
    render_module,
    write_docs,
)

from orchestrator.agent import Agent, HandlerError, RequestContext
from orchestrator.errors import AgentErrorCode

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
        raise HandlerError(AgentErrorCode.INVALID_INPUT, "payload needs 'package_dir', a folder path")
    path = Path(raw)
    if not path.is_dir():
        raise HandlerError(AgentErrorCode.INVALID_INPUT, f"package folder {raw} does not exist")
    return path


@agent.handler("list_modules")
async def list_modules(payload: dict[str, Any], ctx: RequestContext) -> dict[str, Any]:
    package_dir = _package_dir(payload)
    modules = await asyncio.to_thread(discover_modules, package_dir)
    return {
        "package": package_dir.name,
        "modules": [{"name": m.name, "path": m.path} for m in modules],
    }


def _read_source(package_dir: Path, rel_path: str) -> str:
    """The text of a module, decoded as Python decodes it (PEP 263 coding line, else UTF-8).

    Raises:
        HandlerError: ``invalid_input`` for a path that is not a module's (the request is
            wrong). _Unreadable: the module is the package's but cannot be read.
    """
    parts = PurePosixPath(rel_path)
    if parts.is_absolute() or ".." in parts.parts or parts.suffix != ".py":
        raise HandlerError(AgentErrorCode.INVALID_INPUT, f"{rel_path} is not a module of {package_dir}")
    path = (package_dir / rel_path).resolve()
    if not path.is_relative_to(package_dir.resolve()):
        raise _Unreadable(f"a symlink to {path}, outside the package; not followed")
    try:
        data = path.read_bytes()
    except OSError as exc:  # gone since discovery, no permission, a folder, a fifo...
        raise _Unreadable(f"cannot be read: {exc.strerror or exc}") from None
    try:
        encoding, _ = tokenize.detect_encoding(io.BytesIO(data).readline)
        return data.decode(encoding)
    except (SyntaxError, LookupError, UnicodeDecodeError) as exc:
        reason = exc.reason if isinstance(exc, UnicodeDecodeError) else exc
        raise _Unreadable(f"does not decode as Python source: {reason}") from None


class _Unreadable(Exception):
    """A module of the package that cannot be read; it is skipped, with this reason."""


def _render(package_dir: Path, module: str, rel_path: str) -> dict[str, Any]:
    try:
        source = _read_source(package_dir, rel_path)
    except _Unreadable as exc:
        return {"module": module, "skipped": f"{rel_path}: {exc}"}
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
        raise HandlerError(AgentErrorCode.INVALID_INPUT, "payload needs 'module' and 'path' strings")
    return await asyncio.to_thread(_render, package_dir, module, rel_path)


@agent.handler("write_docs")
async def write(payload: dict[str, Any], ctx: RequestContext) -> dict[str, Any]:
    output, package = payload.get("output"), payload.get("package")
    pages, summaries = payload.get("pages"), payload.get("summaries") or {}
    if not isinstance(output, str) or not isinstance(package, str) or not isinstance(pages, dict):
        raise HandlerError(AgentErrorCode.INVALID_INPUT, "payload needs 'output', 'package' and 'pages'")
    await ctx.check_fencing(docs_resource(output))
    files = {module_filename(name): text for name, text in pages.items()}
    skipped = payload.get("skipped") or {}
    if not isinstance(skipped, dict):
        raise HandlerError(AgentErrorCode.INVALID_INPUT, "'skipped' must map module names to reasons")
    files[INDEX_FILENAME] = render_index(
        package, sorted((name, str(summaries.get(name, ""))) for name in pages),
        skipped=sorted((str(name), str(reason)) for name, reason in skipped.items()),
    )
    try:
        written = await asyncio.to_thread(write_docs, output, files)
    except UnsafePath as exc:
        raise HandlerError(AgentErrorCode.UNSAFE_PATH, str(exc)) from None
    resolved = await asyncio.to_thread(lambda: str(Path(output).resolve()))
    return {"output": resolved, "files": written, "index": INDEX_FILENAME}
