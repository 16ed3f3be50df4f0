"""The dependency graph of a repository's files and the algorithms on it.

:class:`DependencyGraph` holds files and ``(importer, imported)`` edges and answers, on
demand: dependencies and dependents, every elementary cycle (Johnson's algorithm, bounded by
``_CYCLE_BUDGET``), the strongly connected components (iterative Tarjan), topological batches
on the condensation, the critical path and priorities.  It knows nothing of languages or
files on disk: :func:`orchestrator.agents.lib.depgraph.analyze` builds one, and tests or
synthetic plans may construct one directly.
"""

from __future__ import annotations

import math
import os
import posixpath
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

# Work bound of the cycle search (node + edge visits, 1-2 s): Johnson's algorithm costs
# O(files + edges) per cycle, so a huge component with few cycles per file (a long chain of
# files importing both neighbours) would otherwise take minutes to yield ``limit`` cycles.
_CYCLE_BUDGET = 3_000_000

NOT_FOUND = "not_found"
OUTSIDE_REPOSITORY = "outside_repository"
PACKAGE = "package"
COMPUTED = "computed"
UNRESOLVED_REASONS = (NOT_FOUND, OUTSIDE_REPOSITORY, PACKAGE, COMPUTED)
"""Why an import is in :attr:`DependencyGraph.unresolved` (see there)."""


@dataclass(frozen=True)
class DependencyGraph:
    """Files and import edges of a repository, with graph algorithms on top.

    Attributes:
        root: absolute path of the repository.
        files: repository-relative POSIX paths analyzed, sorted.
        edges: ``(importer, imported)`` pairs, both in :attr:`files`, sorted and unique.  A
            self-edge only when a file imports itself.
        unresolved: importer -> {specifier: reason} for every import that names no file of
            the repository (keys sorted).  The reasons (:data:`UNRESOLVED_REASONS`):
            ``"not_found"`` -- it points inside the repository (a relative path, a Python
            name whose top-level package is in the repository, a ``paths`` alias, a
            workspace package's subpath) but no file matches; ``"outside_repository"`` -- a
            relative path climbing out of the repository (or an absolute path outside
            it); ``"package"`` -- a bare name of a package that is not in the repository
            (an npm or PyPI dependency); ``"computed"`` -- ``require()`` / ``import()`` of
            an expression, listed by its source text.  Standard-library modules, Node
            built-ins (``fs``, ``node:fs``) and URLs are external: neither an edge nor
            listed.  Only ``"not_found"`` means work missing from the repository.
        errors: file -> message for files that could not be read or parsed (see
            :func:`analyze`).

    Edges go from a file to what it needs: "dependencies" of ``f`` are the files ``f``
    imports, its "dependents" the files importing ``f``.  Constructing a graph directly
    (for tests or synthetic plans) is allowed; edges must reference :attr:`files`.
    """

    root: str
    files: list[str]
    edges: list[tuple[str, str]]
    unresolved: dict[str, dict[str, str]] = field(default_factory=dict)
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
            "unresolved": {k: dict(sorted(v.items()))
                           for k, v in sorted(self.unresolved.items())},
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

