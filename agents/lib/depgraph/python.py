"""Python imports: extracted with :func:`ast.parse`, resolved to files of the repository.

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
    * Standard-library names (:data:`sys.stdlib_module_names`) are external: neither an edge
      nor listed.  Listed in :attr:`DependencyGraph.unresolved`: an import whose top-level
      name IS in the repository but that matches no file, and a relative import that
      matches no file (``"not_found"``); a relative import climbing above the top-level
      package, to the repository's root or beyond (``"outside_repository"``); any other name, a third-party package not in the
      repository (``"package"``, by its full dotted name).

Parsing runs under :data:`orchestrator.agents.lib.pyparse.PARSE_LOCK` (CPython 3.11's
``ast.parse`` is not thread-safe) with the cyclic garbage collector paused.
"""

from __future__ import annotations

import ast
import gc
import posixpath
import sys
import threading
import warnings
from collections.abc import Iterable

from orchestrator.agents.lib.depgraph.graph import NOT_FOUND, OUTSIDE_REPOSITORY, PACKAGE
from orchestrator.agents.lib.depgraph.repo import _Repo
from orchestrator.agents.lib.pyparse import PARSE_LOCK

_GC_LOCK = threading.Lock()
_gc_pausers = 0
_gc_was_enabled = False

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
    repo: _Repo, rel: str, records: list[_PyImport], out: set[str], missing: dict[str, str]
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
) -> tuple[tuple[str, ...], tuple[tuple[str, str], ...]]:
    """(files, unresolved (specifier, reason) pairs) of one import statement in a file of
    ``own_dir``."""
    out: set[str] = set()
    missing: dict[str, str] = {}
    parts = module.split(".") if module else []
    if level:
        folder = own_dir
        for _ in range(level - 1):
            if not folder:
                return (), (("." * level + module, OUTSIDE_REPOSITORY),)
            folder = posixpath.dirname(folder)
        prefix, label = folder, "." * level + module
    else:
        owner = _py_owner(repo, parts[0])
        if owner is None:
            if parts[0] in sys.stdlib_module_names:
                return (), ()
            return (), ((module, PACKAGE),)
        prefix, label = owner, module
    if names is None:  # import a.b.c
        _py_longest(repo, prefix, parts, label, out, missing)
        return tuple(out), tuple(missing.items())
    result = _py_from(repo, prefix, parts, label, names, out, missing)
    if level and not prefix and "__init__.py" not in repo.sources:
        # what a relative import misses at the root is above the top-level package
        result = result[0], tuple((name, OUTSIDE_REPOSITORY) for name, _ in result[1])
    return result


def _py_from(
    repo: _Repo, prefix: str, parts: list[str], label: str, names: tuple[str, ...],
    out: set[str], missing: dict[str, str],
) -> tuple[tuple[str, ...], tuple[tuple[str, str], ...]]:
    """``from <prefix/parts> import names``: submodules, else the module itself."""
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
            missing[f"{label}.{name}" if label.strip(".") else label + name] = NOT_FOUND
        else:
            _py_longest(repo, prefix, parts, label, out, missing)
    return tuple(out), tuple(missing.items())


def _py_longest(
    repo: _Repo, prefix: str, parts: list[str], label: str, out: set[str],
    missing: dict[str, str],
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
                missing[label] = NOT_FOUND
            return
    missing[label] = NOT_FOUND
