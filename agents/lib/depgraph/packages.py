"""``package.json``: the folder entry points, ``exports`` / ``imports`` maps and workspace
packages that JavaScript / TypeScript specifiers resolve through.

:class:`_Packages` is built once per analysis from the ``package.json`` files the walk found
(:attr:`_Repo.package_dirs`):

* the workspace packages: the members of npm / yarn ``workspaces`` (an array of globs, or
  ``{"packages": [...]}``) and of ``pnpm-workspace.yaml``'s ``packages`` (``!`` globs
  exclude), by their ``name``.  A package also resolves its own name (Node's
  self-reference), workspace member or not;
* :func:`_targets` walks an ``exports`` / ``imports`` value for a subpath: an exact key,
  else the ``*`` pattern with the longest prefix (Node's order), conditions tried in the
  object's order among :data:`CONDITIONS` of the import's kind (``require()`` takes the
  ``require`` condition, ``import`` the ``import`` one; nested objects and fallback arrays
  followed;
  ``null`` excludes), every matching target in order, so that a ``types`` target that
  exists wins over an ``import`` target that does not.

How a target becomes a file (and a build-output target its source) is in
:mod:`orchestrator.agents.lib.depgraph.javascript`.
"""

from __future__ import annotations

import json
import posixpath
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from orchestrator.agents.lib.depgraph.repo import _read_text, _Repo

CONDITIONS = {
    "import": frozenset({"source", "types", "typings", "import", "module", "node", "default"}),
    "require": frozenset({"source", "types", "typings", "require", "node", "default"}),
}
"""``exports`` / ``imports`` conditions honoured, by the kind of import (any order: the map's
order decides): ``import`` for import / export statements and ``import()``, ``require`` for
``require()`` and ``import x = require()``, as Node does.  They cover what a TypeScript or
Node import of the package may load; ``browser``, ``worker``, ``development`` /
``production`` and other custom conditions are skipped."""

# Fields naming a folder's entry point, in dependency-cruiser's (enhanced-resolve's) order.
MAIN_FIELDS = ("main", "types", "typings")


@dataclass(frozen=True)
class _Package:
    folder: str  # repository-relative ("" for the root)
    name: str | None
    data: dict[str, Any]

    def exports(self) -> Any:
        return self.data.get("exports")

    def imports(self) -> Any:
        return self.data.get("imports")


class _Packages:
    """Every ``package.json`` of the repository, by folder, and the workspace packages by
    name."""

    def __init__(self, repo: _Repo) -> None:
        self.errors: dict[str, str] = {}  # file -> why it could not be read (for the graph)
        errors = self.errors
        self.by_folder: dict[str, _Package] = {}
        for folder in sorted(repo.package_dirs):
            rel = f"{folder}/package.json" if folder else "package.json"
            text = _read_text(repo, rel)
            if text is None:
                continue
            try:
                data = json.loads(text)
                if not isinstance(data, dict):
                    raise ValueError("not a JSON object")
            except ValueError as exc:
                errors[rel] = f"cannot parse package.json: {exc}"
                continue
            name = data.get("name")
            self.by_folder[folder] = _Package(folder, name if isinstance(name, str) else None,
                                              data)
        self.by_name: dict[str, _Package] = {}
        for root_folder, patterns in self._workspace_globs(repo, errors):
            include = [glob_regex(root_folder, p) for p in patterns if not p.startswith("!")]
            exclude = [glob_regex(root_folder, p[1:]) for p in patterns if p.startswith("!")]
            for folder, package in self.by_folder.items():
                if (package.name and package.name not in self.by_name
                        and any(r.fullmatch(folder) for r in include)
                        and not any(r.fullmatch(folder) for r in exclude)):
                    self.by_name[package.name] = package

    def _workspace_globs(
        self, repo: _Repo, errors: dict[str, str]
    ) -> Iterator[tuple[str, list[str]]]:
        for folder, package in self.by_folder.items():
            spaces = package.data.get("workspaces")
            if isinstance(spaces, dict):
                spaces = spaces.get("packages")
            if isinstance(spaces, list):
                yield folder, [p for p in spaces if isinstance(p, str)]
        for folder in sorted({posixpath.dirname(rel) for rel in repo.existing
                              if posixpath.basename(rel) == "pnpm-workspace.yaml"}):
            rel = f"{folder}/pnpm-workspace.yaml" if folder else "pnpm-workspace.yaml"
            text = _read_text(repo, rel)
            if text is None:
                continue
            import yaml

            try:
                data = yaml.safe_load(text)
            except yaml.YAMLError as exc:
                errors[rel] = f"cannot parse pnpm-workspace.yaml: {exc}"
                continue
            spaces = data.get("packages") if isinstance(data, dict) else None
            if isinstance(spaces, list):
                yield folder, [p for p in spaces if isinstance(p, str)]

    def owner(self, folder: str) -> _Package | None:
        """The nearest package.json at or above ``folder`` (the importer's package)."""
        current: str | None = folder
        while current is not None:
            package = self.by_folder.get(current)
            if package is not None:
                return package
            current = posixpath.dirname(current) if current else None
        return None

    def named(self, spec: str, folder: str) -> tuple[_Package, str] | None:
        """(package, subpath ``"."`` or ``"./x"``) when ``spec`` names a workspace package
        or the importer's own package, else None."""
        parts = spec.split("/")
        count = 2 if spec.startswith("@") else 1
        name = "/".join(parts[:count])
        subpath = "./" + "/".join(parts[count:]) if len(parts) > count else "."
        package = self.by_name.get(name)
        if package is None:
            own = self.owner(folder)
            if own is None or own.name != name:
                return None
            package = own
        return package, subpath


def glob_regex(base: str, pattern: str) -> re.Pattern[str]:
    """A workspace glob (``packages/*``, ``apps/**``, ``./tools/cli``) as a regex over
    repository-relative folders."""
    pattern = posixpath.normpath(pattern.strip().rstrip("/"))
    if base:
        pattern = posixpath.normpath(posixpath.join(base, pattern))
    out = []
    i = 0
    while i < len(pattern):
        if pattern.startswith("**", i):
            out.append(".*")
            i += 2
        elif pattern[i] == "*":
            out.append("[^/]*")
            i += 1
        elif pattern[i] == "?":
            out.append("[^/]")
            i += 1
        else:
            out.append(re.escape(pattern[i]))
            i += 1
    regex = "".join(out)
    if regex.endswith("/.*"):  # ``apps/**`` also matches ``apps`` itself in globs' sense
        regex = regex[:-3] + "(/.*)?"
    return re.compile(regex)


def _targets(field: Any, subpath: str, kind: str = "import") -> tuple[bool, list[str]]:
    """(whether ``subpath`` matched a key, the targets it maps to in order of preference).

    ``field`` is an ``exports`` or ``imports`` value; ``subpath`` is ``"."``, ``"./x"``
    or ``"#x"``; ``kind`` is ``"import"`` or ``"require"``.  A string / array / condition
    object ``exports`` is the ``"."`` entry.
    """
    conditions = CONDITIONS[kind]
    if field is None:
        return False, []
    if not isinstance(field, dict) or not any(k.startswith((".", "#")) for k in field):
        if subpath != ".":
            return False, []
        return True, list(_conditional(field, "", conditions))
    if subpath in field and "*" not in subpath:
        return True, list(_conditional(field[subpath], "", conditions))
    best: tuple[str, str] | None = None
    for key in field:
        star = key.find("*")
        if star >= 0:
            head, tail = key[:star], key[star + 1:]
            if (subpath.startswith(head) and subpath.endswith(tail)
                    and len(subpath) >= len(head) + len(tail)
                    and (best is None or len(head) > len(best[0].partition("*")[0])
                         or (len(head) == len(best[0].partition("*")[0])
                             and len(key) > len(best[0])))):
                best = (key, subpath[len(head):len(subpath) - len(tail)])
        elif key.endswith("/") and subpath.startswith(key) and (
                best is None or len(key) > len(best[0].partition("*")[0])):
            best = (key, subpath[len(key):])  # legacy folder mapping
    if best is None:
        return False, []
    key, star = best
    return True, list(_conditional(field[key], star, conditions, folder=key.endswith("/")))


def _conditional(
    value: Any, star: str, conditions: frozenset[str], folder: bool = False
) -> Iterator[str]:
    if isinstance(value, str):
        if folder:
            yield value + star
        else:
            yield value.replace("*", star)
    elif isinstance(value, list):
        for item in value:
            yield from _conditional(item, star, conditions, folder)
    elif isinstance(value, dict):
        for condition, target in value.items():
            if condition in conditions:
                yield from _conditional(target, star, conditions, folder)
