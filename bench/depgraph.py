"""Dependency-analysis benchmarks.

* ``dependency_analysis_10k``: a generated 10,000-file Python repository (100 packages of 100
  modules, ~5 imports each: absolute, relative and ``from package import module``); the
  median time of ``analyze()`` over a few runs. Target: ≤ 3 s (there is no baseline).
* ``dependency_analysis_10k_ts``: a generated 10,000-file TypeScript workspace (50 packages
  of 200 modules: relative ``.js`` specifiers naming ``.ts``, ``import()`` with magic comments,
  workspace packages through ``exports`` patterns and an entry point in ``dist/`` mapped back to
  ``src/``, Node built-ins, npm packages); the median time of ``analyze()``. Target: ≤ 3 s.
* ``dependency_analysis_vs_grimp``: an installed package (``--package``, default ``pydantic``)
  analyzed by us and by ``grimp`` (the import-graph library, ``pip install -e ".[bench]"``) in
  the same run: the edges must be the same; the time ratio is reported.

    python -m bench.depgraph [--quick] [--package NAME]
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import random
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from orchestrator.agents.lib.depgraph import analyze

from .common import Result, print_result

__all__ = ["run", "generate", "generate_ts"]


def generate(root: Path, packages: int, modules: int, seed: int = 7) -> int:
    """Write the repository under ``root``; returns the number of files."""
    rng = random.Random(seed)
    count = 0
    for p in range(packages):
        pkg = root / "proj" / f"pkg{p}"
        pkg.mkdir(parents=True)
        (pkg / "__init__.py").write_text(f'"""Package {p}."""\n')
        count += 1
        for m in range(modules):
            lines = [f'"""Module {m} of package {p}."""', "import os", ""]
            if m:
                lines.append(f"from . import mod{rng.randrange(m)}")
                lines.append(f"from .mod{rng.randrange(m)} import value as v{m}")
            if p:
                lines.append(f"import proj.pkg{rng.randrange(p)}.mod{rng.randrange(modules)}")
                lines.append(f"from proj.pkg{rng.randrange(p)} import mod{rng.randrange(modules)}")
            lines += ["", "", "def value():", f"    return {m}", "", "",
                      "class Thing:", "    def run(self):", "        return os.getcwd()", ""]
            lines += [f"# filler line {i}" for i in range(16)]
            (pkg / f"mod{m}.py").write_text("\n".join(lines) + "\n")
            count += 1
    (root / "proj" / "__init__.py").write_text("")
    return count + 1


def generate_ts(root: Path, packages: int, modules: int, seed: int = 7) -> int:
    """Write the TypeScript workspace under ``root``; returns the number of source files."""
    rng = random.Random(seed)
    (root / "package.json").write_text(json.dumps(
        {"name": "mono", "private": True, "workspaces": ["packages/*"]}))
    for p in range(packages):
        pkg = root / "packages" / f"p{p}"
        (pkg / "src").mkdir(parents=True)
        (pkg / "package.json").write_text(json.dumps({"name": f"@bench/p{p}", "exports": {
            ".": {"types": "./dist/index.d.ts", "import": "./dist/index.js"},
            "./m/*": "./src/m*.ts"}}))
        (pkg / "tsconfig.json").write_text(json.dumps(
            {"compilerOptions": {"outDir": "dist", "rootDir": "src"}}))
        (pkg / "src" / "index.ts").write_text("export * from './m0.js';\n")
        for m in range(modules):
            lines = ["import fs from 'node:fs';", "import React from 'react';"]
            if m:
                lines.append(f"import {{ a }} from './m{rng.randrange(m)}.js';")
            if m > 1:
                lines.append(f"const lazy = import(/* webpackChunkName: 'c{m}' */ "
                             f"'./m{rng.randrange(m)}');")
            if p:
                lines.append(f"import {{ b }} from '@bench/p{rng.randrange(p)}/m/"
                             f"{rng.randrange(modules)}';")
                lines.append(f"import c from '@bench/p{rng.randrange(p)}';")
            lines += ["export const a = 1;", "export const b = 2;",
                      "export default function f(x: number): number { return x * 2; }"]
            lines += [f"// filler line {i}" for i in range(12)]
            (pkg / "src" / f"m{m}.ts").write_text("\n".join(lines) + "\n")
    return packages * (modules + 1)


def _timed_generated(name: str, make: Callable[[Path, int, int], int], sizes: tuple[int, int, int],
                     prefix: str) -> Result:
    """Generate a repository with ``make(root, packages, modules)`` and time analyzing it
    ``runs`` times (``sizes`` = packages, modules, runs); judged at 10,000 files or more."""
    packages, modules, runs = sizes
    with tempfile.TemporaryDirectory(prefix=prefix) as tmp:
        files = make(Path(tmp), packages, modules)
        times, edges = [], 0
        for _ in range(runs):
            started = time.perf_counter()
            graph = analyze(tmp)
            times.append(time.perf_counter() - started)
            edges = len(graph.edges)
    median = statistics.median(times)
    met = median <= 3.0 if files >= 10_000 else None
    return Result(name, "≤ 3 s for 10,000 files", met,
                  {"files": files, "edges": edges, "runs_s": [round(t, 3) for t in times],
                   "median_s": round(median, 3)},
                  notes="" if files >= 10_000 else "quick run: too small to judge the target")


def _generated_ts(quick: bool) -> Result:
    return _timed_generated("dependency_analysis_10k_ts", generate_ts,
                            (10, 50, 2) if quick else (50, 200, 3), "bench-depgraph-ts-")


def _generated(quick: bool) -> Result:
    return _timed_generated("dependency_analysis_10k", generate,
                            (20, 50, 2) if quick else (100, 100, 3), "bench-depgraph-")


def _module(path: str) -> str:
    parts = path[:-3].split("/")
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _versus_grimp(package: str) -> Result:
    target = "the same edges as grimp; time ratio reported"
    try:
        import grimp
    except ImportError:
        return Result("dependency_analysis_vs_grimp", target, None,
                      notes='grimp is not installed: pip install -e ".[bench]"')
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return Result("dependency_analysis_vs_grimp", target, None,
                      notes=f"{package} is not an installed package")
    folder = Path(next(iter(spec.submodule_search_locations)))
    with tempfile.TemporaryDirectory(prefix="bench-grimp-") as tmp:
        # the package alone (its site-packages holds everything else), copied untimed
        shutil.copytree(folder, Path(tmp) / package,
                        ignore=shutil.ignore_patterns("__pycache__"))
        started = time.perf_counter()
        ours = analyze(tmp)
        ours_s = time.perf_counter() - started
    started = time.perf_counter()
    theirs = grimp.build_graph(package, cache_dir=None)
    grimp_s = time.perf_counter() - started
    prefix = f"{package}/"
    our_edges = {(_module(a), _module(b)) for a, b in ours.edges
                 if a.startswith(prefix) and b.startswith(prefix)
                 and a.endswith(".py") and b.endswith(".py")}
    their_edges = {(importer, imported) for importer in theirs.modules
                   for imported in theirs.find_modules_directly_imported_by(importer)}
    only_ours, only_theirs = sorted(our_edges - their_edges), sorted(their_edges - our_edges)
    return Result(
        "dependency_analysis_vs_grimp", target, not only_ours and not only_theirs,
        {"package": package, "modules": len(theirs.modules), "edges": len(our_edges),
         "ours_s": round(ours_s, 3), "only_ours": only_ours[:10], "only_grimp": only_theirs[:10]},
        baseline={"grimp_s": round(grimp_s, 3)}, ratio=round(ours_s / grimp_s, 3),
    )


async def run(quick: bool = False, package: str = "pydantic") -> list[Result]:
    results = [await asyncio.to_thread(_generated, quick),
               await asyncio.to_thread(_generated_ts, quick)]
    results.append(await asyncio.to_thread(_versus_grimp, package))
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description="dependency-analysis benchmarks")
    parser.add_argument("--quick", action="store_true", help="a small smoke run")
    parser.add_argument("--package", default="pydantic", help="installed package to compare")
    args = parser.parse_args()
    results = asyncio.run(run(args.quick, args.package))
    for result in results:
        print_result(result)
    print(json.dumps([r.to_dict() for r in results]))


if __name__ == "__main__":
    main()
