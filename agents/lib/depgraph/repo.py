"""The repository as the analysis sees it: the files imports resolve against.

:func:`_walk` lists a repository's files without reading them (skipping excluded and hidden
folders, not following symlinked ones) into a :class:`_Repo`: source files, every other
file, folders holding Python, modules without Python source, the tsconfig / jsconfig of
each folder and the folders holding a ``package.json``.

Build output
    Folders named ``build`` or ``dist`` (:data:`BUILD_OUTPUT_NAMES`, when they are in the
    walk's ``exclude``) are skipped only where the repository says they are build output,
    since both names are also ordinary source folders (``mypkg/dist/`` as a Python
    subpackage, ``build/`` holding a project's build scripts).  In order:

    1. a folder holding ``__init__.py`` is a Python package: kept;
    2. a ``.gitignore`` in its parent folder or any folder above (up to the root) that
       ignores it (``dist``, ``dist/``, ``/dist``, ``pkg/dist``, ``**/dist``, globs; a later
       ``!dist`` re-includes it) -- skipped;
    3. a ``package.json``, ``pyproject.toml``, ``setup.py`` or ``setup.cfg`` beside it (the
       folder a JavaScript or Python build writes its output to) -- skipped;
    4. otherwise kept and analyzed.
  :func:`_add_file` registers files that exist only in a plan.  The ``_Repo``
also carries the resolvers' memo tables, among them the parsed configs (:class:`_TsConfig`,
kept here so that the resolvers and the config loader share it without importing each
other).  The ``_read_*`` helpers read contents, overrides first.
"""

from __future__ import annotations

import os
import posixpath
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SUFFIXES: tuple[str, ...] = (
    ".py", ".js", ".jsx", ".ts", ".tsx", ".mjs", ".cjs", ".mts", ".cts")
"""File suffixes analyzed (Python, JavaScript and TypeScript sources)."""

DEFAULT_EXCLUDES: frozenset[str] = frozenset(
    {".git", "node_modules", "__pycache__", ".venv", "venv", ".tox", "build", "dist"}
)
"""Names of folders (or files) skipped by the repository walk; hidden folders always are.
``build`` and ``dist`` only where they are build output (see the module docstring)."""

BUILD_OUTPUT_NAMES: frozenset[str] = frozenset({"build", "dist"})
"""Excluded names that are skipped only with evidence of being build output."""

# Files beside a folder that make a ``build`` / ``dist`` in it the build's output.
_PROJECT_FILES = frozenset({"package.json", "pyproject.toml", "setup.py", "setup.cfg"})

_CONFIG_NAMES = ("tsconfig.json", "jsconfig.json")
# Python modules without source: extension modules and stubs.  They satisfy imports (no
# edge, not unresolved), their submodules included since they cannot be known.
_NATIVE_SUFFIXES = frozenset({".so", ".pyd", ".pyi"})


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
    package_dirs: set[str] = field(default_factory=set)  # folders holding a package.json
    py_roots: tuple[str, ...] = ("",)
    config_cache: dict[str, _TsConfig | None] = field(default_factory=dict)
    js_cache: dict[tuple[str, bool, str, str], tuple[str, str | None]] = field(
        default_factory=dict)
    py_cache: dict[tuple[str, int, str, tuple[str, ...] | None],
                   tuple[tuple[str, ...], tuple[tuple[str, str], ...]]] = field(
                       default_factory=dict)
    dir_config: dict[str, _TsConfig | None] = field(default_factory=dict)
    packages: Any = None  # the package.json view (packages._Packages), built on first use


@dataclass(frozen=True)
class _TsConfig:
    base_url: str | None  # repository-relative folder ("" for the root), None if unset
    paths: tuple[tuple[str, tuple[str, ...]], ...]  # pattern -> targets, as written
    paths_dir: str  # folder of the config defining ``paths``: their base without baseUrl
    out_dir: str | None = None  # compilerOptions.outDir, repository-relative
    root_dir: str | None = None  # compilerOptions.rootDir, repository-relative

    def target_base(self) -> str:
        return self.base_url if self.base_url is not None else self.paths_dir


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
    if name == "package.json":
        repo.package_dirs.add(folder)
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
    package_dirs: set[str] = set()
    ignores = _GitIgnores(os.fspath(root))
    maybe_output = exclude & BUILD_OUTPUT_NAMES
    pending = [("", os.fspath(root))]
    while pending:
        rel_dir, abs_dir = pending.pop()
        prefix = rel_dir + "/" if rel_dir else ""
        has_py = False
        try:
            entries = list(os.scandir(abs_dir))
        except OSError:
            continue
        names = None
        for entry in entries:
            name = entry.name
            try:
                if entry.is_dir(follow_symlinks=False):
                    if name.startswith("."):
                        continue
                    if name in exclude:
                        if name not in maybe_output:
                            continue
                        if names is None:
                            names = {e.name for e in entries}
                        if _is_build_output(entry.path, rel_dir, name, names, ignores):
                            continue
                    pending.append((prefix + name, entry.path))
                    continue
                if name in exclude or not entry.is_file():
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
            elif name == "package.json":
                package_dirs.add(rel_dir)
        if has_py:
            folder = rel_dir
            while folder not in py_dirs:
                py_dirs.add(folder)
                if not folder:
                    break
                folder = posixpath.dirname(folder)
    return _Repo(root=root, sources=sources, existing=existing, py_dirs=py_dirs,
                 natives=natives, configs=configs, overrides=overrides,
                 package_dirs=package_dirs)


def _is_build_output(
    path: str, parent: str, name: str, siblings: set[str], ignores: _GitIgnores
) -> bool:
    """Whether the folder ``name`` in ``parent`` is build output (module docstring rules)."""
    if os.path.isfile(os.path.join(path, "__init__.py")):
        return False
    ignored = ignores.ignored(parent, name)
    if ignored is not None:
        return ignored
    return not siblings.isdisjoint(_PROJECT_FILES)


class _GitIgnores:
    """The ``.gitignore`` files of a repository, read on demand, matched for folders.

    A subset of git's rules that suffices for naming a folder: blank lines and ``#``
    comments skipped, ``!`` negates, a trailing ``/`` is dropped (only folders are asked
    about), a pattern without an inner ``/`` matches the name at any depth below its
    ``.gitignore``, one with a ``/`` matches the path relative to it (``**/`` prefixes match
    at any depth); ``*``, ``?`` and ``[...]`` as in :mod:`fnmatch`.  The last matching line
    of the deepest ``.gitignore`` decides, as in git.
    """

    def __init__(self, root: str) -> None:
        self._root = root
        self._rules: dict[str, list[tuple[bool, bool, str]]] = {}

    def _load(self, folder: str) -> list[tuple[bool, bool, str]]:
        rules = self._rules.get(folder)
        if rules is None:
            rules = self._rules[folder] = []
            try:
                text = _read_bytes(os.path.join(self._root, folder, ".gitignore")).decode(
                    "utf-8", "replace")
            except OSError:
                text = ""
            for line in text.splitlines():
                line = line.strip()
                if not line or line.startswith("#"):
                    continue
                negate = line.startswith("!")
                line = line[1:] if negate else line
                line = line.rstrip("/")
                if line.startswith("**/"):
                    line = line[3:]
                anchored = "/" in line
                if line:
                    rules.append((negate, anchored, line.lstrip("/")))
        return rules

    def ignored(self, parent: str, name: str) -> bool | None:
        """True/False when a ``.gitignore`` at or above ``parent`` decides, else None."""
        import fnmatch

        rel = parent + "/" + name if parent else name
        folder: str | None = parent
        while folder is not None:
            below = rel[len(folder) + 1:] if folder else rel
            decision = None
            for negate, anchored, pattern in self._load(folder):
                if fnmatch.fnmatchcase(below if anchored else name, pattern):
                    decision = not negate
            if decision is not None:
                return decision
            folder = posixpath.dirname(folder) if folder else None
        return None


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
