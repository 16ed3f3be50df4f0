"""The ``docs`` agent's contract: Python API reference in Markdown, extracted from a package's
source with griffe, statically (the documented package is never imported).

Request types:

* ``list_modules`` (:data:`LIST_MODULES`) ``{"package_dir"}`` → ``{"package", "modules":
  [{"name", "path"}]}``: the package's public modules, sorted by dotted name.
* ``render_module`` (:data:`RENDER_MODULE`) ``{"package_dir", "module", "path"}`` →
  ``{"module", "markdown", "summary"}``, or ``{"module", "skipped": reason}`` for a module that
  cannot be read: a symlink out of the package, a file it may not read, text that does not
  decode, or source that does not parse (one such file never fails the whole package).
* ``write_docs`` (:data:`WRITE_DOCS`) ``{"output", "package", "pages": {module: markdown},
  "summaries": {...}, "skipped": {module: reason}}`` → ``{"output", "files", "index"}``; the
  index lists the skipped modules with their reason. Guarded by the :func:`output_lock` lock
  (``docs:<output>``): the request must carry that lock's fencing token, and a token older
  than one already seen is refused.
"""

from __future__ import annotations

from pathlib import Path, PurePosixPath

from pydantic import Field, RootModel, field_validator

from orchestrator.contracts.base import Contract, Operation

__all__ = [
    "AGENT_TYPE", "LIST_MODULES", "RENDER_MODULE", "WRITE_DOCS", "DocsWritten", "ListModules",
    "ModuleList", "ModuleRef", "RenderModule", "RenderResult", "RenderedModule", "SkippedModule",
    "WriteDocs", "output_lock",
]

AGENT_TYPE = "docs"


def output_lock(output: str | Path) -> str:
    """The lock name guarding an output folder: ``docs:<absolute path>`` (symlinks resolved,
    so two spellings of one folder share the lock)."""
    return f"docs:{Path(output).resolve()}"


class ListModules(Contract):
    package_dir: str = Field(min_length=1, description="the package's folder")


class ModuleRef(Contract):
    """A module of the package: ``name`` dotted (``__init__.py`` is named after its package),
    ``path`` relative to the package folder, POSIX style."""

    name: str
    path: str


class ModuleList(Contract):
    package: str = Field(description="the package's name (its folder's name)")
    modules: list[ModuleRef]


class RenderModule(Contract):
    package_dir: str = Field(min_length=1, description="the package's folder")
    module: str = Field(description="the module's dotted name, the page's title")
    path: str = Field(description="the module's file, relative to the package folder")

    @field_validator("path")
    @classmethod
    def _module_path(cls, value: str) -> str:
        parts = PurePosixPath(value)
        if parts.is_absolute() or ".." in parts.parts or parts.suffix != ".py":
            raise ValueError(f"{value} is not a module of the package: a relative path of a "
                             ".py file, without '..'")
        return value


class RenderedModule(Contract):
    module: str
    markdown: str
    summary: str = Field(description="the module docstring's first sentence, or ''")


class SkippedModule(Contract):
    """A module that cannot be read; it is skipped (listed in the index), not a failed run."""

    module: str
    skipped: str = Field(description="why, starting with the module's path")


class RenderResult(RootModel[RenderedModule | SkippedModule]):
    """A rendered page or a skipped module, as it goes on the wire (no field of the other)."""


class WriteDocs(Contract):
    output: str = Field(min_length=1, description="the folder to write into")
    package: str = Field(description="the package's name, the index's title")
    pages: dict[str, str] = Field(description="module name -> Markdown page")
    summaries: dict[str, str] = Field(default_factory=dict,
                                      description="module name -> one-line summary")
    skipped: dict[str, str] = Field(default_factory=dict,
                                    description="module name -> why it has no page")


class DocsWritten(Contract):
    output: str = Field(description="the output folder, absolute")
    files: list[str] = Field(description="the files written or found unchanged, sorted")
    index: str = Field(description="the index page's file name, relative to output")


LIST_MODULES = Operation(AGENT_TYPE, "list_modules", ListModules, ModuleList)
RENDER_MODULE = Operation(AGENT_TYPE, "render_module", RenderModule, RenderResult)
WRITE_DOCS = Operation(AGENT_TYPE, "write_docs", WriteDocs, DocsWritten)
