"""The ``docs`` agent: Python API reference in Markdown, extracted statically with griffe.

Its request types, their payloads and answers, and the lock guarding an output folder are
its contract's: :mod:`orchestrator.contracts.docs`. The documented package is never imported.
The graph sends one ``render_module`` per module; the package is loaded once per agent process
and package state (:class:`~orchestrator.agents.lib.apidocs.PackageCache`), not once per task.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

from orchestrator.agents.lib.apidocs import PackageCache, SkippedPage, render_page
from orchestrator.agents.lib.apidocs.loading import Unparsable, read_module_source
from orchestrator.agents.lib.docs_markdown import (
    INDEX_FILENAME,
    UnsafePath,
    discover_modules,
    module_filename,
    render_index,
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

log = logging.getLogger(__name__)

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


#: The packages this process has loaded, by folder and fingerprint (a few at most).
_packages = PackageCache()


def _check_readable(package_dir: Path, rel_path: str) -> None:
    """Refuse a module that is not the package's to show: a symlink out of the package, a file
    that cannot be read or does not decode. ``rel_path`` is a module's path (the contract
    checks its shape).

    Raises:
        _Unreadable: why.
    """
    path = (package_dir / rel_path).resolve()
    if not path.is_relative_to(package_dir.resolve()):
        raise _Unreadable(f"a symlink to {path}, outside the package; not followed")
    try:
        read_module_source(path)
    except OSError as exc:  # gone since discovery, no permission, a folder, a fifo...
        raise _Unreadable(f"cannot be read: {exc.strerror or exc}") from None
    except Unparsable as exc:
        raise _Unreadable(str(exc)) from None


class _Unreadable(Exception):
    """A module of the package that cannot be read; it is skipped, with this reason."""


def _render(package_dir: Path, module: str, rel_path: str,
            packages: PackageCache = _packages) -> RenderedModule | SkippedModule:
    try:
        _check_readable(package_dir, rel_path)
    except _Unreadable as exc:
        return SkippedModule(module=module, skipped=f"{rel_path}: {exc}")
    try:
        page = render_page(packages.get(package_dir), module)
    except Exception as exc:  # a renderer bug on one module must not cost the other pages
        log.exception("rendering %s failed", module)
        return SkippedModule(module=module, skipped=f"{rel_path}: could not be rendered "
                             f"({type(exc).__name__}: {exc}); please report it")
    if isinstance(page, SkippedPage):
        return SkippedModule(module=module, skipped=f"{rel_path}: {page.reason}")
    return RenderedModule(module=module, markdown=page.markdown, summary=page.summary)


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
