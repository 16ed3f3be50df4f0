"""The ``docs`` agent: Python API reference in Markdown, rendered from source with ``ast``.

Its request types, their payloads and answers, and the lock guarding an output folder are
its contract's: :mod:`orchestrator.contracts.docs`. The documented package is never imported.
"""

from __future__ import annotations

import asyncio
import io
import tokenize
from pathlib import Path

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
from orchestrator.contracts.docs import (
    AGENT_TYPE,
    LIST_MODULES,
    RENDER_MODULE,
    WRITE_DOCS,
    DocsWritten,
    ListModules,
    ModuleList,
    ModuleRef,
    RenderedModule,
    RenderModule,
    SkippedModule,
    WriteDocs,
    output_lock,
)
from orchestrator.errors import AgentErrorCode

__all__ = ["agent"]

agent = Agent(
    AGENT_TYPE,
    capabilities=["python", "markdown", "api-reference"],
    version="1",
    description="Markdown API docs from Python source",
)


def _package_dir(raw: str) -> Path:
    path = Path(raw)
    if not path.is_dir():
        raise HandlerError(AgentErrorCode.INVALID_INPUT, f"package folder {raw} does not exist")
    return path


@agent.handler(LIST_MODULES)
async def list_modules(payload: ListModules, ctx: RequestContext) -> ModuleList:
    package_dir = _package_dir(payload.package_dir)
    modules = await asyncio.to_thread(discover_modules, package_dir)
    return ModuleList(package=package_dir.name,
                      modules=[ModuleRef(name=m.name, path=m.path) for m in modules])


def _read_source(package_dir: Path, rel_path: str) -> str:
    """The text of a module, decoded as Python decodes it (PEP 263 coding line, else UTF-8).
    ``rel_path`` is a module's path (the contract checks its shape).

    Raises:
        _Unreadable: the module is the package's but cannot be read.
    """
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


def _render(package_dir: Path, module: str, rel_path: str) -> RenderedModule | SkippedModule:
    try:
        source = _read_source(package_dir, rel_path)
    except _Unreadable as exc:
        return SkippedModule(module=module, skipped=f"{rel_path}: {exc}")
    return RenderedModule(module=module, markdown=render_module(source, module),
                          summary=module_summary(source))


@agent.handler(RENDER_MODULE)
async def render(payload: RenderModule, ctx: RequestContext) -> RenderedModule | SkippedModule:
    package_dir = _package_dir(payload.package_dir)
    return await asyncio.to_thread(_render, package_dir, payload.module, payload.path)


@agent.handler(WRITE_DOCS)
async def write(payload: WriteDocs, ctx: RequestContext) -> DocsWritten:
    output = payload.output
    await ctx.check_fencing(output_lock(output))
    files = {module_filename(name): text for name, text in payload.pages.items()}
    files[INDEX_FILENAME] = render_index(
        payload.package, sorted((name, payload.summaries.get(name, "")) for name in payload.pages),
        skipped=sorted(payload.skipped.items()),
    )
    try:
        written = await asyncio.to_thread(write_docs, output, files)
    except UnsafePath as exc:
        raise HandlerError(AgentErrorCode.UNSAFE_PATH, str(exc)) from None
    resolved = await asyncio.to_thread(lambda: str(Path(output).resolve()))
    return DocsWritten(output=resolved, files=written, index=INDEX_FILENAME)
