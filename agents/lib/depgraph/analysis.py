"""The analysis: walk the repository, parse each file, resolve its imports into a graph.

:func:`analyze` is the entry point; :func:`patch_additions` extracts from a unified diff
the lines a plan adds to a file, for ``analyze(additions=...)``.
"""

from __future__ import annotations

import os
import posixpath
from collections.abc import Iterable, Mapping
from pathlib import Path

from orchestrator.agents.lib.depgraph.graph import DependencyGraph
from orchestrator.agents.lib.depgraph.javascript import _js_imports, _resolve_js
from orchestrator.agents.lib.depgraph.python import (
    _python_fragment_imports,
    _python_imports,
    _resolve_python,
)
from orchestrator.agents.lib.depgraph.repo import (
    DEFAULT_EXCLUDES,
    SUFFIXES,
    _add_file,
    _norm_rel,
    _read_all,
    _walk,
)


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
            under it (the rules are in the docstrings of the ``python`` and ``javascript``
            modules), skipping folders whose name is in ``exclude`` or starts with ``"."``;
            symlinked folders are not followed.
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
    unresolved: dict[str, dict[str, str]] = {}
    py = [(rel, data) for rel, data in texts if rel.endswith(".py")]
    js = [(rel, data) for rel, data in texts if not rel.endswith(".py")]
    for rel, records in _python_imports(py, errors):
        _resolve_python(repo, rel, records, targets.setdefault(rel, set()),
                        unresolved.setdefault(rel, {}))
    for rel, specs in _js_imports(js, errors):
        _resolve_js(repo, rel, specs, targets.setdefault(rel, set()),
                    unresolved.setdefault(rel, {}), errors)
    for rel, added in sorted(norm_additions.items()):
        if rel not in files or posixpath.splitext(rel)[1] not in SUFFIXES:
            continue
        if rel.endswith(".py"):
            _resolve_python(repo, rel, _python_fragment_imports(added),
                            targets.setdefault(rel, set()), unresolved.setdefault(rel, {}))
        else:  # tree-sitter recovers from fragments; their syntax errors are not the file's
            for _, specs in _js_imports([(rel, added.encode("utf-8", "surrogatepass"))], {}):
                _resolve_js(repo, rel, specs, targets.setdefault(rel, set()),
                            unresolved.setdefault(rel, {}), errors)

    if repo.packages is not None:  # package.json files that could not be parsed
        errors.update(repo.packages.errors)
    keep = set(files)
    edges = [(a, b) for a in sorted(targets) for b in sorted(targets[a]) if b in keep]
    return DependencyGraph(
        root=str(root_path),
        files=files,
        edges=edges,
        unresolved={k: dict(sorted(v.items())) for k, v in sorted(unresolved.items()) if v},
        errors=dict(sorted(errors.items())),
    )


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
