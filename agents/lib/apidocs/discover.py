"""Which modules of a package get a page: its public ``.py`` files, found without importing."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

__all__ = ["ModuleInfo", "discover_modules"]


@dataclass(frozen=True)
class ModuleInfo:
    """A module found by :func:`discover_modules`.

    ``name`` is dotted (``"pkg.sub.mod"``; ``__init__.py`` is named after its
    package); ``path`` is the file relative to the package folder, POSIX style.
    """

    name: str
    path: str


def discover_modules(package_dir: str | os.PathLike[str]) -> list[ModuleInfo]:
    """List the public modules of the package stored in ``package_dir``.

    The folder's basename is the top-level package name.  Its ``*.py`` files
    are listed, recursing into sub-folders whose name is an identifier (not
    ``__pycache__``, hidden or symlinked ones): regular packages, and folders
    without ``__init__.py``, which Python imports as namespace packages
    (``langgraph.checkpoint`` is one) unless a same-named ``x.py`` shadows them.  Modules with a private
    component below the top-level name (``pkg._x``, ``pkg.__main__``) and
    non-identifier file names (``foo-bar.py``) are left out.  If both ``x.py``
    and ``x/__init__.py`` exist, the package wins, as on import.

    Args:
        package_dir: Folder of the package (a namespace package is accepted).

    Returns:
        The modules, sorted by dotted name.

    Raises:
        FileNotFoundError: If ``package_dir`` is not a directory.
    """
    root = Path(os.path.abspath(os.fspath(package_dir)))
    if not root.is_dir():
        raise FileNotFoundError(f"package directory not found (or not a directory): {root}")
    found: dict[str, ModuleInfo] = {}

    def walk(folder: Path, parts: tuple[str, ...]) -> None:
        with os.scandir(folder) as it:
            entries = sorted(it, key=lambda e: e.name)
        for entry in entries:
            name = entry.name
            if name.endswith(".py") and entry.is_file():
                stem = name[:-3]
                if not stem.isidentifier():
                    continue
                mod_parts = parts if stem == "__init__" else (*parts, stem)
                if any(p.startswith("_") for p in mod_parts[1:]):
                    continue
                rel = "/".join((*parts[1:], name))
                dotted = ".".join(mod_parts)
                if dotted not in found or name == "__init__.py":
                    found[dotted] = ModuleInfo(dotted, rel)
            elif (
                name.isidentifier()
                and not name.startswith("_")
                and entry.is_dir(follow_symlinks=False)
                and (
                    (Path(entry.path) / "__init__.py").is_file()
                    or not (folder / f"{name}.py").is_file()  # x.py shadows namespace x/
                )
            ):
                walk(Path(entry.path), (*parts, name))

    walk(root, (root.name,))
    return [found[key] for key in sorted(found)]
