"""Anchors and cross-references: where each documented object's heading is.

Every object gets one home: the page of the module that defines it when that module has a
page, else the shortest-named page that re-exports it (``anyio`` for anyio's
``create_task_group``). A name in a signature or a docstring links to its home.
"""

from __future__ import annotations

import re

import griffe
from orchestrator.agents.lib.apidocs.public import class_members, module_entries
from orchestrator.agents.lib.apidocs.signatures import is_property

__all__ = ["LinkTable", "heading", "slug"]

_NOT_SLUG = re.compile(r"[^\w\- ]")


def slug(title: str) -> str:
    """The anchor GitHub (and most Markdown renderers) give a heading."""
    return _NOT_SLUG.sub("", title.strip().lower()).replace(" ", "-")


def heading(obj: griffe.Object, name: str, owner: str | None = None) -> str:
    """The heading text of an object, without the ``#`` marks."""
    label = f"{owner}.{name}" if owner else name
    if obj.is_class and owner is None:
        return f"class {label}"
    if obj.is_function and not is_property(obj):
        return f"{label}()"
    return label


class LinkTable:
    """Object path → ``page.md#anchor`` for a loaded package."""

    def __init__(self, tree: griffe.Module, pages: list[str]) -> None:
        candidates: dict[str, list[tuple[int, str, str]]] = {}
        self.pages = set(pages)
        self.entries: dict[str, list] = {}
        for page in pages:
            mod = _module(tree, page)
            if mod is None:
                continue
            entries = module_entries(mod)
            self.entries[page] = entries
            for entry in entries:
                if entry.obj is None:
                    continue
                home = 0 if entry.defined_in is None else 1
                rank = (home, page.count("."), page)
                anchor = slug(heading(entry.obj, entry.name))
                candidates.setdefault(entry.obj.path, []).append((*rank, anchor))
                if entry.obj.is_class:
                    for member in class_members(entry.obj):
                        member_anchor = slug(heading(member, member.name, entry.name))
                        candidates.setdefault(member.path, []).append((*rank, member_anchor))
        self.homes = {path: f"{min(c)[2]}.md#{min(c)[3]}" for path, c in candidates.items()}

    def url(self, path: str) -> str | None:
        """The link of an object path (aliases followed), or None."""
        return self.homes.get(path)

    def resolve(self, name: str, scope: griffe.Object) -> str | None:
        """The link of ``name`` as written in ``scope`` (``Foo``, ``mod.Foo``, ``pkg.mod.Foo``)."""
        name = name.strip().lstrip("~").rstrip("()")
        if not name or not all(part.isidentifier() for part in name.split(".")):
            return None
        if name in self.homes:
            return self.homes[name]
        head, _, rest = name.partition(".")
        try:
            path = scope.resolve(head)
        except (griffe.NameResolutionError, ValueError, AttributeError, KeyError):
            path = None
        if path is None:
            return None
        full = f"{path}.{rest}" if rest else path
        return self.homes.get(full) or self.homes.get(_final_path(scope, full) or "")


def _final_path(scope: griffe.Object, path: str) -> str | None:
    try:
        obj = scope.modules_collection.get_member(path)
        return obj.final_target.path if obj.is_alias else obj.path
    except (KeyError, ValueError, AttributeError, griffe.AliasResolutionError,
            griffe.CyclicAliasError):
        return None


def _module(tree: griffe.Module, name: str) -> griffe.Module | None:
    obj = tree
    for part in name.split(".")[1:]:
        obj = obj.members.get(part)
        if obj is None or obj.is_alias or not obj.is_module:
            return None
    return obj
