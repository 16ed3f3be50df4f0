"""Where ``orchestrator.state``, ``orchestrator.workflows`` and ``orchestrator.agents`` come from.

Everything this project installs lives under the one name ``orchestrator``, so a user's own
``state``, ``workflows`` or ``agents`` package never hides ours. An installed wheel carries the
three packages inside ``orchestrator/``. A source checkout (``pip install -e .``, or running from
the repository) keeps them in the repository's top-level folders beside ``orchestrator/``; there
this finder hands out those folders under their installed names. Only these three names are
mapped, and only when the package does not carry them itself.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.util
import sys
from pathlib import Path

__all__ = ["SUBPACKAGES", "install"]

SUBPACKAGES = ("state", "workflows", "agents")


class _SourceFolders(importlib.abc.MetaPathFinder):
    def __init__(self, folders: dict[str, Path]) -> None:
        self.folders = folders

    def find_spec(self, fullname, path=None, target=None):  # noqa: ANN001, ANN201
        folder = self.folders.get(fullname)
        if folder is None:
            return None
        return importlib.util.spec_from_file_location(
            fullname, folder / "__init__.py", submodule_search_locations=[str(folder)])


def install(package: str, package_dir: Path) -> None:
    """Map ``<package>.<name>`` to the checkout's top-level ``<name>/`` folder, for each of
    :data:`SUBPACKAGES` that ``package_dir`` does not hold itself."""
    root = package_dir.parent
    folders = {
        f"{package}.{name}": root / name
        for name in SUBPACKAGES
        if not (package_dir / name).is_dir() and (root / name / "__init__.py").is_file()
    }
    if folders and not any(isinstance(f, _SourceFolders) for f in sys.meta_path):
        sys.meta_path.append(_SourceFolders(folders))
