"""Load a package's API with griffe, statically, once per package state.

The package is never imported: griffe visits the source (``allow_inspection=False``). A
rendering worker gets one ``render_module`` task per module, so the loaded package is kept in
a :class:`PackageCache`, keyed by the package folder and a fingerprint of its files (paths,
sizes, mtimes): a task for the next module of the same package reuses the tree, and an edited
package is loaded anew.
"""

from __future__ import annotations

import ast
import io
import os
import threading
import tokenize
import warnings
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

import griffe
from orchestrator.agents.lib.apidocs.discover import discover_modules
from orchestrator.agents.lib.pyparse import PARSE_LOCK

__all__ = ["ApiHints", "LoadedPackage", "PackageCache", "fingerprint", "load_package", "read_module_source"]

#: Names a module imports as ``from x import Y as Y`` (the explicit re-export idiom), kept in
#: each griffe module's ``extra`` under this key.
REDUNDANT_KEY = "apidocs_redundant_aliases"
#: Names a module imports only under ``if TYPE_CHECKING:`` (absent at run time: never API).
TYPE_ONLY_KEY = "apidocs_type_checking_imports"


#: Docstring style detected per docstring; griffe's complaints about a docstring that does not
#: match its signature are the package author's business, not the docs reader's.
DOCSTRING_OPTIONS = {"default": "google", "per_style_options": {
    style: {"warnings": False} for style in ("google", "numpy", "sphinx")}}


class Unparsable(Exception):
    """A module whose source cannot be read or parsed; the message is the reason."""


def fingerprint(root: Path) -> tuple[tuple[str, int, int], ...]:
    """Paths, sizes and mtimes of the ``.py`` files below ``root``: cheap, and it changes
    whenever a file is edited, added or removed."""
    found: list[tuple[str, int, int]] = []
    for folder, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if d != "__pycache__" and not d.startswith("."))
        for name in sorted(files):
            if name.endswith(".py"):
                path = os.path.join(folder, name)
                try:
                    stat = os.stat(path)
                except OSError:
                    continue
                found.append((os.path.relpath(path, root), stat.st_size, stat.st_mtime_ns))
    return tuple(found)


def _is_main_guard(node: ast.stmt) -> bool:
    if not isinstance(node, ast.If) or not isinstance(node.test, ast.Compare):
        return False
    sides = [node.test.left, *node.test.comparators]
    names = {s.id for s in sides if isinstance(s, ast.Name)}
    consts = {s.value for s in sides if isinstance(s, ast.Constant)}
    return names == {"__name__"} and consts == {"__main__"}


def _is_type_checking(node: ast.stmt) -> bool:
    """``if TYPE_CHECKING:`` or ``if typing.TYPE_CHECKING:`` (not ``if TYPE_CHECKING or x:``)."""
    if not isinstance(node, ast.If):
        return False
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _walk_imports(body: list[ast.stmt], *, type_checking: bool = False
                  ) -> list[tuple[ast.Import | ast.ImportFrom, bool]]:
    """Every import of a module's top level (inside ``if`` and ``try`` too), and whether it
    runs only for a type checker."""
    found: list[tuple[ast.Import | ast.ImportFrom, bool]] = []
    for node in body:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            found.append((node, type_checking))
        elif isinstance(node, (ast.If, ast.Try)) and not _is_main_guard(node):
            found += _walk_imports(node.body, type_checking=type_checking or _is_type_checking(node))
            found += _walk_imports(node.orelse, type_checking=type_checking)
            for handler in getattr(node, "handlers", []):
                found += _walk_imports(handler.body, type_checking=type_checking)
            if isinstance(node, ast.Try):
                found += _walk_imports(node.finalbody, type_checking=type_checking)
    return found


class ApiHints(griffe.Extension):
    """Drops what a module defines under ``if __name__ == "__main__":`` (a script, not API),
    records its ``from x import Y as Y`` re-exports and the names it imports only under
    ``if TYPE_CHECKING:``."""

    def on_module_members(self, *, node: ast.AST, mod: griffe.Module, **kwargs: object) -> None:
        if not isinstance(node, ast.Module):
            return
        for stmt in node.body:
            if _is_main_guard(stmt):
                lines = range(stmt.lineno, (stmt.end_lineno or stmt.lineno) + 1)
                for name, member in list(mod.members.items()):
                    line = member.alias_lineno if member.is_alias else member.lineno
                    if line in lines:
                        mod.del_member(name)
        imports = _walk_imports(node.body)
        runtime = {(alias.asname or alias.name).split(".", 1)[0]
                   for imp, typing_only in imports if not typing_only for alias in imp.names}
        mod.extra[REDUNDANT_KEY] = {  # type: ignore[index]
            alias.name for imp, typing_only in imports if not typing_only
            and isinstance(imp, ast.ImportFrom) for alias in imp.names if alias.asname == alias.name
        }
        mod.extra[TYPE_ONLY_KEY] = {  # type: ignore[index]
            name for imp, typing_only in imports if typing_only for alias in imp.names
            if (name := (alias.asname or alias.name).split(".", 1)[0]) not in runtime
        }


def read_module_source(path: Path) -> str:
    """The text of a module, decoded as Python decodes it (PEP 263 coding line, else UTF-8).

    Raises:
        Unparsable: it does not decode.
        OSError: it cannot be read.
    """
    data = path.read_bytes()
    try:
        encoding, _ = tokenize.detect_encoding(io.BytesIO(data).readline)
        return data.decode(encoding)
    except (SyntaxError, LookupError, UnicodeDecodeError) as exc:
        reason = exc.reason if isinstance(exc, UnicodeDecodeError) else exc
        raise Unparsable(f"does not decode as Python source: {reason}") from None


def parse_error(source: str) -> str | None:
    """Why ``source`` does not parse, or None if it does."""
    if "\0" in source:
        return f"source contains a null byte (line {source.count(chr(10), 0, source.index(chr(0))) + 1})"
    try:
        with PARSE_LOCK, warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ast.parse(source)
    except SyntaxError as exc:
        msg = exc.msg or "invalid syntax"
        if exc.lineno and f"line {exc.lineno}" not in msg:
            msg = f"{msg} (line {exc.lineno})"
        return " ".join(msg.split())
    except (ValueError, RecursionError, MemoryError) as exc:
        return f"{type(exc).__name__}: {exc}"
    return None


@dataclass
class LoadedPackage:
    """A package's griffe tree, and the modules of it that could not be parsed (with why)."""

    root: Path
    tree: griffe.Module
    failed: dict[str, str] = field(default_factory=dict)
    #: Built lazily by :mod:`.links`; holds the package's cross-reference table.
    links: object | None = None
    #: Held while a page is rendered from this tree: griffe fills some values lazily.
    lock: threading.RLock = field(default_factory=threading.RLock)

    def module(self, name: str) -> griffe.Module | None:
        """The loaded module ``name`` (dotted, from the top-level package), or None."""
        parts = name.split(".")[1:]
        obj: griffe.Object | griffe.Alias = self.tree
        for part in parts:
            obj = obj.members.get(part)  # type: ignore[assignment]
            if obj is None or obj.is_alias or not obj.is_module:
                return None
        return obj  # type: ignore[return-value]


def _new_loader(root: Path) -> griffe.GriffeLoader:
    return griffe.GriffeLoader(
        search_paths=[root.parent], allow_inspection=False, docstring_parser="auto",
        docstring_options=DOCSTRING_OPTIONS,
        extensions=griffe.load_extensions(ApiHints()), store_source=True,
    )


def _add_missing(loaded: LoadedPackage, loader: griffe.GriffeLoader,
                 modules: list[tuple[str, str]]) -> None:
    """Visit the listed modules griffe could not load (a coding line it does not honour) from
    our own decoding; record the ones that do not parse."""
    for name, rel in modules:
        if loaded.module(name) is not None:
            continue
        path = loaded.root / rel
        try:
            source = read_module_source(path)
        except (Unparsable, OSError) as exc:
            loaded.failed[name] = str(exc) if isinstance(exc, Unparsable) else (
                f"cannot be read: {exc.strerror or exc}")
            continue
        reason = parse_error(source)
        if reason is not None:
            loaded.failed[name] = f"could not be parsed: {reason}"
            continue
        parent = loaded.module(name.rsplit(".", 1)[0]) if "." in name else None
        if parent is None and "." in name:
            loaded.failed[name] = "its package could not be loaded"
            continue
        with PARSE_LOCK, warnings.catch_warnings():
            warnings.simplefilter("ignore")
            mod = griffe.visit(name.rsplit(".", 1)[-1], path, source, parent=parent,
                               extensions=loader.extensions, docstring_parser="auto",
                               docstring_options=DOCSTRING_OPTIONS,
                               lines_collection=loader.lines_collection,
                               modules_collection=loader.modules_collection)
        if parent is not None:
            parent.set_member(mod.name, mod)


def _drop_outside(module: griffe.Module, root: Path) -> None:
    """Forget modules whose file is a symlink out of the package: never read, never shown."""
    for name, member in list(module.members.items()):
        if member.is_alias or not member.is_module:
            continue
        path = member.filepath
        if isinstance(path, Path) and not path.resolve().is_relative_to(root.resolve()):
            module.del_member(name)
        else:
            _drop_outside(member, root)  # type: ignore[arg-type]


def load_package(package_dir: str | os.PathLike[str]) -> LoadedPackage:
    """Load the package in ``package_dir`` with griffe, without importing it.

    Args:
        package_dir: The package folder; its name is the top-level package name. Of its
            modules (:func:`.discover.discover_modules`), those griffe could not load are
            visited from our own decoding, or recorded as failed.

    Returns:
        The tree with ``if __name__ == "__main__":`` blocks removed and aliases inside the
        package resolved.
    """
    root = Path(os.path.abspath(os.fspath(package_dir)))
    loader = _new_loader(root)
    with PARSE_LOCK, warnings.catch_warnings():  # griffe parses with ast, too
        warnings.simplefilter("ignore")
        tree = loader.load(root.name, try_relative_path=False)
    assert isinstance(tree, griffe.Module)
    _drop_outside(tree, root)
    loaded = LoadedPackage(root=root, tree=tree)
    _add_missing(loaded, loader, [(m.name, m.path) for m in discover_modules(root)])
    with PARSE_LOCK, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        loader.resolve_aliases(implicit=False, external=False)
    return loaded


class PackageCache:
    """Loaded packages by folder, reloaded when the folder's fingerprint changes.

    Thread-safe: tasks rendering modules of one package share one load.
    """

    def __init__(self, max_packages: int = 4) -> None:
        self._max = max_packages
        self._lock = threading.Lock()
        self._entries: OrderedDict[Path, tuple[tuple, LoadedPackage]] = OrderedDict()
        self._loading: dict[Path, threading.Lock] = {}
        self.loads = 0  # how many times a package was loaded (not served from the cache)

    def get(self, package_dir: str | os.PathLike[str]) -> LoadedPackage:
        """The loaded package in ``package_dir``, loading it if absent or changed."""
        root = Path(os.path.abspath(os.fspath(package_dir)))
        with self._lock:
            key_lock = self._loading.setdefault(root, threading.Lock())
        with key_lock:  # one load per package at a time; the others wait and reuse it
            stamp = fingerprint(root)
            with self._lock:
                entry = self._entries.get(root)
                if entry is not None and entry[0] == stamp:
                    self._entries.move_to_end(root)
                    return entry[1]
            loaded = load_package(root)
            with self._lock:
                self.loads += 1
                self._entries[root] = (stamp, loaded)
                self._entries.move_to_end(root)
                while len(self._entries) > self._max:
                    self._entries.popitem(last=False)
            return loaded
