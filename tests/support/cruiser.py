"""dependency-cruiser, the reference for ``orchestrator analyze`` on JavaScript / TypeScript.

The node tools live in ``tests/js`` (``package.json`` + ``package-lock.json``: dependency-cruiser
18 with TypeScript 5, and node 22 from the npm registry's ``node`` package, since
dependency-cruiser 18 refuses node 20). ``.ci/run`` installs them with ``npm ci``;
:func:`ensure_tools` does the same when they are missing and npm is there.

:func:`cruise` runs dependency-cruiser on a folder with a generated configuration (every
JavaScript / TypeScript extension, the folder's ``tsconfig.json`` when present, TypeScript's
pre-compilation dependencies so ``import type`` counts, ``node_modules`` neither scanned nor
followed) and returns its edges in our shape: ``(importer, imported)`` POSIX paths relative to
the folder, edges between files of the folder only, plus what it could not resolve.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["TOOLS", "Cruise", "cruise", "ensure_tools", "node_missing", "our_unresolved"]

TOOLS = Path(__file__).resolve().parents[1] / "js"
CRUISER = TOOLS / "node_modules" / "dependency-cruiser" / "bin" / "dependency-cruiser.mjs"
# the node 22 binary of the ``node`` package, else the machine's node
BUNDLED_NODE = TOOLS / "node_modules" / ".bin" / "node"
EXTENSIONS = (".js", ".mjs", ".cjs", ".jsx", ".ts", ".mts", ".cts", ".tsx", ".d.ts")


@dataclass
class Cruise:
    files: list[str]  # the modules it scanned (in the folder, not node_modules)
    edges: set[tuple[str, str]]  # internal edges
    unresolved: set[tuple[str, str]] = field(default_factory=set)  # (importer, specifier)
    seconds: float = 0.0  # wall time of the depcruise process


def node_missing() -> str | None:
    """Why the comparison cannot run (no node / npm on this machine), or None."""
    if shutil.which("node") is None or shutil.which("npm") is None:
        return "node and npm are not installed: dependency-cruiser cannot run"
    return None


def ensure_tools() -> None:
    """Install ``tests/js`` with ``npm ci`` when it is not installed (raises if that fails)."""
    if CRUISER.is_file() and BUNDLED_NODE.exists():
        return
    subprocess.run(["npm", "ci", "--no-audit", "--no-fund", "--prefix", str(TOOLS)],
                   check=True, capture_output=True, text=True, timeout=600)


def _node() -> str:
    return str(BUNDLED_NODE) if BUNDLED_NODE.exists() else "node"


def _config(root: Path) -> dict:
    options: dict = {
        "doNotFollow": {"path": "(^|/)node_modules/"},
        "exclude": {"path": "(^|/)node_modules/"},
        "tsPreCompilationDeps": True,
        "moduleSystems": ["cjs", "es6", "tsd", "amd"],
        "extraExtensionsToScan": [],
        "enhancedResolveOptions": {
            "exportsFields": ["exports"],
            "conditionNames": ["import", "require", "node", "default", "types"],
            "mainFields": ["module", "main", "types", "typings"],
        },
        "combinedDependencies": False,
        "preserveSymlinks": False,
    }
    if (root / "tsconfig.json").is_file():
        options["tsConfig"] = {"fileName": str(root / "tsconfig.json")}
    return {"options": options}


def cruise(root: str | os.PathLike[str], *, targets: Iterable[str] = (".",),
           timeout: float = 600) -> Cruise:
    """Run dependency-cruiser on ``root`` (``targets`` are folders in it, default all)."""
    import time

    root = Path(root).resolve()
    with tempfile.TemporaryDirectory(prefix="cruiser-") as tmp:
        config = Path(tmp) / "config.json"
        config.write_text(json.dumps(_config(root)))
        out = Path(tmp) / "out.json"
        started = time.perf_counter()
        proc = subprocess.run(
            [_node(), str(CRUISER), "--config", str(config), "--output-type", "json",
             "--output-to", str(out), *targets],
            cwd=root, capture_output=True, text=True, timeout=timeout,
            env={**os.environ, "NODE_OPTIONS": ""},
        )
        seconds = time.perf_counter() - started
        if proc.returncode != 0 or not out.is_file():
            raise RuntimeError(f"depcruise failed ({proc.returncode}): {proc.stderr[-2000:]}")
        report = json.loads(out.read_text())
    return _normalize(report, seconds)


def _inside(path: str) -> bool:
    return not (path.startswith(("/", "../")) or "node_modules/" in f"/{path}")


def _normalize(report: dict, seconds: float) -> Cruise:
    files: list[str] = []
    edges: set[tuple[str, str]] = set()
    unresolved: set[tuple[str, str]] = set()
    for module in report["modules"]:
        source = module["source"]
        if not _inside(source) or module.get("coreModule") or module.get("couldNotResolve"):
            continue
        if source.endswith(EXTENSIONS):
            files.append(source)
        for dep in module.get("dependencies", ()):
            if dep.get("coreModule"):
                continue
            if dep.get("couldNotResolve"):
                unresolved.add((source, dep["module"]))
                continue
            resolved = dep["resolved"]
            if _inside(resolved) and resolved.endswith(EXTENSIONS):
                edges.add((source, resolved))
    return Cruise(sorted(files), edges, unresolved, seconds)


def our_unresolved(graph) -> set[tuple[str, str]]:
    """``(importer, specifier)`` pairs of a DependencyGraph's unresolved imports."""
    return {(importer, spec) for importer, specs in graph.unresolved.items() for spec in specs}
