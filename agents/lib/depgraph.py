"""Import-dependency analysis for Python, JavaScript and TypeScript repositories.

:func:`analyze` parses every source file of a repository (or only a plan's files) with real
parsers -- :func:`ast.parse` for Python, tree-sitter for JavaScript / TypeScript -- resolves
each import to a file of the repository and returns a :class:`DependencyGraph`: the files,
the ``(importer, imported)`` edges, and on demand every elementary cycle, the strongly
connected components, topological batches, the critical path and priorities.

The module is a pure library: it reads files, never imports or executes the analyzed code,
and depends on nothing else of the project.

Python resolution
    A file's module name comes from its path relative to the repository root
    (``a/b/c.py`` is ``a.b.c``, ``a/b/__init__.py`` is ``a.b``) and, when the repository
    uses a ``src/`` layout (a ``src`` folder without ``__init__.py``), also from its path
    relative to ``src/``.  For an absolute import the first of those roots that holds the
    top-level name (``a.py`` or a folder ``a`` containing Python files) decides; a package
    (``a/b/__init__.py``) wins over a module of the same name (``a/b.py``), as in Python.

    * ``import a.b.c`` depends on ``a.b.c`` or, when that does not exist, on its longest
      existing prefix module (the specifier is then also listed as unresolved).  It also
      executes ``a/__init__.py`` and ``a/b/__init__.py``, but NO edges are added to those
      parent packages: every file of a package would otherwise depend on its
      ``__init__.py``, which usually imports the package's modules, turning every package
      into one big cycle and the batches into noise.
    * ``from a.b import c`` depends on the submodule ``a.b.c`` when it exists, else on
      ``a.b`` itself (``a/b/__init__.py`` or ``a/b.py``); ``from a.b import *`` on ``a.b``.
    * Relative imports (``from . import x``, ``from .mod import y``, ``from ..pkg import z``)
      are resolved from the importer's folder (an ``__init__.py`` is its own package), one
      folder up per extra dot, with the same submodule-or-package rule.  So
      ``from . import name`` in a package's ``__init__.py``, ``name`` not being a
      submodule, is a self-import (a self-edge, reported as a cycle), like ``import m``
      in ``m.py``.
    * Only the root (and ``src/``) count as import roots: a script's own folder, which
      Python (and pytest's default import mode) puts on ``sys.path``, is not searched --
      a folder without ``__init__.py`` may just as well be a namespace package, where
      ``import typing`` next to a ``typing.py`` means the standard library.
    * Extension modules and stubs (``.so``, ``.pyd``, ``.pyi``) satisfy imports without
      an edge (they are not analyzed files).
    * Imports anywhere in the file count: inside functions, classes, ``try`` and
      ``if TYPE_CHECKING:`` blocks.  ``importlib.import_module``/``__import__`` calls do not.
    * Names outside the repository (standard library, third-party) are ignored.  An import
      whose top-level name IS in the repository but that matches no file, and a relative
      import that matches no file, are listed in :attr:`DependencyGraph.unresolved`.

JavaScript / TypeScript resolution
    Specifiers are taken from ``import ... from "s"``, ``import "s"``, ``import type``,
    ``export ... from "s"``, ``export * from "s"``, TypeScript's ``import x = require("s")``,
    ``require("s")`` and dynamic / type-level ``import("s")`` whose single argument is a
    string literal or a template literal without substitutions (computed ones are ignored).

    * Relative specifiers (``./``, ``../``, ``.``, ``..``) resolve against the importer's
      folder: the exact file, then the specifier plus each of ``.ts .tsx .d.ts .js .jsx
      .mjs .cjs``, then ``<dir>/index.<ext>`` in the same order.  A ``.js`` / ``.jsx``
      specifier may name the TypeScript source (``./a.js`` -> ``a.ts`` or ``a.tsx``;
      TypeScript importers try that first, as ``tsc`` does).  An exact match on
      a non-source file (``./styles.css``, ``./data.json``) satisfies the import without an
      edge.  Nothing matching -> unresolved.  A specifier leaving the repository is ignored.
    * Bare specifiers use the nearest ``tsconfig.json`` (else ``jsconfig.json``) in the
      importer's folder or above, up to the repository root, following relative
      ``extends``.  ``compilerOptions.paths`` is tried first -- an exact key, else the
      ``*`` pattern with the longest matching prefix (TypeScript's rule), its targets in
      order, relative to ``baseUrl`` (default: the folder of the config defining
      ``paths``) -- then ``baseUrl`` itself.  A bare specifier that matched a ``paths``
      pattern other than a lone ``*`` but no file is unresolved; any other unmatched bare
      specifier is an npm package or a Node built-in and is ignored.  Configs may contain
      comments and trailing commas.

Errors
    A file that does not parse never aborts the analysis; it is recorded in
    :attr:`DependencyGraph.errors`.  A Python file with a syntax error contributes no
    imports; a JavaScript / TypeScript file still contributes what tree-sitter recovered.
"""

from __future__ import annotations

import ast
import gc
import json
import math
import os
import posixpath
import threading
import warnings
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

from orchestrator.agents.lib.pyparse import PARSE_LOCK

__all__ = [
    "DEFAULT_EXCLUDES",
    "SUFFIXES",
    "DependencyGraph",
    "analyze",
    "patch_additions",
]

SUFFIXES: tuple[str, ...] = (".py", ".js", ".jsx", ".ts", ".tsx", ".mjs", ".cjs")
"""File suffixes analyzed (Python, JavaScript and TypeScript sources)."""

DEFAULT_EXCLUDES: frozenset[str] = frozenset(
    {".git", "node_modules", "__pycache__", ".venv", "venv", ".tox", "build", "dist"}
)
"""Names of folders (or files) skipped by the repository walk; hidden folders always are."""

# Probing order for extension-less JS/TS specifiers (TypeScript's, then Node's).
_PROBE_EXTS = (".ts", ".tsx", ".d.ts", ".js", ".jsx", ".mjs", ".cjs")
# A JavaScript-extension specifier may name a TypeScript source (ESM convention).
_TS_FOR_JS = {".js": (".ts", ".tsx"), ".jsx": (".tsx",), ".mjs": (), ".cjs": ()}
_CONFIG_NAMES = ("tsconfig.json", "jsconfig.json")
# Python modules without source: extension modules and stubs.  They satisfy imports (no
# edge, not unresolved), their submodules included since they cannot be known.
_NATIVE_SUFFIXES = frozenset({".so", ".pyd", ".pyi"})
_EXTENDS_DEPTH = 8
# Work bound of the cycle search (node + edge visits, 1-2 s): Johnson's algorithm costs
# O(files + edges) per cycle, so a huge component with few cycles per file (a long chain of
# files importing both neighbours) would otherwise take minutes to yield ``limit`` cycles.
_CYCLE_BUDGET = 3_000_000

_GC_LOCK = threading.Lock()
_gc_pausers = 0
_gc_was_enabled = False


# --------------------------------------------------------------------------------------
# The graph
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DependencyGraph:
    """Files and import edges of a repository, with graph algorithms on top.

    Attributes:
        root: absolute path of the repository.
        files: repository-relative POSIX paths analyzed, sorted.
        edges: ``(importer, imported)`` pairs, both in :attr:`files`, sorted and unique.  A
            self-edge only when a file imports itself.
        unresolved: importer -> sorted import specifiers that point inside the repository
            (relative imports; Python names whose top-level package is in the repository;
            TypeScript ``paths`` aliases) but match no file.  External modules (standard
            library, third-party, npm packages) are never listed.
        errors: file -> message for files that could not be read or parsed (see
            :func:`analyze`).

    Edges go from a file to what it needs: "dependencies" of ``f`` are the files ``f``
    imports, its "dependents" the files importing ``f``.  Constructing a graph directly
    (for tests or synthetic plans) is allowed; edges must reference :attr:`files`.
    """

    root: str
    files: list[str]
    edges: list[tuple[str, str]]
    unresolved: dict[str, list[str]] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        known = set(self.files)
        for importer, imported in self.edges:
            if importer not in known or imported not in known:
                raise ValueError(f"edge ({importer!r}, {imported!r}) names a file not in files")

    # -- adjacency -----------------------------------------------------------------------

    @cached_property
    def _order(self) -> list[str]:
        return sorted(set(self.files))

    @cached_property
    def _index(self) -> dict[str, int]:
        return {name: i for i, name in enumerate(self._order)}

    @cached_property
    def _succ(self) -> list[list[int]]:
        index = self._index
        succ: list[set[int]] = [set() for _ in self._order]
        for importer, imported in self.edges:
            succ[index[importer]].add(index[imported])
        return [sorted(s) for s in succ]

    @cached_property
    def _pred(self) -> list[list[int]]:
        pred: list[list[int]] = [[] for _ in self._order]
        for node, targets in enumerate(self._succ):
            for target in targets:
                pred[target].append(node)
        return pred  # ascending, since nodes are visited in order

    @cached_property
    def _sccs(self) -> tuple[list[list[int]], list[int]]:
        """Strongly connected components, dependencies first, and each node's component."""
        comps = _tarjan(len(self._order), self._succ)
        comp_of = [0] * len(self._order)
        for c, members in enumerate(comps):
            for node in members:
                comp_of[node] = c
        return comps, comp_of

    def _key(self, path: str | os.PathLike[str]) -> int | None:
        name = Path(path).as_posix() if not isinstance(path, str) else path
        name = posixpath.normpath(name.replace("\\", "/")) if name else name
        return self._index.get(name)

    def dependencies(self, path: str | os.PathLike[str]) -> list[str]:
        """The files ``path`` imports, sorted.

        ``path`` is repository-relative (``./`` and backslashes are normalized); a path
        that is not in :attr:`files` (a README, an excluded folder) has none.
        """
        key = self._key(path)
        return [] if key is None else [self._order[i] for i in self._succ[key]]

    def dependents(self, path: str | os.PathLike[str]) -> list[str]:
        """The files importing ``path``, sorted; none for a path not in :attr:`files`."""
        key = self._key(path)
        return [] if key is None else [self._order[i] for i in self._pred[key]]

    # -- cycles --------------------------------------------------------------------------

    def cycles(self, limit: int = 1000) -> list[list[str]]:
        """Every elementary cycle (Johnson's algorithm), at most ``limit`` of them.

        Each cycle lists its files in import order (each imports the next, the last imports
        the first), rotated to start at its smallest path; the list is sorted.  A file
        importing itself is the cycle ``[file]``.  When there are more than ``limit``
        cycles (see :meth:`to_dict`'s ``cycles_truncated``) the ones returned are the first
        found: self-loops first, then by ascending smallest file -- deterministic, but not
        the ``limit`` smallest in sort order.  The search also stops after a bounded amount
        of work (a few million steps, 1-2 s; only reached by huge components with few
        cycles per file, e.g. a chain of thousands of files each importing both
        neighbours), which likewise sets ``cycles_truncated``; :meth:`components` is
        always complete.
        """
        return self._cycles(limit)[0]

    def _cycles(self, limit: int) -> tuple[list[list[str]], bool]:
        if limit < 0:
            raise ValueError(f"limit must be >= 0, got {limit}")
        found, exhausted = _johnson(self._succ, self._sccs[0], limit + 1)
        truncated = exhausted or len(found) > limit
        order = self._order
        return sorted([order[i] for i in cycle] for cycle in found[:limit]), truncated

    def components(self) -> list[list[str]]:
        """Strongly connected components with a cycle (size > 1, or a self-import).

        Each is sorted; the list is sorted.  Files of one component import each other
        directly or indirectly and can only be changed (or understood) together.
        """
        comps, _ = self._sccs
        succ, order = self._succ, self._order
        out = [
            sorted(order[i] for i in members)
            for members in comps
            if len(members) > 1 or members[0] in succ[members[0]]
        ]
        return sorted(out)

    # -- ordering ------------------------------------------------------------------------

    @cached_property
    def _comp_deps(self) -> list[list[int]]:
        """For each component, the distinct OTHER components it depends on."""
        comps, comp_of = self._sccs
        succ = self._succ
        deps: list[list[int]] = []
        for c, members in enumerate(comps):
            seen: set[int] = set()
            for node in members:
                for target in succ[node]:
                    tc = comp_of[target]
                    if tc != c:
                        seen.add(tc)
            deps.append(sorted(seen))
        return deps

    def batches(self) -> list[list[str]]:
        """Topological levels: files of batch ``k`` import only files of batches ``< k``
        (or of their own cycle).

        ``batch(f) = 0`` when ``f`` imports nothing, else ``1 + max(batch(d))`` over its
        dependencies ``d`` -- the earliest round in which ``f`` can be done if every batch
        is done in parallel.  The files of a cycle (a strongly connected component) share
        one batch, computed on the condensation.  Each batch is sorted.
        """
        comps, _ = self._sccs
        level = [0] * len(comps)
        for c, deps in enumerate(self._comp_deps):  # dependencies come first
            if deps:
                level[c] = 1 + max(level[d] for d in deps)
        out: list[list[str]] = [[] for _ in range(max(level, default=-1) + 1)]
        for c, members in enumerate(comps):
            out[level[c]].extend(self._order[i] for i in members)
        return [sorted(batch) for batch in out]

    def _comp_weights(self, weights: Mapping[str, float] | None) -> list[float]:
        comps, _ = self._sccs
        if weights is None:
            return [float(len(members)) for members in comps]
        checked: dict[str, float] = {}
        for name, value in weights.items():
            try:
                number = float(value)
            except (TypeError, ValueError):
                number = math.nan
            if not math.isfinite(number) or number < 0:
                raise ValueError(f"weight of {name!r} must be a finite number >= 0, got {value!r}")
            checked[name] = number
        order = self._order
        return [sum(checked.get(order[i], 1.0) for i in members) for members in comps]

    def critical_path(
        self, weights: Mapping[str, float] | None = None
    ) -> tuple[list[str], float]:
        """The heaviest dependency chain, dependency first, and its weight.

        A file weighs ``weights[file]`` (default 1; files missing from ``weights`` weigh 1;
        weights must be finite and >= 0).  The chain is computed on the condensation: a
        cycle counts as one step weighing the sum of its files, which appear together
        (sorted) in the returned list.  Ties are broken deterministically, from the last
        step back: among equally heavy candidates (for the chain's end, then for each
        step's dependency) the component with the smallest file wins.  An empty graph
        gives ``([], 0.0)``.
        """
        comps, _ = self._sccs
        if not comps:
            return [], 0.0
        cweight = self._comp_weights(weights)
        first = [min(members) for members in comps]  # node indices follow path order
        dist = [0.0] * len(comps)
        best: list[int | None] = [None] * len(comps)
        for c, deps in enumerate(self._comp_deps):
            pick: int | None = None
            for d in deps:
                if pick is None or (dist[d], -first[d]) > (dist[pick], -first[pick]):
                    pick = d
            best[c] = pick
            dist[c] = cweight[c] + (dist[pick] if pick is not None else 0.0)
        end = max(range(len(comps)), key=lambda c: (dist[c], -first[c]))
        chain: list[int] = []
        cur: int | None = end
        while cur is not None:
            chain.append(cur)
            cur = best[cur]
        chain.reverse()
        order = self._order
        files = [name for c in chain for name in sorted(order[i] for i in comps[c])]
        return files, dist[end]

    def priorities(self, weights: Mapping[str, float] | None = None) -> dict[str, float]:
        """Scheduling priority of each file: the weight of the heaviest chain it starts.

        ``priority(f) = weight(f) + max(priority(g))`` over the files ``g`` importing ``f``
        (on the condensation, like :meth:`critical_path`), i.e. how much work at most still
        waits on ``f``.  Start the highest first; the first file of the critical path has
        the critical path's weight.  Keys follow :attr:`files` order.
        """
        comps, comp_of = self._sccs
        cweight = self._comp_weights(weights)
        dependents: list[set[int]] = [set() for _ in comps]
        for c, deps in enumerate(self._comp_deps):
            for d in deps:
                dependents[d].add(c)
        prio = [0.0] * len(comps)
        for c in range(len(comps) - 1, -1, -1):  # dependents come later in Tarjan order
            prio[c] = cweight[c] + max((prio[u] for u in dependents[c]), default=0.0)
        return {name: prio[comp_of[i]] for i, name in enumerate(self._order)}

    def to_dict(
        self, *, cycle_limit: int = 1000, weights: Mapping[str, float] | None = None
    ) -> dict[str, Any]:
        """A JSON-ready summary.

        Keys: ``root``, ``files``, ``edges`` (``[[importer, imported], ...]``), ``cycles``
        (at most ``cycle_limit``), ``cycles_truncated`` (more cycles exist), ``components``,
        ``batches``, ``critical_path`` (``{"files": [...], "weight": w}``), ``priorities``,
        ``unresolved`` and ``errors``.  ``weights`` is passed to :meth:`critical_path` and
        :meth:`priorities`.
        """
        cycles, truncated = self._cycles(cycle_limit)
        path, weight = self.critical_path(weights)
        return {
            "root": self.root,
            "files": list(self._order),
            "edges": [[a, b] for a, b in sorted(set(self.edges))],
            "cycles": cycles,
            "cycles_truncated": truncated,
            "components": self.components(),
            "batches": self.batches(),
            "critical_path": {"files": path, "weight": weight},
            "priorities": self.priorities(weights),
            "unresolved": {k: list(v) for k, v in sorted(self.unresolved.items())},
            "errors": dict(sorted(self.errors.items())),
        }


def _tarjan(n: int, succ: list[list[int]]) -> list[list[int]]:
    """Iterative Tarjan: SCCs in reverse topological order (a component after its targets)."""
    index = [-1] * n
    low = [0] * n
    on_stack = [False] * n
    stack: list[int] = []
    comps: list[list[int]] = []
    counter = 0
    for start in range(n):
        if index[start] != -1:
            continue
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack[start] = True
        work = [(start, iter(succ[start]))]
        while work:
            node, it = work[-1]
            for target in it:
                if index[target] == -1:
                    index[target] = low[target] = counter
                    counter += 1
                    stack.append(target)
                    on_stack[target] = True
                    work.append((target, iter(succ[target])))
                    break
                if on_stack[target] and index[target] < low[node]:
                    low[node] = index[target]
            else:
                work.pop()
                if work:
                    parent = work[-1][0]
                    if low[node] < low[parent]:
                        low[parent] = low[node]
                if low[node] == index[node]:
                    members: list[int] = []
                    while True:
                        member = stack.pop()
                        on_stack[member] = False
                        members.append(member)
                        if member == node:
                            break
                    comps.append(sorted(members))
    return comps


def _johnson(
    succ: list[list[int]], comps: list[list[int]], limit: int, budget: int | None = None
) -> tuple[list[list[int]], bool]:
    """Elementary cycles (Johnson 1975), each starting at its smallest node.

    Self-loops come first.  Then, as in networkx's ``simple_cycles``, the search runs on one
    strongly connected component at a time from its smallest node, which is removed
    afterwards (its cycles are all found) before the rest is split into components again.
    Components are processed by ascending smallest node.  Stops after ``limit`` cycles or
    about ``budget`` node and edge visits; returns (cycles, stopped by the budget).
    """
    import heapq

    budget = _CYCLE_BUDGET if budget is None else budget
    found: list[list[int]] = [[node] for node in range(len(succ)) if node in succ[node]]
    if len(found) >= limit:
        return found[:limit], False
    heap = [(members[0], members) for members in comps if len(members) > 1]
    heapq.heapify(heap)
    spent = 0
    while heap:
        start, members = heapq.heappop(heap)
        spent += 2 * len(members)  # adjacency below + the split afterwards
        if spent > budget:
            return found, True
        inside = set(members)
        adj = {node: [t for t in succ[node] if t in inside and t != node] for node in members}
        path = [start]
        blocked = {start}
        closed: set[int] = set()
        block_map: dict[int, set[int]] = {}
        work = [(start, iter(adj[start]))]
        while work:
            node, it = work[-1]
            for target in it:
                if target == start:
                    found.append(list(path))
                    if len(found) >= limit:
                        return found, False
                    closed.update(path)
                elif target not in blocked:
                    spent += 1 + len(adj[target])
                    if spent > budget:
                        return found, True
                    path.append(target)
                    work.append((target, iter(adj[target])))
                    closed.discard(target)
                    blocked.add(target)
                    break
            else:
                if node in closed:
                    pending = [node]
                    while pending:  # unblock
                        item = pending.pop()
                        if item in blocked:
                            blocked.discard(item)
                            pending.extend(block_map.pop(item, ()))
                else:
                    for target in adj[node]:
                        block_map.setdefault(target, set()).add(node)
                work.pop()
                path.pop()
        rest = [node for node in members if node != start]
        sub_index = {node: i for i, node in enumerate(rest)}
        sub_succ = [[sub_index[t] for t in adj[node] if t != start] for node in rest]
        for sub in _tarjan(len(rest), sub_succ):
            if len(sub) > 1:
                nodes = sorted(rest[i] for i in sub)
                heapq.heappush(heap, (nodes[0], nodes))
    return found, False


# --------------------------------------------------------------------------------------
# Analysis
# --------------------------------------------------------------------------------------


@dataclass
class _Repo:
    """What the walk found, plus overrides: the universe imports resolve against."""

    root: Path
    sources: set[str]  # source files (SUFFIXES) -- import targets
    existing: set[str]  # every file, sources included (non-source ones satisfy JS imports)
    py_dirs: set[str]  # folders holding Python files at any depth ("" is the root)
    natives: set[str]  # modules without Python source ("pkg/_speedups" for .so/.pyd/.pyi)
    configs: dict[str, str]  # folder -> its tsconfig.json / jsconfig.json path
    overrides: Mapping[str, str]
    py_roots: tuple[str, ...] = ("",)
    config_cache: dict[str, _TsConfig | None] = field(default_factory=dict)
    js_cache: dict[tuple[str, bool, str], str | None] = field(default_factory=dict)
    py_cache: dict[tuple[str, int, str, tuple[str, ...] | None],
                   tuple[tuple[str, ...], tuple[str, ...]]] = field(default_factory=dict)
    dir_config: dict[str, _TsConfig | None] = field(default_factory=dict)


@dataclass(frozen=True)
class _TsConfig:
    base_url: str | None  # repository-relative folder ("" for the root), None if unset
    paths: tuple[tuple[str, tuple[str, ...]], ...]  # pattern -> targets, as written
    paths_dir: str  # folder of the config defining ``paths``: their base without baseUrl

    def target_base(self) -> str:
        return self.base_url if self.base_url is not None else self.paths_dir


def analyze(
    root: str | os.PathLike[str],
    *,
    paths: Iterable[str] | None = None,
    overrides: Mapping[str, str] | None = None,
    additions: Mapping[str, str] | None = None,
    exclude: Iterable[str] = DEFAULT_EXCLUDES,
) -> DependencyGraph:
    """Analyze the imports of a repository (or of a plan's files) into a DependencyGraph.

    Args:
        root: the repository folder.  Imports resolve against every source file found
            under it (see the module docstring for the rules), skipping folders whose name
            is in ``exclude`` or starts with ``"."``; symlinked folders are not followed.
        paths: when given, only these repository-relative files are analyzed -- a plan's
            files.  :attr:`DependencyGraph.files` is then exactly these paths (any suffix;
            non-source files simply import nothing) and the edges are only those among
            them: imports of other repository files are satisfied (neither an edge nor
            unresolved).  Dependencies that pass through files outside ``paths`` are not
            followed.  A path that exists neither on disk nor in ``overrides`` is kept as
            a file without imports and reported in ``errors``.  The given paths are also
            import targets, even if they do not exist yet.
        overrides: repository-relative path -> source text used instead of the file on
            disk (which need not exist: a plan creating files).  Overridden files are
            import targets; a ``tsconfig.json`` / ``jsconfig.json`` may be overridden too.
            Without ``paths``, source files in ``overrides`` are analyzed with the
            repository's.
        additions: repository-relative path -> source lines a plan adds to the file (the
            ``+`` lines of a patch, see :func:`patch_additions`): their imports count as the
            file's, on top of its content (on disk or in ``overrides``).  They are fragments:
            each import statement in them is parsed on its own (indented or not), and what
            does not parse is ignored.  A file with additions is not "not found".
        exclude: folder (or file) names skipped by the walk.

    Python files are parsed one at a time in this thread, under a module lock (CPython
    3.11's ast.parse is not thread-safe) and with the cyclic garbage collector paused
    (process-wide, restored afterwards): about 2 s for 10,000 modules on 2 cores.  The
    repository walk reads no file content, so ``paths`` mode costs little more than
    parsing the plan's files.

    Raises:
        ValueError: ``root`` is not a folder, or a path in ``paths``/``overrides`` is
            absolute outside ``root`` or climbs out of it with ``..``.
    """
    root_path = Path(root)
    if not root_path.is_dir():
        raise ValueError(f"repository root {str(root)!r} is not a folder")
    root_path = root_path.resolve()
    norm_overrides = {_norm_rel(root_path, k): v for k, v in (overrides or {}).items()}
    plan = None if paths is None else sorted({_norm_rel(root_path, p) for p in paths})
    norm_additions = {_norm_rel(root_path, k): v for k, v in (additions or {}).items()}

    excluded = frozenset((exclude,) if isinstance(exclude, str) else exclude)
    repo = _walk(root_path, excluded, norm_overrides)
    for extra in (*norm_overrides, *(plan or ())):
        _add_file(repo, extra)
    if "src" in repo.py_dirs and "src/__init__.py" not in repo.sources:
        repo.py_roots = ("", "src/")

    errors: dict[str, str] = {}
    if plan is None:
        files = sorted(repo.sources)
    else:
        files = plan
        for rel in plan:
            if (rel not in norm_overrides and rel not in norm_additions
                    and not (root_path / rel).is_file()):
                errors[rel] = "file not found (neither on disk nor in overrides)"
    analyzed = [rel for rel in files if rel not in errors and posixpath.splitext(rel)[1] in SUFFIXES]

    texts = _read_all(repo, analyzed, errors)
    targets: dict[str, set[str]] = {}
    unresolved: dict[str, set[str]] = {}
    py = [(rel, data) for rel, data in texts if rel.endswith(".py")]
    js = [(rel, data) for rel, data in texts if not rel.endswith(".py")]
    for rel, records in _python_imports(py, errors):
        _resolve_python(repo, rel, records, targets.setdefault(rel, set()),
                        unresolved.setdefault(rel, set()))
    for rel, specs in _js_imports(js, errors):
        _resolve_js(repo, rel, specs, targets.setdefault(rel, set()),
                    unresolved.setdefault(rel, set()), errors)
    for rel, added in sorted(norm_additions.items()):
        if rel not in files or posixpath.splitext(rel)[1] not in SUFFIXES:
            continue
        if rel.endswith(".py"):
            _resolve_python(repo, rel, _python_fragment_imports(added),
                            targets.setdefault(rel, set()), unresolved.setdefault(rel, set()))
        else:  # tree-sitter recovers from fragments; their syntax errors are not the file's
            for _, specs in _js_imports([(rel, added.encode("utf-8", "surrogatepass"))], {}):
                _resolve_js(repo, rel, specs, targets.setdefault(rel, set()),
                            unresolved.setdefault(rel, set()), errors)

    keep = set(files)
    edges = [(a, b) for a in sorted(targets) for b in sorted(targets[a]) if b in keep]
    return DependencyGraph(
        root=str(root_path),
        files=files,
        edges=edges,
        unresolved={k: sorted(v) for k, v in sorted(unresolved.items()) if v},
        errors=dict(sorted(errors.items())),
    )


def _norm_rel(root: Path, path: str | os.PathLike[str]) -> str:
    text = os.fspath(path).replace("\\", "/")
    if posixpath.isabs(text) or os.path.isabs(text):
        try:
            text = Path(text).resolve().relative_to(root).as_posix()
        except ValueError:
            raise ValueError(f"path {os.fspath(path)!r} is outside the repository {str(root)!r}") from None
    norm = posixpath.normpath(text)
    if norm in (".", "") or norm == ".." or norm.startswith("../"):
        raise ValueError(f"path {os.fspath(path)!r} is outside the repository (or not a file)")
    return norm


def _add_file(repo: _Repo, rel: str) -> None:
    """Register a file that exists only in ``overrides`` / ``paths`` (as _walk would)."""
    repo.existing.add(rel)
    folder, name = posixpath.split(rel)
    if name in _CONFIG_NAMES and (name == "tsconfig.json" or folder not in repo.configs):
        repo.configs[folder] = rel
    suffix = posixpath.splitext(rel)[1]
    if suffix in SUFFIXES:
        repo.sources.add(rel)
    elif suffix in _NATIVE_SUFFIXES:
        repo.natives.add(posixpath.join(folder, name.split(".", 1)[0]))
    if suffix == ".py" or suffix in _NATIVE_SUFFIXES:
        while folder not in repo.py_dirs:
            repo.py_dirs.add(folder)
            if not folder:
                break
            folder = posixpath.dirname(folder)


def _walk(root: Path, exclude: frozenset[str], overrides: Mapping[str, str]) -> _Repo:
    sources: set[str] = set()
    existing: set[str] = set()
    py_dirs: set[str] = set()
    natives: set[str] = set()
    configs: dict[str, str] = {}
    pending = [("", os.fspath(root))]
    while pending:
        rel_dir, abs_dir = pending.pop()
        prefix = rel_dir + "/" if rel_dir else ""
        has_py = False
        try:
            entries = list(os.scandir(abs_dir))
        except OSError:
            continue
        for entry in entries:
            name = entry.name
            if name in exclude:
                continue
            try:
                if entry.is_dir(follow_symlinks=False):
                    if not name.startswith("."):
                        pending.append((prefix + name, entry.path))
                    continue
                if not entry.is_file():
                    continue
            except OSError:
                continue
            rel = prefix + name
            existing.add(rel)
            dot = name.rfind(".")
            suffix = name[dot:] if dot > 0 else ""
            if suffix in SUFFIXES:
                sources.add(rel)
                if suffix == ".py":
                    has_py = True
            elif suffix in _NATIVE_SUFFIXES:
                natives.add(prefix + name.split(".", 1)[0])
                has_py = True
            elif name in _CONFIG_NAMES and (name == "tsconfig.json" or rel_dir not in configs):
                configs[rel_dir] = rel
        if has_py:
            folder = rel_dir
            while folder not in py_dirs:
                py_dirs.add(folder)
                if not folder:
                    break
                folder = posixpath.dirname(folder)
    return _Repo(root=root, sources=sources, existing=existing, py_dirs=py_dirs,
                 natives=natives, configs=configs, overrides=overrides)


def _read_all(
    repo: _Repo, rels: list[str], errors: dict[str, str]
) -> list[tuple[str, bytes | str]]:
    """File contents: bytes from disk (ast.parse honours coding cookies), overrides as text
    for Python and UTF-8 for tree-sitter."""
    out: list[tuple[str, bytes | str]] = []
    base = os.fspath(repo.root)
    for rel in rels:
        text = repo.overrides.get(rel)
        if text is not None:
            out.append((rel, text if rel.endswith(".py")
                        else text.encode("utf-8", "surrogatepass")))
            continue
        try:
            out.append((rel, _read_bytes(os.path.join(base, rel))))
        except OSError as exc:
            errors[rel] = f"cannot read: {exc.strerror or exc}"
    return out


def _read_bytes(path: str) -> bytes:
    """A whole file, with raw os calls: twice as fast as open().read() for small files."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_BINARY", 0))
    try:
        chunks = []
        while True:
            chunk = os.read(fd, 1 << 16)
            if not chunk:
                break
            chunks.append(chunk)
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)
    finally:
        os.close(fd)


def _read_text(repo: _Repo, rel: str) -> str | None:
    text = repo.overrides.get(rel)
    if text is not None:
        return text
    try:
        return (repo.root / rel).read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError):
        return None


# -- Python ----------------------------------------------------------------------------

# An import record: (level, module, names) -- ``import a.b`` is (0, "a.b", None),
# ``from ..x import y, z`` is (2, "x", ("y", "z")).
_PyImport = tuple[int, str, tuple[str, ...] | None]


def _gc_pause() -> None:
    global _gc_pausers, _gc_was_enabled
    with _GC_LOCK:
        if _gc_pausers == 0:
            _gc_was_enabled = gc.isenabled()
            gc.disable()
        _gc_pausers += 1


def _gc_resume() -> None:
    global _gc_pausers
    with _GC_LOCK:
        _gc_pausers -= 1
        if _gc_pausers == 0 and _gc_was_enabled:
            gc.enable()


def _python_imports(
    files: list[tuple[str, bytes | str]], errors: dict[str, str]
) -> Iterable[tuple[str, list[_PyImport]]]:
    """Parse each file and yield its import records; syntax errors go to ``errors``.

    Trees are dropped as soon as their imports are extracted.  The cyclic garbage collector
    is paused meanwhile: ast.parse allocates many objects that all stay alive until the
    tree is dropped, so collections would only waste time (about a third of it).
    """
    if not files:
        return []
    out: list[tuple[str, list[_PyImport]]] = []
    _gc_pause()
    try:
        # warnings.catch_warnings is not thread-safe either: keep it under the lock.
        with PARSE_LOCK, warnings.catch_warnings():
            warnings.simplefilter("ignore")  # no SyntaxWarning noise from foreign code
            for rel, data in files:
                try:
                    tree = ast.parse(data, rel)
                except (SyntaxError, ValueError, RecursionError, MemoryError) as exc:
                    errors[rel] = _python_error(exc)
                    continue
                out.append((rel, _collect_python(tree)))
    finally:
        _gc_resume()
    return out


def patch_additions(patch: str, path: str) -> str:
    """The lines a unified diff adds to ``path`` (its ``+`` lines, without the ``+``).

    Hunks of other files are left out; a diff that names no file (a bare hunk) counts
    whole.  ``path`` is repository-relative; ``a/``/``b/`` prefixes in the diff are ignored.
    """
    wanted = path.replace("\\", "/").removeprefix("./")
    current: str | None = None
    out: list[str] = []
    for line in patch.splitlines():
        if line.startswith("+++ "):
            name = line[4:].split("\t", 1)[0].strip()
            if name.startswith(("a/", "b/")):
                name = name[2:]
            current = name
            continue
        if line.startswith("--- ") or line.startswith("diff --git "):
            continue
        if line.startswith("+") and (current is None or current == wanted):
            out.append(line[1:])
    return "".join(f"{line}\n" for line in out)


def _python_fragment_imports(text: str) -> list[_PyImport]:
    """Import statements found in lines that need not form a module (a patch's additions):
    each ``import``/``from`` statement is dedented and parsed alone, with its parenthesized
    or backslash-continued lines; anything that does not parse is skipped."""
    lines = text.splitlines()
    statements: list[str] = []
    i = 0
    while i < len(lines):
        first = lines[i].strip()
        i += 1
        if not first.startswith(("import ", "from ")):
            continue
        parts = [first]
        depth = first.count("(") - first.count(")")
        while (depth > 0 or parts[-1].endswith("\\")) and i < len(lines):
            nxt = lines[i].strip()
            i += 1
            parts.append(nxt)
            depth += nxt.count("(") - nxt.count(")")
        statements.append("\n".join(parts))
    out: list[_PyImport] = []
    if not statements:
        return out
    with PARSE_LOCK, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for statement in statements:
            for candidate in (statement, statement.partition(";")[0]):  # `import a; if x:`
                try:
                    tree = ast.parse(candidate)
                except (SyntaxError, ValueError, RecursionError, MemoryError):
                    continue
                out.extend(_collect_python(tree))
                break
    return out


def _python_error(exc: BaseException) -> str:
    if isinstance(exc, SyntaxError):
        msg = f"SyntaxError: {exc.msg or 'invalid syntax'}"
        if exc.lineno:
            msg += f" (line {exc.lineno})"
        return msg
    return f"{type(exc).__name__}: {exc}"


_NESTED_BODIES: dict[type, tuple[str, ...]] = {
    ast.FunctionDef: ("body",),
    ast.AsyncFunctionDef: ("body",),
    ast.ClassDef: ("body",),
    ast.If: ("body", "orelse"),
    ast.For: ("body", "orelse"),
    ast.AsyncFor: ("body", "orelse"),
    ast.While: ("body", "orelse"),
    ast.With: ("body",),
    ast.AsyncWith: ("body",),
    ast.Try: ("body", "orelse", "finalbody"),
    ast.TryStar: ("body", "orelse", "finalbody"),
}


def _collect_python(tree: ast.Module) -> list[_PyImport]:
    """Import statements anywhere in the module (statements only: expressions hold none)."""
    out: list[_PyImport] = []
    pending: list[list[ast.stmt]] = [tree.body]
    nested = _NESTED_BODIES
    import_type, from_type = ast.Import, ast.ImportFrom
    while pending:
        for node in pending.pop():
            kind = type(node)
            if kind is import_type:
                out.extend((0, alias.name, None) for alias in node.names)
            elif kind is from_type:
                out.append((node.level or 0, node.module or "",
                            tuple(alias.name for alias in node.names)))
            elif kind in nested:
                for attr in nested[kind]:
                    pending.append(getattr(node, attr))
                if kind is ast.Try or kind is ast.TryStar:
                    pending.extend(handler.body for handler in node.handlers)
            elif kind is ast.Match:
                pending.extend(case.body for case in node.cases)
    return out


def _py_module(repo: _Repo, folder: str) -> str | None:
    """The module file for a dotted name already turned into ``folder`` (``a/b``).

    ``""`` for a module without Python source (extension module, stub), None if none.
    """
    sources = repo.sources
    init = folder + "/__init__.py" if folder else "__init__.py"
    if init in sources:
        return init
    if folder and folder + ".py" in sources:
        return folder + ".py"
    if folder in repo.natives or folder + "/__init__" in repo.natives:
        return ""
    return None


def _py_join(prefix: str, parts: list[str]) -> str:
    tail = "/".join(parts)
    if not prefix:
        return tail
    return prefix + "/" + tail if tail else prefix


def _py_owner(repo: _Repo, top: str) -> str | None:
    """The root folder ("" or "src") an absolute name resolves in, None if external."""
    sources, py_dirs, natives = repo.sources, repo.py_dirs, repo.natives
    for base in repo.py_roots:
        name = base + top
        if name + ".py" in sources or name in py_dirs or name in natives:
            return base.rstrip("/")
    return None


def _resolve_python(
    repo: _Repo, rel: str, records: list[_PyImport], out: set[str], missing: set[str]
) -> None:
    own_dir = rel.rpartition("/")[0]
    cache = repo.py_cache
    for level, module, names in records:
        key = (own_dir if level else "", level, module, names)
        result = cache.get(key)
        if result is None:
            result = cache[key] = _resolve_python_import(repo, own_dir, level, module, names)
        out.update(result[0])
        missing.update(result[1])


def _resolve_python_import(
    repo: _Repo, own_dir: str, level: int, module: str, names: tuple[str, ...] | None
) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(files, unresolved specifiers) of one import statement in a file of ``own_dir``."""
    out: set[str] = set()
    missing: set[str] = set()
    parts = module.split(".") if module else []
    if level:
        folder = own_dir
        for _ in range(level - 1):
            if not folder:
                return (), ("." * level + module,)  # climbs out of the repository
            folder = posixpath.dirname(folder)
        prefix, label = folder, "." * level + module
    else:
        owner = _py_owner(repo, parts[0])
        if owner is None:
            return (), ()  # standard library or third-party
        prefix, label = owner, module
    if names is None:  # import a.b.c
        _py_longest(repo, prefix, parts, label, out, missing)
        return tuple(out), tuple(missing)
    base = _py_join(prefix, parts)
    base_module = _py_module(repo, base)
    for name in names:
        if name != "*":
            sub = _py_module(repo, base + "/" + name if base else name)
            if sub is not None:
                if sub:
                    out.add(sub)
                continue
        if base_module is not None:
            if base_module:
                out.add(base_module)
        elif base in repo.py_dirs:  # namespace package: only submodules importable
            missing.add(f"{label}.{name}" if label.strip(".") else label + name)
        else:
            _py_longest(repo, prefix, parts, label, out, missing)
    return tuple(out), tuple(missing)


def _py_longest(
    repo: _Repo, prefix: str, parts: list[str], label: str, out: set[str], missing: set[str]
) -> None:
    """Depend on the longest existing prefix module of ``parts``; note what is missing."""
    for k in range(len(parts), -1, -1):
        if k == 0 and parts:
            break  # the root folder itself is not a module (relative ``from . import`` is k=0)
        target = _py_module(repo, _py_join(prefix, parts[:k]))
        if target == "":
            return  # an extension module: its submodules are unknowable
        if target is not None:
            out.add(target)
            if k < len(parts):
                missing.add(label)
            return
    missing.add(label)


# -- JavaScript / TypeScript -----------------------------------------------------------

_QUERY_SOURCE = """
(import_statement source: (string) @s)
(export_statement source: (string) @s)
(call_expression function: (import) arguments: (arguments . [(string) (template_string)] @s .))
(call_expression function: (identifier) @f
  arguments: (arguments . [(string) (template_string)] @s .) (#eq? @f "require"))
"""
_TS_EXTRA_QUERY = "(import_require_clause source: (string) @s)"
_LANGS: dict[str, tuple[Any, Any]] = {}
_LANGS_LOCK = threading.Lock()


def _language(kind: str) -> tuple[Any, Any]:
    """(Language, Query) for "js", "ts" or "tsx", built once."""
    with _LANGS_LOCK:
        if kind not in _LANGS:
            import tree_sitter

            if kind == "js":
                import tree_sitter_javascript

                lang = tree_sitter.Language(tree_sitter_javascript.language())
                source = _QUERY_SOURCE
            else:
                import tree_sitter_typescript

                raw = (tree_sitter_typescript.language_typescript() if kind == "ts"
                       else tree_sitter_typescript.language_tsx())
                lang = tree_sitter.Language(raw)
                source = _QUERY_SOURCE + _TS_EXTRA_QUERY
            _LANGS[kind] = (lang, tree_sitter.Query(lang, source))
        return _LANGS[kind]


def _js_imports(
    files: list[tuple[str, bytes | str]], errors: dict[str, str]
) -> Iterable[tuple[str, list[str]]]:
    out: list[tuple[str, list[str]]] = []
    if not files:
        return out
    import tree_sitter

    parsers: dict[str, tuple[Any, Any]] = {}
    for rel, data in files:
        suffix = posixpath.splitext(rel)[1]
        kind = "ts" if suffix == ".ts" else "tsx" if suffix == ".tsx" else "js"
        if kind not in parsers:
            lang, query = _language(kind)
            parsers[kind] = (tree_sitter.Parser(lang), query)
        parser, query = parsers[kind]
        tree = parser.parse(data if isinstance(data, bytes) else data.encode())
        if tree.root_node.has_error:
            errors[rel] = _ts_error(tree.root_node)
        captures = tree_sitter.QueryCursor(query).captures(tree.root_node)
        specs = []
        for node in captures.get("s", ()):
            spec = _string_value(node)
            if spec is not None:
                specs.append(spec)
        out.append((rel, specs))
    return out


def _ts_error(root: Any) -> str:
    node = root
    while True:  # descend to the first erroneous leaf-most node
        for child in node.children:
            if child.is_error or child.is_missing or child.has_error:
                node = child
                break
        else:
            break
        if node.is_error or node.is_missing:
            break
    line = node.start_point[0] + 1
    if node.is_missing:
        return f"syntax error: missing {node.type!r} (line {line})"
    return f"syntax error (line {line})"


def _string_value(node: Any) -> str | None:
    """The value of a string / template literal node, None if it has substitutions."""
    text = node.text.decode("utf-8", "replace")
    if node.type == "template_string":
        if any(child.type == "template_substitution" for child in node.children):
            return None
    body = text[1:-1]
    return _unescape(body) if "\\" in body else body


def _unescape(body: str) -> str:
    out: list[str] = []
    i = 0
    while i < len(body):
        char = body[i]
        if char != "\\" or i + 1 == len(body):
            out.append(char)
            i += 1
            continue
        nxt = body[i + 1]
        try:
            if nxt == "u" and body[i + 2:i + 3] == "{":
                end = body.index("}", i)
                out.append(chr(int(body[i + 3:end], 16)))
                i = end + 1
                continue
            if nxt in "ux":
                width = 4 if nxt == "u" else 2
                out.append(chr(int(body[i + 2:i + 2 + width], 16)))
                i += 2 + width
                continue
        except ValueError:
            pass
        out.append({"n": "\n", "t": "\t", "r": "\r", "0": "\0"}.get(nxt, nxt))
        i += 2
    return "".join(out)


def _resolve_js(
    repo: _Repo, rel: str, specs: list[str], out: set[str], missing: set[str],
    errors: dict[str, str],
) -> None:
    folder = rel.rpartition("/")[0]
    is_ts = rel.endswith((".ts", ".tsx"))
    cache = repo.js_cache
    for spec in specs:
        key = (folder, is_ts, spec)
        found = cache.get(key, False)
        if found is False:
            found = cache[key] = _resolve_js_spec(repo, folder, is_ts, spec, errors)
        if found is None:
            missing.add(spec)
        elif found:
            out.add(found)


def _resolve_js_spec(
    repo: _Repo, folder: str, is_ts: bool, spec: str, errors: dict[str, str]
) -> str | None:
    """The file ``spec`` names from ``folder``; "" when satisfied without an edge (external,
    non-source file, computed away), None when unresolved."""
    if not spec:
        return ""
    if spec in (".", "..") or spec.startswith(("./", "../")):
        joined = posixpath.normpath(posixpath.join(folder, spec))
        if joined == ".." or joined.startswith("../"):
            return ""  # outside the repository
        return _probe(repo, "" if joined == "." else joined, spec.endswith("/"), is_ts)
    if spec.startswith("/") or ":" in spec.split("/", 1)[0]:
        return ""  # absolute path, URL or "node:fs"
    config = _config_for(repo, folder, errors)
    if config is None:
        return ""
    matched_alias = False
    match = _match_paths(config, spec)
    if match is not None:
        pattern, targets, star = match
        matched_alias = pattern != "*"
        base = config.target_base()
        for target in targets:
            candidate = posixpath.normpath(posixpath.join(base, target.replace("*", star, 1)))
            if candidate == ".." or candidate.startswith("../"):
                continue
            found = _probe(repo, "" if candidate == "." else candidate, False, is_ts)
            if found is not None:
                return found
    if config.base_url is not None:
        candidate = posixpath.normpath(posixpath.join(config.base_url, spec))
        if not (candidate == ".." or candidate.startswith("../")):
            found = _probe(repo, "" if candidate == "." else candidate, False, is_ts)
            if found is not None:
                return found
    return None if matched_alias else ""


def _probe(repo: _Repo, base: str, dir_only: bool, is_ts: bool) -> str | None:
    """The source file ``base`` names: "" for an existing non-source file, None if none."""
    sources = repo.sources
    if not dir_only and base:
        dot = base.rfind(".")
        ext = base[dot:] if dot > base.rfind("/") + 1 else ""
        swaps = tuple(base[:dot] + alt for alt in _TS_FOR_JS.get(ext, ()))
        if is_ts:
            for candidate in swaps:
                if candidate in sources:
                    return candidate
        if base in sources:
            return base
        if base in repo.existing:
            return ""
        for candidate_ext in _PROBE_EXTS:
            if base + candidate_ext in sources:
                return base + candidate_ext
        if not is_ts:
            for candidate in swaps:
                if candidate in sources:
                    return candidate
    index = base + "/index" if base else "index"
    for candidate_ext in _PROBE_EXTS:
        if index + candidate_ext in sources:
            return index + candidate_ext
    return None


def _match_paths(config: _TsConfig, spec: str) -> tuple[str, tuple[str, ...], str] | None:
    """TypeScript's rule: an exact key, else the wildcard key with the longest prefix."""
    best: tuple[str, tuple[str, ...], str] | None = None
    best_len = -1
    for pattern, targets in config.paths:
        if "*" not in pattern:
            if pattern == spec:
                return pattern, targets, ""
            continue
        head, _, tail = pattern.partition("*")
        if (len(spec) >= len(head) + len(tail) and spec.startswith(head)
                and spec.endswith(tail) and len(head) > best_len):
            best = (pattern, targets, spec[len(head):len(spec) - len(tail)])
            best_len = len(head)
    return best


def _config_for(repo: _Repo, folder: str, errors: dict[str, str]) -> _TsConfig | None:
    """The nearest tsconfig / jsconfig at or above ``folder`` (memoized per folder)."""
    chain: list[str] = []
    config: _TsConfig | None = None
    current = folder
    while True:
        if current in repo.dir_config:
            config = repo.dir_config[current]
            break
        chain.append(current)
        if current in repo.configs:
            config = _load_config(repo, repo.configs[current], errors, 0)
            break
        if not current:
            break
        current = posixpath.dirname(current)
    for visited in chain:
        repo.dir_config[visited] = config
    return config


def _load_config(repo: _Repo, rel: str, errors: dict[str, str], depth: int) -> _TsConfig | None:
    if rel in repo.config_cache:
        return repo.config_cache[rel]
    repo.config_cache[rel] = None  # guards against ``extends`` loops
    text = _read_text(repo, rel)
    if text is None:
        return None
    try:
        data = json.loads(_strip_jsonc(text))
        if not isinstance(data, dict):
            raise ValueError("not a JSON object")
    except ValueError as exc:
        errors[rel] = f"cannot parse config: {exc}"
        return None
    folder = posixpath.dirname(rel)
    base_url: str | None = None
    paths: tuple[tuple[str, tuple[str, ...]], ...] = ()
    paths_dir = folder
    parents = data.get("extends")
    for parent in [parents] if isinstance(parents, str) else parents or []:
        if not isinstance(parent, str) or not parent.startswith("."):
            continue  # a package's config lives in node_modules
        target = posixpath.normpath(posixpath.join(folder, parent))
        if not target.endswith(".json"):
            target += ".json"
        if target.startswith("../") or depth >= _EXTENDS_DEPTH:
            continue
        inherited = _load_config(repo, target, errors, depth + 1)
        if inherited is not None:  # later ``extends`` entries override earlier ones
            if inherited.base_url is not None:
                base_url = inherited.base_url
            if inherited.paths:
                paths, paths_dir = inherited.paths, inherited.paths_dir
    options = data.get("compilerOptions")
    options = options if isinstance(options, dict) else {}
    if isinstance(options.get("baseUrl"), str):
        base_url = posixpath.normpath(posixpath.join(folder, options["baseUrl"]))
        base_url = "" if base_url == "." else base_url
    raw_paths = options.get("paths")
    if isinstance(raw_paths, dict):
        parsed = []
        for pattern, targets in raw_paths.items():
            if isinstance(targets, str):
                targets = [targets]
            if isinstance(targets, list):
                parsed.append((pattern, tuple(t for t in targets if isinstance(t, str))))
        paths, paths_dir = tuple(parsed), folder
    config = _TsConfig(base_url=base_url, paths=paths, paths_dir=paths_dir)
    repo.config_cache[rel] = config
    return config


def _strip_jsonc(text: str) -> str:
    """JSON with comments and trailing commas (tsconfig's dialect) -> strict JSON."""
    text = text.lstrip("\ufeff")
    out: list[str] = []
    i, n = 0, len(text)
    pending_comma = -1  # index in ``out`` of a comma that may turn out to be trailing
    while i < n:
        char = text[i]
        if char == '"':
            j = i + 1
            while j < n and text[j] != '"':
                j += 2 if text[j] == "\\" else 1
            out.append(text[i:j + 1])
            pending_comma = -1
            i = j + 1
        elif text.startswith("//", i):
            end = text.find("\n", i)
            i = n if end == -1 else end
        elif text.startswith("/*", i):
            end = text.find("*/", i + 2)
            i = n if end == -1 else end + 2
        elif char in "}]":
            if pending_comma >= 0:
                out[pending_comma] = ""
            pending_comma = -1
            out.append(char)
            i += 1
        elif char == ",":
            pending_comma = len(out)
            out.append(char)
            i += 1
        else:
            if not char.isspace():
                pending_comma = -1
            out.append(char)
            i += 1
    return "".join(out)
