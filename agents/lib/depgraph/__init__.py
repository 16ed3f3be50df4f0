"""Import-dependency analysis for Python, JavaScript and TypeScript repositories.

:func:`analyze` parses every source file of a repository (or only a plan's files) with real
parsers -- :func:`ast.parse` for Python, tree-sitter for JavaScript / TypeScript -- resolves
each import to a file of the repository and returns a :class:`DependencyGraph`: the files,
the ``(importer, imported)`` edges, and on demand every elementary cycle, the strongly
connected components, topological batches, the critical path and priorities.

The package is a pure library: it reads files, never imports or executes the analyzed code,
and depends on nothing else of the project.

Modules
    ``graph``       :class:`DependencyGraph` and its algorithms (Tarjan's components,
                    Johnson's cycles, batches, critical path, priorities) -- no parsing.
    ``analysis``    :func:`analyze`, which ties the others together, and
                    :func:`patch_additions`.
    ``repo``        the repository walk and file reading: the files imports resolve against.
    ``python``      Python imports through ``ast`` and their resolution (the rules are in
                    its docstring).
    ``javascript``  JavaScript / TypeScript imports through tree-sitter and their resolution
                    (the rules are in its docstring).
    ``tsconfig``    ``tsconfig.json`` / ``jsconfig.json`` loading: ``baseUrl``, ``paths``,
                    ``extends``, ``outDir`` / ``rootDir``.
    ``packages``    ``package.json``: entry points, ``exports`` / ``imports`` with
                    conditions, npm / yarn / pnpm workspace packages.

Unresolved imports
    Every import that names no file of the repository is in
    :attr:`DependencyGraph.unresolved` with its reason (:data:`UNRESOLVED_REASONS`); only
    the standard library, Node built-ins and URLs are external and left out.

Errors
    A file that does not parse never aborts the analysis; it is recorded in
    :attr:`DependencyGraph.errors`.  A Python file with a syntax error contributes no
    imports; a JavaScript / TypeScript file still contributes what tree-sitter recovered.
"""

from orchestrator.agents.lib.depgraph.analysis import analyze, patch_additions
from orchestrator.agents.lib.depgraph.graph import UNRESOLVED_REASONS, DependencyGraph
from orchestrator.agents.lib.depgraph.repo import DEFAULT_EXCLUDES, SUFFIXES

__all__ = [
    "DEFAULT_EXCLUDES",
    "SUFFIXES",
    "UNRESOLVED_REASONS",
    "DependencyGraph",
    "analyze",
    "patch_additions",
]
