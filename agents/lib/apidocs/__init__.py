"""Markdown API reference pages for a Python package, extracted statically with griffe.

The documented package is never imported. Rooms, one idea each:

* :mod:`.discover` — which modules get a page;
* :mod:`.loading` — the griffe tree of a package, cached per package state;
* :mod:`.public` — which names a module's page documents (re-exports included);
* :mod:`.signatures` — signatures, overloads, constructors, attribute lines;
* :mod:`.docstrings` — docstrings (Google, NumPy, Sphinx) as Markdown;
* :mod:`.links` — anchors and cross-references;
* :mod:`.render` — the page.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import PurePosixPath

import griffe
from orchestrator.agents.lib.apidocs.discover import ModuleInfo, discover_modules
from orchestrator.agents.lib.apidocs.links import LinkTable
from orchestrator.agents.lib.apidocs.loading import (
    DOCSTRING_OPTIONS,
    ApiHints,
    LoadedPackage,
    PackageCache,
    fingerprint,
    load_package,
    parse_error,
)
from orchestrator.agents.lib.apidocs.render import page_markdown, summary
from orchestrator.agents.lib.pyparse import PARSE_LOCK

__all__ = [
    "LoadedPackage", "ModuleInfo", "PackageCache", "Page", "SkippedPage", "discover_modules",
    "fingerprint", "load_package", "render_page", "render_source",
]


@dataclass(frozen=True)
class Page:
    """A rendered module page and its one-line summary."""

    markdown: str
    summary: str


@dataclass(frozen=True)
class SkippedPage:
    """A module that has no page, and why."""

    reason: str


def _links(loaded: LoadedPackage) -> LinkTable:
    if loaded.links is None:
        loaded.links = LinkTable(loaded.tree, [m.name for m in discover_modules(loaded.root)
                                               if m.name not in loaded.failed])
    return loaded.links  # type: ignore[return-value]


def render_page(loaded: LoadedPackage, module: str) -> Page | SkippedPage:
    """The page of ``module`` (dotted) of a loaded package, or why it has none."""
    with loaded.lock:
        if module in loaded.failed:
            return SkippedPage(loaded.failed[module])
        mod = loaded.module(module)
        if mod is None:
            return SkippedPage("not found in the package")
        links = _links(loaded)
        return Page(page_markdown(mod, module, links, links.entries.get(module)), summary(mod))


def render_source(source: str, name: str) -> Page | SkippedPage:
    """The page of one module from its source alone (no package: no re-exports followed,
    no cross-references)."""
    reason = parse_error(source)
    if reason is not None:
        return SkippedPage(reason)
    with PARSE_LOCK, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        mod = griffe.visit(name.rsplit(".", 1)[-1], PurePosixPath(f"{name.rsplit('.', 1)[-1]}.py"),
                           source, extensions=griffe.load_extensions(ApiHints()),
                           docstring_parser="auto", docstring_options=DOCSTRING_OPTIONS)
    return Page(page_markdown(mod, name, None), summary(mod))

