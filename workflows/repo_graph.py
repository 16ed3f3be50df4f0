"""The graph of a change's repositories: which one needs which, and the order to treat them in.

:func:`manifest_dependencies` reads each repository's manifests (``pyproject.toml``,
``package.json``) and reports the other named repositories they point at by path;
:func:`order_repositories` turns the combined edges (given ``depends_on`` plus manifests)
into a :class:`RepoOrder`: a topological order, parallel batches, and the dependency cycles
("bundles") that must be tested and merged as one unit.  The graph algorithms (Tarjan's
components, Johnson's cycles, batches on the condensation) are those of
:class:`orchestrator.agents.lib.depgraph.DependencyGraph`, with repository names as nodes.

What the manifests say (paths are relative to the manifest's folder; ``file:`` URLs may be
relative, absolute, ``file://localhost/...`` or use PDM's ``${PROJECT_ROOT}``):

``pyproject.toml``
    PEP 621 ``[project] dependencies`` and ``optional-dependencies`` and PEP 735
    ``[dependency-groups]`` entries ``name @ file:...``; ``[tool.uv.sources]``
    ``name = {path = ...}`` (or a list of such tables) and ``[tool.uv.workspace] members``
    globs; ``[tool.poetry.dependencies]``, ``[tool.poetry.dev-dependencies]`` and
    ``[tool.poetry.group.*.dependencies]`` ``name = {path = ...}``; ``[tool.pdm]``
    ``dev-dependencies`` groups (``name @ file:...`` or ``-e file:...#egg=name``).
``package.json``
    ``file:``, ``link:`` and ``portal:`` specifiers in ``dependencies``,
    ``devDependencies``, ``peerDependencies`` and ``optionalDependencies``; ``workspaces``
    globs (an array, or ``{"packages": [...]}``; ``!`` excludes).  A workspace glob that
    matches another repository's top folder is a dependency on it; the ``package.json`` of
    a member inside the repository is read as well (its ``file:`` dependencies count).

A path points at repository R when it resolves to R's top folder or to something inside it
(the deepest repository wins when tops are nested); a repository's references to itself are
ignored.
"""

from __future__ import annotations

import json
import os
import re
import tomllib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from orchestrator.agents.lib.depgraph.graph import DependencyGraph
from orchestrator.agents.lib.depgraph.packages import glob_regex

__all__ = ["RepoCycleError", "RepoOrder", "manifest_dependencies", "order_repositories"]

_JS_SECTIONS = ("dependencies", "devDependencies", "peerDependencies", "optionalDependencies")
_JS_PATH_PREFIXES = ("file:", "link:", "portal:")
# PEP 508 "name[extras] @ url ; marker": only the URL form can name a local path.
_PEP508_URL = re.compile(
    r"^\s*(?P<name>[A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9])?)\s*(?:\[[^\]]*\])?\s*@\s*"
    r"(?P<url>[^\s;]+)")


class RepoCycleError(ValueError):
    """The repositories depend on each other in a cycle and the input does not allow it.

    ``cycles`` lists every elementary cycle, each as the names in dependency order (each
    depends on the next, the last on the first), starting at its smallest name.
    """

    def __init__(self, cycles: list[list[str]]) -> None:
        self.cycles = cycles
        shown = "; ".join(" -> ".join([*cycle, cycle[0]]) for cycle in cycles)
        super().__init__(
            f"the repositories depend on each other in a cycle: {shown} (each depends on the "
            "next); remove a dependency, or set allow_cycles: true to test and merge each "
            "cycle as one bundle")


@dataclass(frozen=True)
class RepoOrder:
    """How to walk the repositories of a change.

    Attributes:
        order: every name, upstreams first; the members of a bundle are adjacent (sorted).
            Deterministic: within a batch, units (a repository or a bundle) are sorted by
            their first name.
        batches: ``batches[k]`` depends only on names in earlier batches (or in its own
            bundle); a bundle's members share a batch.  Each batch is sorted.
        bundles: the strongly connected components with more than one member, each sorted,
            the list sorted.  Empty unless cycles were allowed.
        depends: name -> its direct upstreams, sorted.
    """

    order: list[str]
    batches: list[list[str]]
    bundles: list[list[str]]
    depends: dict[str, list[str]]

    def bundle_of(self, name: str) -> list[str]:
        """The bundle ``name`` is in, or ``[name]`` when it is in no cycle.

        Raises:
            KeyError: ``name`` is not one of the repositories.
        """
        if name not in self.depends:
            raise KeyError(f"no repository named {name!r}; known: {', '.join(self.order)}")
        for bundle in self.bundles:
            if name in bundle:
                return list(bundle)
        return [name]


def order_repositories(depends: dict[str, set[str]], *, allow_cycles: bool) -> RepoOrder:
    """Order the repositories ``depends`` names (name -> the names it depends on).

    Every key is a repository; every value must be a key.

    Raises:
        ValueError: a dependency names no repository, or a repository depends on itself.
        RepoCycleError: the dependencies have a cycle and ``allow_cycles`` is false.
    """
    names = sorted(depends)
    for name in names:
        unknown = sorted(set(depends[name]) - set(depends))
        if unknown:
            raise ValueError(
                f"repository {name!r} depends on {', '.join(map(repr, unknown))}, which is not "
                f"a repository of this change (known: {', '.join(names)}); fix depends_on")
        if name in depends[name]:
            raise ValueError(f"repository {name!r} lists itself in depends_on; remove it")
    edges = sorted((name, up) for name in names for up in depends[name])
    graph = DependencyGraph(root="", files=names, edges=edges)
    bundles = graph.components()
    if bundles and not allow_cycles:
        raise RepoCycleError(graph.cycles())
    batches = graph.batches()
    bundle_by_name = {name: bundle for bundle in bundles for name in bundle}
    order: list[str] = []
    for batch in batches:
        units = sorted({tuple(bundle_by_name.get(name, [name])) for name in batch})
        for unit in units:
            order.extend(unit)
    return RepoOrder(order=order, batches=batches, bundles=bundles,
                     depends={name: sorted(depends[name]) for name in names})


def manifest_dependencies(repos: dict[str, Path]) -> dict[str, set[str]]:
    """For each named repository (name -> top folder), the other named repositories its
    manifests point at by path (see the module docstring for which entries count).

    Every name is a key of the result (an empty set when its manifests name none or it has
    no manifest).

    Raises:
        ValueError: a top folder does not exist, or a manifest cannot be read or parsed, or
            a field it reads has the wrong type (the message names the file).
    """
    tops: dict[str, Path] = {}
    for name, top in repos.items():
        path = Path(top).expanduser()
        if not path.is_dir():
            raise ValueError(f"repository {name!r}: folder {top} does not exist")
        tops[name] = path.resolve()
    result: dict[str, set[str]] = {}
    for name, top in tops.items():
        found: set[str] = set()
        for target in _manifest_targets(top, tops):
            owner = _owner(target, tops)
            if owner is not None and owner != name:
                found.add(owner)
        result[name] = found
    return result


def _owner(path: Path, tops: dict[str, Path]) -> str | None:
    """The repository whose top is ``path`` or contains it (the deepest one), if any."""
    best: tuple[int, str] | None = None
    for name, top in tops.items():
        if path == top or top in path.parents:
            depth = len(top.parts)
            if best is None or depth > best[0]:
                best = (depth, name)
    return best[1] if best else None


def _manifest_targets(top: Path, tops: dict[str, Path]) -> Iterator[Path]:
    """Every resolved path the repository at ``top``'s manifests point at."""
    pyproject = top / "pyproject.toml"
    if pyproject.is_file():
        yield from _pyproject_targets(pyproject, tops)
    package = top / "package.json"
    if package.is_file():
        data = _read_json(package)
        yield from _package_targets(package, data)
        globs = _workspace_globs(package, data)
        yield from _workspace_targets(top, globs, tops, _member_json)


def _member_json(member: Path) -> Iterator[Path]:
    manifest = member / "package.json"
    if manifest.is_file():
        yield from _package_targets(manifest, _read_json(manifest))


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise ValueError(f"cannot read manifest {path}: {exc}") from exc
    if not isinstance(data, dict):
        raise ValueError(f"cannot read manifest {path}: not a JSON object")
    return data


def _package_targets(path: Path, data: dict[str, Any]) -> Iterator[Path]:
    for section in _JS_SECTIONS:
        deps = data.get(section)
        if deps is None:
            continue
        if not isinstance(deps, dict):
            raise ValueError(f"manifest {path}: {section!r} must be an object of "
                             f"name: version, got {type(deps).__name__}")
        for spec in deps.values():
            if isinstance(spec, str) and spec.startswith(_JS_PATH_PREFIXES):
                yield _resolve(path.parent, spec.split(":", 1)[1])


def _workspace_globs(path: Path, data: dict[str, Any]) -> list[str]:
    spaces = data.get("workspaces")
    if isinstance(spaces, dict):
        spaces = spaces.get("packages")
    if spaces is None:
        return []
    if not isinstance(spaces, list) or not all(isinstance(p, str) for p in spaces):
        raise ValueError(f"manifest {path}: 'workspaces' must be a list of folder globs "
                         "(or {\"packages\": [...]})")
    return spaces


def _workspace_targets(top: Path, globs: list[str], tops: dict[str, Path],
                       read_member: Callable[[Path], Iterator[Path]]) -> Iterator[Path]:
    """Other repositories' tops matched by ``globs``, then what the members inside ``top``
    point at (``read_member(folder)``)."""
    include = [glob_regex("", p) for p in globs if not p.startswith("!")]
    exclude = [glob_regex("", p[1:]) for p in globs if p.startswith("!")]

    def wanted(rel: str) -> bool:
        return (any(r.fullmatch(rel) for r in include)
                and not any(r.fullmatch(rel) for r in exclude))

    for other in tops.values():
        if other != top and wanted(Path(os.path.relpath(other, top)).as_posix()):
            yield other
    for pattern in globs:
        if pattern.startswith("!") or pattern.strip() in ("", ".", "./"):
            continue
        for member in sorted(top.glob(pattern.strip().rstrip("/"))):
            member = member.resolve()
            if (member.is_dir() and top in member.parents
                    and "node_modules" not in member.relative_to(top).parts
                    and wanted(member.relative_to(top).as_posix())):
                yield from read_member(member)


def _pyproject_targets(path: Path, tops: dict[str, Path]) -> Iterator[Path]:
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ValueError(f"cannot read manifest {path}: {exc}") from exc
    base = path.parent
    project = _table(data, "project", path)
    yield from _requirement_targets(
        base, _strings(project.get("dependencies"), path, "project.dependencies"), path)
    for group, reqs in _table(project, "optional-dependencies", path).items():
        yield from _requirement_targets(
            base, _strings(reqs, path, f"project.optional-dependencies.{group}"), path)
    for group, reqs in _table(data, "dependency-groups", path).items():
        # PEP 735 groups may also hold {include-group = "..."} tables: skip those.
        yield from _requirement_targets(
            base, [r for r in _list(reqs, path, f"dependency-groups.{group}")
                   if isinstance(r, str)], path)
    tool = _table(data, "tool", path)
    uv = _table(tool, "uv", path)
    for dep, source in _table(uv, "sources", path).items():
        yield from _path_tables(base, source, path, f"tool.uv.sources.{dep}")
    members = _strings(_table(uv, "workspace", path).get("members"), path,
                       "tool.uv.workspace.members")
    yield from _workspace_targets(base, members, tops,
                                  lambda member: _member_pyproject(member, tops))
    poetry = _table(tool, "poetry", path)
    sections = [("tool.poetry.dependencies", _table(poetry, "dependencies", path)),
                ("tool.poetry.dev-dependencies", _table(poetry, "dev-dependencies", path))]
    for group, table in _table(poetry, "group", path).items():
        if isinstance(table, dict):
            sections.append((f"tool.poetry.group.{group}.dependencies",
                             _table(table, "dependencies", path)))
    for where, table in sections:
        for dep, spec in table.items():
            if isinstance(spec, dict | list):
                yield from _path_tables(base, spec, path, f"{where}.{dep}")
    pdm = _table(tool, "pdm", path)
    for group, reqs in _table(pdm, "dev-dependencies", path).items():
        yield from _requirement_targets(
            base, _strings(reqs, path, f"tool.pdm.dev-dependencies.{group}"), path)


def _member_pyproject(member: Path, tops: dict[str, Path]) -> Iterator[Path]:
    manifest = member / "pyproject.toml"
    if manifest.is_file():
        yield from _pyproject_targets(manifest, tops)


def _table(data: dict[str, Any], key: str, path: Path) -> dict[str, Any]:
    value = data.get(key, {})
    if not isinstance(value, dict):
        raise ValueError(f"manifest {path}: {key!r} must be a table, got {type(value).__name__}")
    return value


def _list(value: Any, path: Path, where: str) -> list[Any]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise ValueError(f"manifest {path}: {where} must be a list, got {type(value).__name__}")
    return value


def _strings(value: Any, path: Path, where: str) -> list[str]:
    items = _list(value, path, where)
    if not all(isinstance(item, str) for item in items):
        raise ValueError(f"manifest {path}: {where} must be a list of strings")
    return items


def _path_tables(base: Path, spec: Any, path: Path, where: str) -> Iterator[Path]:
    """``{path = ...}`` tables (one, or a list of them with markers)."""
    for item in spec if isinstance(spec, list) else [spec]:
        if not isinstance(item, dict):
            continue
        target = item.get("path")
        if target is None:
            continue
        if not isinstance(target, str):
            raise ValueError(f"manifest {path}: {where}.path must be a string")
        yield _resolve(base, target)


def _requirement_targets(base: Path, requirements: Iterable[str], path: Path) -> Iterator[Path]:
    for requirement in requirements:
        text = requirement.strip()
        if text.startswith("-e "):  # PDM editable: "-e file:///${PROJECT_ROOT}/../x#egg=x"
            url = text[3:].strip().split("#", 1)[0]
            target = _file_url(base, url) if url.startswith("file:") else (
                _resolve(base, url) if "://" not in url else None)
        else:
            match = _PEP508_URL.match(text)
            target = (_file_url(base, match["url"])
                      if match and match["url"].startswith("file:") else None)
        if target is not None:
            yield target


def _file_url(base: Path, url: str) -> Path | None:
    """A ``file:`` URL as a path: ``file:../x`` (relative), ``file:///abs``,
    ``file://localhost/abs``, ``file:///${PROJECT_ROOT}/x`` (PDM); None for another
    host's share (no repository here)."""
    url = url.replace("${PROJECT_ROOT}", base.as_posix().lstrip("/"))
    parts = urlsplit(url)
    if parts.netloc not in ("", "localhost"):
        return None
    return _resolve(base, unquote(parts.path))


def _resolve(base: Path, target: str) -> Path:
    return (base / Path(target).expanduser()).resolve()
